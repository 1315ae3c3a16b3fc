"""The simulated board: a design compiled by Verilator into a standalone executable whose UART
pins are a TCP socket on 127.0.0.1, so that host software opens it like a serial port.

The executable is ``simboard_harness.cpp`` (beside this file) around the Verilated module
``top`` (ports ``clk``, ``rst``, ``uart_rx`` into the design, ``uart_tx`` out of it, and
``leds`` if asked for). The UART is 8N1, LSB first, ``divisor`` clock cycles a bit; the bytes a
client sends go onto ``uart_rx`` back to back, the bytes on ``uart_tx`` go back to it. No Python
runs in the simulation loop; :class:`SimBoard` only builds, starts, resets and stops it::

    with SimBoard(amaranth_to_verilog(soc, name="top"), divisor=8) as board:
        with board.connect() as sock:
            ...

One client at a time: a second connection is closed at once. A client that leaves loses its
bytes not yet sent to the design; the board keeps running and takes the next client. With no
client and ``uart_tx`` idle for 2,000,000 cycles the simulation stops until a client comes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import toolchain
from .toolchain import build_verilator_exe

__all__ = ["SimBoardError", "SimBoard", "HARNESS"]

logger = logging.getLogger(__name__)

#: The C++ main around the Verilated design.
HARNESS = Path(__file__).with_name("simboard_harness.cpp")

_START_TIMEOUT = 60.0
_REPLY_TIMEOUT = 10.0
_QUIT_TIMEOUT = 5.0
_run_ids = itertools.count()


class SimBoardError(Exception):
    """The simulated board failed to build, start or answer; the message is one line."""


class SimBoard:
    """A Verilated ``verilog`` (module ``top``) running as its own process, UART on a socket.

    ``divisor`` is the number of clock cycles a UART bit (at least 2); ``reset_cycles`` the
    length of the reset at start and of :meth:`reset`. ``leds`` builds the harness with the
    design's ``leds`` port, read by :meth:`leds`. ``name`` names the build folder
    (``build_root()/exe/<name>-<hash>``). ``build_log``, if given, is called with one line
    before a build that is not cached yet (it takes some 20 s), e.g. ``print``.

    :meth:`start` (or ``with``) builds and starts it; :meth:`close` stops it. The process's
    standard error goes to a file in the build folder; after a clean exit its lines go to this
    module's logger and the file is removed, else it stays and errors name it.
    """

    def __init__(self, verilog: str, *, divisor: int, name: str = "simboard",
                 reset_cycles: int = 16, leds: bool = False,
                 build_log: Callable[[str], None] | None = None):
        if not isinstance(verilog, str) or "module" not in verilog:
            raise TypeError("verilog must be the Verilog text of the module `top`")
        if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 2:
            raise ValueError(f"divisor must be an integer of at least 2 cycles a bit, "
                             f"not {divisor!r}")
        if isinstance(reset_cycles, bool) or not isinstance(reset_cycles, int) \
                or reset_cycles < 1:
            raise ValueError(f"reset_cycles must be a positive integer, not {reset_cycles!r}")
        self._verilog = verilog
        self._divisor = divisor
        self._name = name
        self._reset_cycles = reset_cycles
        self._leds = bool(leds)
        self._build_log = build_log
        self._process: subprocess.Popen | None = None
        self._stderr_path: Path | None = None
        self._stdout = b""
        self._port: int | None = None
        self._lock = threading.Lock()

    # --- properties ------------------------------------------------------------------------

    @property
    def divisor(self) -> int:
        return self._divisor

    @property
    def reset_cycles(self) -> int:
        return self._reset_cycles

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 (after :meth:`start`)."""
        if self._port is None:
            raise SimBoardError(f"the simulated board {self._name} is not running; start() it")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """``("127.0.0.1", port)``, for ``socket.create_connection`` and the like."""
        return ("127.0.0.1", self.port)

    @property
    def pid(self) -> int:
        """The process id of the running executable."""
        if self._process is None:
            raise SimBoardError(f"the simulated board {self._name} is not running; start() it")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- life cycle ------------------------------------------------------------------------

    def build(self) -> Path:
        """Build the executable (or find it built) and return its path."""
        defines = {"HAS_LEDS": "1"} if self._leds else None
        if self._build_log is not None:
            plan = toolchain._plan_verilator_exe(self._verilog, top="top", cpp=[HARNESS],
                                                 name=self._name, defines=defines)
            if not plan.is_built():
                self._build_log(f"building the simulated board {self._name} with Verilator "
                                f"in {plan.build_dir}")
        try:
            return build_verilator_exe(self._verilog, top="top", cpp=[HARNESS],
                                       name=self._name, defines=defines)
        except toolchain.ToolchainError as error:
            raise SimBoardError(str(error)) from None

    def start(self) -> SimBoard:
        """Build, start the process, wait (60 s at most) until it listens; returns ``self``."""
        if self._process is not None:
            raise SimBoardError(f"the simulated board {self._name} was already started")
        exe = self.build()
        self._stderr_path = exe.parent.parent / f"stderr-{os.getpid()}-{next(_run_ids)}.log"
        command = [str(exe), "--port", "0", "--divisor", str(self._divisor),
                   "--reset-cycles", str(self._reset_cycles)]
        with open(self._stderr_path, "wb") as stderr:
            try:
                # A session of its own: Ctrl-C reaches us, and we stop the board with `quit`.
                self._process = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                    start_new_session=True)
            except OSError as error:
                raise SimBoardError(f"cannot start {exe}: {error.strerror or error}") from None
        try:
            line = self._read_line(_START_TIMEOUT, "say LISTENING")
            word, _, port = line.partition(" ")
            if word != "LISTENING" or not port.isdigit():
                raise SimBoardError(f"the simulated board {self._name} said {line!r}, "
                                    f"not LISTENING <port>")
            self._port = int(port)
        except BaseException:
            self.close()
            raise
        logger.info("simulated board %s listening on 127.0.0.1:%d", self._name, self._port)
        return self

    def close(self) -> None:
        """Stop the process: ``quit``, then SIGTERM after 5 s, then SIGKILL; always reaped.
        Closing twice, or a board never started, is fine."""
        process, self._process = self._process, None
        self._port = None
        if process is None:
            return
        try:
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    process.stdin.write(b"quit\n")
                    process.stdin.flush()
                with contextlib.suppress(OSError):
                    process.stdin.close()
                try:
                    process.wait(_QUIT_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.terminate()
                    try:
                        process.wait(_QUIT_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        process.kill()
        finally:
            process.wait()
            for stream in (process.stdin, process.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
            self._stdout = b""
            if self._stderr_path is not None:
                # After a clean exit, what it said goes to the log and the file goes away.
                with contextlib.suppress(OSError):
                    lines = self._stderr_path.read_text(errors="replace").splitlines()
                    if process.returncode == 0 or not lines:
                        for line in lines:
                            logger.info("%s: %s", self._name, line)
                        self._stderr_path.unlink()

    def __enter__(self) -> SimBoard:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- use -------------------------------------------------------------------------------

    def connect(self, timeout: float | None = 10.0) -> socket.socket:
        """A new TCP connection to the board's UART (``TCP_NODELAY``); ``timeout`` is that of
        the connection and stays the socket's timeout (``settimeout`` to change it)."""
        self._check_running()
        try:
            sock = socket.create_connection(self.address, timeout=timeout)
        except OSError as error:
            raise SimBoardError(f"cannot connect to the simulated board {self._name} on "
                                f"{self.address[0]}:{self.address[1]}: "
                                f"{error.strerror or error}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def reset(self) -> None:
        """Press the reset button: ``rst`` high for ``reset_cycles``; the bytes still queued
        for the design are dropped. Returns when the reset is over."""
        self._command("reset", "OK reset")

    def cycles(self) -> int:
        """The clock cycles simulated so far."""
        return int(self._command("cycles", "CYCLES"))

    def stats(self) -> dict[str, int]:
        """Counters since the start: ``cycles``; ``to_device`` (bytes sent to the design,
        counted at their start bit) and ``dropped_to_device`` (bytes from clients never sent:
        the client left, or a reset); ``from_device`` (bytes from the design with a good stop
        bit), ``dropped_from_device`` (those of them no client took) and ``framing_errors``
        (bytes from the design with a stop bit of 0); and two cycle numbers: ``burst_start``,
        when the latest run of back-to-back bytes to the design began (its first start bit),
        and ``last_from_device``, when the latest byte from the design was complete (its stop
        bit sampled, in its middle)."""
        fields = self._command("stats", "STATS").split()
        return {key: int(value) for key, value in (field.split("=", 1) for field in fields)}

    def leds(self) -> int:
        """The design's ``leds`` now (a board built with ``leds=True``)."""
        if not self._leds:
            raise SimBoardError(f"the simulated board {self._name} was built without leds")
        return int(self._command("leds", "LEDS"))

    # --- the control pipe ------------------------------------------------------------------

    def _command(self, command: str, expected: str) -> str:
        with self._lock:
            process = self._check_running()
            try:
                process.stdin.write(command.encode() + b"\n")
                process.stdin.flush()
            except OSError:
                raise self._exited_error(f"before it could answer `{command}`") from None
            line = self._read_line(_REPLY_TIMEOUT, f"answer `{command}`")
        word, _, rest = line.partition(" ")
        if line != expected and word != expected:
            raise SimBoardError(f"the simulated board {self._name} answered `{command}` with "
                                f"{line!r}")
        return rest

    def _read_line(self, timeout: float, what: str) -> str:
        """The next line of the process's standard output; ``what`` it is to do ("answer
        `cycles`") names it in errors."""
        fd = self._process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._stdout:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SimBoardError(f"the simulated board {self._name} did not {what} within "
                                    f"{timeout:g} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                data = os.read(fd, 4096)
                if not data:
                    raise self._exited_error(f"before it could {what}")
                self._stdout += data
        line, _, self._stdout = self._stdout.partition(b"\n")
        return line.decode(errors="replace").strip()

    def _check_running(self) -> subprocess.Popen:
        if self._process is None:
            raise SimBoardError(f"the simulated board {self._name} is not running; start() it")
        if self._process.poll() is not None:
            raise self._exited_error("")
        return self._process

    def _exited_error(self, when: str) -> SimBoardError:
        process = self._process
        try:
            status = process.wait(_QUIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            status = None
        tail = ""
        if self._stderr_path is not None:
            with contextlib.suppress(OSError):
                lines = self._stderr_path.read_text(errors="replace").strip().splitlines()
                tail = " | ".join(lines[-3:])
        where = f" {when}" if when else ""
        state = "stopped answering" if status is None else f"exited with status {status}"
        message = f"the simulated board {self._name} {state}{where}"
        return SimBoardError(f"{message}: {tail}" if tail else message)
