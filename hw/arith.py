"""Arithmetic building blocks shared by the units: a logarithmic-depth bit length, a
multiplication split over two register stages (for the clock), and a value carried along a
pipeline."""

from amaranth.hdl import Cat, Mux, Signal

__all__ = ["bit_length", "split_mul", "carried", "DSP_BITS"]


def bit_length(m, value, name):
    """``value.bit_length()`` as a tree of ``log2(len(value))`` levels (not a priority chain
    of ``len(value)`` multiplexers)."""
    def length(bits, level):
        if len(bits) == 1:
            return bits[0], bits[0]                     # (any bit set, bit length)
        half = 1 << ((len(bits) - 1).bit_length() - 1)
        lo_any, lo_len = length(bits[:half], level + 1)
        hi_any, hi_len = length(bits[half:], level + 1)
        out = Signal(range(len(bits) + 1), name=f"{name}{level}_{len(bits)}")
        m.d.comb += out.eq(Mux(hi_any, half + hi_len, lo_len))
        return lo_any | hi_any, out
    return length([value[i] for i in range(len(value))], 0)[1]


#: The widest operand of an ECP5 MULT18X18D (and iCE40 SB_MAC16's 16 bits are split too).
DSP_BITS = 18


def split_mul(a, b, name):
    """``a * b`` over two register stages, for the clock: partial products, then their sum.
    Returns ``(product, first stage's assignments, second stage's)``; the caller places them
    (under its stall condition, if any).

    The first stage multiplies the low and the high half of ``a`` by ``b``; when ``b`` is
    wider than a DSP's input (:data:`DSP_BITS`) it is halved too, so that every partial
    product is one DSP block with a register at its output, and no adder sits between a DSP
    and its register (the adders that join a wide product's DSPs lengthen the routed path
    through them by their distance from the DSPs). The second stage adds the partials.
    The registers have no reset (data, not state: they stay off the reset net)."""
    k = len(a) // 2
    a_lo = a[:k]
    a_hi = a[k:].as_signed() if a.shape().signed else a[k:]
    product = Signal((a * b).shape(), name=name, reset_less=True)
    if len(b) <= DSP_BITS:
        lo = Signal((a_lo * b).shape(), name=f"{name}_lo", reset_less=True)
        hi = Signal((a_hi * b).shape(), name=f"{name}_hi", reset_less=True)
        return product, [lo.eq(a_lo * b), hi.eq(a_hi * b)], [product.eq((hi << k) + lo)]
    j = len(b) // 2
    b_lo = b[:j]
    b_hi = b[j:].as_signed() if b.shape().signed else b[j:]
    ll = Signal(k + j, name=f"{name}_ll", reset_less=True)
    hh = Signal((a_hi * b_hi).shape(), name=f"{name}_hh", reset_less=True)
    first = [ll.eq(a_lo * b_lo), hh.eq(a_hi * b_hi)]
    if a is b:                          # a square: a_lo * b_hi == a_hi * b_lo
        cross = Signal((a_hi * b_lo).shape(), name=f"{name}_lh", reset_less=True)
        first.append(cross.eq(a_hi * b_lo))
        middle = cross << (k + 1)
    else:
        lh = Signal((a_lo * b_hi).shape(), name=f"{name}_lh", reset_less=True)
        hl = Signal((a_hi * b_lo).shape(), name=f"{name}_hl", reset_less=True)
        first += [lh.eq(a_lo * b_hi), hl.eq(a_hi * b_lo)]
        middle = (lh << j) + (hl << k)
    # ll fills the low k + j bits exactly: hh above it is a concatenation, not an addition.
    return product, first, [product.eq(Cat(ll, hh).as_signed() + middle if hh.shape().signed
                                       else Cat(ll, hh) + middle)]


def carried(m, value, stages, name):
    """``value`` delayed by each of ``stages`` register stages: a list, one signal a stage
    (``[-1]`` is the last). The registers go into ``m.d.sync`` where the caller stands, so
    under its stall condition, if any."""
    out = []
    for i in range(stages):
        delayed = Signal.like(value, name=f"{name}{i}")
        m.d.sync += delayed.eq(out[-1] if out else value)
        out.append(delayed)
    return out
