"""Arithmetic building blocks shared by the units: a logarithmic-depth bit length, a
multiplication split over two register stages (for the clock), and a value carried along a
pipeline."""

from amaranth.hdl import Mux, Signal

__all__ = ["bit_length", "split_mul", "carried"]


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


def split_mul(a, b, name):
    """``a * b`` over two register stages, for the clock: the products of ``b`` with the low
    and the high half of ``a``, then their sum. Returns ``(product, first stage's assignments,
    second stage's)``; the caller places them (under its stall condition, if any)."""
    k = len(a) // 2
    a_lo = a[:k]
    a_hi = a[k:].as_signed() if a.shape().signed else a[k:]
    lo = Signal((a_lo * b).shape(), name=f"{name}_lo")
    hi = Signal((a_hi * b).shape(), name=f"{name}_hi")
    product = Signal((a * b).shape(), name=name)
    return product, [lo.eq(a_lo * b), hi.eq(a_hi * b)], [product.eq((hi << k) + lo)]


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
