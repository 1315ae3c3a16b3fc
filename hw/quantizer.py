"""Per-token absmax int8 activation quantizer."""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.hw.divider import SerialDivider

__all__ = ["ActivationQuantizer"]


class ActivationQuantizer(wiring.Component):
    """``q = round_half_away(127 * y / max|y|)`` per vector, exactly.

    Golden model: :func:`mmfree.sim.golden.activation_quant` (``(q, ymax)``). The block buffers
    the vector, takes ``ymax = max|y|`` during the input pass, computes one reciprocal per
    vector ``Q = (127 << (nb + 15)) // ymax`` (``nb = bitlen(ymax)``) with a
    :class:`~mmfree.hw.divider.SerialDivider`, then streams the vector out with
    ``e = (|y| * Q + 2**(nb+14)) >> (nb + 15)`` corrected by one compare,
    ``254 * |y| >= (2e + 1) * ymax -> e + 1``, which is the golden's round-half-away exactly.
    An all-zero vector gives q = 0 and ymax = 0.

    A vector is the run of input elements up to and including the one with ``last`` set; the
    input ``first`` field is not used (it is in the layout for the shared element format).

    Parameters
    ----------
    n_max : int
        Buffer depth: the longest vector. A longer vector is the caller's bug; the block then
        stores only its first ``n_max`` elements, takes ymax over all of them, and outputs
        ``n_max`` elements (``last`` on the ``n_max``-th).
    in_width : int
        Width of the signed input elements, 2 to 32 (the golden model's ``ymax <= 2**31``).

    Latency: ``in_width + 29`` cycles from the cycle of the ``last`` input transfer to the
    cycle the first output element is valid (1 to start the divider, ``in_width + 23`` in the
    divider, 1 to take the reciprocal, 4 in the output pipeline).

    Throughput: one element per cycle on each side, one vector at a time: at full rate a vector
    of n elements takes ``2 * n + in_width + 28`` cycles from its first input transfer to the
    first input transfer of the next vector (``inp.ready`` is low from the ``last`` input
    transfer to the cycle after the ``last`` output transfer).

    Members
    -------
    inp : In(stream.Signature(StructLayout(...)))
        ``{"data": signed(in_width), "first": 1, "last": 1}``.
    out : Out(stream.Signature(StructLayout(...)))
        ``{"data": signed(8), "first": 1, "last": 1, "ymax": unsigned(in_width)}``;
        ``ymax`` is repeated on every element of the vector.
    """

    def __init__(self, *, n_max, in_width=32):
        if not isinstance(n_max, int) or isinstance(n_max, bool) or n_max < 1:
            raise ValueError(f"n_max must be a positive integer, not {n_max!r}")
        if not isinstance(in_width, int) or isinstance(in_width, bool) or \
                not 2 <= in_width <= 32:
            raise ValueError(f"in_width must be an integer from 2 to 32, not {in_width!r}")
        self._n_max = n_max
        self._in_width = in_width
        super().__init__({
            "inp": In(stream.Signature(data.StructLayout({
                "data": signed(in_width), "first": 1, "last": 1}))),
            "out": Out(stream.Signature(data.StructLayout({
                "data": signed(8), "first": 1, "last": 1, "ymax": unsigned(in_width)}))),
        })

    @property
    def n_max(self):
        return self._n_max

    @property
    def in_width(self):
        return self._in_width

    def elaborate(self, platform):
        m = Module()
        n_max, w = self._n_max, self._in_width

        m.submodules.mem = mem = Memory(shape=signed(w), depth=n_max, init=[])
        wr = mem.write_port()
        rd = mem.read_port()
        m.submodules.div = div = SerialDivider(num_width=w + 22, den_width=w)

        count = Signal(range(n_max + 1))      # elements stored
        ymax  = Signal(w)
        nb    = Signal(range(w + 1))
        recip = Signal(23)
        advance = Signal()                    # the output pipeline moves

        # nb = bitlen(ymax): a priority encoder.
        for i in range(w):
            with m.If(ymax[i]):
                m.d.comb += nb.eq(i + 1)

        mag_in = Signal(w)
        m.d.comb += [
            mag_in.eq(abs(self.inp.payload.data)),
            wr.addr.eq(count),
            wr.data.eq(self.inp.payload.data),
            div.inp.payload.num.eq(Const(127) << (nb + 15)),
            div.inp.payload.den.eq(ymax),
        ]

        # Output pipeline: issue (address) -> s1 (memory data, |y| * Q) -> s2 (e) ->
        # s3 (correction) -> out register.
        idx = Signal(range(n_max + 1))
        issue = Signal()
        s1_valid, s1_first, s1_last = Signal(), Signal(), Signal()
        s2_valid, s2_first, s2_last, s2_neg = Signal(), Signal(), Signal(), Signal()
        s2_mag, s2_prod = Signal(w), Signal(w + 23)
        s3_valid, s3_first, s3_last, s3_neg = Signal(), Signal(), Signal(), Signal()
        s3_mag, s3_e = Signal(w), Signal(8)

        m.d.comb += [
            advance.eq(~self.out.valid | self.out.ready),
            rd.addr.eq(idx),
            rd.en.eq(advance),
        ]

        with m.FSM():
            with m.State("INPUT"):
                m.d.comb += self.inp.ready.eq(1)
                with m.If(self.inp.valid):
                    m.d.comb += wr.en.eq(count < n_max)
                    with m.If(count < n_max):
                        m.d.sync += count.eq(count + 1)
                    with m.If(mag_in > ymax):
                        m.d.sync += ymax.eq(mag_in)
                    with m.If(self.inp.payload.last):
                        m.next = "DIVIDE"
            with m.State("DIVIDE"):
                m.d.comb += div.inp.valid.eq(1)
                with m.If(div.inp.ready):
                    m.next = "RECIPROCAL"
            with m.State("RECIPROCAL"):
                m.d.comb += div.out.ready.eq(1)
                with m.If(div.out.valid):
                    m.d.sync += [recip.eq(div.out.payload.quotient), idx.eq(0)]
                    m.next = "OUTPUT"
            with m.State("OUTPUT"):
                m.d.comb += issue.eq(idx < count)
                with m.If(advance & issue):
                    m.d.sync += idx.eq(idx + 1)
                with m.If(self.out.valid & self.out.ready & self.out.payload.last):
                    m.d.sync += [count.eq(0), ymax.eq(0)]
                    m.next = "INPUT"

        with m.If(advance):
            m.d.sync += [
                s1_valid.eq(issue),
                s1_first.eq(idx == 0),
                s1_last.eq(idx == count - 1),
            ]
            mag1 = abs(rd.data)
            m.d.sync += [
                s2_valid.eq(s1_valid), s2_first.eq(s1_first), s2_last.eq(s1_last),
                s2_neg.eq(rd.data < 0), s2_mag.eq(mag1), s2_prod.eq(mag1 * recip),
            ]
            e = (s2_prod + (Const(1, 1) << (nb + 14)))[:w + 23] >> (nb + 15)
            m.d.sync += [
                s3_valid.eq(s2_valid), s3_first.eq(s2_first), s3_last.eq(s2_last),
                s3_neg.eq(s2_neg), s3_mag.eq(s2_mag), s3_e.eq(e),
            ]
            up = (s3_mag * 254) >= ((s3_e * 2 + 1) * ymax)
            q = Mux(ymax == 0, 0, s3_e + up)[:8]
            m.d.sync += [
                self.out.valid.eq(s3_valid),
                self.out.payload.first.eq(s3_first),
                self.out.payload.last.eq(s3_last),
                self.out.payload.ymax.eq(ymax),
                self.out.payload.data.eq(Mux(s3_neg, -q, q)),
            ]
        return m
