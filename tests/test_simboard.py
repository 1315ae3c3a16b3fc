"""The simulated board (sim/simboard.py, sim/simboard_harness.cpp): a Verilated loopback design
with its UART on a TCP socket, bit-level in both directions, no Python in the clock loop."""

import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mmfree.sim.simboard import HARNESS, SimBoard, SimBoardError
from mmfree.sim.toolchain import ToolchainError, amaranth_to_verilog, build_verilator_exe

POLL_INTERVAL = 128  # cycles between two looks at the socket (simboard_harness.cpp)
IDLE_SLEEP_CYCLES = 2_000_000


class Loopback(wiring.Component):
    """``uart_tx`` is ``uart_rx`` one cycle later."""
    uart_rx: In(1, init=1)
    uart_tx: Out(1, init=1)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.uart_tx.eq(self.uart_rx)
        return m


class CountingLoopback(wiring.Component):
    """A :class:`Loopback` whose ``leds`` count the falling edges of ``uart_rx`` (mod 16)."""
    uart_rx: In(1, init=1)
    uart_tx: Out(1, init=1)
    leds: Out(4)

    def elaborate(self, platform):
        m = Module()
        previous = Signal(init=1)
        m.d.sync += [self.uart_tx.eq(self.uart_rx), previous.eq(self.uart_rx)]
        with m.If(previous & ~self.uart_rx):
            m.d.sync += self.leds.eq(self.leds + 1)
        return m


@pytest.fixture(scope="module")
def loopback():
    return amaranth_to_verilog(Loopback(), name="top")


@pytest.fixture(scope="module")
def counting():
    return amaranth_to_verilog(CountingLoopback(), name="top")


def receive(sock: socket.socket, count: int, what: str) -> bytes:
    """At least ``count`` bytes (all that came with them)."""
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(65536)
        assert chunk, f"{what}: the board closed the connection after {len(data)} of {count} bytes"
        data += chunk
    return bytes(data)


def echo(sock: socket.socket, data: bytes, what: str) -> None:
    sock.sendall(data)
    got = receive(sock, len(data), what)
    first = next((i for i, (a, b) in enumerate(zip(got, data)) if a != b), None)
    assert got == data, (f"{what}: {len(got)} bytes back for {len(data)}, the first wrong one "
                         f"is byte {first}")


def wait_for(condition, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.005)
    return result


def gone(pid: int) -> bool:
    """The process no longer exists (not even as a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the byte stream ------------------------------------------------------------------------

@pytest.mark.parametrize("divisor", [8, 16])
def test_loopback_bytes(loopback, divisor):
    """4096 random bytes come back unchanged, each through both halves of the harness's UART;
    nothing is left over, dropped or malformed."""
    data = random.Random(divisor).randbytes(4096)
    with SimBoard(loopback, divisor=divisor, name="simboard-loopback") as board:
        with board.connect() as sock:
            echo(sock, data, f"divisor {divisor}, seed {divisor}")
            sock.settimeout(0.05)
            with pytest.raises(TimeoutError):
                sock.recv(1)
            stats = board.stats()
    assert stats["to_device"] == stats["from_device"] == len(data), stats
    assert stats["framing_errors"] == stats["dropped_to_device"] == 0, stats
    assert stats["dropped_from_device"] == 0, stats


@pytest.mark.parametrize("divisor", [8, 16, 9])
def test_loopback_cycles(loopback, divisor):
    """One burst of 4096 bytes takes exactly 10 bits of ``divisor`` cycles a byte, back to back:
    from the first start bit to the middle of the last stop bit coming back (the loopback
    register adds no cycle: the harness samples uart_tx after the same clock edge)."""
    count = 4096
    with SimBoard(loopback, divisor=divisor, name="simboard-loopback") as board:
        with board.connect() as sock:
            before = board.cycles()
            echo(sock, random.Random(1).randbytes(count), f"divisor {divisor}, seed 1")
            after = board.cycles()
            stats = board.stats()
    span = stats["last_from_device"] - stats["burst_start"]
    expected = count * 10 * divisor - (divisor - divisor // 2)  # the last stop bit's middle
    assert span == expected, f"divisor {divisor}: {count} bytes took {span} cycles, not {expected}"
    assert before <= stats["burst_start"] and stats["last_from_device"] <= after <= stats["cycles"]
    assert after - before >= expected


def test_reconnect(loopback):
    """A client that leaves loses the bytes still queued for the design; the next one works."""
    divisor = 16
    data = random.Random(2).randbytes(4096)
    with SimBoard(loopback, divisor=divisor, name="simboard-loopback") as board:
        with board.connect() as first:
            first.sendall(data)
            head = receive(first, 64, "first client")
        assert head == data[:len(head)]
        # Everything the design got has come back (to nobody) once the first client is gone.
        stats = wait_for(lambda: (s := board.stats())["dropped_to_device"] and
                         s["to_device"] == s["from_device"] and s,
                         "the queue of the first client dropped")
        assert 0 < stats["dropped_from_device"] <= stats["from_device"] - len(head), stats
        assert stats["to_device"] + stats["dropped_to_device"] == len(data), stats
        assert stats["to_device"] < len(data) // 2, stats
        with board.connect() as second:
            echo(second, random.Random(3).randbytes(256), "second client, seed 3")
        with board.connect() as third:
            echo(third, b"\x00\xff\x55", "third client")


def test_second_client_is_refused(loopback):
    """One client at a time: a second connection is closed at once, the first one goes on."""
    with SimBoard(loopback, divisor=8, name="simboard-loopback") as board:
        with board.connect() as first, board.connect(timeout=5) as second:
            assert second.recv(1) == b""
            echo(first, b"still here", "first client")


# --- control ---------------------------------------------------------------------------------

def test_reset(counting):
    """``reset`` resets the design (its edge counter), drops the queue, and the board goes on."""
    divisor = 16
    data = random.Random(4).randbytes(4096)
    with SimBoard(counting, divisor=divisor, name="simboard-leds", leds=True,
                  reset_cycles=20) as board:
        assert board.leds() == 0
        with board.connect() as sock:
            echo(sock, b"\xff" * 3, "three bytes of 0xff")  # one falling edge each
            assert board.leds() == 3
            before = board.cycles()
            board.reset()
            assert board.cycles() - before >= 20
            assert board.leds() == 0

            # A reset in the middle of a burst: what comes back is a prefix of what was sent.
            sock.sendall(data)
            got = receive(sock, 16, "before the reset")
            board.reset()
            stats = board.stats()
            assert stats["dropped_to_device"] > 0, stats
            delivered = stats["from_device"] - 3
            if delivered > len(got):
                got += receive(sock, delivered - len(got), "after the reset")
            assert got == data[:delivered] and delivered < len(data)
            sock.settimeout(0.05)
            with pytest.raises(TimeoutError):
                sock.recv(1)
            sock.settimeout(10)
            echo(sock, b"after", "after the reset")
        assert board.stats()["framing_errors"] == 0


def test_idle_board_sleeps(loopback):
    """With no client and uart_tx idle for 2,000,000 cycles, simulated time stops (each
    command still runs one look's worth of cycles) and no CPU is used; a client wakes it."""
    with SimBoard(loopback, divisor=8, name="simboard-loopback") as board:
        cycles = [board.cycles()]

        def asleep():
            time.sleep(0.02)  # a running board simulates many looks' worth meanwhile
            cycles.append(board.cycles())
            return cycles[-1] - cycles[-2] == POLL_INTERVAL

        wait_for(asleep, "the idle board fell asleep", timeout=60)
        assert cycles[-1] > IDLE_SLEEP_CYCLES
        if Path(f"/proc/{board.pid}/stat").is_file():
            used = cpu_seconds(board.pid)
            time.sleep(0.3)
            assert cpu_seconds(board.pid) - used < 0.05
        with board.connect() as sock:
            echo(sock, b"awake", "after sleeping")
            start = board.cycles()
            wait_for(lambda: board.cycles() > start + 100_000, "simulated time goes on")


def test_close_ends_the_process(loopback):
    board = SimBoard(loopback, divisor=8, name="simboard-loopback").start()
    pid = board.pid
    assert board.running and board.cycles() > 0
    board.close()
    assert gone(pid) and not board.running
    board.close()
    with pytest.raises(SimBoardError, match="not running"):
        board.cycles()


def test_exception_in_block_ends_the_process(loopback):
    with pytest.raises(RuntimeError, match="inside"):
        with SimBoard(loopback, divisor=8, name="simboard-loopback") as board:
            pid = board.pid
            raise RuntimeError("inside the block")
    assert gone(pid)


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 0), (signal.SIGINT, 0),
                                         (signal.SIGKILL, -signal.SIGKILL)],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_signals(loopback, sig, status):
    """SIGTERM and SIGINT end the board cleanly (exit 0); any exit is one clear error."""
    with SimBoard(loopback, divisor=8, name="simboard-loopback") as board:
        pid = board.pid
        with board.connect() as sock:
            echo(sock, b"accepted", f"before {sig.name}")
            os.kill(pid, sig)
            assert sock.recv(1) == b""
        with pytest.raises(SimBoardError, match=f"exited with status {status}"):
            board.cycles()
    assert gone(pid)


# --- the executable and its build ------------------------------------------------------------

def test_harness_usage(loopback):
    exe = build_verilator_exe(loopback, top="top", cpp=[HARNESS], name="simboard-loopback")
    for args, message in [([], "--port is required"), (["--port", "0"], "--divisor is required"),
                          (["--port", "0", "--divisor", "1"], "--divisor must be a number"),
                          (["--port", "x", "--divisor", "8"], "--port must be a number"),
                          (["--speed", "3"], "unknown option --speed")]:
        result = subprocess.run([exe, *args], capture_output=True, text=True, timeout=10)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


def test_build_failure_names_the_log(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFREE_BUILD_DIR", str(tmp_path))
    with pytest.raises(ToolchainError, match=r"Verilator failed to build broken .*build\.log"):
        build_verilator_exe("module top(; endmodule\n", top="top", cpp=[HARNESS], name="broken")
    log = next(tmp_path.glob("exe/broken-*/build.log"))
    assert "top.v" in log.read_text()


def test_board_arguments(loopback):
    with pytest.raises(ValueError, match="divisor"):
        SimBoard(loopback, divisor=1)
    with pytest.raises(SimBoardError, match="not running"):
        SimBoard(loopback, divisor=8).port


def test_long_stream(loopback):
    """1 MiB at 2 cycles a bit, sent while it comes back: the queues never drain in between."""
    data = random.Random(5).randbytes(1 << 20)
    with SimBoard(loopback, divisor=2, name="simboard-loopback") as board:
        with board.connect(timeout=30) as sock:
            sender = threading.Thread(target=sock.sendall, args=(data,))
            sender.start()
            try:
                got = receive(sock, len(data), "divisor 2, seed 5")
            finally:
                sender.join()
            stats = board.stats()
    assert got == data, "divisor 2, seed 5: the bytes that came back differ"
    assert stats["to_device"] == stats["from_device"] == len(data), stats
    assert stats["framing_errors"] == stats["dropped_to_device"] == 0, stats
