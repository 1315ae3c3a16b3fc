"""An 8N1 UART: transmitter, receiver and both together, at ``divisor`` clock cycles a bit.

The line is idle high; a frame is a start bit (low), eight data bits LSB first and a stop bit
(high): 10 bit times, ``10 * divisor`` cycles.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import enum, stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UART", "UARTRx", "UARTTx", "uart_divisor"]

#: The least number of clock cycles a bit: the receiver samples each bit in its middle,
#: ``(divisor - 1) // 2`` cycles into it, and needs that to be at least 1.
MIN_DIVISOR = 4

#: How far the achieved baud rate may be off the requested one (see :func:`uart_divisor`).
MAX_BAUD_ERROR = 0.02


def _check_divisor(divisor):
    if not isinstance(divisor, int) or isinstance(divisor, bool):
        raise TypeError(f"divisor must be an integer of at least {MIN_DIVISOR}, not {divisor!r}")
    if divisor < MIN_DIVISOR:
        raise ValueError(f"divisor must be an integer of at least {MIN_DIVISOR}, not {divisor!r}")


def uart_divisor(clk_hz: float, baud: int) -> int:
    """The divisor (clock cycles a bit) for ``baud`` from a ``clk_hz`` clock:
    ``round(clk_hz / baud)``.

    Raises :class:`ValueError` if that divisor is below 4 or the baud rate it gives is off
    ``baud`` by more than 2% (a UART link of two ends, each off by up to 2%, stays within the
    receiver's tolerance; see :class:`UARTRx`).
    """
    if isinstance(clk_hz, bool) or not isinstance(clk_hz, (int, float)) or not clk_hz > 0:
        raise ValueError(f"clk_hz must be a positive number, not {clk_hz!r}")
    if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
        raise ValueError(f"baud must be a positive integer, not {baud!r}")
    divisor = round(clk_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"{baud} baud needs a clock of at least {MIN_DIVISOR * baud} Hz "
                         f"(a divisor of at least {MIN_DIVISOR}), not {clk_hz:g} Hz")
    achieved = clk_hz / divisor
    error = achieved / baud - 1
    if abs(error) > MAX_BAUD_ERROR:
        raise ValueError(f"{baud} baud is out of reach of a {clk_hz:g} Hz clock: divisor "
                         f"{divisor} gives {achieved:.0f} baud ({error:+.1%}, more than "
                         f"{MAX_BAUD_ERROR:.0%} off)")
    return divisor


class UARTTx(wiring.Component):
    """UART transmitter, 8N1, LSB first, ``divisor`` cycles a bit.

    ``tx`` comes straight from a flip-flop (no glitches). A byte is accepted while the
    transmitter is idle, and also in the last cycle of a stop bit, so a byte waiting on
    ``data`` goes out right after the previous one, with no idle time between the frames.

    Latency: the start bit begins in the cycle after the ``data`` transfer.
    Throughput: one byte every ``10 * divisor`` cycles (the full line rate) while ``data``
    stays valid.

    Parameters
    ----------
    divisor : int
        Clock cycles a bit, at least 4 (see :func:`uart_divisor`).

    Members
    -------
    data : In(stream.Signature(8))
        Bytes to send. ``ready`` is high while idle and in the last cycle of each stop bit.
    tx : Out(1, init=1)
        The serial line.
    busy : Out(1)
        High while a frame is on the line: from the first cycle of its start bit to the last
        of its stop bit (so it stays high across back-to-back frames).
    """

    def __init__(self, *, divisor: int):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "data": In(stream.Signature(8)),
            "tx":   Out(1, init=1),
            "busy": Out(1),
        })

    @property
    def divisor(self):
        return self._divisor

    def elaborate(self, platform):
        m = Module()

        timer = Signal(range(self._divisor))        # cycles left in the current bit, minus 1
        bits  = Signal(range(10))                   # bits left after the current one
        shreg = Signal(9)                           # the data bits, then the stop bit

        last_cycle = Signal()                       # the last cycle of a stop bit
        m.d.comb += [
            last_cycle.eq(self.busy & (timer == 0) & (bits == 0)),
            self.data.ready.eq(~self.busy | last_cycle),
        ]

        with m.If(self.data.valid & self.data.ready):
            m.d.sync += [
                self.tx.eq(0),                      # the start bit
                shreg.eq(Cat(self.data.payload, 1)),
                bits.eq(9),
                timer.eq(self._divisor - 1),
                self.busy.eq(1),
            ]
        with m.Elif(last_cycle):
            m.d.sync += self.busy.eq(0)             # tx stays high: the stop bit
        with m.Elif(self.busy & (timer == 0)):
            m.d.sync += [
                self.tx.eq(shreg[0]),
                shreg.eq(shreg >> 1),
                bits.eq(bits - 1),
                timer.eq(self._divisor - 1),
            ]
        with m.Elif(self.busy):
            m.d.sync += timer.eq(timer - 1)

        return m


class _RxState(enum.Enum, shape=3):
    IDLE  = 0       # line high, waiting for a start bit
    START = 1       # a falling edge: confirm the start bit at its middle
    DATA  = 2       # sample the eight data bits at their middles
    STOP  = 3       # sample the stop bit at its middle
    BREAK = 4       # a framing error: wait for the line to go high


class UARTRx(wiring.Component):
    """UART receiver, 8N1, LSB first, ``divisor`` cycles a bit.

    ``rx`` goes through a two flip-flop synchronizer. A start bit is a falling edge on the
    (synchronized) line while idle, confirmed low ``h = (divisor - 1) // 2`` cycles later, at
    its middle; a low pulse of ``h`` cycles or less (any glitch shorter than half a bit) is
    ignored. Each bit is then sampled ``divisor`` cycles after the previous one: the data bits
    at ``h + divisor * (1 + i)`` and the stop bit at ``h + 9 * divisor`` cycles after the edge.
    The receiver looks for the next start bit from the cycle after the stop bit's sample, so
    a transmitter somewhat faster than the receiver works back to back.

    - A stop bit sampled low is a framing error: ``error`` strobes, the byte is dropped, and
      the receiver waits for the line to go high before it looks for a start bit again (a
      break is one error).
    - A byte that completes while the previous one is still valid and not taken in that cycle
      is an overrun: ``overrun`` strobes and the new byte is dropped (the held one stays). The
      receiver never stalls; a consumer has ``10 * divisor`` cycles for each byte.

    Latency: ``data.valid`` (or the ``error``/``overrun`` strobe) rises 1 cycle after the cycle
    that samples the stop bit's middle, which is ``3 + h + 9 * divisor`` cycles after the first
    cycle with the start bit's falling edge on ``rx`` (2 synchronizer cycles, ``h`` to the
    start bit's middle, 9 bits, 1 to register the byte).
    Throughput: one byte per frame on the line, back to back (``10 * divisor`` cycles a byte
    at the same divisor).

    Tolerance (every edge on ``rx`` landing on a clock cycle, at any phase): bytes are
    received back to back from a transmitter whose bit time is anywhere from 4% shorter to
    3.5% longer than ``divisor`` cycles, for every divisor from 5 on (toward 5% either way at
    large divisors); at divisor 4, from 5% shorter to only 2.7% longer.

    Parameters
    ----------
    divisor : int
        Clock cycles a bit, at least 4 (see :func:`uart_divisor`).

    Members
    -------
    rx : In(1, init=1)
        The serial line (asynchronous).
    data : Out(stream.Signature(8))
        Received bytes.
    error : Out(1)
        One-cycle strobe: framing error (stop bit low); the byte is dropped.
    overrun : Out(1)
        One-cycle strobe: a byte completed while the previous one was held un-taken; the new
        byte is dropped.
    """

    def __init__(self, *, divisor: int):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "rx":      In(1, init=1),
            "data":    Out(stream.Signature(8)),
            "error":   Out(1),
            "overrun": Out(1),
        })

    @property
    def divisor(self):
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        divisor = self._divisor
        half = (divisor - 1) // 2                   # cycles from the edge to the middle

        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1, stages=2)

        state = Signal(_RxState)
        timer = Signal(range(divisor))              # cycles to the next sample, minus 1
        bit   = Signal(range(8))
        shreg = Signal(8)

        m.d.sync += [self.error.eq(0), self.overrun.eq(0)]
        with m.If(self.data.ready):
            m.d.sync += self.data.valid.eq(0)

        with m.Switch(state):
            with m.Case(_RxState.IDLE):
                with m.If(~line):
                    m.d.sync += [state.eq(_RxState.START), timer.eq(half - 1)]
            with m.Case(_RxState.START):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    m.d.sync += state.eq(_RxState.IDLE)         # a glitch
                with m.Else():
                    m.d.sync += [state.eq(_RxState.DATA), timer.eq(divisor - 1), bit.eq(0)]
            with m.Case(_RxState.DATA):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [shreg.eq(Cat(shreg[1:], line)), timer.eq(divisor - 1),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.d.sync += state.eq(_RxState.STOP)
            with m.Case(_RxState.STOP):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(~line):
                    m.d.sync += [state.eq(_RxState.BREAK), self.error.eq(1)]
                with m.Else():
                    m.d.sync += state.eq(_RxState.IDLE)
                    with m.If(~self.data.valid | self.data.ready):
                        m.d.sync += [self.data.payload.eq(shreg), self.data.valid.eq(1)]
                    with m.Else():
                        m.d.sync += self.overrun.eq(1)
            with m.Case(_RxState.BREAK):
                with m.If(line):
                    m.d.sync += state.eq(_RxState.IDLE)

        return m


class UART(wiring.Component):
    """A :class:`UARTTx` and a :class:`UARTRx` at the same ``divisor``, side by side.

    Latency, throughput and tolerance are those of the two halves.

    Members
    -------
    tx : Out(1, init=1)
    rx : In(1, init=1)
    tx_data : In(stream.Signature(8))
    rx_data : Out(stream.Signature(8))
    rx_error : Out(1)
        :attr:`UARTRx.error`: framing error strobe.
    rx_overrun : Out(1)
        :attr:`UARTRx.overrun`: overrun strobe.
    """

    def __init__(self, *, divisor: int):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "tx":         Out(1, init=1),
            "rx":         In(1, init=1),
            "tx_data":    In(stream.Signature(8)),
            "rx_data":    Out(stream.Signature(8)),
            "rx_error":   Out(1),
            "rx_overrun": Out(1),
        })

    @property
    def divisor(self):
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx = tx = UARTTx(divisor=self._divisor)
        m.submodules.rx = rx = UARTRx(divisor=self._divisor)
        wiring.connect(m, wiring.flipped(self.tx_data), tx.data)
        wiring.connect(m, rx.data, wiring.flipped(self.rx_data))
        m.d.comb += [
            self.tx.eq(tx.tx),
            rx.rx.eq(self.rx),
            self.rx_error.eq(rx.error),
            self.rx_overrun.eq(rx.overrun),
        ]
        return m
