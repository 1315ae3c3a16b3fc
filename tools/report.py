"""The performance report: a lane sweep per board, built with the YoWASP tools, next to the
device's physical limits and to published ternary-LLM accelerators.

For every board and lane count the model is first checked against the board's block RAM
(:func:`mmfree.tools.device.engine_image`, no tool runs for a model that does not fit); the
others are built (:func:`mmfree.boards.build.build`), placement-only unless ``--route`` names
them (every row, or ``--route [BOARD:]N ...``): with the board's nextpnr settings
(:data:`~mmfree.boards.build.DEFAULT_PNR`: on the ULX3S-85F the static placer and router2, not
timing-driven, seed 7) a routed default-model ULX3S row takes about 15 to 30 minutes on a core
(24 at 512 lanes), and router2 does not always converge (docs/boards.md); a placement-only row's Fmax is nextpnr's
estimate after placement; every row says which. Cycles per token come from the engine's schedule
(:func:`mmfree.sim.engine.step_cycles`), which tests/test_engine.py checks against the
hardware's cycle counter step for step; projected tokens/s = Fmax / cycles per token. A board
that runs the serial engine (the iCEBreaker, docs/serial.md) has one row: its fixed DOT lane
count, always routed (about a minute), its cycles counted by the engine's reference machine
(:class:`mmfree.sim.serial.Machine`) over a few greedy steps.

Writes ``performance.md``, ``performance.png`` (matplotlib) and ``performance.json`` (the rows,
so that ``--render-only`` redraws without tools) to ``--out`` (``docs/``)::

    mmfree report [--board ulx3s-85f] [--lanes 64 128 ...] [--model M] [--route [N ...]] [--reuse]
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ..boards.build import (BOARD_FAMILIES, DEFAULT_PNR, REPORT_NAME, BuildError, build,
                           build_pool, gateware_fingerprint, tool_versions)
from ..sim import golden
from ..sim.engine import EngineImage, step_cycles
from ..sim.protocol import model_hash
from .bench_engine import PARTS, breakdown
from .bench_golden import machine

__all__ = ["ReportError", "Row", "DEVICES", "measure", "row_from_report", "limits", "render_markdown",
           "render_plot", "PEERS", "main"]

logger = logging.getLogger(__name__)

#: Lane counts swept by default (a power of two each, as the engine needs).
LANES = [16, 32, 64, 128, 256, 512, 1024]
#: Written in a build directory whose build failed (the row, for ``--reuse``).
FAILED_NAME = "report-row.json"


class ReportError(Exception):
    """A bad argument or unreadable report data; one line."""


@dataclass(frozen=True)
class Device:
    """What bounds a board's engine, from the device's data sheet: LUT4s, flip-flops, block
    RAMs (``bram_bits_per_cycle``: every block read at its widest port each cycle), multipliers,
    and where the weights would stream from."""
    label: str
    luts: int
    ffs: int
    brams: int
    dsps: int
    weight_bits_per_cycle: int      # all weight memories at their widest read port
    weight_memory: str
    lut: str                        # nextpnr's names of the cells counted
    ff: str
    bram: str
    dsp: str

    @property
    def cells_are_lut_and_ff(self) -> bool:
        """An iCE40 logic cell is a LUT and a flip-flop: one count for both."""
        return self.ff == self.lut


DEVICES = {
    "ulx3s-85f": Device("ULX3S-85F (LFE5U-85F-6)", 83_640, 83_640, 208, 156, 208 * 36,
                        "208 DP16KD x 36 bits", "TRELLIS_COMB", "TRELLIS_FF", "DP16KD",
                        "MULT18X18D"),
    "icebreaker": Device("iCEBreaker (iCE40UP5K)", 5_280, 5_280, 30, 8, 4 * 16,
                         "4 SPRAM x 16 bits", "ICESTORM_LC", "ICESTORM_LC", "ICESTORM_RAM",
                         "ICESTORM_DSP"),
}
#: LUT4s a lane of the ternary array costs (the issue's planning figure; a pipelined 1024-lane
#: array places at about 26k LUT4 on the 85F).
LUTS_PER_LANE = 25
#: Bits a weight takes in the weight memory, by packing.
PACKING_BITS = {"2bit": 2.0, "1.6bit": 1.6}


@dataclass(frozen=True)
class Row:
    """One board and lane count. ``status``: ``built`` (``fmax_mhz`` and ``utilization``
    measured; ``routed`` false for nextpnr's placement estimate), ``does not fit`` or
    ``failed`` (``detail`` says why). ``cycles``: greedy cycles per token from the schedule."""
    board: str
    lanes: int
    vector_width: int
    status: str
    detail: str
    cycles: int
    weights: int                    # ternary weights a token
    fmax_mhz: float | None = None
    routed: bool | None = None
    clock_mhz: float | None = None
    utilization: dict | None = None     # {bel: [used, available]}
    command: str = ""
    tools: dict | None = None
    seconds: float | None = None
    overhead: dict | None = None        # breakdown of a step's cycles

    @property
    def utilization_pct(self) -> float:
        """Lane utilization: (weights per token / lanes) / cycles per token (None without a
        schedule: a serial-engine model that does not fit)."""
        return 100 * self.weights / self.lanes / self.cycles if self.cycles else None

    @property
    def tokens_per_s(self) -> float | None:
        """Projected: Fmax / cycles per token."""
        if self.fmax_mhz is None or not self.cycles:
            return None
        return self.fmax_mhz * 1e6 / self.cycles

    @property
    def weights_per_s(self) -> float | None:
        tokens = self.tokens_per_s
        return None if tokens is None else tokens * self.weights

    def used(self, bel: str) -> int | None:
        if not self.utilization or bel not in self.utilization:
            return None
        return int(self.utilization[bel][0])


#: How the report groups the serial engine's instructions (where a token's cycles go).
SERIAL_GROUPS = [
    ("ternary rows (DOT)", {"DOT"}),
    ("multiplies (MUL, MULS)", {"MUL", "MULS"}),
    ("shifts and rounding (SHL, SHR, SHRR)", {"SHL", "SHR", "SHRR"}),
    ("divides, square roots, bit lengths", {"DIVS", "ISQRT", "BITLEN"}),
    ("loads, stores, tables", {"LD", "LDU", "LD2", "LDB", "LDX", "ST", "STQ", "PUT", "PUTS",
                               "GETS", "GETJ"}),
]
#: Greedy steps the serial engine's cycles per token are averaged over.
SERIAL_STEPS = 4


def _serial_schedule(model):
    """The serial engine's greedy cycles per token (the mean of :data:`SERIAL_STEPS` greedy
    steps from token 0 of the reset state, counted by :class:`mmfree.sim.serial.Machine`,
    which the gateware tests match cycle for cycle), its ternary weights a token and where
    the cycles go (:data:`SERIAL_GROUPS`; ``other`` is compares, adds, loops and calls)."""
    import collections
    from ..sim.serial_program import SerialImage
    image = SerialImage(golden.prepare(model))
    machine = image.machine()
    machine.profile = collections.Counter()
    token, cycles = 0, 0
    for _ in range(SERIAL_STEPS):
        token = machine.step(token, True)
        cycles += machine.cycles
    spent = {op.name: count for op, count in machine.profile.items()}
    groups = {name: sum(spent.pop(op, 0) for op in ops) for name, ops in SERIAL_GROUPS}
    groups["compares, adds, loops, calls, step start"] = cycles - sum(groups.values())
    overhead = {name: round(count / SERIAL_STEPS) for name, count in groups.items()}
    return round(cycles / SERIAL_STEPS), image.ternary_weights(), overhead


def _schedule(model, board: str, lanes: int, vector_width: int | None) -> dict:
    """The engine's figures for ``model`` on ``board``: vector width, greedy cycles per token,
    ternary weights a token, where the cycles go."""
    from .device import BOARD_CONFIGS
    config = BOARD_CONFIGS[board]
    if config.engine == "serial":
        cycles, weights, overhead = _serial_schedule(model)
        return dict(vector_width=config.vector_width, cycles=cycles, weights=weights,
                    overhead=overhead)
    width = vector_width or config.vector_width
    image = EngineImage(golden.prepare(model), lanes,
                        **(config.engine_options | dict(vector_width=width)))
    return dict(vector_width=width, cycles=step_cycles(image), weights=image.ternary_weights(),
                overhead=breakdown(image))


def _limit(overhead: dict[str, int]) -> tuple[str, int] | None:
    """The largest part of ``overhead`` (a :func:`breakdown`) that is not the lanes' own work
    (:data:`~mmfree.tools.bench_engine.PARTS`' first; the serial engine's DOT rows)."""
    rest = {name: cycles for name, cycles in overhead.items()
            if name not in (PARTS[0], "ternary rows (DOT)")}
    return max(rest.items(), key=lambda item: item[1]) if rest else None


def row_from_report(model, report: dict) -> Row:
    """The row of a finished build, from its ``build-report.json`` contents."""
    schedule = _schedule(model, report["board"], report["lanes"], report["vector_width"])
    fmax = report.get("fmax_mhz") or {}
    return Row(board=report["board"], lanes=report["lanes"], status="built", detail="",
               **schedule,
               fmax_mhz=min(fmax.values()) if fmax else None,
               routed=report.get("routed", True), clock_mhz=report["clock_hz"] / 1e6,
               utilization={bel: [u["used"], u["available"]]
                            for bel, u in report.get("utilization", {}).items()},
               command=" ".join(report.get("command") or []), tools=report.get("tools"),
               seconds=report.get("seconds"))


def measure(model, board: str, lanes: int, *, work: Path, route: bool = False,
            reuse: bool = False, seed: int | None = None, model_path: str | None = None,
            command: list[str] | None = None) -> Row:
    """The row of ``board`` at ``lanes``: refused by the block-RAM check, or built in
    ``work/BOARD-lLANES`` (with ``reuse``, an earlier build there of the same model, lanes,
    routing, gateware (:func:`~mmfree.boards.build.gateware_fingerprint`), nextpnr seed,
    timing-driven switch and tool versions (:func:`~mmfree.boards.build.tool_versions`) is read
    back instead)."""
    from .device import BOARD_CONFIGS, DeviceSetupError, engine_image
    config = dataclasses.replace(BOARD_CONFIGS[board], lanes=lanes)
    try:
        image = engine_image(model, config)
    except DeviceSetupError as error:
        detail = str(error)
        schedule = _schedule(model, board, lanes, None) if config.engine == "parallel" else \
            dict(vector_width=config.vector_width, cycles=0, weights=0, overhead=None)
        return Row(board=board, lanes=lanes, status="does not fit",
                   detail=detail.split(": ", 1)[-1], **schedule)
    base = dict(board=board, lanes=lanes, **_schedule(model, board, lanes, None))
    out = work / f"{board}-l{lanes}"
    pnr = DEFAULT_PNR[board]
    key = {"hash": f"{model_hash(image.load_words()):016x}", "lanes": lanes, "routed": route,
           "gateware": gateware_fingerprint(config),
           "seed": pnr.seed if seed is None else seed, "timing_driven": pnr.timing_driven,
           "tools": tool_versions(BOARD_FAMILIES[board][0])}
    if reuse:
        if (out / REPORT_NAME).is_file():
            report = json.loads((out / REPORT_NAME).read_text())
            if key == {"hash": report.get("model", {}).get("hash"),
                       "lanes": report.get("lanes"), "routed": report.get("routed", True),
                       "gateware": report.get("gateware"), "seed": report.get("seed"),
                       "timing_driven": report.get("timing_driven"),
                       "tools": report.get("tools")}:
                logger.info("%s, %d lanes: reusing %s", board, lanes, out / REPORT_NAME)
                return row_from_report(model, report)
        if (out / FAILED_NAME).is_file():
            failed = json.loads((out / FAILED_NAME).read_text())
            if failed.get("key") == key:
                logger.info("%s, %d lanes: reusing %s", board, lanes, out / FAILED_NAME)
                return Row(status=failed["status"], detail=failed["detail"],
                           command=failed["command"], **base)
    logger.info("%s, %d lanes: building in %s", board, lanes, out)
    (out / FAILED_NAME).unlink(missing_ok=True)
    try:
        result = build(board, model, lanes=lanes, out_dir=out, allow_timing_fail=True,
                       seed=seed, force=True, model_path=model_path, command=command,
                       place_only=not route,
                       router=None if route else "router1")
    except BuildError as error:
        status = "does not fit" if "does not fit" in str(error) else "failed"
        # Kept for --reuse: a build that does not fit fails the same way next time.
        out.mkdir(parents=True, exist_ok=True)
        (out / FAILED_NAME).write_text(json.dumps({
            "key": key, "status": status, "detail": str(error),
            "command": shlex.join(command or [])}, indent=1) + "\n")
        return Row(status=status, detail=str(error), command=shlex.join(command or []), **base)
    return row_from_report(model, json.loads(result.report.read_text()))


def limits(board: str, weights: int, packing: str, baud: int) -> dict[str, float]:
    """The device's bounds for a model of ``weights`` ternary weights a token: lanes the LUTs
    could hold (:data:`LUTS_PER_LANE`), weights the weight memories can deliver a cycle, the
    tokens/s those allow at 100 MHz, and the UART's payload bytes/s (8N1), its weight-load
    time and its rate of TOKEN frames (15 bytes: 7 of framing, 8 of payload;
    docs/protocol.md)."""
    device = DEVICES[board]
    payload = baud / 10
    per_cycle = device.weight_bits_per_cycle / PACKING_BITS[packing]
    return {
        "lut_lanes": device.luts / LUTS_PER_LANE,
        "bram_weights_per_cycle": per_cycle,
        "bram_tokens_per_s_100mhz": 100e6 * per_cycle / weights,
        "uart_bytes_per_s": payload,
        "uart_load_s": weights * PACKING_BITS[packing] / 8 / payload,
        "uart_tokens_per_s": payload / 15,
    }


#: Published results (their numbers, cited): name, where, model, ternary weights a token (None:
#: not stated where cited), tokens/s, clock, LUTs (None: not stated), source.
PEERS = [
    ("MatMul-free LM paper", "Intel D5005 (Stratix 10), DDR", "370M (projected)", 370e6, 62,
     "60 MHz", None, "Zhu et al., arXiv:2406.02528; ../shared/MODEL.md"),
    ("TerEffic, fully on chip", "several AMD FPGAs", "370M MatMul-free", 370e6, 16_300,
     "", None, "Yin et al., arXiv:2502.16473v2"),
    ("TeLLMe v2", "AMD KV260, 5 W", "BitNet-style 1.58-bit", None, 25, "", None,
     "Qiao et al., arXiv:2510.15926 (v1, arXiv:2504.16266: 9 tokens/s at 7 W)"),
    ("ZyboGPT", "Zybo Z7-10 (xc7z010), Vivado", "115K (98K ternary)", 98e3, 3_072, "150 MHz",
     14_952, "github.com/mpai17/ZyboGPT (measured on the board)"),
    # Its ternary weights from the published dimensions: four blocks of 243 x 729 and
    # 729 x 243, and a 243 x 128 head.
    ("Trinity v2.0.2", "XC7A100T, openXC7 (open tools)", "4 x 243-729-243 + head",
     4 * 2 * 243 * 729 + 243 * 128, 63,
     "92 MHz", 7_400, "Vasilev, doi:10.5281/zenodo.18947017"),
]


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def _fmt(value, spec: str = ",") -> str:
    return "—" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


def _short(detail: str) -> str:
    """A failure's detail without what the status column says and the log's path."""
    detail = re.sub(r"^the (design|model) does not fit the [\w-]+: ", "", detail)
    return re.sub(r" \(log: [^)]*\)$", "", detail)


def _describe(config) -> str:
    return (f"d {config.hidden_size}, L {config.num_layers}, I {config.intermediate_size}, "
            f"V {config.vocab_size}")


def _lut_slope(rows: list[Row], device: Device) -> str:
    """What a lane costs in this design: the LUT difference between the smallest and the
    largest built (or over-the-device) rows, per lane."""
    points = []
    for row in rows:
        used = row.used(device.lut)
        if used is None and row.status == "does not fit":
            match = re.search(rf"{device.lut} (\d+)/", row.detail)
            used = int(match[1]) if match else None
        if used is not None:
            points.append((row.lanes, used))
    if len(points) < 2:
        return ""
    (l0, u0), (l1, u1) = min(points), max(points)
    slope = (u1 - u0) / (l1 - l0)
    return (f" This design measures {slope:,.1f} {device.lut} a lane ({u0:,} at {l0} lanes, "
            f"{u1:,} at {l1}): the lane's weight decoder, its +q/~q/0 select and its share of "
            f"the adder tree and of the q buffer; at that rate the device holds "
            f"about {(device.luts - (u0 - slope * l0)) / slope:,.0f} lanes.")


def render_markdown(rows: list[Row], meta: dict) -> str:
    """``docs/performance.md`` from the rows and the run's metadata (command, machine, date,
    model, baud, packing)."""
    from .device import BOARD_CONFIGS

    lines = ["# Performance report", "",
             f"Command: `{meta['command']}`", "",
             f"Machine: {meta['machine']}", "",
             f"Date: {meta['date']}", "",
             "Models: " + "; ".join(f"{board}: `{m['file']}` ({m['config']})"
                                    for board, m in meta["models"].items()), "",
             "Fmax is nextpnr's: **routed** where the row says so, otherwise its estimate "
             "after placement (`mmfree build --place-only`, nextpnr's placer's own figure, "
             "which on the ULX3S-85F's static placer runs below the routed one). Cycles "
             "per token are the engine's schedule (docs/engine.md), which "
             "tests/test_engine.py checks against the hardware's cycle counter for every "
             "step; projected tokens/s = Fmax / cycles per token (greedy). Lane utilization = "
             "(ternary weights per token / lanes) / cycles per token.", "",
             "![LUTs, FFs, block RAM, DSPs, Fmax, cycles per token and projected tokens/s "
             "against lanes](performance.png)", ""]
    for board in dict.fromkeys(row.board for row in rows):
        device = DEVICES[board]
        board_rows = [row for row in rows if row.board == board]
        lines += [f"## {device.label}", "",
                  f"| lanes | status | Fmax (MHz) | {device.lut} | "
                  f"{'FF' if device.cells_are_lut_and_ff else device.ff} | "
                  f"{device.bram} | {device.dsp} | cycles/token | utilization | "
                  f"tokens/s (projected) | weights/s |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in board_rows:
            if row.status == "built":
                status = "routed" if row.routed else "placed"
                fmax = f"{row.fmax_mhz:.2f}" if row.fmax_mhz else "—"
            else:
                status, fmax = f"{row.status}: {_short(row.detail)}", "—"
            cells = [_fmt(row.used(bel)) if row.status == "built" else "—"
                     for bel in (device.lut, device.ff, device.bram, device.dsp)]
            if device.cells_are_lut_and_ff:
                cells[1] = "(in the LCs)" if row.status == "built" else "—"
            lines.append(f"| {row.lanes} | {status} | {fmax} | {' | '.join(cells)} | "
                         f"{_fmt(row.cycles or None)} | {_pct(row.utilization_pct)} | "
                         f"{_fmt(row.tokens_per_s, ',.0f')} | {_si(row.weights_per_s)} |")
        built = [row for row in board_rows if row.status == "built"]
        commands = sorted({row.command for row in built if row.command})
        if commands:
            lines += ["", "Builds: " + "; ".join(f"`{c}`" for c in commands) + "."]
        versions = next((row.tools for row in built if row.tools), None)
        if versions:
            lines += ["", "Tools: " + ", ".join(f"{name} {version}"
                                               for name, version in versions.items()) + "."]
        weights = board_rows[0].weights
        # The overhead at 1024 lanes (the target), or at the largest row below it.
        largest = max((row for row in board_rows if row.lanes <= 1024),
                      key=lambda row: row.lanes, default=board_rows[-1])
        overhead = (largest.overhead or {}) if largest.cycles else {}
        if BOARD_CONFIGS[board].engine == "serial":
            lines += ["", f"The {board} runs the serial engine (docs/serial.md): an "
                      "accumulator machine whose DOT instruction takes "
                      f"{largest.lanes} ternary weights a cycle, so its lane count is fixed; "
                      "its cycles per token are the mean of "
                      f"{SERIAL_STEPS} greedy steps counted by `mmfree.sim.serial.Machine` "
                      "(the gateware matches it cycle for cycle, tests/test_serial.py)."]
        if not weights:     # no schedule: a serial-engine model that does not fit
            lines.append("")
            continue
        lim = limits(board, weights, meta["packing"][board], meta["baud"][board])
        lines += ["", "Physical limits of the device for this model "
                  f"({weights:,} ternary weights a token):", "",
                  f"- LUTs: {device.luts:,} LUT4 / {LUTS_PER_LANE} per lane = about "
                  f"**{lim['lut_lanes']:,.0f} lanes**." + _lut_slope(board_rows, device),
                  f"- Weight memory read bandwidth: {device.weight_memory} = "
                  f"{device.weight_bits_per_cycle:,} bits a cycle = "
                  f"**{lim['bram_weights_per_cycle']:,.0f} weights a cycle** at "
                  f"{PACKING_BITS[meta['packing'][board]]} bits a weight: at most "
                  f"{lim['bram_tokens_per_s_100mhz']:,.0f} tokens/s at 100 MHz.",
                  f"- UART at {meta['baud'][board]:,} baud: {lim['uart_bytes_per_s']:,.0f} "
                  f"payload bytes/s; the weights load in {lim['uart_load_s']:.1f} s; TOKEN "
                  f"frames (15 bytes) cap generation at "
                  f"**{lim['uart_tokens_per_s']:,.0f} tokens/s**.", ""]
        if overhead:
            lines += [f"Where the cycles of a token go at {largest.lanes} lanes "
                      f"({largest.cycles:,} cycles, utilization "
                      f"{_pct(largest.utilization_pct)}):", "",
                      "| part | cycles | share |", "|---|---:|---:|"]
        for name, cycles in overhead.items():
            lines.append(f"| {name} | {cycles:,} | {100 * cycles / largest.cycles:.1f}% |")
        limit = _limit(overhead)
        if limit:
            lines += ["", f"At {largest.lanes} lanes the largest overhead is **{limit[0]}**: "
                      f"{limit[1]:,} cycles a token, {100 * limit[1] / largest.cycles:.1f}% of "
                      "them."]
        lines.append("")

    ours = [row for row in rows if row.status == "built" and row.tokens_per_s]
    lines += ["## Against published results", "",
              "Their numbers as published (cited); ours measured as above. Weights/s = "
              "ternary weights a token x tokens/s; for the 370M models it counts every "
              "parameter (an upper bound on their ternary weights); where a source gives no "
              "LUT count or model size the column is empty.", "",
              "| design | device | model | tokens/s | clock | weights/s | LUTs | "
              "weights/s per LUT | source |", "|---|---|---|---:|---|---:|---:|---:|---|"]
    for row in ours:
        device = DEVICES[row.board]
        luts = row.used(device.lut)
        kind = "post-route" if row.routed else "placement estimate"
        lines.append(f"| **mmfree**, {row.lanes} lanes | {device.label}, Yosys + nextpnr | "
                     f"{meta['models'][row.board]['config']} | {row.tokens_per_s:,.0f} | "
                     f"{row.fmax_mhz:.1f} MHz ({kind}) | {_si(row.weights_per_s)} | "
                     f"{_fmt(luts)} | {_si(row.weights_per_s / luts if luts else None)} | "
                     f"this report |")
    for name, where, model, weights, tokens, clock, luts, source in PEERS:
        wps = weights * tokens if weights else None
        lines.append(f"| {name} | {where} | {model} | {tokens:,} | {clock or '—'} | "
                     f"{_si(wps)} | {_fmt(luts)} | "
                     f"{_si(wps / luts if wps and luts else None)} | {source} |")
    lines += ["", "## Against the targets (issue 7)", ""]
    best = max(ours, key=lambda row: row.weights_per_s, default=None)
    fast = [row for row in ours if row.fmax_mhz >= 100 and row.lanes >= 1024]
    lines += [f"- At least 100 MHz post-route with at least 1024 lanes on the ULX3S-85F: "
              f"**{'met' if fast and all(r.routed for r in fast) else 'not met'}**" +
              (f"; the best built row is {best.lanes} lanes at {best.fmax_mhz:.2f} MHz "
               f"({'routed' if best.routed else 'placement estimate'})." if best else "."),
              f"- At least 50 G ternary weight-operations a second: "
              f"**{'met' if best and best.weights_per_s >= 50e9 else 'not met'}**" +
              (f"; best {_si(best.weights_per_s)} ({best.lanes} lanes)." if best else "."), ""]
    return "\n".join(lines)


def render_plot(rows: list[Row], path: Path, meta: dict) -> None:
    """``performance.png``: resources (share of the device), Fmax, cycles per token and
    projected tokens/s against lanes, one line per board."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (res, fmax), (cycles, tokens) = axes
    for board in dict.fromkeys(row.board for row in rows):
        device = DEVICES[board]
        board_rows = sorted((row for row in rows if row.board == board and row.cycles),
                            key=lambda r: r.lanes)
        if not board_rows:
            continue
        built = [row for row in board_rows if row.status == "built"]
        lanes = [row.lanes for row in built]
        resources = [(device.lut, device.luts, "LUT"), (device.ff, device.ffs, "FF"),
                     (device.bram, device.brams, "block RAM"), (device.dsp, device.dsps, "DSP")]
        if device.cells_are_lut_and_ff:
            resources[0:2] = [(device.lut, device.luts, "LC")]
        for bel, total, label in resources if built else ():
            values = [100 * (row.used(bel) or 0) / total for row in built]
            res.plot(lanes, values, marker="o", label=f"{board} {label}")
        if built:
            routed = "routed" if all(r.routed for r in built) else "placement estimate"
            fmax.plot(lanes, [row.fmax_mhz for row in built], marker="o",
                      label=f"{board} ({routed})")
            fmax.axhline(built[0].clock_mhz, linestyle=":", color="grey")
        every = [row.lanes for row in board_rows]
        cycles.plot(every, [row.cycles for row in board_rows], marker="o",
                    label=f"{board} cycles/token")
        cycles.plot(every, [row.weights / row.lanes for row in board_rows], linestyle="--",
                    label=f"{board} lower bound (weights/lanes)")
        tokens.plot(every, [100e6 / row.cycles for row in board_rows], linestyle="--",
                    label=f"{board} at 100 MHz")
        if built:
            tokens.plot(lanes, [row.tokens_per_s for row in built], marker="o",
                        label=f"{board} at its Fmax")
        lim = limits(board, board_rows[0].weights, meta["packing"][board], meta["baud"][board])
        tokens.axhline(lim["uart_tokens_per_s"], linestyle=":", color="red",
                       label=f"{board} UART TOKEN frames")
    res.axhline(100, color="black", linewidth=0.5)
    fmax.axhline(100, linestyle="--", color="black", linewidth=0.5, label="100 MHz target")
    for ax, title, ylabel in ((res, "Resources", "% of the device"),
                              (fmax, "Fmax", "MHz"),
                              (cycles, "Cycles per token (schedule)", "cycles"),
                              (tokens, "Projected tokens/s", "tokens/s")):
        ax.set_title(title)
        ax.set_xlabel("lanes")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    every = [row.lanes for row in rows]
    for ax in axes.flat:
        ax.set_xlim(min(every) / 1.4, max(every) * 1.4)
    for ax in axes.flat:
        ax.set_xscale("log", base=2)
    cycles.set_yscale("log")
    tokens.set_yscale("log")
    models = ", ".join(m["file"] for m in meta["models"].values())
    fig.suptitle(f"mmfree: {models} — {meta['date']}", fontsize=10)
    fig.text(0.5, 0.005, f"{meta['command']}", ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write(rows: list[Row], meta: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "performance.md", out / "performance.png", out / "performance.json"]
    paths[0].write_text(render_markdown(rows, meta))
    render_plot(rows, paths[1], meta)
    paths[2].write_text(json.dumps({"meta": meta, "rows": [dataclasses.asdict(row)
                                                           for row in rows]}, indent=1) + "\n")
    return paths


def run(args) -> int:
    """``mmfree report`` (see :mod:`mmfree.tools.cli`); raises :class:`ReportError` with one line
    for a bad argument and :class:`~mmfree.boards.toolchain.ToolchainError` if a tool is
    missing."""
    from .cli import default_model_path, load_any
    from .device import BOARD_CONFIGS

    out = Path(args.out)
    if args.render_only:
        data_path = out / "performance.json"
        try:
            data = json.loads(data_path.read_text())
            rows = [Row(**row) for row in data["rows"]]
            meta = data["meta"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ReportError(f"{data_path}: no report data to render ({error})") from None
        for path in _write(rows, meta, out):
            print(f"wrote {path}")
        return 0
    boards = args.board or ["ulx3s-85f"]
    for board in boards:
        if board not in BOARD_FAMILIES:
            raise ReportError(f"unknown board {board!r}; choose from {', '.join(BOARD_FAMILIES)}")
    jobs = set()
    for item in args.lanes or [str(count) for count in LANES]:
        board, _, count = item.rpartition(":")
        if board and board not in boards:
            raise ReportError(f"--lanes {item}: {board!r} is not a --board of this report")
        try:
            count = int(count)
        except ValueError:
            count = 0
        if count <= 0 or count & (count - 1):
            raise ReportError(f"lanes must be positive powers of two, not {item}")
        for b in [board] if board else boards:
            fixed = BOARD_CONFIGS[b].lanes if BOARD_CONFIGS[b].engine == "serial" else None
            if fixed is None:
                jobs.add((b, count))
            elif board and count != fixed:
                raise ReportError(f"--lanes {item}: the {b}'s serial engine has {fixed} "
                                  "lanes (docs/serial.md)")
    # A serial engine has one lane count: its row is always there, and always routed (the
    # iCEBreaker routes in about a minute).
    jobs |= {(board, BOARD_CONFIGS[board].lanes) for board in boards
             if BOARD_CONFIGS[board].engine == "serial"}
    # --route alone routes every row; --route [BOARD:]N ... the rows named.
    routed = set()
    for item in args.route or []:
        board, _, count = item.rpartition(":")
        named = {job for job in jobs if (not board or job[0] == board) and str(job[1]) == count}
        if not named:
            raise ReportError(f"--route {item}: not a row of this report (--board, --lanes)")
        routed |= named

    def route(job):
        return (args.route is not None and (not args.route or job in routed)) or \
            BOARD_CONFIGS[job[0]].engine == "serial"
    model_paths = {board: args.model or default_model_path().with_name(f"{board}.safetensors")
                   for board in boards}
    models = {board: load_any(path) for board, path in model_paths.items()}
    command = ["mmfree", *args.argv]
    work = Path(args.work)
    # The largest builds first (they take longest); the report lists lanes in order.
    jobs = sorted(jobs, key=lambda job: (-job[1], job[0]))
    with build_pool(args.jobs) as pool:
        rows = list(pool.map(lambda job: measure(
            models[job[0]], job[0], job[1], work=work,
            route=route(job), reuse=args.reuse,
            seed=args.seed, model_path=str(model_paths[job[0]]), command=command), jobs))
    rows.sort(key=lambda row: (boards.index(row.board), row.lanes))
    meta = {
        "command": shlex.join(command), "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "models": {board: {"file": Path(str(model_paths[board])).name,
                           "config": _describe(models[board].config)} for board in boards},
        "packing": {board: BOARD_CONFIGS[board].packing for board in boards},
        "baud": {board: BOARD_CONFIGS[board].baud for board in boards},
        "tools": {board: tool_versions(BOARD_FAMILIES[board][0]) for board in boards},
    }
    for path in _write(rows, meta, out):
        print(f"wrote {path}")
    failed = [row for row in rows if row.status == "failed"]
    for row in failed:
        print(f"mmfree: {row.board}, {row.lanes} lanes: {row.detail}", file=sys.stderr)
    return 1 if failed else 0


def main(argv=None) -> int:
    from .cli import main as cli_main
    return cli_main(["report", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
