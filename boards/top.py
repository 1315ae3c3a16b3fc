"""What every board's top level shares: the SoC in the ``sync`` domain, held in reset until
the PLL locks, its UART on the board's USB-serial bridge and its state on four LEDs.

A board's top (:class:`~mmfree.boards.ulx3s.ULX3STop`,
:class:`~mmfree.boards.icebreaker.ICEBreakerTop`) adds the PLL (:meth:`BoardTop.clock`) and
names its LEDs (:attr:`BoardTop.led_resources`).
"""

from __future__ import annotations

from amaranth.hdl import ClockDomain, Elaboratable, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

from mmfree.hw.link import LED
from mmfree.hw.soc import SoC

__all__ = ["BoardTop", "RESET_HOLD_CYCLES"]

# Cycles of the engine clock the SoC stays in reset after the PLL locks: covers the iCE40's
# block RAMs reading zeros for about 3 us after configuration (Amaranth's iCE40 platform waits
# the same way) and lets the clock settle. 2**10 cycles is 21 us at 48 MHz,
# 85 us at 12 MHz.
RESET_HOLD_CYCLES = 2 ** 10


class BoardTop(Elaboratable):
    """Top level of a board running ``soc``. Subclasses define :meth:`clock` and
    :attr:`led_resources`.

    The ``sync`` domain runs from the PLL's output; its reset is asserted asynchronously while
    the PLL is unlocked, released synchronously (:class:`~amaranth.lib.cdc.ResetSynchronizer`)
    and then held :data:`RESET_HOLD_CYCLES` more cycles by a counter in the ``por`` domain
    (and a register after it).
    """

    #: ``(resource name, number)`` for the bits of :class:`~mmfree.hw.link.LED`, in order.
    led_resources: tuple[tuple[str, int], ...] = ()

    def __init__(self, soc: SoC):
        if not isinstance(soc, SoC):
            raise TypeError(f"soc must be a SoC, not {soc!r}")
        self._soc = soc

    @property
    def soc(self) -> SoC:
        return self._soc

    def clock(self, m: Module, platform) -> tuple[Signal, Signal]:
        """Instantiate the PLL; return ``(clock, locked)``."""
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        clk, locked = self.clock(m, platform)

        m.domains.por = cd_por = ClockDomain(local=True)
        m.domains.sync = cd_sync = ClockDomain()
        m.d.comb += [cd_por.clk.eq(clk), cd_sync.clk.eq(clk)]
        m.submodules.por_sync = ResetSynchronizer(~locked, domain="por")
        hold = Signal(range(RESET_HOLD_CYCLES + 1))
        with m.If(hold != RESET_HOLD_CYCLES):
            m.d.por += hold.eq(hold + 1)
        # Registered: the reset reaches every flip-flop of the SoC (about 19,000 on the
        # ULX3S), so it starts from a flip-flop, not from the counter's compare.
        holding = Signal(init=1)
        m.d.por += holding.eq(hold != RESET_HOLD_CYCLES)
        m.d.comb += cd_sync.rst.eq(holding)
        # No constraint on `clk` itself: synthesis merges it into the domain's clock net, so
        # nextpnr found no net of that name and ignored it. It constrains the clock anyway:
        # from the PLL (its input pin's frequency and dividers) or, with no PLL, from the
        # oscillator's pin, which the board's platform constrains.

        m.submodules.soc = soc = self._soc
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.d.comb += [soc.uart_rx.eq(rx.i), tx.o.eq(soc.uart_tx)]

        assert len(self.led_resources) == len(LED)
        for bit, (name, number) in zip(LED, self.led_resources):
            m.submodules[f"led_{bit.name.lower()}"] = led = \
                io.Buffer("o", platform.request(name, number, dir="-"))
            m.d.comb += led.o.eq(soc.leds[bit])
        return m
