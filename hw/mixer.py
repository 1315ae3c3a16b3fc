"""Elementwise stream units of the decode engine: the MLGRU state update, the saturating
product (MLGRU output and GLU), the residual add and the embedding scale.

Each unit joins its input streams (an element is taken when every input has one), runs a
short pipeline that stalls as a whole (``advance = ~out.valid | out.ready``) and outputs a
stream of 32-bit results. Golden model: the expressions of :func:`mmfree.sim.golden.mlgru`,
:func:`~mmfree.sim.golden.glu`, :func:`~mmfree.sim.golden.decode_step` and
:func:`~mmfree.sim.golden.embed` they are named after.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

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

    def __init__(self, inputs, extra=None):
        self._inputs = list(inputs)
        members = {name: In(stream.Signature(shape)) for name, shape in inputs.items()}
        members.update(extra or {})
        members["out"] = Out(stream.Signature(signed(ACT_BITS)))
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

    Latency 3 cycles, one element per cycle. ``has_lb`` must be held for the vector."""

    STAGES = 3

    def __init__(self):
        super().__init__({"sig": unsigned(F_GATE + 2), "silu": signed(ACT_BITS),
                          "h": signed(ACT_BITS), "lb": unsigned(F_GATE + 1)},
                         {"has_lb": In(1)})

    def _datapath(self, m, advance, p):
        f1 = Signal(unsigned(F_GATE + 1))
        silu1, h1 = Signal(signed(ACT_BITS)), Signal(signed(ACT_BITS))
        c2, fh2 = Signal(signed(ACT_BITS + 1)), Signal(signed(ACT_BITS + 1))
        lifted = p["lb"] + ((((ONE - p["lb"]) * p["sig"]) + (ONE >> 1)) >> F_GATE)
        with m.If(advance):
            m.d.sync += [
                f1.eq(Mux(self.has_lb, lifted, p["sig"])),
                silu1.eq(p["silu"]),
                h1.eq(p["h"]),
                c2.eq((silu1 * (ONE - f1) + (ONE >> 1)) >> F_GATE),
                fh2.eq((f1 * h1 + (ONE >> 1)) >> F_GATE),
                self.out.payload.eq(saturate(m, fh2 + c2, ACT_BITS, "h_new")),
            ]


class ProductUnit(_Joined):
    """``saturate(shift_round(a * b, shift), 32)`` (golden: ``o`` in
    :func:`~mmfree.sim.golden.mlgru`, ``p`` in :func:`~mmfree.sim.golden.glu`); ``shift``
    from 1 to 63, held for the vector. Latency 2 cycles, one element per cycle."""

    STAGES = 2

    def __init__(self):
        super().__init__({"a": signed(ACT_BITS), "b": signed(ACT_BITS)},
                         {"shift": In(unsigned(6))})

    def _datapath(self, m, advance, p):
        product = Signal(signed(2 * ACT_BITS))
        with m.If(advance):
            m.d.sync += [
                product.eq(p["a"] * p["b"]),
                self.out.payload.eq(saturate(m, shift_round(product, self.shift), ACT_BITS,
                                             "product_sat")),
            ]


class ResidualAdd(_Joined):
    """``saturate(a + b, 32)`` (golden: the residual adds of
    :func:`~mmfree.sim.golden.decode_step`). Latency 1 cycle, one element per cycle."""

    def __init__(self):
        super().__init__({"a": signed(ACT_BITS), "b": signed(ACT_BITS)})

    def _datapath(self, m, advance, p):
        with m.If(advance):
            m.d.sync += self.out.payload.eq(saturate(m, p["a"] + p["b"], ACT_BITS, "sum_sat"))


class EmbedUnit(_Joined):
    """``shift_round(q * mult, shift)`` (golden :func:`~mmfree.sim.golden.embed`) for int8
    ``q``, a 15-bit ``mult`` and ``-15 <= shift <= 63`` (a left shift when ``shift <= 0``),
    truncated to 32 bits. Latency 2 cycles, one element per cycle; ``mult`` and ``shift``
    are held for the vector."""

    STAGES = 2

    def __init__(self):
        super().__init__({"q": signed(8)},
                         {"mult": In(unsigned(15)), "shift": In(signed(7))})

    def _datapath(self, m, advance, p):
        product = Signal(signed(24))
        right = shift_round(product, self.shift.as_unsigned()[:6])
        left = product << (-self.shift).as_unsigned()[:4]
        with m.If(advance):
            m.d.sync += [
                product.eq(p["q"] * self.mult),
                self.out.payload.eq(Mux(self.shift > 0, right, left)),
            ]
