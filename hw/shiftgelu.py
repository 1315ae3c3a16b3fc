"""I-ViT's ShiftGELU: ``x * sigmoid(1.702 x)`` with shift-exps and one division per element."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.hw.shiftmax import Reciprocal31, ShiftExp, _check_int, x0_shape
from mmfree.sim.golden import INT31_MAX, SHIFTGELU_N

__all__ = ["ShiftGELU"]


class ShiftGELU(wiring.Component):
    """I-ViT's ShiftGELU over vectors of up to ``n_max`` signed integers.

    Golden model: :func:`mmfree.sim.golden.shiftgelu` (its integer output), bit for bit, with
    the host constant ``x0 = floor(-1 / (1.702 * scale))``: ``m = max(row max, 0)``;
    ``e1 = shift_exp(x - m)``, ``e2 = shift_exp(-m)`` (n = 23);
    ``factor = (2**31 - 1) // min(e1 + e2, 2**31 - 1)``;
    ``sig = (e1 * factor) >> (32 - out_bits)``; ``out = x * sig``.

    The vector is loaded into a buffer while ``m`` is tracked (``x0`` is sampled with the first
    element: the one after a ``last``, or the first after reset); then each element is read
    back and divided serially (:class:`~mmfree.hw.shiftmax.Reciprocal31`, 31 cycles), one
    element at a time. Input is not accepted while the outputs are produced.

    Latency and throughput (vector of ``L`` elements, no input gaps, no back-pressure): input
    ``ready`` is high in every load cycle (1 element/cycle in); the first output is valid 36
    cycles after the cycle of the last input transfer (1 cycle for ``e2``, then per element:
    1 read, 1 start, 31 division cycles, 1 to register the product); later outputs follow
    every 35 cycles (1/35 element per cycle); input ``ready`` is high again in the cycle after
    the last output transfer: ``36 L + 1`` cycles per vector.

    Parameters
    ----------
    n_max : int
        Largest vector length (buffer depth).
    in_width : int
        Width of the signed input elements, 2..32.
    out_bits : int
        Bits of the sigmoid, 2..24.

    Members
    -------
    x0 : In(signed(9))
        ``floor(-1 / (1.702 * scale))``, with ``-128 < x0 < 0``; sampled at the first element.
    inp : In(stream.Signature(StructLayout({"data": signed(in_width), "first": 1, "last": 1})))
    out : Out(stream.Signature(StructLayout({"data": signed(in_width + out_bits), "first": 1,
        "last": 1})))
    """

    def __init__(self, *, n_max, in_width, out_bits=8):
        _check_int("n_max", n_max, 1)
        _check_int("in_width", in_width, 2, 32)
        _check_int("out_bits", out_bits, 2, 24)
        self._n_max = n_max
        self._in_width = in_width
        self._out_bits = out_bits
        super().__init__({
            "x0":  In(x0_shape(SHIFTGELU_N)),
            "inp": In(stream.Signature(data.StructLayout({
                "data": signed(in_width), "first": 1, "last": 1}))),
            "out": Out(stream.Signature(data.StructLayout({
                "data": signed(in_width + out_bits), "first": 1, "last": 1}))),
        })

    n_max = property(lambda self: self._n_max)
    in_width = property(lambda self: self._in_width)
    out_bits = property(lambda self: self._out_bits)

    def elaborate(self, platform):
        m = Module()
        n_max, w = self._n_max, self._in_width

        m.submodules.buf = buf = Memory(shape=signed(w), depth=n_max, init=[])
        wr = buf.write_port()
        rd = buf.read_port()
        m.submodules.exp1 = exp1 = ShiftExp(in_width=w + 1, n=SHIFTGELU_N)
        m.submodules.exp2 = exp2 = ShiftExp(in_width=w + 1, n=SHIFTGELU_N)
        m.submodules.div = div = Reciprocal31()

        x0 = Signal(x0_shape(SHIFTGELU_N))
        vmax = Signal(signed(w))                 # max(row max, 0)
        length = Signal(range(n_max + 1))
        ptr = Signal(range(n_max + 1))
        e2 = Signal(31)
        e1 = Signal(31)
        x = Signal(signed(w))
        sig = Signal(self._out_bits)
        den = Signal(32)

        m.d.comb += [
            exp1.x.eq(rd.data - vmax),
            exp1.x0.eq(x0),
            exp2.x.eq(-vmax),
            exp2.x0.eq(x0),
            rd.addr.eq(ptr),
            den.eq(exp1.e + e2),
            div.den.eq(Mux(den > INT31_MAX, INT31_MAX, den)),
            sig.eq((e1 * div.quotient) >> (32 - self._out_bits)),
        ]

        with m.FSM():
            with m.State("LOAD"):
                m.d.comb += [
                    self.inp.ready.eq(1),
                    wr.addr.eq(length),
                    wr.data.eq(self.inp.payload.data),
                    wr.en.eq(self.inp.valid),
                ]
                with m.If(self.inp.valid):
                    value = self.inp.payload.data
                    m.d.sync += length.eq(length + 1)
                    with m.If(length == 0):
                        m.d.sync += [x0.eq(self.x0), vmax.eq(Mux(value > 0, value, 0))]
                    with m.Elif(value > vmax):
                        m.d.sync += vmax.eq(value)
                    with m.If(self.inp.payload.last):
                        m.d.sync += ptr.eq(0)
                        m.next = "E2"
            with m.State("E2"):
                m.d.sync += e2.eq(exp2.e)
                m.next = "READ"
            with m.State("READ"):
                m.d.comb += rd.en.eq(1)
                m.next = "START"
            with m.State("START"):
                m.d.comb += [rd.en.eq(0), div.start.eq(1)]
                m.d.sync += [x.eq(rd.data), e1.eq(exp1.e)]
                m.next = "DIVIDE"
            with m.State("DIVIDE"):
                m.d.comb += rd.en.eq(0)
                with m.If(~div.busy):
                    m.d.sync += [
                        self.out.payload.data.eq(x * sig),
                        self.out.payload.first.eq(ptr == 0),
                        self.out.payload.last.eq(ptr == length - 1),
                        self.out.valid.eq(1),
                    ]
                    m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += rd.en.eq(0)
                with m.If(self.out.ready):
                    m.d.sync += [self.out.valid.eq(0), ptr.eq(ptr + 1)]
                    with m.If(ptr == length - 1):
                        m.d.sync += length.eq(0)
                        m.next = "LOAD"
                    with m.Else():
                        m.next = "READ"
        return m
