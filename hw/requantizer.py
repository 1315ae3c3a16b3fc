"""Dyadic requantizer of BitLinear accumulators."""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.hw.arith import bit_length

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
    pairs : bool
        A second accumulator ``acc2`` with the same ``ymax``, ``m`` and ``k`` goes out as
        ``data2`` beside ``data`` (the scale ``ys * m`` is shared; a third multiplier for its
        product).

    Latency: 7 cycles (a word taken on ``inp`` in cycle t is valid on ``out`` in cycle t + 7):
    every wide add, shift and multiplication in a stage of its own, for the clock.

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

    LATENCY = 7

    def __init__(self, *, acc_width, out_bits, pairs=False):
        if not isinstance(acc_width, int) or isinstance(acc_width, bool) or \
                not 2 <= acc_width <= 32:
            raise ValueError(f"acc_width must be an integer from 2 to 32, not {acc_width!r}")
        if not isinstance(out_bits, int) or isinstance(out_bits, bool) or \
                not 2 <= out_bits <= 64:
            raise ValueError(f"out_bits must be an integer from 2 to 64, not {out_bits!r}")
        self._acc_width = acc_width
        self._out_bits = out_bits
        self._pairs = bool(pairs)
        second_in = {"acc2": signed(acc_width)} if pairs else {}
        second_out = {"data2": signed(out_bits)} if pairs else {}
        super().__init__({
            "inp": In(stream.Signature(data.StructLayout({
                "acc": signed(acc_width), **second_in, "ymax": unsigned(32), "m": unsigned(15),
                "k": unsigned(6), "first": 1, "last": 1}))),
            "out": Out(stream.Signature(data.StructLayout({
                "data": signed(out_bits), **second_out, "first": 1, "last": 1}))),
        })

    @property
    def acc_width(self):
        return self._acc_width

    @property
    def out_bits(self):
        return self._out_bits

    @property
    def pairs(self):
        return self._pairs

    def elaborate(self, platform):
        m = Module()
        aw, ob = self._acc_width, self._out_bits
        p = self.inp.payload
        advance = Signal()
        m.d.comb += [
            advance.eq(~self.out.valid | self.out.ready),
            self.inp.ready.eq(advance),
        ]

        # Stage 1: s = max(0, bitlen(ymax) - 23) (a bit-length tree). Stage 2: ys =
        # shift_round(ymax, s), sh = k - s. Stage 3: t = ys * m. Stage 4: prod = acc * t.
        # Stage 5: + the rounding constant. Stage 6: the shift. Stage 7: saturation.
        length = bit_length(m, p.ymax, "ymax_len")
        lo, hi = -(1 << (ob - 1)), (1 << (ob - 1)) - 1
        s1, ymax1, k1 = Signal(range(10)), Signal(32), Signal(6)
        acc = [Signal(signed(aw), name=f"acc{i}") for i in range(1, 4)]
        m_ = [Signal(15, name=f"m{i}") for i in range(1, 3)]
        sh = [Signal(6, name=f"sh{i}") for i in range(2, 6)]
        ys2 = Signal(33)
        t3 = Signal(39)
        prod4 = Signal(signed(aw + 40))
        half = Const(1, 1) << sh[2] >> 1
        sum5 = Signal((prod4 + half).shape())      # exact: the constant reaches 2**62
        r6 = Signal.like(sum5)
        flags = [(Signal(name=f"v{i}"), Signal(name=f"f{i}"), Signal(name=f"l{i}"))
                 for i in range(1, 7)]
        with m.If(advance):
            m.d.sync += [
                s1.eq(Mux(length > 23, length - 23, 0)), ymax1.eq(p.ymax), k1.eq(p.k),
                acc[0].eq(p.acc), m_[0].eq(p.m),
                ys2.eq(Mux(s1 == 0, ymax1, (ymax1 + (Const(1, 1) << s1 >> 1)) >> s1)),
                sh[0].eq(k1 - s1), acc[1].eq(acc[0]), m_[1].eq(m_[0]),
                t3.eq(ys2 * m_[1]), sh[1].eq(sh[0]), acc[2].eq(acc[1]),
                prod4.eq(acc[2] * t3), sh[2].eq(sh[1]),
                sum5.eq(prod4 + half), sh[3].eq(sh[2]),
                r6.eq(sum5 >> sh[3]),
                self.out.payload.data.eq(Mux(r6 > hi, hi, Mux(r6 < lo, lo, r6))),
            ]
            if self._pairs:
                acc_b = [Signal(signed(aw), name=f"acc{i}b") for i in range(1, 4)]
                prod4_b = Signal.like(prod4, name="prod4b")
                sum5_b = Signal.like(sum5, name="sum5b")
                r6_b = Signal.like(r6, name="r6b")
                m.d.sync += [
                    acc_b[0].eq(p.acc2), acc_b[1].eq(acc_b[0]), acc_b[2].eq(acc_b[1]),
                    prod4_b.eq(acc_b[2] * t3), sum5_b.eq(prod4_b + half),
                    r6_b.eq(sum5_b >> sh[3]),
                    self.out.payload.data2.eq(Mux(r6_b > hi, hi, Mux(r6_b < lo, lo, r6_b))),
                ]
            previous = (self.inp.valid, p.first, p.last)
            for flag in flags:
                m.d.sync += [dst.eq(src) for dst, src in zip(flag, previous)]
                previous = flag
            m.d.sync += [self.out.valid.eq(previous[0]), self.out.payload.first.eq(previous[1]),
                         self.out.payload.last.eq(previous[2])]
        return m
