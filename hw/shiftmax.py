"""I-ViT's Shiftmax: integer softmax over one vector with shifts, one division per vector."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.sim.golden import INT31_MAX

__all__ = ["ShiftExp", "Reciprocal31", "Shiftmax"]

#: Pipeline stages of the :class:`ShiftExp` in :class:`Shiftmax`.
EXP_STAGES = 3


def _check_int(name, value, lo, hi=None):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"in {lo}..{hi}" if hi is not None else f"at least {lo}"
        raise ValueError(f"{name} must be {bound}, not {value}")


def x0_shape(n):
    """Shape of the ``x0`` port for shift-exp range ``n``: the golden model requires
    ``0 < -x0 < 2**(31 - n)``, so ``x0`` fits ``signed(32 - n)``."""
    return signed(32 - n)


class ShiftExp(wiring.Component):
    """I-ViT's shift-exp: :func:`mmfree.sim.golden.shift_exp` for one element, combinational or
    pipelined.

    ``p = x + (x >> 1) - (x >> 4)``; ``p = max(p, n * x0)``; ``q = p // x0``; ``r = p - q * x0``;
    ``e = ((r >> 1) - x0) << (n - q)``. With ``x <= 0`` and ``x0 < 0``: ``q = |p| // |x0|`` is in
    ``0..n``, so the floor division is exact with ``bit_length(n)`` compare-and-subtract steps
    (restoring division with a quotient known to be below ``2**bit_length(n)``); no general
    divider is needed. ``r = -(|p| mod |x0|)`` and ``r >> 1 = -ceil(|r| / 2)``.

    The datapath is ``bit_length(n) + 4`` steps: ``|p|``; the clamp ``min(|p|, n |x0|)``; the
    compare-and-subtract steps; ``|x0| - ceil(|r| / 2)``; the shift. With ``stages = S > 0``,
    registers (enabled by ``en``) follow the first ``ceil(i K / (S + 1))`` steps, for
    ``i = 1..S`` and ``K`` steps: ``S + 1`` nearly equal groups. Then ``|x0|`` and ``n |x0|``
    are registers too, loaded from ``x0`` in every cycle, so ``x0`` must be held from the cycle
    before the first ``x`` of a run until that run's last ``e`` (as for one Shiftmax vector).

    Parameters
    ----------
    in_width : int
        Width of ``x`` (signed).
    n : int
        Shift-exp range, 1..30.
    stages : int
        Pipeline registers, 0 (combinational) or more.

    Members
    -------
    x : In(signed(in_width))
        The input, at most 0 (a positive input gives an unspecified result).
    x0 : In(signed(32 - n))
        The scale constant, ``-2**(31 - n) < x0 < 0``.
    en : In(1)
        Pipeline enable: the registers advance in the cycles it is high (only with
        ``stages > 0``).
    e : Out(unsigned(31))
        The shift-exp, ``< 2**31``.

    Latency: ``stages`` cycles (the ``latency`` property; 0: combinational) of ``en`` high from
    ``x`` to ``e``; one element per cycle.
    """

    def __init__(self, *, in_width, n, stages=0):
        _check_int("in_width", in_width, 2, 48)
        _check_int("n", n, 1, 30)
        _check_int("stages", stages, 0)
        self._in_width = in_width
        self._n = n
        self._stages = stages
        members = {
            "x":  In(signed(in_width)),
            "x0": In(x0_shape(n)),
            "e":  Out(unsigned(31)),
        }
        if stages:
            members["en"] = In(1)
        super().__init__(members)

    @property
    def in_width(self):
        return self._in_width

    @property
    def n(self):
        return self._n

    @property
    def stages(self):
        return self._stages

    @property
    def latency(self):
        return self._stages

    def elaborate(self, platform):
        m = Module()
        n, stages = self._n, self._stages
        qbits = n.bit_length()
        x0_width = 31 - n                          # bits of |x0|
        abs_width = x0_width + qbits               # bits of |p| after the clamp (<= n * |x0|)
        steps = qbits + 4
        cuts = [0] * (steps + 1)                   # registers after the first k steps
        for i in range(1, stages + 1):
            cuts[-(-i * steps // (stages + 1))] += 1  # k = ceil(i * steps / (stages + 1))
        step = iter(range(steps))

        def stage(*values):
            # The values after the next step, through the registers that follow it.
            k = next(step) + 1
            for index in range(cuts[k]):
                regs = [Signal.like(v, name=f"{v.name}_s{k}_{index}") for v in values]
                with m.If(self.en):
                    m.d.sync += [r.eq(v) for r, v in zip(regs, values)]
                values = regs
            return values

        # Per-vector constants: |x0| and the clamp n |x0|.
        ax0 = Signal(x0_width)
        limit = Signal(abs_width)
        consts = [ax0.eq(-self.x0), limit.eq(-(self.x0 * n))]
        if stages:
            m.d.sync += consts
        else:
            m.d.comb += consts

        x = self.x
        neg_p = Signal(signed(self._in_width + 2))  # |p| = -p (x <= 0)
        m.d.comb += neg_p.eq((x >> 4) - x - (x >> 1))
        neg_p, = stage(neg_p)

        a = Signal(abs_width)
        m.d.comb += a.eq(Mux(neg_p > limit, limit, neg_p))
        rem, = stage(a)

        q = []                                     # quotient bits, most significant first
        for k in reversed(range(qbits)):
            trial = Signal(abs_width + 1, name=f"trial{k}")
            nxt = Signal(abs_width, name=f"rem{k}")
            take = Signal(name=f"take{k}")
            m.d.comb += [
                trial.eq(rem - (ax0 << k)),
                take.eq(~trial[-1]),
                nxt.eq(Mux(take, trial, rem)),
            ]
            rem, *q = stage(nxt, *q, take)

        base = Signal(x0_width)                    # (r >> 1) - x0 = |x0| - ceil(|r| / 2)
        m.d.comb += base.eq(ax0 - ((rem + 1) >> 1))
        shift = Signal(range(n + 1))
        m.d.comb += shift.eq(n - Cat(*reversed(q)))
        base, shift = stage(base, shift)

        e = Signal(31)
        m.d.comb += e.eq((base << shift)[:31])
        e, = stage(e)
        m.d.comb += self.e.eq(e)
        return m


class Reciprocal31(wiring.Component):
    """``(2**31 - 1) // den``, serial restoring division, one quotient bit per cycle.

    ``den`` must be at least ``2**den_min_log2`` (then the quotient is below
    ``2**(31 - den_min_log2)`` and the upper numerator bits give zero quotient bits, so they
    are skipped).

    Members
    -------
    den : In(unsigned(31))
        Sampled in the cycle ``start`` is high.
    start : In(1)
        Start a division (ignored while ``busy``).
    busy : Out(1)
        High from the cycle after ``start`` until the quotient is ready.
    quotient : Out(unsigned(31 - den_min_log2))
        Valid (and held) once ``busy`` has fallen.

    Latency: ``31 - den_min_log2`` cycles from ``start`` to ``busy`` low with the quotient valid.
    """

    def __init__(self, *, den_min_log2=0):
        _check_int("den_min_log2", den_min_log2, 0, 30)
        self._den_min_log2 = den_min_log2
        super().__init__({
            "den":      In(unsigned(31)),
            "start":    In(1),
            "busy":     Out(1),
            "quotient": Out(unsigned(31 - den_min_log2)),
        })

    @property
    def den_min_log2(self):
        return self._den_min_log2

    @property
    def steps(self):
        return 31 - self._den_min_log2

    def elaborate(self, platform):
        m = Module()
        k = self._den_min_log2
        steps = 31 - k
        den = Signal(31)
        rem = Signal(32)
        count = Signal(range(steps + 1))
        # The numerator is all ones, so every step shifts in a 1.
        trial = Signal(33)
        m.d.comb += trial.eq(((rem << 1) | 1) - den)
        with m.If(self.busy):
            m.d.sync += [
                rem.eq(Mux(trial[-1], (rem << 1) | 1, trial)),
                self.quotient.eq((self.quotient << 1) | ~trial[-1]),
                count.eq(count - 1),
            ]
            with m.If(count == 1):
                m.d.sync += self.busy.eq(0)
        with m.Elif(self.start):
            m.d.sync += [
                den.eq(self.den),
                rem.eq(Const((1 << k) - 1, 32)),   # the numerator's top k bits, all ones
                self.quotient.eq(0),
                count.eq(steps),
                self.busy.eq(1),
            ]
        return m


class Shiftmax(wiring.Component):
    """I-ViT's Shiftmax over vectors of up to ``n_max`` signed integers.

    Golden model: :func:`mmfree.sim.golden._shiftmax_x0` (``shiftmax`` with
    ``x0 = floor(-1/scale)``), bit for bit: row max; ``e = shift_exp(x - max, x0, n)``;
    ``total = min(sum(e), 2**31 - 1)``; ``factor = (2**31 - 1) // total``;
    ``out = (e * factor) >> (32 - out_bits)``.

    Three phases per vector, one at a time (input is not accepted during the second and third):

    1. Load: the elements are written to a buffer while the running maximum is kept; ``x0`` is
       sampled with the vector's first element (an element is first when it follows a ``last``
       or reset; the ``first`` field is not needed). A vector must end with ``last`` within
       ``n_max`` elements.
    2. Sum: the buffer is read back through ``x - max`` (registered) and a :class:`ShiftExp`
       of :data:`EXP_STAGES` (3) pipeline stages, ``e`` registered and summed with saturation
       at ``2**31 - 1``; then one division (:class:`Reciprocal31`), skipping the ``n``
       leading quotient bits that are zero because ``total >= e(max) = |x0| << n``.
    3. Output: the buffer is read again through the same pipeline, ``e`` recomputed and
       multiplied by ``factor``. The output pipeline stalls as a whole under back-pressure.

    Latency and throughput, for a vector of ``L`` elements with no input gaps and no
    back-pressure: input ``ready`` is high in every load cycle (1 element/cycle in); the first
    output element is valid ``L + 47 - n`` cycles after the cycle of the last input transfer
    (``L + 32`` for ``n = 15``: ``L + 6`` sum cycles, 1 start cycle, ``32 - n`` division
    cycles, 7 output pipeline cycles (address, read, ``x - max``, 3 shift-exp stages, ``e``),
    1 to register the product); outputs then follow at 1 element/cycle; input ``ready`` is high
    again in the cycle after the last output transfer. One vector takes ``3 L + 46 - n`` cycles
    from its first input transfer to the next vector's (``3 L + 31`` for ``n = 15``).

    Parameters
    ----------
    n_max : int
        Largest vector length (buffer depth).
    in_width : int
        Width of the signed input elements, 2..32.
    out_bits : int
        Output width, 2..24 (values below ``2**(out_bits - 1)``).
    n : int
        Shift-exp range, 1..30 (I-ViT: 15).

    Members
    -------
    x0 : In(signed(32 - n))
        ``floor(-1 / scale)``, with ``-2**(31 - n) < x0 < 0``; sampled at the first element.
    inp : In(stream.Signature(StructLayout({"data": signed(in_width), "first": 1, "last": 1})))
    out : Out(stream.Signature(StructLayout({"data": unsigned(out_bits), "first": 1, "last": 1})))
    """

    def __init__(self, *, n_max, in_width, out_bits=8, n=15):
        _check_int("n_max", n_max, 1)
        _check_int("in_width", in_width, 2, 32)
        _check_int("out_bits", out_bits, 2, 24)
        _check_int("n", n, 1, 30)
        self._n_max = n_max
        self._in_width = in_width
        self._out_bits = out_bits
        self._n = n
        super().__init__({
            "x0":  In(x0_shape(n)),
            "inp": In(stream.Signature(data.StructLayout({
                "data": signed(in_width), "first": 1, "last": 1}))),
            "out": Out(stream.Signature(data.StructLayout({
                "data": unsigned(out_bits), "first": 1, "last": 1}))),
        })

    n_max = property(lambda self: self._n_max)
    in_width = property(lambda self: self._in_width)
    out_bits = property(lambda self: self._out_bits)
    n = property(lambda self: self._n)

    def elaborate(self, platform):
        m = Module()
        n_max, w, n = self._n_max, self._in_width, self._n

        m.submodules.buf = buf = Memory(shape=signed(w), depth=n_max, init=[])
        wr = buf.write_port()
        rd = buf.read_port()
        m.submodules.exp = exp = ShiftExp(in_width=w + 1, n=n, stages=EXP_STAGES)
        m.submodules.div = div = Reciprocal31(den_min_log2=n)

        x0 = Signal(x0_shape(n))
        vmax = Signal(signed(w))
        length = Signal(range(n_max + 1))
        ptr = Signal(range(n_max + 1))
        total = Signal(31)
        factor = Signal(31 - n)
        # Pipeline, advancing as a whole: address issued -> rd.data (tags[0]) -> x = rd.data -
        # max (tags[1]) -> the shift-exp's stages -> e (tags[-1]) -> sum / out register.
        tag = data.StructLayout({"valid": 1, "first": 1, "last": 1})
        tags = [Signal(tag, name=f"tag{i}") for i in range(exp.latency + 3)]
        x = Signal(signed(w + 1))
        e = Signal(31)

        advance = Signal()
        m.d.comb += [
            exp.x.eq(x),
            exp.x0.eq(x0),
            exp.en.eq(advance),
            rd.addr.eq(ptr),
            rd.en.eq(advance),
            div.den.eq(total),
        ]
        with m.If(advance):
            issue = ptr != length
            m.d.sync += [
                tags[0].valid.eq(issue),
                tags[0].first.eq(ptr == 0),
                tags[0].last.eq(ptr == length - 1),
                [later.eq(earlier) for earlier, later in zip(tags, tags[1:])],
                x.eq(rd.data - vmax),
                e.eq(exp.e),
            ]
            with m.If(issue):
                m.d.sync += ptr.eq(ptr + 1)

        with m.FSM():
            with m.State("LOAD"):
                m.d.comb += [
                    self.inp.ready.eq(1),
                    wr.addr.eq(length),
                    wr.data.eq(self.inp.payload.data),
                    wr.en.eq(self.inp.valid),
                ]
                with m.If(self.inp.valid):
                    x = self.inp.payload.data
                    m.d.sync += length.eq(length + 1)
                    with m.If(length == 0):
                        m.d.sync += [x0.eq(self.x0), vmax.eq(x)]
                    with m.Elif(x > vmax):
                        m.d.sync += vmax.eq(x)
                    with m.If(self.inp.payload.last):
                        m.d.sync += [ptr.eq(0), total.eq(0)]
                        m.next = "SUM"
            with m.State("SUM"):
                m.d.comb += advance.eq(1)
                with m.If(tags[-1].valid):
                    s = total + e                  # < 2**32: saturated when bit 31 is set
                    m.d.sync += total.eq(Mux(s[31], INT31_MAX, s))
                    with m.If(tags[-1].last):
                        m.next = "START"
            with m.State("START"):
                m.d.comb += div.start.eq(1)
                m.d.sync += ptr.eq(0)
                m.next = "DIVIDE"
            with m.State("DIVIDE"):
                with m.If(~div.busy):
                    m.d.sync += factor.eq(div.quotient)
                    m.next = "OUTPUT"
            with m.State("OUTPUT"):
                m.d.comb += advance.eq(~self.out.valid | self.out.ready)
                with m.If(advance):
                    m.d.sync += [
                        self.out.valid.eq(tags[-1].valid),
                        self.out.payload.data.eq((e * factor) >> (32 - self._out_bits)),
                        self.out.payload.first.eq(tags[-1].first),
                        self.out.payload.last.eq(tags[-1].last),
                    ]
                with m.If(self.out.valid & self.out.ready & self.out.payload.last):
                    m.d.sync += length.eq(0)
                    m.next = "LOAD"
        return m
