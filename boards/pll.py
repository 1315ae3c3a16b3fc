"""PLL settings for the boards' clocks, computed for the requested frequency.

Only exact settings are accepted: the UART divisor and the frequency the device reports are
derived from the engine clock, so a PLL that lands near it is a configuration error, raised as
``ValueError`` naming the nearest frequency that can be made.

* ECP5 ``EHXPLLL`` (Lattice TN1263): f_PFD = f_in / CLKI_DIV in 3.125..400 MHz, feedback from
  CLKOP so f_VCO = f_PFD x CLKFB_DIV x CLKOP_DIV in 400..800 MHz, and the clock comes out of
  CLKOS = f_VCO / CLKOS_DIV. Using the secondary output makes frequencies such as 48 MHz from
  25 MHz reachable, which CLKOP alone cannot make within the PFD range.
* iCE40 ``SB_PLL40_*`` (Lattice iCE40 sysCLOCK PLL guide, as ``icepll`` computes it), simple
  feedback: f_PFD = f_in / (DIVR + 1) in 10..133 MHz, f_VCO = f_PFD x (DIVF + 1) in
  533..1066 MHz, f_out = f_VCO / 2**DIVQ.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

__all__ = ["ECP5PLL", "ICE40PLL", "ecp5_pll", "ice40_pll"]


@dataclass(frozen=True)
class ECP5PLL:
    """``EHXPLLL`` dividers: CLKI_DIV, CLKFB_DIV, CLKOP_DIV (feedback), CLKOS_DIV (output)."""
    f_in: int
    f_out: int
    clki_div: int
    clkfb_div: int
    clkop_div: int
    clkos_div: int

    @property
    def f_pfd(self) -> Fraction:
        return Fraction(self.f_in, self.clki_div)

    @property
    def f_vco(self) -> Fraction:
        return self.f_pfd * self.clkfb_div * self.clkop_div

    def parameters(self) -> dict[str, object]:
        """``p_*`` keyword arguments of the ``EHXPLLL`` :class:`~amaranth.hdl.Instance`."""
        return {
            "p_PLLRST_ENA": "DISABLED", "p_INTFB_WAKE": "DISABLED",
            "p_STDBY_ENABLE": "DISABLED", "p_DPHASE_SOURCE": "DISABLED",
            "p_OUTDIVIDER_MUXA": "DIVA", "p_OUTDIVIDER_MUXB": "DIVB",
            "p_OUTDIVIDER_MUXC": "DIVC", "p_OUTDIVIDER_MUXD": "DIVD",
            "p_CLKI_DIV": self.clki_div, "p_FEEDBK_PATH": "CLKOP", "p_CLKFB_DIV": self.clkfb_div,
            "p_CLKOP_ENABLE": "ENABLED", "p_CLKOP_DIV": self.clkop_div,
            "p_CLKOP_CPHASE": self.clkop_div - 1, "p_CLKOP_FPHASE": 0,
            "p_CLKOS_ENABLE": "ENABLED", "p_CLKOS_DIV": self.clkos_div,
            "p_CLKOS_CPHASE": self.clkos_div - 1, "p_CLKOS_FPHASE": 0,
        }


@dataclass(frozen=True)
class ICE40PLL:
    """``SB_PLL40_*`` dividers in simple feedback mode."""
    f_in: int
    f_out: int
    divr: int
    divf: int
    divq: int

    @property
    def f_pfd(self) -> Fraction:
        return Fraction(self.f_in, self.divr + 1)

    @property
    def f_vco(self) -> Fraction:
        return self.f_pfd * (self.divf + 1)

    @property
    def filter_range(self) -> int:
        pfd = self.f_pfd
        for limit, value in ((17e6, 1), (26e6, 2), (44e6, 3), (66e6, 4), (101e6, 5)):
            if pfd < limit:
                return value
        return 6

    def parameters(self) -> dict[str, object]:
        """``p_*`` keyword arguments of the ``SB_PLL40_PAD``/``_CORE`` instance."""
        return {
            "p_FEEDBACK_PATH": "SIMPLE",
            "p_DIVR": self.divr, "p_DIVF": self.divf, "p_DIVQ": self.divq,
            "p_FILTER_RANGE": self.filter_range,
        }


def _check(f_in, f_out) -> tuple[int, int]:
    for name, value in (("f_in", f_in), ("f_out", f_out)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer in Hz, not {value!r}")
    return f_in, f_out


def _nearest(reachable: set[Fraction], f_out: int) -> str:
    if not reachable:
        return "none"
    best = sorted(reachable, key=lambda f: abs(f - f_out))[:2]
    return " or ".join(f"{float(f) / 1e6:.4f} MHz" for f in sorted(best))


def ecp5_pll(f_in: int, f_out: int) -> ECP5PLL:
    """The ``EHXPLLL`` setting that makes exactly ``f_out`` from ``f_in`` (Hz), preferring
    the highest PFD frequency (least jitter) and then the VCO nearest 600 MHz."""
    f_in, f_out = _check(f_in, f_out)
    if not 8e6 <= f_in <= 400e6:
        raise ValueError(f"ECP5 PLL input must be 8..400 MHz, not {f_in / 1e6:g} MHz")
    candidates, reachable = [], set()
    for clki_div in range(1, 129):
        pfd = Fraction(f_in, clki_div)
        if not 3_125_000 <= pfd <= 400_000_000:
            continue
        for clkfb_div in range(1, 81):
            for clkop_div in range(1, 129):
                vco = pfd * clkfb_div * clkop_div
                if not 400_000_000 <= vco <= 800_000_000:
                    continue
                clkos_div = round(vco / f_out)
                for div in {max(1, min(128, clkos_div)), max(1, min(128, clkos_div + 1))}:
                    reachable.add(vco / div)
                if 1 <= clkos_div <= 128 and vco / clkos_div == f_out:
                    candidates.append(ECP5PLL(f_in, f_out, clki_div, clkfb_div, clkop_div,
                                              clkos_div))
    if not candidates:
        raise ValueError(
            f"no ECP5 PLL setting makes exactly {f_out / 1e6:g} MHz from {f_in / 1e6:g} MHz "
            f"(PFD 3.125..400 MHz, VCO 400..800 MHz); nearest: {_nearest(reachable, f_out)}")
    return min(candidates, key=lambda p: (-p.f_pfd, abs(p.f_vco - 600_000_000)))


def ice40_pll(f_in: int, f_out: int) -> ICE40PLL:
    """The ``SB_PLL40_*`` setting (simple feedback) that makes exactly ``f_out`` from
    ``f_in`` (Hz), preferring the highest PFD frequency."""
    f_in, f_out = _check(f_in, f_out)
    if not 10e6 <= f_in <= 133e6:
        raise ValueError(f"iCE40 PLL input must be 10..133 MHz, not {f_in / 1e6:g} MHz")
    if not 16e6 <= f_out <= 275e6:
        raise ValueError(f"iCE40 PLL output must be 16..275 MHz, not {f_out / 1e6:g} MHz")
    candidates, reachable = [], set()
    for divr in range(16):
        pfd = Fraction(f_in, divr + 1)
        if not 10_000_000 <= pfd <= 133_000_000:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not 533_000_000 <= vco <= 1_066_000_000:
                continue
            for divq in range(1, 7):
                out = vco / 2 ** divq
                reachable.add(out)
                if out == f_out:
                    candidates.append(ICE40PLL(f_in, f_out, divr, divf, divq))
    if not candidates:
        raise ValueError(
            f"no iCE40 PLL setting makes exactly {f_out / 1e6:g} MHz from {f_in / 1e6:g} MHz "
            f"(PFD 10..133 MHz, VCO 533..1066 MHz); nearest: {_nearest(reachable, f_out)}")
    return min(candidates, key=lambda p: (-p.f_pfd, p.divq))
