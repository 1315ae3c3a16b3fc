"""Xorshift32: the sampler's pseudo-random number generator."""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.sim.golden import XORSHIFT_DEFAULT_STATE

__all__ = ["Xorshift32"]


class Xorshift32(wiring.Component):
    """Marsaglia's xorshift32 (shifts 13, 17, 5) as a stream source.

    Golden model: :func:`mmfree.sim.golden.xorshift32_seed` for the state a seed loads and
    :func:`mmfree.sim.golden.xorshift32` for each step; the words on ``out`` are
    ``xorshift32(s0), xorshift32(xorshift32(s0)), ...`` with ``s0 = xorshift32_seed(seed)``.

    The block has no parameters.

    Latency: the first word is valid in the cycle after ``load``.
    Throughput: one word per cycle (``out.valid`` stays high once loaded; each transfer
    advances the state, so back-pressure only holds the current word).

    Members
    -------
    seed : In(32)
        Seed, sampled while ``load`` is high. A zero seed loads ``0x2545F491`` instead, because
        the all-zero state is a fixed point of xorshift.
    load : In(1)
        One-cycle strobe: (re)start the sequence from ``seed``. A word that is valid but not yet
        transferred is dropped; ``load`` wins over a transfer in the same cycle.
    out : Out(stream.Signature(unsigned(32)))
        The sequence. Valid from the cycle after the first ``load`` on; invalid after reset.
    """

    def __init__(self):
        super().__init__({
            "seed": In(32),
            "load": In(1),
            "out":  Out(stream.Signature(unsigned(32))),
        })

    def elaborate(self, platform):
        m = Module()

        state  = Signal(32)
        loaded = Signal()

        x1 = Signal(32)
        x2 = Signal(32)
        x3 = Signal(32)
        m.d.comb += [
            x1.eq(state ^ (state << 13)[:32]),
            x2.eq(x1 ^ (x1 >> 17)),
            x3.eq(x2 ^ (x2 << 5)[:32]),
            self.out.payload.eq(x3),
            self.out.valid.eq(loaded),
        ]

        with m.If(self.load):
            m.d.sync += [
                state.eq(Mux(self.seed == 0, XORSHIFT_DEFAULT_STATE, self.seed)),
                loaded.eq(1),
            ]
        with m.Elif(self.out.valid & self.out.ready):
            m.d.sync += state.eq(x3)

        return m
