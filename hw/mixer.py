"""Elementwise stream units of the decode engine: the MLGRU state update, the saturating
product (MLGRU output and GLU), the residual add and the embedding scale.

Each unit joins its input streams (an element is taken when every input has one), runs a
short pipeline that stalls as a whole (``advance = ~out.valid | out.ready``) and outputs a
stream of 32-bit results. Golden model: the expressions of :func:`mmfree.sim.golden.mlgru`,
:func:`~mmfree.sim.golden.glu`, :func:`~mmfree.sim.golden.decode_step` and
:func:`~mmfree.sim.golden.embed` they are named after.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.hw.arith import carried, split_mul
from mmfree.sim.golden import ACT_BITS, F_GATE

__all__ = ["GateUnit", "ProductUnit", "ResidualAdd", "EmbedUnit", "shift_round", "saturate"]

ONE = 1 << F_GATE


def saturate(m, value, bits, name):
    """A signal holding ``value`` clamped to the signed ``bits`` range."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    result = Signal(signed(bits), name=name)
    m.d.comb += result.eq(Mux(value > hi, hi, Mux(value < lo, lo, value)))
    return result


def shift_round(value, shift):
    """``shift_round(value, shift)`` of the golden model for a run-time ``shift >= 1``."""
    half = Const(1, unsigned(64)) << (shift - 1).as_unsigned()
    return (value + half) >> shift


class _Joined(wiring.Component):
    """Base: ``stages`` pipeline stages behind a join of the input streams named in
    ``inputs`` ({name: shape}). Subclasses fill ``_stages(m, take, advance, payloads)``."""

    STAGES = 1

    def __init__(self, inputs, extra=None, out_shape=signed(ACT_BITS)):
        self._inputs = list(inputs)
        members = {name: In(stream.Signature(shape)) for name, shape in inputs.items()}
        members.update(extra or {})
        members["out"] = Out(stream.Signature(out_shape))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        streams = [getattr(self, name) for name in self._inputs]
        advance = Signal()
        all_valid = Signal()
        m.d.comb += [
            advance.eq(~self.out.valid | self.out.ready),
            all_valid.eq(Cat(*[s.valid for s in streams]).all()),
        ]
        for s in streams:
            m.d.comb += s.ready.eq(advance & all_valid)
        valid = all_valid
        for stage in range(self.STAGES):
            nxt = Signal(name=f"valid{stage + 1}")
            with m.If(advance):
                m.d.sync += nxt.eq(valid)
            valid = nxt
        m.d.comb += self.out.valid.eq(valid)
        self._datapath(m, advance, {name: getattr(self, name).payload for name in self._inputs})
        return m

    def _datapath(self, m, advance, p):
        raise NotImplementedError


class GateUnit(_Joined):
    """MLGRU state update, golden :func:`mmfree.sim.golden.mlgru`:
    ``f = lb + shift_round((1 - lb) * sig, 20)`` (or ``sig`` without a lower bound),
    ``h' = saturate(shift_round(f * h, 20) + shift_round(silu_i * (1 - f), 20), 32)``.

    Latency 9 cycles, one element per cycle. ``has_lb`` must be held for the vector.
    Stages (for the clock: every multiplication over two, no add in front of one):
    inputs; ``1 - lb``; ``(1 - lb) * sig`` (two); ``f`` and ``1 - f``; ``f * h`` and
    ``silu_i * (1 - f)`` (two); their rounding shifts; the saturating sum."""

    STAGES = 9

    def __init__(self):
        super().__init__({"sig": unsigned(F_GATE + 2), "silu": signed(ACT_BITS),
                          "h": signed(ACT_BITS), "lb": unsigned(F_GATE + 1)},
                         {"has_lb": In(1)})

    def _datapath(self, m, advance, p):
        # Signals are named after the stage whose register holds them.
        sig1 = Signal(unsigned(F_GATE + 2))
        # 1 - lb and 1 - f as the golden model has them: signed, exact for every input.
        lb1, omlb2 = Signal(unsigned(F_GATE + 1)), Signal(signed(F_GATE + 2))
        silu1, h1 = Signal(signed(ACT_BITS)), Signal(signed(ACT_BITS))
        f5, omf5 = Signal(unsigned(F_GATE + 1)), Signal(signed(F_GATE + 2))
        c8, fh8 = Signal(signed(ACT_BITS + 1)), Signal(signed(ACT_BITS + 1))
        with m.If(advance):
            sig = carried(m, sig1, 3, "sig_d")               # sig at stages 2, 3, 4
            lb = carried(m, lb1, 3, "lb_d")                  # lb at stages 2, 3, 4
            silu = carried(m, silu1, 4, "silu_d")            # silu_i at stages 2 .. 5
            h = carried(m, h1, 4, "h_d")                     # h at stages 2 .. 5
        lifted4, lifted_a, lifted_b = split_mul(omlb2, sig[0], "lifted")      # stages 3, 4
        f_value = Signal(unsigned(F_GATE + 1))
        m.d.comb += f_value.eq(Mux(self.has_lb,
                                   lb[2] + ((lifted4 + (ONE >> 1)) >> F_GATE), sig[2]))
        cp7, c_a, c_b = split_mul(silu[3], omf5, "c_product")                # stages 6, 7
        fp7, f_a, f_b = split_mul(h[3], f5, "fh_product")
        with m.If(advance):
            m.d.sync += [
                sig1.eq(p["sig"]), lb1.eq(p["lb"]), silu1.eq(p["silu"]), h1.eq(p["h"]),
                omlb2.eq(ONE - lb1),
                *lifted_a, *lifted_b,
                f5.eq(f_value), omf5.eq(ONE - f_value),
                *c_a, *c_b, *f_a, *f_b,
                c8.eq((cp7 + (ONE >> 1)) >> F_GATE), fh8.eq((fp7 + (ONE >> 1)) >> F_GATE),
                self.out.payload.eq(saturate(m, fh8 + c8, ACT_BITS, "h_new")),
            ]


class ProductUnit(_Joined):
    """``saturate(shift_round(a * b, shift), 32)`` (golden: ``o`` in
    :func:`~mmfree.sim.golden.mlgru`, ``p`` in :func:`~mmfree.sim.golden.glu`); ``shift``
    from 1 to 63, held for the vector (from a cycle before its first element to its last
    result). Latency 6 cycles, one element per cycle: inputs; the multiplication (two);
    the rounding constant added; the shift; the saturation."""

    STAGES = 6

    def __init__(self):
        super().__init__({"a": signed(ACT_BITS), "b": signed(ACT_BITS)},
                         {"shift": In(unsigned(6))})

    def _datapath(self, m, advance, p):
        a1, b1 = Signal(signed(ACT_BITS)), Signal(signed(ACT_BITS))
        product3, mul_a, mul_b = split_mul(a1, b1, "product")
        # The rounding constant follows shift (held for the vector) a cycle late.
        half = Signal(unsigned(64))
        m.d.sync += half.eq(Const(1, unsigned(64)) << (self.shift - 1).as_unsigned()[:6])
        sum4 = Signal(signed(2 * ACT_BITS + 1))
        shifted5 = Signal(signed(2 * ACT_BITS + 1))
        with m.If(advance):
            m.d.sync += [
                a1.eq(p["a"]), b1.eq(p["b"]),
                *mul_a, *mul_b,
                sum4.eq(product3 + half),
                shifted5.eq(sum4 >> self.shift),
                self.out.payload.eq(saturate(m, shifted5, ACT_BITS, "product_sat")),
            ]


class ResidualAdd(_Joined):
    """``saturate(a + b, 32)`` (golden: the residual adds of
    :func:`~mmfree.sim.golden.decode_step`). Latency 2 cycles (inputs registered, then the
    saturating sum), one element per cycle; with ``pairs``, two: ``a``, ``b`` and ``out`` are
    ``ArrayLayout(signed(32), 2)`` and each element is added on its own (the engine's rows
    in pairs)."""

    STAGES = 2

    def __init__(self, *, pairs=False):
        self._pairs = bool(pairs)
        shape = data.ArrayLayout(signed(ACT_BITS), 2) if pairs else signed(ACT_BITS)
        super().__init__({"a": shape, "b": shape}, out_shape=shape)

    @property
    def pairs(self):
        return self._pairs

    def _datapath(self, m, advance, p):
        lanes = ((p["a"][k], p["b"][k], self.out.payload[k]) for k in range(2)) \
            if self._pairs else ((p["a"], p["b"], self.out.payload),)
        for k, (a, b, out) in enumerate(lanes):
            if self._pairs:
                a1 = Signal(signed(ACT_BITS), name=f"a1_{k}")
                b1 = Signal(signed(ACT_BITS), name=f"b1_{k}")
                sum_name = f"sum_sat_{k}"
            else:
                # Unnamed, as before pairs: the ULX3S-85F's routed SoC is this exact netlist,
                # and a renamed one places and routes otherwise (docs/boards.md).
                a1, b1 = Signal(signed(ACT_BITS)), Signal(signed(ACT_BITS))
                sum_name = "sum_sat"
            with m.If(advance):
                m.d.sync += [
                    a1.eq(a), b1.eq(b),
                    out.eq(saturate(m, a1 + b1, ACT_BITS, sum_name)),
                ]


class EmbedUnit(_Joined):
    """``shift_round(q * mult, shift)`` (golden :func:`~mmfree.sim.golden.embed`) for int8
    ``q``, a 15-bit ``mult`` and ``-15 <= shift <= 63`` (a left shift when ``shift <= 0``),
    truncated to 32 bits. Latency 3 cycles (input registered, product, shift), one element per
    cycle; ``mult`` and ``shift`` are held for the vector."""

    STAGES = 3

    def __init__(self):
        super().__init__({"q": signed(8)},
                         {"mult": In(unsigned(15)), "shift": In(signed(7))})

    def _datapath(self, m, advance, p):
        q1 = Signal(signed(8))
        product = Signal(signed(24))
        right = shift_round(product, self.shift.as_unsigned()[:6])
        left = product << (-self.shift).as_unsigned()[:4]
        with m.If(advance):
            m.d.sync += [
                q1.eq(p["q"]),
                product.eq(q1 * self.mult),
                self.out.payload.eq(Mux(self.shift > 0, right, left)),
            ]
