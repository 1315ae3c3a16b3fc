"""Unsigned integer dividers: exact floor division and remainder.

Two forms of the same arithmetic (restoring division, one quotient bit per step):

- :class:`SerialDivider`: one quotient bit per cycle (or a few, chained), one division at a
  time (small; for per-vector constants such as the activation quantizer's reciprocal).
- :class:`PipelinedDivider`: one stage per quotient bit, one division per cycle.

Both compute ``quotient = num // den`` and ``remainder = num % den`` (Python's ``//`` and ``%``
on non-negative integers).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SerialDivider", "PipelinedDivider"]


def _check_width(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(f"{name} must be a positive integer, not {value!r}")
    return value


def _layouts(num_width, den_width, quot_width, tag_shape):
    inp = {"num": unsigned(num_width), "den": unsigned(den_width)}
    out = {"quotient": unsigned(quot_width), "remainder": unsigned(den_width)}
    if tag_shape is not None:
        inp["tag"] = tag_shape
        out["tag"] = tag_shape
    return data.StructLayout(inp), data.StructLayout(out)


def _check_tag_shape(tag_shape):
    if tag_shape is None:
        return None
    try:
        Shape.cast(tag_shape)
    except TypeError:
        raise TypeError(f"tag_shape must be None or a shape-castable object, "
                        f"not {tag_shape!r}") from None
    return tag_shape


class SerialDivider(wiring.Component):
    """Restoring unsigned divider, ``steps`` quotient bits per cycle.

    ``out.payload.quotient = num // den`` and ``out.payload.remainder = num % den``.
    Division by zero gives ``quotient = 2**num_width - 1`` (all ones) and
    ``remainder = num % 2**den_width`` (the low bits of ``num``).

    Parameters
    ----------
    num_width : int
        Width of the dividend (and of the quotient).
    den_width : int
        Width of the divisor (and of the remainder).
    quotient_width : int or None
        Quotient bits the divider computes, at most ``num_width`` (default: ``num_width``).
        With ``quotient_width = k < num_width`` the caller guarantees ``num >> k < den``
        (the quotient fits in ``k`` bits): the divider loads ``num >> k`` as the partial
        remainder, the state a full-width division reaches after its first
        ``num_width - k`` steps (all of them quotient bits 0), and makes only the last ``k``
        bits. Results are exact under that guarantee and unspecified without it (division
        by zero included). For per-vector constants whose range is known, such as
        ``2**31 // r`` with ``r`` in ``[2**15, 2**16)`` (17 bits, not 32).
    steps : int
        Quotient bits per cycle (default 1): a cycle chains ``steps`` compares and
        subtractions. The divider makes ``ceil(quotient_width / steps) * steps`` bits, the
        bits above ``quotient_width`` being zeros under its guarantee (a dividend wider than
        ``num_width`` with zeros on top, where that is more than ``num_width`` bits).

    Latency: :attr:`latency` = ``ceil(quotient_width / steps) + 1``: ``out.valid`` rises that
    many cycles after the cycle of the ``inp`` transfer (one cycle loads the operands, each
    other makes ``steps`` quotient bits).

    Throughput: one division at a time. ``inp.ready`` is high while idle and in the cycle where
    the result transfers, so at full rate a new division starts every :attr:`latency` cycles.

    Members
    -------
    inp : In(stream.Signature(StructLayout(...)))
        ``{"num": unsigned(num_width), "den": unsigned(den_width)}``.
    out : Out(stream.Signature(StructLayout(...)))
        ``{"quotient": unsigned(num_width), "remainder": unsigned(den_width)}``.
    """

    def __init__(self, *, num_width, den_width, quotient_width=None, steps=1):
        self._steps = _check_width("steps", steps)
        self._num_width = _check_width("num_width", num_width)
        self._den_width = _check_width("den_width", den_width)
        if quotient_width is None:
            quotient_width = num_width
        if _check_width("quotient_width", quotient_width) > num_width:
            raise ValueError(f"quotient_width must be at most num_width {num_width}, "
                             f"not {quotient_width}")
        self._quotient_width = quotient_width
        inp, out = _layouts(num_width, den_width, num_width, None)
        super().__init__({
            "inp": In(stream.Signature(inp)),
            "out": Out(stream.Signature(out)),
        })

    @property
    def num_width(self):
        return self._num_width

    @property
    def den_width(self):
        return self._den_width

    @property
    def quotient_width(self):
        return self._quotient_width

    @property
    def steps(self):
        return self._steps

    @staticmethod
    def cycles(quotient_width, steps=1):
        """The :attr:`latency` of a divider of ``quotient_width`` and ``steps``, without making
        one (for the latency formulas of the blocks that use it)."""
        return -(-quotient_width // steps) + 1

    @property
    def latency(self):
        """Cycles from the ``inp`` transfer to ``out.valid``."""
        return self.cycles(self._quotient_width, self._steps)

    def elaborate(self, platform):
        m = Module()
        nw, dw, k = self._num_width, self._den_width, self._steps
        cycles = self.latency - 1
        qw = cycles * k          # quotient bits made: quotient_width rounded up to k

        quo   = Signal(qw)       # dividend bits still to shift in (top), quotient bits (bottom)
        den   = Signal(dw)
        rem   = Signal(dw)
        count = Signal(range(cycles + 1))
        busy  = Signal()
        done  = Signal()

        next_rem, next_quo = rem, quo
        for _ in range(k):
            trial = Cat(next_quo[-1], next_rem)             # dw + 1 bits
            take = trial >= den
            next_rem = Mux(take, trial - den, trial)[:dw]
            next_quo = Cat(take, next_quo[:-1])

        m.d.comb += [
            self.out.valid.eq(done),
            self.out.payload.quotient.eq(quo),
            self.out.payload.remainder.eq(rem),
            self.inp.ready.eq(~busy | (done & self.out.ready)),
        ]

        with m.If(busy & ~done):
            m.d.sync += [
                rem.eq(next_rem),
                quo.eq(next_quo),
                count.eq(count - 1),
            ]
            with m.If(count == 1):
                m.d.sync += done.eq(1)
        with m.If(done & self.out.ready):
            m.d.sync += [busy.eq(0), done.eq(0)]
        with m.If(self.inp.valid & self.inp.ready):
            m.d.sync += [
                # zeros above num_width when qw is wider
                quo.eq(self.inp.payload.num[:min(qw, nw)]),
                den.eq(self.inp.payload.den),
                # num >> qw < den (the caller's guarantee when qw < nw) fits in dw bits
                rem.eq(self.inp.payload.num[qw:] if qw < nw else 0),
                count.eq(cycles),
                busy.eq(1),
                done.eq(0),
            ]
        return m


class PipelinedDivider(wiring.Component):
    """Restoring unsigned divider, one pipeline stage per ``steps`` quotient bits.

    ``out.payload.quotient = num // den`` and ``out.payload.remainder = num % den``, with the
    precondition ``num // den < 2**quot_width`` (the caller guarantees it; otherwise both are
    unspecified). Division by zero gives ``quotient = 2**quot_width - 1`` (all ones) and
    ``remainder = num % 2**den_width``. Note the quotient is ``quot_width`` bits wide.

    Parameters
    ----------
    num_width : int
        Width of the dividend.
    den_width : int
        Width of the divisor (and of the remainder).
    quot_width : int
        Width of the quotient, ``1 <= quot_width <= num_width``.
    steps : int
        Quotient bits a stage (default 1): a stage chains ``steps`` compares and
        subtractions; the first stage makes the ``quot_width % steps`` top bits if
        ``steps`` does not divide ``quot_width``.
    tag_shape : shape-castable or None
        If given, ``inp.payload.tag`` of this shape travels alongside the division and comes
        out as ``out.payload.tag`` (e.g. first/last or a sign).

    Latency: :attr:`latency` = ``ceil(quot_width / steps)`` cycles (a word taken on ``inp`` in
    cycle t is valid on ``out`` in cycle ``t + latency``).

    Throughput: one division per cycle. The pipeline stalls as a whole:
    ``inp.ready = ~out.valid | out.ready``.

    Members
    -------
    inp : In(stream.Signature(StructLayout(...)))
        ``{"num": unsigned(num_width), "den": unsigned(den_width)}``, plus ``"tag": tag_shape``
        if given.
    out : Out(stream.Signature(StructLayout(...)))
        ``{"quotient": unsigned(quot_width), "remainder": unsigned(den_width)}``, plus
        ``"tag": tag_shape`` if given.
    """

    def __init__(self, *, num_width, den_width, quot_width, steps=1, tag_shape=None):
        self._steps = _check_width("steps", steps)
        self._num_width = _check_width("num_width", num_width)
        self._den_width = _check_width("den_width", den_width)
        _check_width("quot_width", quot_width)
        if quot_width > num_width:
            raise ValueError(f"quot_width must be at most num_width ({num_width}), "
                             f"not {quot_width}")
        self._quot_width = quot_width
        self._tag_shape = _check_tag_shape(tag_shape)
        inp, out = _layouts(num_width, den_width, quot_width, tag_shape)
        super().__init__({
            "inp": In(stream.Signature(inp)),
            "out": Out(stream.Signature(out)),
        })

    @property
    def num_width(self):
        return self._num_width

    @property
    def den_width(self):
        return self._den_width

    @property
    def quot_width(self):
        return self._quot_width

    @property
    def steps(self):
        return self._steps

    @property
    def latency(self):
        return -(-self._quot_width // self._steps)

    @property
    def tag_shape(self):
        return self._tag_shape

    def elaborate(self, platform):
        m = Module()
        nw, dw, qw = self._num_width, self._den_width, self._quot_width
        advance = Signal()
        m.d.comb += [
            advance.eq(~self.out.valid | self.out.ready),
            self.inp.ready.eq(advance),
        ]

        # Step i (i = qw-1 .. 0) decides quotient bit i. Its partial remainder is below
        # den << (i + 1) by the precondition, so it needs min(nw, dw + i + 1) bits. A stage
        # registers the result of its last step (bit i: the stage's signals are named s{i}).
        valid = self.inp.valid
        rem = self.inp.payload.num
        den = self.inp.payload.den
        quo = Const(0, 0)
        tag = self.inp.payload.tag if self._tag_shape is not None else None
        for i in reversed(range(qw)):
            width = min(nw, dw + i + 1)
            shifted = Cat(Const(0, i), den)
            take = rem >= shifted
            if i % self._steps:                 # a step inside a stage: no register
                step = Signal(min(nw, dw + i), name=f"t{i}_rem")
                m.d.comb += step.eq(Mux(take, rem[:width] - shifted, rem[:width]))
                rem, quo = step, Cat(take, quo)
                continue
            n_valid = Signal(name=f"s{i}_valid")
            n_rem = Signal(min(nw, dw + i), name=f"s{i}_rem")
            n_den = Signal(dw, name=f"s{i}_den")
            n_quo = Signal(qw - i, name=f"s{i}_quo")
            with m.If(advance):
                m.d.sync += [
                    n_valid.eq(valid),
                    n_rem.eq(Mux(take, rem[:width] - shifted, rem[:width])),
                    n_den.eq(den),
                    n_quo.eq(Cat(take, quo)),
                ]
            if tag is not None:
                n_tag = Signal(self._tag_shape, name=f"s{i}_tag")
                with m.If(advance):
                    m.d.sync += n_tag.eq(tag)
                tag = n_tag
            valid, rem, den, quo = n_valid, n_rem, n_den, n_quo

        m.d.comb += [
            self.out.valid.eq(valid),
            self.out.payload.quotient.eq(quo),
            self.out.payload.remainder.eq(rem),
        ]
        if tag is not None:
            m.d.comb += self.out.payload.tag.eq(tag)
        return m
