"""RMSNorm: integer RMS normalization of a vector, times a per-element weight."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.hw.divider import SerialDivider
from mmfree.hw.isqrt import Isqrt
from mmfree.sim.golden import NORM_BITS

__all__ = ["RMSNorm"]

ISQRT_WIDTH = 32         # s2 lies in [2**30, 2**32)
RECIP_NUM = 1 << 31      # R = 2**31 // r
T_LEFT = 14              # t's shift 1 + e/2 is at least -14 (e >= -30)


def _element_layout(width):
    return data.StructLayout({"data": signed(width), "first": 1, "last": 1})


class _State(enum.Enum, shape=3):
    LOAD  = 0    # pass 1: take `inp` into the buffer, accumulate x*x
    DRAIN = 1    # the last squares reach the accumulator; then normalize it into s2
    SQRT  = 2    # hand s2 to the square root
    RECIP = 3    # isqrt, then R = 2**31 // r; wait for it (and an empty pass-2 pipeline)
    PASS2 = 4    # pass 2: read the buffer, take `w`, issue into the output pipeline


class RMSNorm(wiring.Component):
    """Integer RMSNorm of vectors of up to ``n_max`` elements, bit-exact with
    :func:`mmfree.sim.golden.rmsnorm`.

    Per vector of ``n`` elements ``x`` (``1 <= n <= n_max``):

    1. pass 1 stores ``x`` in a buffer and accumulates ``ss = eps + sum(x*x)`` exactly
       (``acc_width`` bits);
    2. an even shift ``e`` (from the leading-zero count) puts ``s2 = ss * 2**-e`` in
       [2**30, 2**32); :class:`~mmfree.hw.isqrt.Isqrt` gives ``r = isqrt(s2)`` and
       :class:`~mmfree.hw.divider.SerialDivider` ``R = 2**31 // r``;
    3. pass 2 reads the buffer and takes one weight per element from ``w``:
       ``t = shift_round(x * R, 1 + e/2)``,
       ``y = saturate(shift_round(t * w, out_shift), 32)``.

    The host's constants (:func:`mmfree.sim.golden.prepare_norm`) map to the ports as
    ``eps = NormConst.eps`` and ``out_shift = 30 + w_frac - f_out``; the weights
    ``NormConst.w`` go on the ``w`` stream.

    Parameters
    ----------
    n_max : int
        Longest vector (buffer depth), positive.
    in_width : int
        Width of the input elements, 2..32.
    w_width : int
        Width of the weights, 2..24 (the golden model's ``|w| < 2**23``).

    Latency and throughput, with every stream at full rate and ``n`` elements per vector
    (``ISQRT = 16``: :class:`~mmfree.hw.isqrt.Isqrt` of 32 bits; ``DIV = 33``:
    :class:`~mmfree.hw.divider.SerialDivider` of 32 bits):

    - pass 1: one ``inp`` element per cycle, ``n`` cycles;
    - from the cycle ``c`` of the last ``inp`` transfer, the first ``w`` transfer is in cycle
      ``c + 3 + ISQRT + DIV + 2 = c + 54`` (2 cycles for the last square to reach the sum, 1 to
      normalize it; 1 to hand ``s2`` to the square root and 1 to latch ``R``);
    - pass 2: one ``w`` per cycle, ``n`` cycles; the output element of the ``w`` transfer in
      cycle ``d`` is valid in cycle ``d + 5`` (5-stage pipeline);
    - **latency**: the first output is valid ``n + 58`` cycles after the first ``inp`` transfer;
    - **throughput**: ``inp`` is ready again in the cycle after the last ``w`` transfer, so
      **one vector per ``2 n + 53`` cycles**. The passes of one vector do not overlap (one
      buffer); pass 2's pipeline drains while the next vector loads, and pass 2 of the next
      vector waits until the pipeline is empty (no cost at full rate).

    Members
    -------
    inp : In(stream.Signature(StructLayout({"data": signed(in_width), "first": 1, "last": 1})))
        Pass 1: the vector. ``last`` ends it; the element after a ``last`` (or after reset)
        starts the next one, so ``first`` is implied and not looked at. A vector must not
        be longer than ``n_max``.
    eps : In(unsigned(61))
        ``NormConst.eps``, ``1 <= eps <= 2**60``; sampled at the first element of a vector.
        ``eps = 0`` with an all-zero vector is undefined (the golden model asserts eps >= 1).
    out_shift : In(unsigned(6))
        ``30 + w_frac - f_out``, supported range 0..63 (a negative shift is not supported);
        sampled at the first element of a vector.
    w : In(stream.Signature(StructLayout({"data": signed(w_width)})))
        Pass 2: the norm weights, one per element in order; taken only during pass 2.
    out : Out(stream.Signature(StructLayout({"data": signed(32), "first": 1, "last": 1})))
        The normalized vector, ``first`` on its first element, ``last`` on its last.
    """

    def __init__(self, *, n_max, in_width=32, w_width=24):
        for name, value, lo, hi in [("in_width", in_width, 2, 32), ("w_width", w_width, 2, 24)]:
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer from {lo} to {hi}, not {value!r}")
        if not isinstance(n_max, int) or isinstance(n_max, bool) or n_max < 1:
            raise ValueError(f"n_max must be a positive integer, not {n_max!r}")
        self._n_max = n_max
        self._in_width = in_width
        self._w_width = w_width
        super().__init__({
            "inp":       In(stream.Signature(_element_layout(in_width))),
            "eps":       In(unsigned(61)),
            "out_shift": In(unsigned(6)),
            "w":         In(stream.Signature(data.StructLayout({"data": signed(w_width)}))),
            "out":       Out(stream.Signature(_element_layout(NORM_BITS))),
        })

    @property
    def n_max(self):
        return self._n_max

    @property
    def in_width(self):
        return self._in_width

    @property
    def w_width(self):
        return self._w_width

    @property
    def acc_width(self):
        """Width of the sum of squares: ``n_max * 2**(2 in_width - 2) + eps`` fits."""
        return max(self._n_max.bit_length() + 2 * self._in_width - 2, 61) + 1

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=signed(self._in_width), depth=self._n_max,
                                        init=[])
        m.submodules.isqrt = isqrt = Isqrt(width=ISQRT_WIDTH)
        m.submodules.divider = divider = SerialDivider(num_width=32, den_width=ISQRT_WIDTH // 2)
        wr = mem.write_port()
        rd = mem.read_port()

        state = Signal(_State)
        index = Signal(range(self._n_max))       # pass 1: write address; pass 2: read address
        last_index = Signal(range(self._n_max))  # n - 1

        # ---- pass 1: buffer and sum of squares (x -> x*x -> acc) ----
        acc = Signal(self.acc_width)
        sq_x = Signal(signed(self._in_width))
        sq_v = Signal()
        prod = Signal(2 * self._in_width)        # x*x <= 2**(2 in_width - 2)
        prod_v = Signal()
        shift_next = Signal(6)                   # out_shift of the vector in pass 1

        take = self.inp.valid & self.inp.ready
        m.d.comb += [
            self.inp.ready.eq(state == _State.LOAD),
            wr.addr.eq(index),
            wr.data.eq(self.inp.payload.data),
            wr.en.eq(take),
        ]
        m.d.sync += [
            sq_x.eq(self.inp.payload.data),
            sq_v.eq(take),
            prod.eq(sq_x * sq_x),
            prod_v.eq(sq_v),
        ]
        with m.If(prod_v):
            m.d.sync += acc.eq(acc + prod)
        with m.If(take):
            m.d.sync += index.eq(index + 1)
            with m.If(index == 0):
                m.d.sync += [acc.eq(self.eps), shift_next.eq(self.out_shift)]
            with m.If(self.inp.payload.last):
                m.d.sync += [last_index.eq(index), index.eq(0), state.eq(_State.DRAIN)]

        # ---- normalization: bitlen b, shift sh = e + 30 = b - 2 + (b & 1), even ----
        bitlen = Signal(range(self.acc_width + 1))
        for i in range(self.acc_width):
            with m.If(acc[i]):
                m.d.comb += bitlen.eq(i + 1)
        sh = Signal(range(self.acc_width + 2))
        m.d.comb += sh.eq(bitlen - 2 + bitlen[0])
        half_next = Signal(range(self.acc_width // 2 + 2))   # (e + 30) / 2 = (1 + e/2) + 14
        s2 = Signal(ISQRT_WIDTH)
        with m.If((state == _State.DRAIN) & ~sq_v & ~prod_v):    # acc is final
            m.d.sync += [
                s2.eq(((acc << 30) >> sh)[:ISQRT_WIDTH]),
                half_next.eq(sh[1:]),
                state.eq(_State.SQRT),
            ]
        m.d.comb += [
            isqrt.inp.valid.eq(state == _State.SQRT),
            isqrt.inp.payload.eq(s2),
        ]
        with m.If(isqrt.inp.valid & isqrt.inp.ready):
            m.d.sync += state.eq(_State.RECIP)

        # ---- R = 2**31 // isqrt(s2) ----
        m.d.comb += [
            divider.inp.valid.eq(isqrt.out.valid),
            isqrt.out.ready.eq(divider.inp.ready),
            divider.inp.payload.num.eq(RECIP_NUM),
            divider.inp.payload.den.eq(isqrt.out.payload),
        ]

        # ---- pass 2: a pipeline that advances as a whole ----
        # stage 1: x from the buffer; 2: p = x * R; 3: t; 4: q = t * w; 5: y on `out`.
        recip = Signal(17)                       # R in (2**15, 2**16]
        half = Signal.like(half_next)
        shift = Signal(6)
        advance = Signal()
        v1, v2, v3, v4 = (Signal(name=f"v{i}") for i in range(1, 5))
        fl = [Signal(2, name=f"fl{i}") for i in range(1, 5)]   # (first, last) per stage
        w1, w2, w3 = (Signal(signed(self._w_width), name=f"w{i}") for i in range(1, 4))
        p2 = Signal(signed(self._in_width + 18))
        t3 = Signal(signed(32))                  # |t| <= 2**30 + 2**16 + 1
        q4 = Signal(signed(32 + self._w_width))

        pipe_empty = ~(v1 | v2 | v3 | v4 | self.out.valid)
        m.d.comb += divider.out.ready.eq((state == _State.RECIP) & pipe_empty)
        with m.If(divider.out.valid & divider.out.ready):
            m.d.sync += [
                recip.eq(divider.out.payload.quotient),
                half.eq(half_next),
                shift.eq(shift_next),
                index.eq(0),
                state.eq(_State.PASS2),
            ]

        issue = self.w.valid & self.w.ready
        m.d.comb += [
            advance.eq(~self.out.valid | self.out.ready),
            self.w.ready.eq((state == _State.PASS2) & advance),
            rd.addr.eq(index),
            rd.en.eq(advance),
        ]
        with m.If(issue):
            m.d.sync += index.eq(index + 1)
            with m.If(index == last_index):
                m.d.sync += [index.eq(0), state.eq(_State.LOAD)]

        t_full = ((p2 << T_LEFT) + ((Const(1, 1) << half) >> 1)) >> half
        y_full = (q4 + ((Const(1, 1) << shift) >> 1)) >> shift
        y_max, y_min = (1 << (NORM_BITS - 1)) - 1, -(1 << (NORM_BITS - 1))
        with m.If(advance):
            m.d.sync += [
                v1.eq(issue),
                fl[0].eq(Cat(index == 0, index == last_index)),
                w1.eq(self.w.payload.data),
                v2.eq(v1), fl[1].eq(fl[0]), w2.eq(w1),
                p2.eq(rd.data * recip),
                v3.eq(v2), fl[2].eq(fl[1]), w3.eq(w2),
                t3.eq(t_full[:32]),
                v4.eq(v3), fl[3].eq(fl[2]),
                q4.eq(t3 * w3),
                self.out.valid.eq(v4),
                self.out.payload.first.eq(fl[3][0]),
                self.out.payload.last.eq(fl[3][1]),
                self.out.payload.data.eq(Mux(y_full > y_max, y_max,
                                             Mux(y_full < y_min, y_min, y_full[:NORM_BITS]))),
            ]
        return m
