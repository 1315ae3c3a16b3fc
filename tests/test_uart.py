# amaranth: UnusedElaboratable=no
"""hw/uart.py (UARTTx, UARTRx, UART, uart_divisor) in the Amaranth simulator: the transmitter
against an independent decoder of its line, the receiver against a bit-level line model with
its own (fractional) bit time, and the two in loopback."""

import math
import random

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module
from amaranth.sim import Simulator

from mmfree.hw.uart import UART, UARTRx, UARTTx, uart_divisor


def simulate(dut, testbench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()


def half_bit(divisor):
    """Cycles from a start bit's falling edge to the receiver's sample of its middle."""
    return (divisor - 1) // 2


def rx_latency(divisor):
    """Cycles from the first cycle of a start bit on ``rx`` to its byte's ``data.valid``
    (or error/overrun strobe): 2 synchronizer cycles, half a bit, 9 bits, 1 register."""
    return 3 + half_bit(divisor) + 9 * divisor


# --- parameters -----------------------------------------------------------------------------

def test_parameters():
    for cls in (UARTTx, UARTRx, UART):
        dut = cls(divisor=17)
        assert dut.divisor == 17
        with pytest.raises(AttributeError):
            dut.divisor = 4
        rtlil.convert(dut)                      # elaborates (and marks used) what was built
        with pytest.raises(ValueError, match="^divisor must be an integer of at least 4, not 3$"):
            cls(divisor=3)
        with pytest.raises(TypeError, match="^divisor must be an integer of at least 4, not 4.0$"):
            cls(divisor=4.0)
        with pytest.raises(TypeError, match="^divisor must be an integer of at least 4, not True$"):
            cls(divisor=True)
    uart = UART(divisor=4)
    assert len(uart.tx_data.payload) == len(uart.rx_data.payload) == 8
    assert uart.tx.init == 1 and uart.rx.init == 1
    assert UARTTx(divisor=4).tx.init == 1 and UARTRx(divisor=4).rx.init == 1


def test_uart_divisor():
    assert uart_divisor(48e6, 115_200) == 417        # 115107.9 baud, -0.08%
    assert uart_divisor(12_000_000, 3_000_000) == 4
    assert uart_divisor(100e6, 1_000_000) == 100
    assert uart_divisor(25e6, 1_000_000) == 25
    with pytest.raises(ValueError, match="^3000000 baud needs a clock of at least 12000000 Hz "
                                         r"\(a divisor of at least 4\), not 1e\+07 Hz$"):
        uart_divisor(10e6, 3_000_000)
    # 10 MHz / 1.5 Mbaud = 6.67 -> 7: 1428571 baud, 4.8% slow.
    with pytest.raises(ValueError, match=r"^1500000 baud is out of reach of a 1e\+07 Hz clock: "
                                         r"divisor 7 gives 1428571 baud \(-4\.8%, more than 2% "
                                         r"off\)$"):
        uart_divisor(10e6, 1_500_000)
    with pytest.raises(ValueError, match="^baud must be a positive integer, not 0$"):
        uart_divisor(10e6, 0)
    with pytest.raises(ValueError, match="^clk_hz must be a positive number, not -1$"):
        uart_divisor(-1, 9600)


# --- transmitter ----------------------------------------------------------------------------

def decode_line(samples, divisor):
    """The frames on a line sampled once a cycle (idle high): [(first cycle, byte)]. Each bit
    must hold one level for exactly ``divisor`` cycles, the start bit low, the stop bit high."""
    frames, cycle = [], 0
    while cycle < len(samples):
        if samples[cycle]:
            cycle += 1
            continue
        assert cycle + 10 * divisor <= len(samples), f"frame at cycle {cycle} cut off"
        bits = []
        for i in range(10):
            chunk = samples[cycle + i * divisor:cycle + (i + 1) * divisor]
            assert len(set(chunk)) == 1, (
                f"divisor {divisor}: bit {i} of the frame at cycle {cycle} is not {divisor} "
                f"cycles of one level: {chunk}")
            bits.append(chunk[0])
        assert bits[0] == 0 and bits[9] == 1, (divisor, cycle, bits)
        frames.append((cycle, sum(bit << i for i, bit in enumerate(bits[1:9]))))
        cycle += 10 * divisor
    return frames


@pytest.mark.parametrize("divisor", [4, 5, 16, 17])
def test_tx(divisor):
    """Random bytes, each presented after a random delay (half of them none, so most frames go
    out back to back), against an independent decoder of ``tx``. The start bit begins in the
    cycle after each transfer; a byte presented while the previous one is on the line is taken
    in that frame's last cycle (``10 * divisor`` cycles a byte), otherwise at once."""
    rng = random.Random(divisor)
    count = 120 if divisor < 10 else 50
    sent = [rng.randrange(256) for _ in range(count)]
    delays = [0 if rng.random() < 0.5 else rng.randrange(14 * divisor) for _ in sent]
    dut = UARTTx(divisor=divisor)
    line, busy, presented, transfers = [], [], [], []

    async def testbench(ctx):
        cycle, index, presenting, wait, tail = 0, 0, False, delays[0], 10 * divisor + 3
        while tail:
            if index < count and not presenting:
                if wait:
                    wait -= 1
                else:
                    presenting = True
                    presented.append(cycle)
                    ctx.set(dut.data.payload, sent[index])
            ctx.set(dut.data.valid, presenting)
            line.append(ctx.get(dut.tx))
            busy.append(ctx.get(dut.busy))
            if presenting and ctx.get(dut.data.ready):
                transfers.append(cycle)
                presenting = False
                index += 1
                if index < count:
                    wait = delays[index]
            if index == count:
                tail -= 1
            await ctx.tick()
            cycle += 1

    simulate(dut, testbench)
    frames = decode_line(line, divisor)
    assert [byte for _, byte in frames] == sent, f"divisor {divisor}"
    assert [start for start, _ in frames] == [t + 1 for t in transfers], f"divisor {divisor}"
    back_to_back = 0
    for i in range(1, count):
        if presented[i] <= transfers[i - 1] + 10 * divisor:
            assert transfers[i] - transfers[i - 1] == 10 * divisor, (divisor, i)
            back_to_back += 1
        else:
            assert transfers[i] == presented[i], (divisor, i)
    assert back_to_back > count // 2, (divisor, back_to_back)
    in_frame = [False] * len(line)
    for start, _ in frames:
        in_frame[start:start + 10 * divisor] = [True] * (10 * divisor)
    assert busy == in_frame, f"divisor {divisor}: busy is not the frames"


# --- receiver -------------------------------------------------------------------------------

class Line:
    """A bit-level model of a transmitter: the level of ``rx`` for every cycle. Time is kept
    as an accumulated float (in cycles), so a bit may last a fractional number of cycles; each
    level change lands on the cycle nearest its time."""

    def __init__(self, bit_time, phase=0.0):
        self.bit_time = bit_time
        self.time = phase
        self.levels = []
        self.starts = []                        # first cycle of each start bit

    def hold(self, level, cycles):
        self.time += cycles
        self.levels += [level] * (math.floor(self.time + 0.5) - len(self.levels))

    def idle(self, bits):
        self.hold(1, bits * self.bit_time)

    def frame(self, byte, *, stop=1):
        self.starts.append(len(self.levels))
        for level in [0, *((byte >> i) & 1 for i in range(8)), stop]:
            self.hold(level, self.bit_time)


def simulate_rx(divisor, line, ready, *, tail_bits=12):
    """Plays ``line`` into a UARTRx (then idle for ``tail_bits`` bits), with ``ready(cycle)``
    as the consumer. Checks that a byte holds until it is taken. Returns the cycles and bytes
    that became valid, the (cycle, byte) transfers, and the cycles of the error and overrun
    strobes."""
    dut = UARTRx(divisor=divisor)
    arrived, taken, errors, overruns = [], [], [], []

    async def testbench(ctx):
        held = None
        for cycle in range(len(line.levels) + tail_bits * divisor):
            ctx.set(dut.rx, line.levels[cycle] if cycle < len(line.levels) else 1)
            take = ready(cycle)
            ctx.set(dut.data.ready, take)
            valid, payload = ctx.get(dut.data.valid), ctx.get(dut.data.payload)
            if held is not None:
                assert valid and payload == held, f"byte {held:#04x} changed before its transfer"
            elif valid:
                arrived.append((cycle, payload))
            held = payload if valid and not take else None
            if valid and take:
                taken.append((cycle, payload))
            if ctx.get(dut.error):
                errors.append(cycle)
            if ctx.get(dut.overrun):
                overruns.append(cycle)
            await ctx.tick()

    simulate(dut, testbench)
    return arrived, taken, errors, overruns


RX_CONFIGS = [(4, 1.0), (4, 0.97), (5, 0.97), (5, 1.0), (5, 1.03), (16, 0.97), (16, 1.03),
              (17, 0.97), (17, 1.0), (17, 1.03)]


@pytest.mark.parametrize("divisor, speed", RX_CONFIGS,
                         ids=[f"d{d}-bit{s:.2f}" for d, s in RX_CONFIGS])
def test_rx(divisor, speed):
    """Random bytes from a transmitter whose bit time is ``speed * divisor`` cycles (the
    receiver tolerates +3% from divisor 5 on; see UARTRx), at a random phase, with random idle
    gaps (40% none: back to back) and random back-pressure (ready half the time)."""
    rng = random.Random(f"{divisor}-{speed}")
    count = 100 if divisor < 10 else 40
    sent = [rng.randrange(256) for _ in range(count)]
    line = Line(speed * divisor, phase=rng.random())
    line.idle(2)
    for byte in sent:
        line.frame(byte)
        line.idle(0 if rng.random() < 0.4 else rng.uniform(0, 3))
    arrived, taken, errors, overruns = simulate_rx(divisor, line, lambda _: rng.random() < 0.5)
    config = f"divisor {divisor}, bit time {speed} x divisor"
    assert [byte for _, byte in taken] == sent, config
    assert (errors, overruns) == ([], []), config
    assert [cycle for cycle, _ in arrived] == [s + rx_latency(divisor) for s in line.starts], (
        config)


@pytest.mark.parametrize("divisor", [5, 16])
def test_rx_framing_error(divisor):
    """A stop bit sampled low strobes ``error`` once and drops the byte; so does a break (the
    line low for several frames); the next good byte is received."""
    line = Line(divisor)
    line.idle(2)
    line.frame(0x5A)
    line.frame(0xC3, stop=0)
    line.idle(1)
    line.frame(0x81)
    line.starts.append(len(line.levels))
    line.hold(0, 35 * divisor)                  # a break: three and a half frames low
    line.idle(1)
    line.frame(0x00)
    line.frame(0xFF)
    arrived, taken, errors, overruns = simulate_rx(divisor, line, lambda _: True)
    assert [byte for _, byte in taken] == [0x5A, 0x81, 0x00, 0xFF], divisor
    assert errors == [line.starts[i] + rx_latency(divisor) for i in (1, 3)], divisor
    assert overruns == [], divisor
    assert [c for c, _ in arrived] == [line.starts[i] + rx_latency(divisor) for i in (0, 2, 4, 5)]


@pytest.mark.parametrize("divisor", [5, 16])
def test_rx_overrun(divisor):
    """Bytes A, B, C, D. ``ready`` is low except in the cycle B completes: A is taken then and
    B loaded in its place (no overrun). C completes while B is held: ``overrun`` strobes, C is
    dropped and B stays. Then ``ready`` goes high: B, and later D, are received."""
    line = Line(divisor)
    line.idle(2)
    for byte in (0xA1, 0xB2, 0xC3):
        line.frame(byte)
    line.idle(3)
    line.frame(0xD4)
    done = [start + rx_latency(divisor) for start in line.starts]
    release = done[2] + 5
    arrived, taken, errors, overruns = simulate_rx(
        divisor, line, lambda cycle: cycle == done[1] - 1 or cycle >= release)
    assert taken == [(done[1] - 1, 0xA1), (release, 0xB2), (done[3], 0xD4)], divisor
    assert arrived == [(done[0], 0xA1), (done[1], 0xB2), (done[3], 0xD4)], divisor
    assert overruns == [done[2]], divisor
    assert errors == [], divisor


@pytest.mark.parametrize("divisor", [4, 5, 16, 17])
def test_rx_glitch(divisor):
    """Low pulses of 1 to ``(divisor - 1) // 2`` cycles (any shorter than half a bit) are
    ignored; a pulse one cycle longer is a start bit, of the byte 0xFF."""
    h = half_bit(divisor)
    line = Line(divisor, phase=0.3)
    line.idle(2)
    for cycles in range(1, h + 1):
        line.hold(0, cycles)
        line.idle(1.5)
    line.frame(0x3C)
    line.idle(1)
    line.starts.append(len(line.levels))
    line.hold(0, h + 1)
    line.idle(12)
    line.frame(0x96)
    arrived, taken, errors, overruns = simulate_rx(divisor, line, lambda _: True)
    assert [byte for _, byte in taken] == [0x3C, 0xFF, 0x96], divisor
    assert [c for c, _ in arrived] == [s + rx_latency(divisor) for s in line.starts], divisor
    assert (errors, overruns) == ([], []), divisor


# --- loopback -------------------------------------------------------------------------------

@pytest.mark.parametrize("divisor", [4, 7])
def test_loopback(divisor):
    """UART ``tx`` wired to its ``rx``: 200 random bytes at the full line rate (``tx_data``
    always valid; ``rx_data`` ready half the time) all come back, in order, one every
    ``10 * divisor`` cycles."""
    rng = random.Random(divisor)
    sent = [rng.randrange(256) for _ in range(200)]
    uart = UART(divisor=divisor)
    m = Module()
    m.submodules.uart = uart
    m.d.comb += uart.rx.eq(uart.tx)
    transfers, arrivals, received = [], [], []

    async def testbench(ctx):
        cycle, index, held = 0, 0, None
        ctx.set(uart.tx_data.valid, 1)
        ctx.set(uart.tx_data.payload, sent[0])
        while len(received) < len(sent):
            take = rng.random() < 0.5
            ctx.set(uart.rx_data.ready, take)
            valid, payload = ctx.get(uart.rx_data.valid), ctx.get(uart.rx_data.payload)
            if held is None and valid:
                arrivals.append(cycle)
            held = payload if valid and not take else None
            if valid and take:
                received.append(payload)
            assert not ctx.get(uart.rx_error) and not ctx.get(uart.rx_overrun), cycle
            sending = index < len(sent) and ctx.get(uart.tx_data.ready)
            await ctx.tick()
            if sending:
                transfers.append(cycle)
                index += 1
                ctx.set(uart.tx_data.valid, index < len(sent))
                ctx.set(uart.tx_data.payload, sent[index] if index < len(sent) else 0)
            cycle += 1
            assert cycle < 11 * divisor * len(sent), f"divisor {divisor}: timeout"

    simulate(m, testbench)
    assert received == sent, f"divisor {divisor}"
    assert transfers[0] == 0, divisor
    assert [b - a for a, b in zip(transfers, transfers[1:])] == [10 * divisor] * 199, divisor
    # Transfer -> start bit 1 cycle, start bit -> rx_data.valid: the receiver's latency.
    assert arrivals == [t + 1 + rx_latency(divisor) for t in transfers], divisor
