"""The token sampler: greedy argmax or temperature sampling through I-ViT's Shiftmax."""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.hw.shiftmax import Shiftmax, _check_int, x0_shape
from mmfree.hw.xorshift import Xorshift32
from mmfree.sim.golden import SAMPLER_BITS, SAMPLER_N

__all__ = ["Sampler"]


class Sampler(wiring.Component):
    """Chooses one token per logit vector, greedily or by temperature sampling.

    Golden model: :func:`mmfree.sim.golden.argmax` (``x0 == 0``) and
    :func:`mmfree.sim.golden.sample` (``x0 < 0``) with the draws of
    :func:`mmfree.sim.golden.xorshift32`, exactly as :func:`mmfree.sim.decoding.generate` uses
    them: the internal :class:`~mmfree.hw.xorshift.Xorshift32` advances once per *sampled*
    token and never for a greedy one.

    - Greedy: the first index of the largest logit, tracked while the logits stream in.
    - Sampled: the logits go through a :class:`~mmfree.hw.shiftmax.Shiftmax` (n = 15, 16 output
      bits) at the host constant ``x0 = golden.sampler_x0(T)``; the probabilities ``p`` are
      stored and summed (``total``); one PRNG draw gives ``r = (draw * total) >> 32``; a scan of
      the stored ``p`` returns the first index whose running sum exceeds ``r``. Requires
      ``x0 <= -4`` (as ``sampler_x0`` guarantees; then ``total > 0``) and a PRNG loaded with
      ``load`` since reset (sampling waits for the draw otherwise).

    ``x0`` is sampled with the first logit of each vector (the element after a ``last``, or
    the first after reset); the ``first`` field is not needed. A vector has ``vocab`` logits
    (only its ``last`` flag ends it).

    Latency and throughput (``L = vocab``, no input gaps, no back-pressure): logits are
    accepted at 1 per cycle. Greedy: ``token`` is valid in the cycle after the last logit's
    transfer (latency 1), and the next vector's first logit is accepted in the cycle after the
    token's transfer: ``L + 1``
    cycles per token. Sampled: ``token`` is valid ``2 L + 36 + t`` cycles after the last
    logit's transfer, for token index ``t`` (Shiftmax: ``L + 32`` to the first ``p``, ``L - 1``
    more to collect them, 1 draw cycle, 2 cycles for ``r`` (the multiplication in two halves)
    while ``p[0]`` is read, ``t + 1`` scan cycles, 1 to register), and the next vector's first
    logit is accepted in the cycle after the token's transfer: ``3 L + 36 + t`` cycles per
    token.

    Parameters
    ----------
    vocab : int
        Logits per vector (at least 2).
    logit_width : int
        Width of the signed logits, 2..32 (the model's: 24).

    Members
    -------
    x0 : In(signed(17))
        0 for greedy, else the sampler's Shiftmax constant (``-2**16 < x0 <= -4``).
    seed : In(32)
        PRNG seed, sampled while ``load`` is high (see :class:`~mmfree.hw.xorshift.Xorshift32`).
    load : In(1)
        Strobe: (re)seed the PRNG. Do not pulse it while a sampled vector is in flight.
    logits : In(stream.Signature(StructLayout({"data": signed(logit_width), "first": 1,
        "last": 1})))
    token : Out(stream.Signature(unsigned(ceil(log2(vocab)))))
        One token per vector.
    """

    def __init__(self, *, vocab, logit_width=24):
        _check_int("vocab", vocab, 2)
        _check_int("logit_width", logit_width, 2, 32)
        self._vocab = vocab
        self._logit_width = logit_width
        super().__init__({
            "x0":     In(x0_shape(SAMPLER_N)),
            "seed":   In(32),
            "load":   In(1),
            "logits": In(stream.Signature(data.StructLayout({
                "data": signed(logit_width), "first": 1, "last": 1}))),
            "token":  Out(stream.Signature(unsigned((vocab - 1).bit_length()))),
        })

    vocab = property(lambda self: self._vocab)
    logit_width = property(lambda self: self._logit_width)

    def elaborate(self, platform):
        m = Module()
        vocab = self._vocab
        m.submodules.softmax = softmax = Shiftmax(
            n_max=vocab, in_width=self._logit_width, out_bits=SAMPLER_BITS, n=SAMPLER_N)
        m.submodules.prng = prng = Xorshift32()
        m.submodules.probs = probs = Memory(shape=unsigned(SAMPLER_BITS), depth=vocab, init=[])
        wr = probs.write_port()
        rd = probs.read_port()
        m.d.comb += [
            prng.seed.eq(self.seed),
            prng.load.eq(self.load),
            softmax.x0.eq(self.x0),
            softmax.inp.payload.eq(self.logits.payload),
        ]

        index = Signal(range(vocab + 1))       # logit / probability / scan index
        greedy = Signal()
        best = Signal(signed(self._logit_width))
        total = Signal(SAMPLER_BITS + vocab.bit_length())
        draw = Signal(32)                      # the PRNG word of a sampled token
        left = Signal(len(total))              # r minus the probabilities scanned so far
        # r = (draw * total) >> 32 over two cycles: draw's halves times total, then their sum.
        draw_lo = Signal(unsigned(16 + len(total)))
        draw_hi = Signal(unsigned(16 + len(total)))

        with m.FSM():
            with m.State("IN"):
                is_greedy = Mux(index == 0, self.x0 == 0, greedy)
                with m.If(is_greedy):
                    m.d.comb += self.logits.ready.eq(1)
                with m.Else():
                    m.d.comb += [
                        softmax.inp.valid.eq(self.logits.valid),
                        self.logits.ready.eq(softmax.inp.ready),
                    ]
                with m.If(self.logits.valid & self.logits.ready):
                    x = self.logits.payload.data
                    m.d.sync += [greedy.eq(is_greedy), index.eq(index + 1)]
                    with m.If((index == 0) | (x > best)):
                        m.d.sync += [best.eq(x), self.token.payload.eq(index)]
                    with m.If(self.logits.payload.last):
                        m.d.sync += [index.eq(0), total.eq(0)]
                        with m.If(is_greedy):
                            m.d.sync += self.token.valid.eq(1)
                            m.next = "EMIT"
                        with m.Else():
                            m.next = "COLLECT"
            with m.State("COLLECT"):
                m.d.comb += [
                    softmax.out.ready.eq(1),
                    wr.addr.eq(index),
                    wr.data.eq(softmax.out.payload.data),
                    wr.en.eq(softmax.out.valid),
                ]
                with m.If(softmax.out.valid):
                    m.d.sync += [
                        index.eq(index + 1),
                        total.eq(total + softmax.out.payload.data),
                    ]
                    with m.If(softmax.out.payload.last):
                        m.next = "DRAW"
            with m.State("DRAW"):
                m.d.comb += prng.out.ready.eq(1)
                with m.If(prng.out.valid):
                    m.d.sync += [draw.eq(prng.out.payload), index.eq(0)]
                    m.next = "SCALE_HALVES"
            with m.State("SCALE_HALVES"):
                # r = (draw * total) >> 32 in two halves (the clock).
                m.d.sync += [draw_lo.eq(draw[:16] * total), draw_hi.eq(draw[16:] * total)]
                m.next = "SCALE"
            with m.State("SCALE"):
                # ... their sum, while p[0] is read.
                m.d.comb += [rd.addr.eq(index), rd.en.eq(1)]
                m.d.sync += [left.eq(((draw_hi << 16) + draw_lo) >> 32), index.eq(index + 1)]
                m.next = "SCAN"
            with m.State("SCAN"):
                # rd.data is p[index - 1]; cumsum + p > r, as p > r - cumsum (at least 0 until
                # the token is found).
                m.d.comb += [rd.addr.eq(index), rd.en.eq(1)]
                m.d.sync += [index.eq(index + 1), left.eq(left - rd.data)]
                with m.If(rd.data > left):
                    m.d.sync += [
                        self.token.payload.eq(index - 1),
                        self.token.valid.eq(1),
                        index.eq(0),
                    ]
                    m.next = "EMIT"
            with m.State("EMIT"):
                with m.If(self.token.ready):
                    m.d.sync += [self.token.valid.eq(0), index.eq(0)]
                    m.next = "IN"
        return m
