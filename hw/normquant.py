"""NormQuant: integer RMSNorm and the per-token int8 activation quantizer, ``width`` elements
per cycle."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.hw.arith import bit_length, split_mul
from mmfree.hw.divider import SerialDivider
from mmfree.hw.isqrt import Isqrt
from mmfree.sim.golden import NORM_BITS

__all__ = ["NormQuant"]

ISQRT_WIDTH = 32         # s2 lies in [2**30, 2**32)
RECIP_NUM = 1 << 31      # R = 2**31 // r
RECIP_BITS = 17          # R <= 2**16 (r >= 2**15)
QRECIP_BITS = 23         # Q <= 127 * 2**16
#: Result bits a cycle of the square root and both dividers (radix 4): 8, 10 and 13 cycles
#: instead of 16, 18 and 24 (docs/engine.md, "Dividers two bits a cycle").
DIV_STEPS = 2
ISQRT_CYCLES = Isqrt.cycles(ISQRT_WIDTH, DIV_STEPS)
RECIP_CYCLES = SerialDivider.cycles(RECIP_BITS, DIV_STEPS)
T_LEFT = 14              # t's shift 1 + e/2 is at least -14 (e >= -30)
Y_MAX, Y_MIN = (1 << (NORM_BITS - 1)) - 1, -(1 << (NORM_BITS - 1))


class _State(enum.Enum, shape=3):
    LOAD   = 0   # pass 1: buffer the vector, sum of squares
    SQRT   = 1   # normalize the sum into s2, isqrt, R = 2**31 // r
    NORM   = 2   # pass 2: y = RMSNorm(x) into the buffer, ymax = max |y|
    RECIP  = 3   # Q = (127 << (nb + 15)) // ymax
    OUTPUT = 4   # pass 3: q (and y) out


def _tree(m, values, op, name):
    """A combinational reduction tree of ``values`` with ``op(a, b)``."""
    level = 0
    while len(values) > 1:
        nxt = []
        for k in range(0, len(values) - 1, 2):
            s = Signal.like(values[k], name=f"{name}{level}_{k // 2}")
            m.d.comb += s.eq(op(values[k], values[k + 1]))
            nxt.append(s)
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
        level += 1
    return values[0]


class NormQuant(wiring.Component):
    """``y = rmsnorm(x, w, ...)`` and ``(q, ymax) = activation_quant(y)`` of one vector,
    ``width`` elements per transfer; golden model :func:`mmfree.sim.golden.norm_quant`
    (bit-exact with :func:`~mmfree.sim.golden.rmsnorm` followed by
    :func:`~mmfree.sim.golden.activation_quant`).

    A vector is ``n / width`` beats on ``inp`` (``last`` on the final one); ``n`` must be a
    multiple of ``width`` (a shorter vector is padded with zeros, which change neither the
    sum of squares nor the maximum and come out as ``y = q = 0``), at most ``n_max``.

    1. pass 1 stores the beats and accumulates ``ss = eps + sum(x*x)`` (five-stage pipeline:
       the beat registered, squares in two stages, sum of the beat, accumulate);
    2. ``e``, ``s2``, ``r = isqrt(s2)``, ``R = 2**31 // r`` as :class:`~mmfree.hw.rmsnorm.RMSNorm`;
    3. pass 2 takes one ``w`` beat per cycle and computes
       ``y = saturate(shift_round(shift_round(x R, 1 + e/2) w, out_shift), 32)`` into the
       buffer, and ``ymax = max |y|``;
    4. ``Q = (127 << (nb + 15)) // ymax`` (``nb = bitlen(ymax)``);
    5. pass 3 streams ``q`` (and ``y``) out, as :class:`~mmfree.hw.quantizer.ActivationQuantizer`.

    Latency and throughput with every stream at full rate, ``B = n / width`` beats: a vector
    takes ``3 B + LATENCY`` (``3 B + 60``) cycles from its first input transfer to the cycle
    after its last output transfer (tests/test_normquant.py checks it): pass 1 ``B``; the sum
    pipeline, normalization (the sum's bit length registered, then ``s2``),
    :class:`~mmfree.hw.isqrt.Isqrt` (8: two root bits a cycle, :data:`DIV_STEPS`) and ``R``
    (a :class:`~mmfree.hw.divider.SerialDivider` of the 17 significant bits, two a cycle,
    10); pass 2 ``B`` plus its 13-stage pipeline; ``Q`` (a serial division of the 23
    significant bits, two a cycle, 13); pass 3 ``B`` plus its 8-stage pipeline; ``3 B + 47``
    with ``quantize = 0``. One vector
    at a time: ``inp`` is ready again after the last output transfer. Against
    :class:`~mmfree.hw.rmsnorm.RMSNorm` followed by
    :class:`~mmfree.hw.quantizer.ActivationQuantizer` (``3 n + 83`` at one element per
    cycle, full-width dividers), the passes shrink by ``width`` and the dividers make only
    the quotient bits that can be set.

    Clock: every stage does at most one variable shift (a rounding shift takes two: ``r =
    (v << 1) >> s``, then ``(r + 1) >> 1``), half of a wide multiplication
    (:func:`~mmfree.hw.arith.split_mul`) or one wide comparison (``log2(width)`` for the
    maximum of a beat), and block RAM outputs are registered before they are used. Out of
    context and 4 wide that took the block from 36.4 MHz (``3 B + 72``) to the figure in
    docs/blocks.md.

    With ``sum_in`` the sum of squares comes from outside (the engine accumulates it as it
    writes the vector, :class:`~mmfree.hw.engine.Engine`) and pass 1 is left out: ``ss`` is
    taken, without a beat, when the first beat and ``ss_valid`` are both there, and pass 2
    takes the beats of ``inp`` together with those of ``w``; a vector then takes
    ``2 B + LATENCY_SUM_IN`` (``2 B + 57``) cycles from its first input transfer (``inp.valid``
    with ``ss_valid``) to the cycle after its last output transfer. With ``quantize = 0`` as
    well (an RMSNorm alone), ``y`` leaves on ``y_out`` as pass 2 makes it, a beat a cycle
    that cannot wait (no ``ready``), and nothing on ``out``: ``B + LATENCY_Y_OUT`` cycles to
    the cycle after the last ``y`` beat; the next vector is taken once pass 2 has drained.

    Parameters
    ----------
    width : int
        Elements per beat, a power of two from 1 to 64.
    n_max : int
        Longest vector, a positive multiple of ``width``.
    sum_in : bool
        Take ``sum(x*x)`` on ``ss`` instead of computing it in a pass of its own.
    reuse : bool
        With ``sum_in``: a ``reuse`` input, with which a vector is normalized with the ``R``
        (and ``s2``'s shift) of the vector before it, for a vector whose ``eps + sum(x*x)`` is
        that one's: ``2 B + LATENCY_REUSE`` (``2 B + 36``) cycles, no square root or ``R``.

    Members
    -------
    inp : In(stream.Signature(StructLayout({"data": ArrayLayout(signed(32), width), "last": 1})))
    eps : In(unsigned(61)), out_shift : In(unsigned(6))
        As :class:`~mmfree.hw.rmsnorm.RMSNorm`; sampled with the first beat of a vector.
    ss : In(unsigned(acc_width - 1)), ss_valid : In(1)
        With ``sum_in``: the vector's ``sum(x*x)``, sampled with ``eps`` when ``ss_valid``
        is high with the first beat.
    reuse : In(1)
        With the ``reuse`` parameter, sampled with the first beat: 1 takes the last vector's
        ``R`` (``ss``, ``ss_valid`` and ``eps`` are not used); the vector's own ``w``,
        ``out_shift`` and ``quantize`` apply. Unspecified before a first vector without it.
    y_out : Out(StructLayout({"valid": 1, "y": ArrayLayout(signed(32), width), "first": 1,
        "last": 1}))
        With ``sum_in`` and ``quantize = 0``: the ``y`` beats, as pass 2 makes them.
    quantize : In(1, init=1)
        Sampled with the first beat: 1 (the default) computes ``q`` (and its reciprocal
        ``Q``); 0 leaves the reciprocal out (``LATENCY - QRECIP_CYCLES`` fixed cycles) and
        ``q`` unspecified, for an RMSNorm whose ``y`` alone is used.
    w : In(stream.Signature(ArrayLayout(signed(24), width)))
        The norm weights, one beat per pass-2 cycle.
    out : Out(stream.Signature(StructLayout({"q": ArrayLayout(signed(8), width),
        "y": ArrayLayout(signed(32), width), "ymax": unsigned(32), "first": 1, "last": 1})))
    """

    def __init__(self, *, width, n_max, sum_in=False, reuse=False):
        if not isinstance(width, int) or isinstance(width, bool) or width < 1 or \
                width & (width - 1) or width > 64:
            raise ValueError(f"width must be a power of two from 1 to 64, not {width!r}")
        if not isinstance(n_max, int) or isinstance(n_max, bool) or n_max < 1 or n_max % width:
            raise ValueError(f"n_max must be a positive multiple of width {width}, "
                             f"not {n_max!r}")
        self._width = width
        self._n_max = n_max
        self._sum_in = bool(sum_in)
        if reuse and not sum_in:
            raise ValueError("reuse needs sum_in")
        self._reuse = bool(reuse)
        members = {
            "ss": In(unsigned(self.acc_width - 1)), "ss_valid": In(1),
            "y_out": Out(data.StructLayout({"valid": 1, "y": data.ArrayLayout(signed(32), width),
                                            "first": 1, "last": 1})),
            **({"reuse": In(1)} if reuse else {}),
        } if sum_in else {}
        super().__init__({
            "inp": In(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(32), width), "last": 1}))),
            **members,
            "eps": In(unsigned(61)),
            "out_shift": In(unsigned(6)),
            "quantize": In(1, init=1),
            "w": In(stream.Signature(data.ArrayLayout(signed(24), width))),
            "out": Out(stream.Signature(data.StructLayout({
                "q": data.ArrayLayout(signed(8), width),
                "y": data.ArrayLayout(signed(32), width),
                "ymax": unsigned(32), "first": 1, "last": 1}))),
        })

    #: Of the fixed cycles below, the quantizer's reciprocal ``Q`` (left out with
    #: ``quantize = 0``).
    QRECIP_CYCLES = SerialDivider.cycles(QRECIP_BITS, DIV_STEPS)
    #: Fixed cycles of a vector, beyond its three passes of ``n / width`` beats: 60.
    LATENCY = 29 + ISQRT_CYCLES + RECIP_CYCLES + QRECIP_CYCLES
    #: Fixed cycles of a vector with ``sum_in``, beyond its two passes of ``n / width`` beats:
    #: 57.
    LATENCY_SUM_IN = 26 + ISQRT_CYCLES + RECIP_CYCLES + QRECIP_CYCLES
    #: Fixed cycles of a vector with ``sum_in`` and ``quantize = 0``, beyond its one pass: 32.
    LATENCY_Y_OUT = 14 + ISQRT_CYCLES + RECIP_CYCLES
    #: Fixed cycles of a vector with ``reuse`` (the last vector's R), beyond its two passes:
    #: 36, ``LATENCY_SUM_IN`` less the square root, ``R`` and the three cycles before them.
    LATENCY_REUSE = 23 + QRECIP_CYCLES

    width = property(lambda self: self._width)
    n_max = property(lambda self: self._n_max)
    sum_in = property(lambda self: self._sum_in)

    @property
    def acc_width(self):
        return max(self._n_max.bit_length() + 62, 61) + 1

    def elaborate(self, platform):
        m = Module()
        W, beats = self._width, self._n_max // self._width
        m.submodules.buf = buf = Memory(shape=unsigned(32 * W), depth=beats, init=[])
        m.submodules.isqrt = isqrt = Isqrt(width=ISQRT_WIDTH, steps=DIV_STEPS)
        # Both quotients have a known range, so the dividers make only their significant bits:
        # R = 2**31 // r with r in [2**15, 2**16) is at most 2**16 (17 bits, not 32), and
        # Q = (127 << (nb + 15)) // ymax with ymax in [2**(nb-1), 2**nb) is at most
        # 127 * 2**16 < 2**23 (23 bits, not 54); ymax = 0 gives q = 0 whatever Q is.
        m.submodules.rdiv = rdiv = SerialDivider(num_width=32, den_width=ISQRT_WIDTH // 2,
                                                 quotient_width=RECIP_BITS, steps=DIV_STEPS)
        m.submodules.qdiv = qdiv = SerialDivider(num_width=32 + 22, den_width=32,
                                                 quotient_width=QRECIP_BITS, steps=DIV_STEPS)
        wr = buf.write_port()
        rd = buf.read_port()

        state = Signal(_State)
        index = Signal(range(beats + 1))
        count = Signal(range(beats + 1))       # beats of the vector

        # ---- pass 1: buffer and sum of squares ----
        acc = Signal(self.acc_width)
        shift_next = Signal(6)
        quant = Signal()                       # this vector's `quantize`
        take = self.inp.valid & self.inp.ready
        squares = []
        sq_v, sum_v = Signal(), Signal()
        beat_sum = Signal(62 + W.bit_length())
        # stages: 1 the beat registered, 2-3 squares, 4 sum of the beat, then the accumulator
        # (none of it with sum_in, whose x_v .. sum_v stay 0)
        x_v, pp_v = Signal(), Signal()
        if not self._sum_in:
            m.d.comb += [
                self.inp.ready.eq(state == _State.LOAD),
                wr.addr.eq(index), wr.data.eq(self.inp.payload.data), wr.en.eq(take),
            ]
            x_r = [Signal(signed(32), name=f"x{j}") for j in range(W)]
            m.d.sync += [x_v.eq(take), pp_v.eq(x_v)]
            for j in range(W):
                square, partial, final = split_mul(x_r[j], x_r[j], f"sqp{j}")
                m.d.sync += [x_r[j].eq(self.inp.payload.data[j]), *partial, *final]
                squares.append(square)
            leaves = [Signal(len(beat_sum), name=f"sqw{j}") for j in range(W)]
            for leaf, square in zip(leaves, squares):
                m.d.comb += leaf.eq(square)
            total = _tree(m, leaves, lambda l, r: l + r, "sqsum")
            m.d.sync += [sq_v.eq(pp_v), sum_v.eq(sq_v), beat_sum.eq(total)]
            with m.If(sum_v):
                m.d.sync += acc.eq(acc + beat_sum)
        if self._sum_in:
            # The sum comes in whole: no pass, the first beat waits for pass 2.
            with m.If((state == _State.LOAD) & self.inp.valid & self.ss_valid):
                m.d.sync += [acc.eq(self.eps + self.ss), shift_next.eq(self.out_shift),
                             quant.eq(self.quantize), index.eq(0), state.eq(_State.SQRT)]
        else:
            with m.If(take):
                m.d.sync += index.eq(index + 1)
                with m.If(index == 0):
                    m.d.sync += [acc.eq(self.eps), shift_next.eq(self.out_shift),
                                 quant.eq(self.quantize)]
                with m.If(self.inp.payload.last):
                    m.d.sync += [count.eq(index + 1), index.eq(0), state.eq(_State.SQRT)]

        # ---- normalization (as RMSNorm) ----
        # sh (from the bit length of the sum) is registered; s2 is taken a cycle after the sum
        # pipeline drained, when sh is that of the final sum.
        bitlen = bit_length(m, acc, "acc_len")
        sh = Signal(range(self.acc_width + 2))
        m.d.sync += sh.eq(bitlen - 2 + bitlen[0])
        drained = Signal()
        m.d.sync += drained.eq((state == _State.SQRT) & ~x_v & ~pp_v & ~sq_v & ~sum_v)
        half = Signal(range(self.acc_width // 2 + 2))
        s2 = Signal(ISQRT_WIDTH)
        s2_ready = Signal()                    # s2 waits for the square root
        s2_taken = Signal()                    # s2 of this vector has been computed
        with m.If((state == _State.SQRT) & ~s2_taken & drained):
            m.d.sync += [s2.eq(((acc << 30) >> sh)[:ISQRT_WIDTH]), half.eq(sh[1:]),
                         s2_ready.eq(1), s2_taken.eq(1)]
        with m.If(state == _State.LOAD):
            m.d.sync += s2_taken.eq(0)
        m.d.comb += [
            isqrt.inp.valid.eq(s2_ready),
            isqrt.inp.payload.eq(s2),
            rdiv.inp.valid.eq(isqrt.out.valid),
            isqrt.out.ready.eq(rdiv.inp.ready),
            rdiv.inp.payload.num.eq(RECIP_NUM),
            rdiv.inp.payload.den.eq(isqrt.out.payload),
            rdiv.out.ready.eq(state == _State.SQRT),
        ]
        with m.If(isqrt.inp.valid & isqrt.inp.ready):
            m.d.sync += s2_ready.eq(0)
        recip = Signal(RECIP_BITS)
        shift = Signal(6)
        # With `reuse` high at the first beat the last vector's R (and s2's shift) are this
        # one's: no square root, no reciprocal, straight to pass 2 (the vector's own
        # out_shift and quantize). The engine sets it where the sum and eps are the last
        # vector's (the i, f and g BitLinears of a layer read the same vector).
        if self._reuse:
            reusing = Signal()
            m.d.comb += reusing.eq((state == _State.LOAD) & self.inp.valid & self.reuse)
            with m.If(reusing):
                m.d.sync += [shift.eq(self.out_shift), quant.eq(self.quantize), index.eq(0),
                             state.eq(_State.NORM)]
        new_vector = (state == _State.SQRT) | reusing if self._reuse else state == _State.SQRT
        with m.If(rdiv.out.valid & rdiv.out.ready):
            m.d.sync += [recip.eq(rdiv.out.payload.quotient), shift.eq(shift_next),
                         index.eq(0), state.eq(_State.NORM)]

        # ---- pass 2: y = RMSNorm(x) back into the buffer, ymax ----
        # A rounding shift shift_round(v, s) = (v + (2**s >> 1)) >> s takes two stages:
        # r = (v << 1) >> s, then (r + 1) >> 1 (the same for every s >= 0).
        # stages: 1 buffer read (and w); 2 x registered; 3 p = x R; 4-5 t; 6-7 t w; 8-9 y
        # unsaturated; 10 y saturated (written back); 11 |y|; 12 max of the beat; 13 ymax; 14
        # ymax's bit length (for Q and pass 3)
        if self._sum_in:
            # The vector's beats come with the weights' (x from inp, not the buffer); its
            # length is known at its last beat.
            seen_last = Signal()
            more = (state == _State.NORM) & ~seen_last
            issue2 = more & self.w.valid & self.inp.valid
            m.d.comb += [self.w.ready.eq(more & self.inp.valid),
                         self.inp.ready.eq(more & self.w.valid)]
            with m.If(new_vector):
                m.d.sync += seen_last.eq(0)
            with m.If(issue2 & self.inp.payload.last):
                m.d.sync += [seen_last.eq(1), count.eq(index + 1)]
            x1 = Signal(32 * W)
            m.d.sync += x1.eq(self.inp.payload.data)
            x_beat = x1
            pass2_end = seen_last
        else:
            issue2 = (state == _State.NORM) & (index != count) & self.w.valid
            m.d.comb += self.w.ready.eq((state == _State.NORM) & (index != count))
            x_beat = rd.data
            pass2_end = index == count
        v = [Signal(name=f"n{k}") for k in range(1, 14)]
        a = [Signal(range(beats), name=f"na{k}") for k in range(1, 11)]
        ws = [Signal(data.ArrayLayout(signed(24), W), name=f"nw{k}") for k in range(1, 6)]
        x2 = [Signal(signed(32), name=f"x2_{j}") for j in range(W)]
        p3 = [Signal(signed(32 + 18), name=f"p3_{j}") for j in range(W)]
        r4 = [Signal(signed(32 + 18 + T_LEFT + 1), name=f"r4_{j}") for j in range(W)]
        t5 = [Signal(signed(32), name=f"t5_{j}") for j in range(W)]
        r8 = [Signal(signed(32 + 24 + 1), name=f"r8_{j}") for j in range(W)]
        y9 = [Signal(signed(32 + 24 + 1), name=f"y9_{j}") for j in range(W)]
        y10 = [Signal(signed(32), name=f"y10_{j}") for j in range(W)]
        mags = [Signal(32, name=f"mag{j}") for j in range(W)]
        ymax = Signal(32)
        m.d.sync += [v[0].eq(issue2), a[0].eq(index), ws[0].eq(self.w.payload)]
        for k in range(1, len(v)):
            m.d.sync += v[k].eq(v[k - 1])
        for k in range(1, len(a)):
            m.d.sync += a[k].eq(a[k - 1])
        for k in range(1, len(ws)):
            m.d.sync += ws[k].eq(ws[k - 1])
        with m.If(issue2):
            m.d.sync += index.eq(index + 1)
        for j in range(W):
            q7, partial, final = split_mul(t5[j], ws[4][j], f"q7_{j}")
            m.d.sync += [
                x2[j].eq(x_beat.word_select(j, 32).as_signed()),
                p3[j].eq(x2[j] * recip),
                r4[j].eq((p3[j] << (T_LEFT + 1)) >> half),
                t5[j].eq(((r4[j] + 1) >> 1)[:32]),
                *partial, *final,
                r8[j].eq((q7 << 1) >> shift),
                y9[j].eq((r8[j] + 1) >> 1),
                y10[j].eq(Mux(y9[j] > Y_MAX, Y_MAX, Mux(y9[j] < Y_MIN, Y_MIN, y9[j][:32]))),
                mags[j].eq(abs(y10[j])),
            ]
        top = Signal(32)
        m.d.sync += top.eq(_tree(m, mags, lambda l, r: Mux(l > r, l, r), "ymax"))
        with m.If(new_vector):
            m.d.sync += ymax.eq(0)
        with m.If(v[11] & (top > ymax)):
            m.d.sync += ymax.eq(top)
        with m.If(v[9]):
            m.d.comb += [wr.addr.eq(a[9]), wr.data.eq(Cat(*y10)), wr.en.eq(1)]
        if self._sum_in:
            # An RMSNorm alone (quantize = 0) sends y as pass 2 makes it: no pass 3.
            m.d.comb += [
                self.y_out.valid.eq(v[9] & ~quant),
                self.y_out.y.eq(Cat(*y10)),
                self.y_out.first.eq(a[9] == 0),
                self.y_out.last.eq(a[9] == count - 1),
            ]
        pass2_done = (state == _State.NORM) & pass2_end & ~Cat(*v).any()

        # ---- Q = (127 << (nb + 15)) // ymax ----
        # nb and pass 3's rounding constant and shift, registered (ymax is final a cycle
        # before pass 2 is done)
        nb = Signal(range(33))
        e_shift = Signal(range(48))
        nb_comb = bit_length(m, ymax, "ymax_len")
        m.d.sync += [nb.eq(nb_comb), e_shift.eq(nb_comb + 14)]
        qrecip = Signal(QRECIP_BITS)
        q_sent = Signal()
        m.d.comb += [
            qdiv.inp.payload.num.eq(Const(127) << (nb + 15)),
            qdiv.inp.payload.den.eq(ymax),
            qdiv.inp.valid.eq(pass2_done & quant & ~q_sent),
            qdiv.out.ready.eq(state == _State.NORM),
        ]
        with m.If(qdiv.inp.valid & qdiv.inp.ready):
            m.d.sync += q_sent.eq(1)
        with m.If(qdiv.out.valid & qdiv.out.ready):
            m.d.sync += [qrecip.eq(qdiv.out.payload.quotient), q_sent.eq(0), index.eq(0),
                         state.eq(_State.OUTPUT)]
        with m.If(pass2_done & ~quant):                # y alone: no reciprocal
            m.d.sync += [index.eq(0),
                         state.eq(_State.LOAD if self._sum_in else _State.OUTPUT)]

        # ---- pass 3: q out (a pipeline that stalls as a whole) ----
        advance = ~self.out.valid | self.out.ready
        issue3 = (state == _State.OUTPUT) & (index != count)
        # stages: 1 buffer read; 2 y, |y|; 3-4 |y| Q; 5-6 e (a rounding shift, as in pass 2);
        # 7 both sides of the correction; out q
        sv = [Signal(name=f"s{k}_v") for k in range(1, 8)]
        sfl = [Signal(2, name=f"s{k}_fl") for k in range(1, 8)]
        ys = [[Signal(signed(32), name=f"qy{k}_{j}") for j in range(W)] for k in range(2, 8)]
        mag = [[Signal(32, name=f"qm{k}_{j}") for j in range(W)] for k in range(2, 7)]
        r5 = [Signal(32 + 23 - 14, name=f"qr5_{j}") for j in range(W)]
        e6 = [Signal(8, name=f"qe6_{j}") for j in range(W)]
        e7 = [Signal(8, name=f"qe7_{j}") for j in range(W)]
        lhs7 = [Signal(32 + 8, name=f"ql7_{j}") for j in range(W)]
        rhs7 = [Signal(32 + 9, name=f"qr7_{j}") for j in range(W)]
        with m.If(state != _State.NORM):
            m.d.comb += [rd.addr.eq(index), rd.en.eq(advance)]
        with m.Else():
            m.d.comb += [rd.addr.eq(index), rd.en.eq(1)]
        with m.If(advance & issue3):
            m.d.sync += index.eq(index + 1)
        with m.If(advance):
            m.d.sync += [
                sv[0].eq(issue3), sfl[0].eq(Cat(index == 0, index == count - 1)),
                *(sv[k].eq(sv[k - 1]) for k in range(1, len(sv))),
                *(sfl[k].eq(sfl[k - 1]) for k in range(1, len(sfl))),
                self.out.valid.eq(sv[-1]),
                self.out.payload.first.eq(sfl[-1][0]),
                self.out.payload.last.eq(sfl[-1][1]),
                self.out.payload.ymax.eq(ymax),
            ]
            for j in range(W):
                y1 = rd.data.word_select(j, 32).as_signed()
                prod4, partial, final = split_mul(mag[0][j], qrecip, f"qp4_{j}")
                up = lhs7[j] >= rhs7[j]
                q = Mux(ymax == 0, 0, e7[j] + up)[:8]
                m.d.sync += [
                    ys[0][j].eq(y1), mag[0][j].eq(abs(y1)),
                    *(ys[k][j].eq(ys[k - 1][j]) for k in range(1, len(ys))),
                    *(mag[k][j].eq(mag[k - 1][j]) for k in range(1, len(mag))),
                    *partial, *final,
                    r5[j].eq(prod4 >> e_shift),
                    e6[j].eq((r5[j] + 1) >> 1),
                    e7[j].eq(e6[j]),
                    lhs7[j].eq(mag[4][j] * 254),
                    rhs7[j].eq((e6[j] * 2 + 1) * ymax),
                    self.out.payload.q[j].eq(Mux(ys[5][j] < 0, -q, q)),
                    self.out.payload.y[j].eq(ys[5][j]),
                ]
        with m.If(self.out.valid & self.out.ready & self.out.payload.last):
            m.d.sync += [index.eq(0), state.eq(_State.LOAD)]
        return m
