"""The model's elementwise nonlinearities: the shift-exp core and, on it, sigmoid, SiLU and GELU.

- :class:`ExpCore`: golden :func:`mmfree.sim.golden.exp_core`, one exp per cycle.
- :class:`Sigmoid`: golden :func:`~mmfree.sim.golden.sigmoid` (``mode="sigmoid"``),
  :func:`~mmfree.sim.golden.silu` (``mode="silu"``) or :func:`~mmfree.sim.golden.gelu`
  (``mode="gelu"``): ExpCore, one exact division (:class:`~mmfree.hw.divider.PipelinedDivider`)
  and, for SiLU/GELU, the product ``x * sigmoid`` rounded and saturated.

docs/numerics.md ("Sigmoid core") explains the arithmetic.
"""

from amaranth.hdl import Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.hw.arith import carried, split_mul
from mmfree.hw.divider import PipelinedDivider
from mmfree.hw.skid import SkidBuffer
from mmfree.sim import golden
from mmfree.sim.golden import ACT_BITS, EXP_BITS, EXP_FRAC, EXP_N, EXP_ONE, F_GATE

__all__ = ["ExpCore", "Sigmoid", "FRAC_WIDTH", "MODES", "element_layout"]

#: Width of the ``frac`` inputs: input formats 0 .. 31 fraction bits.
FRAC_WIDTH = 5
#: The modes of :class:`Sigmoid` and the dyadic ``alpha * log2(e)`` each uses.
MODES = {"sigmoid": golden.LOG2E, "silu": golden.LOG2E, "gelu": golden.GELU_LOG2E}


def element_layout(width):
    """The element streams' payload: ``{"data": signed(width), "first": 1, "last": 1}``."""
    return data.StructLayout({"data": signed(width), "first": 1, "last": 1})


_MAG_WIDTH = 32                          # |x| of a 32-bit x, up to 2**31
_MANT_WIDTH = 24                         # the exp's dyadic mantissa m
_TABLE_WIDTH = EXP_BITS + 1              # EXP_HI, EXP_LO entries, up to 2**20
_E_WIDTH = EXP_BITS + EXP_N + 1          # exp_core results, up to EXP_ONE = 2**40
_P_MAX = EXP_N << EXP_FRAC               # clamp of the exp's -log2


class ExpCore(wiring.Component):
    """The shift-exp ``e = exp_core(-mag, frac, m, k)``, ``e ~ 2**40 exp(-alpha mag 2**-frac)``.

    Golden model: :func:`mmfree.sim.golden.exp_core` with ``v = -mag``. Pipeline:
    ``mag`` registered, ``mag * m`` (a multiplication in two stages,
    :func:`~mmfree.hw.arith.split_mul`), add the rounding half of ``s = k + frac - 16``,
    shift right by ``s`` and clamp to ``20 << 16`` (``p``), read ``EXP_HI[j >> 8]`` and
    ``EXP_LO[j & 255]`` (``j = p & 0xFFFF``; two 256 x 21-bit ROMs filled from the golden
    tables), multiply them (two stages), round by 20 bits and shift by ``q = p >> 16``.

    Parameters
    ----------
    m : int
        The dyadic mantissa of ``alpha * log2(e)``, ``0 < m < 2**24``
        (:data:`mmfree.sim.golden.LOG2E`, :data:`~mmfree.sim.golden.GELU_LOG2E`).
    k : int
        Its exponent: ``alpha * log2(e) = m * 2**-k``, ``17 <= k <= 40`` (so that the rounding
        shift ``k + frac - 16`` is at least 1 for every ``frac``).
    tag_shape : shape-castable or None
        If given, ``inp.payload.tag`` travels alongside and comes out as ``out.payload.tag``.

    Latency: :attr:`LATENCY` = 10 cycles (a word taken on ``inp`` in cycle t is valid on
    ``out`` in cycle t + 10): at most one variable shift or half a multiplication a stage, and
    the table outputs registered before their product, for the clock.

    Throughput: one exp per cycle. The pipeline stalls as a whole:
    ``inp.ready = ~out.valid | out.ready``.

    Members
    -------
    inp : In(stream.Signature(StructLayout({"mag": unsigned(32), "frac": unsigned(5)[, "tag": tag_shape]})))
        ``mag = -v = |x|`` (0 .. 2**31) and the input format ``frac`` (0 .. 31), per element.
    out : Out(stream.Signature(StructLayout({"e": unsigned(41)[, "tag": tag_shape]})))
        ``e`` in 0 .. 2**40 (``EXP_ONE`` for ``mag = 0``).
    """

    LATENCY = 10

    def __init__(self, *, m, k, tag_shape=None):
        if not isinstance(m, int) or isinstance(m, bool) or not 0 < m < (1 << _MANT_WIDTH):
            raise ValueError(f"m must be an integer in 1 .. 2**{_MANT_WIDTH} - 1, not {m!r}")
        if not isinstance(k, int) or isinstance(k, bool) or not EXP_FRAC + 1 <= k <= 40:
            raise ValueError(f"k must be an integer in {EXP_FRAC + 1} .. 40, not {k!r}")
        if tag_shape is not None:
            try:
                Shape.cast(tag_shape)
            except TypeError:
                raise TypeError(f"tag_shape must be None or a shape-castable object, "
                                f"not {tag_shape!r}") from None
        self._m = m
        self._k = k
        self._tag_shape = tag_shape
        inp = {"mag": unsigned(_MAG_WIDTH), "frac": unsigned(FRAC_WIDTH)}
        out = {"e": unsigned(_E_WIDTH)}
        if tag_shape is not None:
            inp["tag"] = out["tag"] = tag_shape
        super().__init__({
            "inp": In(stream.Signature(data.StructLayout(inp))),
            "out": Out(stream.Signature(data.StructLayout(out))),
        })

    @property
    def m(self):
        return self._m

    @property
    def k(self):
        return self._k

    @property
    def tag_shape(self):
        return self._tag_shape

    def elaborate(self, platform):
        m = Module()
        m.submodules.hi = hi = Memory(shape=unsigned(_TABLE_WIDTH), depth=256,
                                      init=[int(v) for v in golden.EXP_HI])
        m.submodules.lo = lo = Memory(shape=unsigned(_TABLE_WIDTH), depth=256,
                                      init=[int(v) for v in golden.EXP_LO])
        hi_rd = hi.read_port()
        lo_rd = lo.read_port()

        en = Signal()
        m.d.comb += [
            en.eq(~self.out.valid | self.out.ready),
            self.inp.ready.eq(en),
            hi_rd.en.eq(en),
            lo_rd.en.eq(en),
        ]
        valid = [Signal(name=f"s{i + 1}_valid") for i in range(self.LATENCY)]
        inp = self.inp.payload
        shift_max = self._k + (1 << FRAC_WIDTH) - 1 - EXP_FRAC

        # 1: |x| registered; the rounding shift s = k + frac - 16 (>= 1) and s - 1.
        mag1 = Signal(_MAG_WIDTH)
        s1 = Signal(range(shift_max + 1))
        sm1 = Signal(range(shift_max))
        # 2-3: mag * m, in two halves (split_mul).
        prod3, prod_partial, prod_final = split_mul(mag1, Const(self._m, _MANT_WIDTH), "prod")
        # 4: add the rounding half, 2**(s - 1).
        sum4 = Signal(_MAG_WIDTH + _MANT_WIDTH + 1)
        # 5: p = min(sum >> s, 20 << 16).
        p5 = Signal(range(_P_MAX + 1))
        # 6: table reads (in the memories' read registers); q = p >> 16 alongside.
        # 7: the table outputs registered. 8-9: EXP_HI * EXP_LO, in two halves.
        hi7, lo7 = Signal(_TABLE_WIDTH), Signal(_TABLE_WIDTH)
        prod8, tab_partial, tab_final = split_mul(hi7, lo7, "tab")
        # 10: t = shift_round(prod, 20); e = (t << 20) >> q.
        e9 = Signal(_E_WIDTH)

        t = Signal(_TABLE_WIDTH)
        m.d.comb += [
            t.eq((prod8 + (1 << (EXP_BITS - 1))) >> EXP_BITS),
            hi_rd.addr.eq(p5[8:16]),
            lo_rd.addr.eq(p5[:8]),
        ]
        with m.If(en):
            sh = carried(m, s1, 3, "sh")          # s at stages 2, 3, 4
            shm = carried(m, sm1, 2, "shm")       # s - 1 at stages 2, 3
            q = carried(m, p5[EXP_FRAC:], 4, "q")  # q at stages 6, 7, 8, 9
            p_full = sum4 >> sh[2]
            m.d.sync += [
                valid[0].eq(self.inp.valid),
                *(valid[i].eq(valid[i - 1]) for i in range(1, self.LATENCY)),
                mag1.eq(inp.mag),
                s1.eq(inp.frac + (self._k - EXP_FRAC)),
                sm1.eq(inp.frac + (self._k - EXP_FRAC - 1)),
                *prod_partial, *prod_final,
                sum4.eq(prod3 + (Const(1, 1) << shm[1])[:len(sum4)]),
                p5.eq(Mux(p_full > _P_MAX, _P_MAX, p_full)),
                hi7.eq(hi_rd.data), lo7.eq(lo_rd.data),
                *tab_partial, *tab_final,
                e9.eq((t << EXP_N) >> q[3]),
            ]
        m.d.comb += [
            self.out.valid.eq(valid[-1]),
            self.out.payload.e.eq(e9),
        ]

        if self._tag_shape is not None:
            with m.If(en):
                tags = carried(m, inp.tag, self.LATENCY, "tag")
            m.d.comb += self.out.payload.tag.eq(tags[-1])
        return m


class _GateProduct(wiring.Component):
    """``saturate(shift_round(x * sig, 20), 32)``, three pipeline stages (the multiplication
    in two, :func:`~mmfree.hw.arith.split_mul`; round and saturate); the pipeline stalls as a
    whole. Part of :class:`Sigmoid`."""

    LATENCY = 3

    def __init__(self):
        super().__init__({
            "inp": In(stream.Signature(data.StructLayout({
                "x": signed(ACT_BITS), "sig": unsigned(F_GATE + 1), "first": 1, "last": 1}))),
            "out": Out(stream.Signature(element_layout(ACT_BITS))),
        })

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        m.d.comb += [
            en.eq(~self.out.valid | self.out.ready),
            self.inp.ready.eq(en),
        ]
        lo, hi = -(1 << (ACT_BITS - 1)), (1 << (ACT_BITS - 1)) - 1
        valid1, first1, last1 = Signal(), Signal(), Signal()
        valid2, first2, last2 = Signal(), Signal(), Signal()
        prod2, partial, final = split_mul(self.inp.payload.x, self.inp.payload.sig, "prod")
        rounded = Signal(signed(ACT_BITS + 3))
        m.d.comb += rounded.eq((prod2 + (1 << (F_GATE - 1))) >> F_GATE)
        with m.If(en):
            m.d.sync += [
                valid1.eq(self.inp.valid),
                first1.eq(self.inp.payload.first),
                last1.eq(self.inp.payload.last),
                *partial,
                valid2.eq(valid1), first2.eq(first1), last2.eq(last1),
                *final,
                self.out.valid.eq(valid2),
                self.out.payload.first.eq(first2),
                self.out.payload.last.eq(last2),
                self.out.payload.data.eq(
                    Mux(rounded > hi, hi, Mux(rounded < lo, lo, rounded))),
            ]
        return m


class Sigmoid(wiring.Component):
    """Elementwise sigmoid, SiLU or GELU of a stream of 32-bit fixed-point elements.

    Golden model (bit-exact), for ``x`` of format ``frac``:

    - ``mode="sigmoid"``: :func:`mmfree.sim.golden.sigmoid` ``(x, frac)``, unsigned, format
      F_GATE = 20 (0 .. 2**20);
    - ``mode="silu"``: :func:`mmfree.sim.golden.silu` ``(x, frac)``, format ``frac``;
    - ``mode="gelu"``: :func:`mmfree.sim.golden.gelu` ``(x, frac)``, format ``frac``.

    ``E = exp_core(-|x|)`` (:class:`ExpCore`, ``alpha = 1``, or 1.702 for GELU), then one exact
    division ``((x >= 0 ? EXP_ONE : E) << 20) // (EXP_ONE + E)``
    (:class:`~mmfree.hw.divider.PipelinedDivider`, 21 quotient bits), then for SiLU/GELU
    ``saturate(shift_round(x * sigmoid, 20), 32)``.

    Parameters
    ----------
    mode : str
        ``"sigmoid"``, ``"silu"`` or ``"gelu"``.
    steps : int
        Quotient bits a stage of the divider (default 1): 2 chains two compares and
        subtractions a stage, 11 stages instead of 21.

    Latency: :attr:`latency` cycles, a word taken on ``inp`` in cycle t is valid on ``out`` in
    cycle t + latency: 1 (input register) + 10 (exp) + 21 (divider; ``ceil(21 / steps)``) =
    **32** for ``"sigmoid"``, + 3 (product) = **35** for ``"silu"`` and ``"gelu"`` (22 and 25
    with ``steps=2``).

    Throughput: one element per cycle while ``out.ready`` is high. Each part (input register,
    exp, divider, product) stalls as a whole when its output is held; skid buffers
    (:class:`~mmfree.hw.skid.SkidBuffer`) after the exp core, the divider and the product cut
    the ready path between them, so ``out.ready`` reaches only the last part's enable within a
    cycle (and ``inp.ready`` follows the exp core's skid register, not ``out.ready``).

    Members
    -------
    frac : In(unsigned(5))
        Fraction bits of ``x`` (0 .. 31). Sampled with the first element of each vector (the
        transfer with ``first`` set) and used for the whole vector, so the host may change it
        between vectors while earlier ones are still in the pipeline. Elements before the first
        ``first`` after reset use ``frac = 0``.
    inp : In(stream.Signature(StructLayout({"data": signed(32), "first": 1, "last": 1})))
        The elements ``x``.
    out : Out(stream.Signature(StructLayout({"data": signed(w), "first": 1, "last": 1})))
        The results, ``first``/``last`` passed through; ``w`` (:attr:`out_width`) is 22 for
        ``"sigmoid"`` (holds 0 .. 2**20) and 32 otherwise.
    """

    def __init__(self, *, mode="sigmoid", steps=1):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= F_GATE + 1:
            raise ValueError(f"steps must be an integer from 1 to {F_GATE + 1}, not {steps!r}")
        self._mode = mode
        self._steps = steps
        super().__init__({
            "frac": In(unsigned(FRAC_WIDTH)),
            "inp":  In(stream.Signature(element_layout(ACT_BITS))),
            "out":  Out(stream.Signature(element_layout(self.out_width))),
        })

    @property
    def mode(self):
        return self._mode

    @property
    def steps(self):
        return self._steps

    @property
    def out_width(self):
        return F_GATE + 2 if self._mode == "sigmoid" else ACT_BITS

    @property
    def latency(self):
        return 1 + ExpCore.LATENCY + -(-(F_GATE + 1) // self._steps) + (
            0 if self._mode == "sigmoid" else _GateProduct.LATENCY)

    def elaborate(self, platform):
        m = Module()
        tag = data.StructLayout({"x": signed(ACT_BITS), "first": 1, "last": 1})
        m.submodules.exp = exp = ExpCore(m=MODES[self._mode][0], k=MODES[self._mode][1],
                                         tag_shape=tag)
        m.submodules.div = div = PipelinedDivider(
            num_width=_E_WIDTH + F_GATE, den_width=_E_WIDTH + 1, quot_width=F_GATE + 1,
            steps=self._steps, tag_shape=tag)

        # Input: registered first (x comes straight out of block RAM in the engine), then |x|
        # and the vector's frac into the exp core. The register stalls with the exp core.
        x_in = self.inp.payload.data
        frac_held = Signal(FRAC_WIDTH)
        in_valid, in_first, in_last = Signal(), Signal(), Signal()
        x, in_frac = Signal(signed(ACT_BITS)), Signal(FRAC_WIDTH)
        in_en = Signal()
        m.d.comb += [in_en.eq(~in_valid | exp.inp.ready), self.inp.ready.eq(in_en)]
        with m.If(in_en):
            m.d.sync += [
                in_valid.eq(self.inp.valid), x.eq(x_in),
                in_first.eq(self.inp.payload.first), in_last.eq(self.inp.payload.last),
                in_frac.eq(Mux(self.inp.payload.first, self.frac, frac_held)),
            ]
        m.d.comb += [
            exp.inp.valid.eq(in_valid),
            exp.inp.payload.mag.eq(Mux(x < 0, -x, x)),
            exp.inp.payload.frac.eq(in_frac),
            exp.inp.payload.tag.x.eq(x),
            exp.inp.payload.tag.first.eq(in_first),
            exp.inp.payload.tag.last.eq(in_last),
        ]
        with m.If(self.inp.valid & self.inp.ready & self.inp.payload.first):
            m.d.sync += frac_held.eq(self.frac)

        # Skid buffers between the parts cut the ready path (the stall enable of each part
        # comes from the next one's register, not from the consumer through every part).
        m.submodules.exp_skid = exp_skid = SkidBuffer(exp.out.payload.shape())
        m.submodules.div_skid = div_skid = SkidBuffer(div.out.payload.shape())
        wiring.connect(m, exp.out, exp_skid.inp)
        wiring.connect(m, div.out, div_skid.inp)
        exp_out, div_out = exp_skid.out, div_skid.out

        # The division ((x >= 0 ? EXP_ONE : E) << 20) // (EXP_ONE + E).
        e, x_e = exp_out.payload.e, exp_out.payload.tag.x
        m.d.comb += [
            div.inp.valid.eq(exp_out.valid),
            exp_out.ready.eq(div.inp.ready),
            div.inp.payload.num.eq(Mux(x_e < 0, e, EXP_ONE) << F_GATE),
            div.inp.payload.den.eq(e + EXP_ONE),
            div.inp.payload.tag.eq(exp_out.payload.tag),
        ]

        if self._mode == "sigmoid":
            m.d.comb += [
                self.out.valid.eq(div_out.valid),
                div_out.ready.eq(self.out.ready),
                self.out.payload.data.eq(div_out.payload.quotient),
                self.out.payload.first.eq(div_out.payload.tag.first),
                self.out.payload.last.eq(div_out.payload.tag.last),
            ]
        else:
            m.submodules.product = product = _GateProduct()
            m.d.comb += [
                product.inp.valid.eq(div_out.valid),
                div_out.ready.eq(product.inp.ready),
                product.inp.payload.x.eq(div_out.payload.tag.x),
                product.inp.payload.sig.eq(div_out.payload.quotient),
                product.inp.payload.first.eq(div_out.payload.tag.first),
                product.inp.payload.last.eq(div_out.payload.tag.last),
            ]
            m.submodules.out_skid = out_skid = SkidBuffer(product.out.payload.shape())
            wiring.connect(m, product.out, out_skid.inp)
            wiring.connect(m, out_skid.out, wiring.flipped(self.out))
        return m
