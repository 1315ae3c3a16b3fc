"""iCEBreaker (iCE40UP5K): the 12 MHz oscillator (pin 35) as the engine clock (or into
``SB_PLL40_PAD`` for another clock), the UART on the FT2232H's second channel (``uart`` 0: rx
pin 6, tx pin 9, not inverted), and the SoC's state on the LEDs: idle on the green LED, error
on the red one, loading and generating on LEDs 2 and 3 (the snap-off PMOD's first two LEDs)."""

from __future__ import annotations

from amaranth.hdl import Const, Instance, Signal
from amaranth.lib import io
from amaranth_boards.icebreaker import ICEBreakerPlatform as _ICEBreakerPlatform

from .pll import ice40_pll
from .top import BoardTop

__all__ = ["ICEBreakerPlatform", "ICEBreakerTop"]


class ICEBreakerPlatform(_ICEBreakerPlatform):
    """amaranth-boards' iCEBreaker with the snap-off PMOD's LEDs and buttons, programmed
    through :func:`mmfree.boards.build.program` (openFPGALoader) rather than iceprog."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_resources(self.break_off_pmod)

    def toolchain_program(self, products, name):
        from .build import program
        with products.extract(f"{name}.bin") as bitstream:
            program("icebreaker", bitstream)


class ICEBreakerTop(BoardTop):
    """The SoC on the iCEBreaker: 12 MHz straight from the oscillator, or the PLL makes the
    SoC's ``clock_hz`` from it."""

    led_resources = (("led_g", 0), ("led", 2), ("led", 3), ("led_r", 0))

    def clock(self, m, platform):
        f_in = int(platform.default_clk_frequency)
        clk12 = platform.request("clk12", 0, dir="-")
        if self.soc.identity.clock_hz == f_in:     # the oscillator itself
            m.submodules.clk12 = clk_buf = io.Buffer("i", clk12)
            return clk_buf.i, Const(1, 1)
        pll = ice40_pll(f_in, self.soc.identity.clock_hz)
        clk = Signal(name="pll_clk")
        locked = Signal(name="pll_locked")
        m.submodules.pll = Instance(
            "SB_PLL40_PAD",
            **pll.parameters(),
            p_PLLOUT_SELECT="GENCLK",
            io_PACKAGEPIN=clk12.io,
            i_RESETB=1, i_BYPASS=0,
            o_PLLOUTGLOBAL=clk, o_LOCK=locked,
        )
        return clk, locked
