"""Dyadic requantizer of BitLinear accumulators."""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Requantizer"]


class Requantizer(wiring.Component):
    """``out = saturate(shift_round(acc * (ys * m), k - s), out_bits)``, per element.

    Golden model: :func:`mmfree.sim.golden.requantize`. ``ymax`` is first rounded to 23
    significant bits: ``s = max(0, bitlen(ymax) - 23)``, ``ys = shift_round(ymax, s)`` (half
    up); then the product ``acc * ys * m`` (two multipliers) is shifted right by ``k - s`` with
    rounding half up and saturated to the signed ``out_bits`` range.

    ``ymax``, ``m`` and ``k`` travel with every element (the quantizer repeats ymax on every
    element; the host's m and k may be held constant). Preconditions, as the golden asserts:
    ``m > 0`` and ``k - s >= 1``; otherwise the output is unspecified.

    Parameters
    ----------
    acc_width : int
        Signed width of the accumulators, 2 to 32.
    out_bits : int
        Signed width of the saturated output, 2 to 64.

    Latency: 5 cycles (a word taken on ``inp`` in cycle t is valid on ``out`` in cycle t + 5).

    Throughput: one element per cycle; the pipeline stalls as a whole,
    ``inp.ready = ~out.valid | out.ready``.

    Members
    -------
    inp : In(stream.Signature(StructLayout(...)))
        ``{"acc": signed(acc_width), "ymax": unsigned(32), "m": unsigned(15),
        "k": unsigned(6), "first": 1, "last": 1}``.
    out : Out(stream.Signature(StructLayout(...)))
        ``{"data": signed(out_bits), "first": 1, "last": 1}``.
    """

    def __init__(self, *, acc_width, out_bits):
        if not isinstance(acc_width, int) or isinstance(acc_width, bool) or \
                not 2 <= acc_width <= 32:
            raise ValueError(f"acc_width must be an integer from 2 to 32, not {acc_width!r}")
        if not isinstance(out_bits, int) or isinstance(out_bits, bool) or \
                not 2 <= out_bits <= 64:
            raise ValueError(f"out_bits must be an integer from 2 to 64, not {out_bits!r}")
        self._acc_width = acc_width
        self._out_bits = out_bits
        super().__init__({
            "inp": In(stream.Signature(data.StructLayout({
                "acc": signed(acc_width), "ymax": unsigned(32), "m": unsigned(15),
                "k": unsigned(6), "first": 1, "last": 1}))),
            "out": Out(stream.Signature(data.StructLayout({
                "data": signed(out_bits), "first": 1, "last": 1}))),
        })

    @property
    def acc_width(self):
        return self._acc_width

    @property
    def out_bits(self):
        return self._out_bits

    def elaborate(self, platform):
        m = Module()
        aw, ob = self._acc_width, self._out_bits
        p = self.inp.payload
        advance = Signal()
        m.d.comb += [
            advance.eq(~self.out.valid | self.out.ready),
            self.inp.ready.eq(advance),
        ]

        # Stage 1: s = max(0, bitlen(ymax) - 23), ys = shift_round(ymax, s), sh = k - s.
        s = Signal(range(10))
        for i in range(23, 32):
            with m.If(p.ymax[i]):
                m.d.comb += s.eq(i - 22)
        ys_full = Signal(33)
        m.d.comb += ys_full.eq(Mux(s == 0, p.ymax,
                                   (p.ymax + (Const(1, 1) << s >> 1)) >> s))
        v1, f1, l1 = Signal(), Signal(), Signal()
        acc1, ys1, m1, sh1 = Signal(signed(aw)), Signal(24), Signal(15), Signal(6)
        # Stage 2: t = ys * m. Stage 3: prod = acc * t. Stage 4: shift_round. Stage 5: saturate.
        v2, f2, l2 = Signal(), Signal(), Signal()
        acc2, t2, sh2 = Signal(signed(aw)), Signal(39), Signal(6)
        v3, f3, l3 = Signal(), Signal(), Signal()
        prod3, sh3 = Signal(signed(aw + 40)), Signal(6)
        v4, f4, l4 = Signal(), Signal(), Signal()
        r4 = Signal(signed(aw + 40))
        lo, hi = -(1 << (ob - 1)), (1 << (ob - 1)) - 1

        with m.If(advance):
            m.d.sync += [
                v1.eq(self.inp.valid), f1.eq(p.first), l1.eq(p.last),
                acc1.eq(p.acc), ys1.eq(ys_full), m1.eq(p.m), sh1.eq(p.k - s),
                v2.eq(v1), f2.eq(f1), l2.eq(l1), acc2.eq(acc1), t2.eq(ys1 * m1), sh2.eq(sh1),
                v3.eq(v2), f3.eq(f2), l3.eq(l2), prod3.eq(acc2 * t2), sh3.eq(sh2),
                v4.eq(v3), f4.eq(f3), l4.eq(l3),
                r4.eq((prod3 + (Const(1, 1) << sh3 >> 1)) >> sh3),
                self.out.valid.eq(v4), self.out.payload.first.eq(f4),
                self.out.payload.last.eq(l4),
                self.out.payload.data.eq(Mux(r4 > hi, hi, Mux(r4 < lo, lo, r4))),
            ]
        return m
