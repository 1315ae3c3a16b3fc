"""The serial engine's program and memory image, compiled on the host from an integer model.

:class:`SerialImage` turns an :class:`~mmfree.sim.golden.IntModel` into what the serial engine
(:mod:`mmfree.sim.serial`: the instruction set and its reference simulator) holds: one program
of :class:`~mmfree.sim.serial.Instr` words and one memory image ``M``. The same words are the
load port's payload (:meth:`SerialImage.load_words`). Plain Python/numpy, no Amaranth.

The step (the hardware runs the program as-is)
----------------------------------------------
Every step starts at pc 0 with ``R7`` = token, ``R6`` = emit, ``R5`` = x0 (0 greedy, else
:func:`~mmfree.sim.golden.sampler_x0`), ``R4`` = fresh. The program zeroes the recurrent state
when fresh, computes :func:`~mmfree.sim.golden.decode_step` with the state kept in ``M``
(region ``H``: layer ``l`` at ``H + l d``, one signed word per element, exactly golden's state)
and halts when emit is 0. Otherwise it runs the final norm and the lm_head, keeping the first
maximum of the logits as it goes; greedy steps ``TOK`` that index, sampled steps ``RAND`` once
and run :func:`~mmfree.sim.golden.sample` (Shiftmax, cumulative sum, a scan that stops at the
token). Every intermediate is bit-exact with the golden model.

Program
-------
One body runs every layer: at the start of a layer its descriptor block (the addresses and
constants of its norms and BitLinears, :data:`LAYER_FIELDS`) is copied to the fixed block
``CUR``, so the body's instructions address it with immediates; a counter in ``M`` walks the
layers. Subroutines (one ``CALL`` level, no nested loops):

``NP``  (P = a norm descriptor) the RMSNorm's first half, once per input vector: the sum of
        squares, ``R = 2**31 // isqrt(...)`` and ``t = shift_round(x R, 1 + e/2)`` into ``T``.
        The i/f/g projections share one (their input and epsilon are the same).
``NYS`` (P = descriptor) a stand-alone RMSNorm's second half: ``Y = sat(t w >> osh)``.
``BLQ`` (P = BitLinear descriptor) the BitLinear's norm into ``Y`` with ``ymax``, the activation
        quantizer into ``qbuf`` and the requantizer's constants: ``S`` = ``ys m``, ``R1`` =
        ``k - s``, ``P`` = the first weight row. The row loop (``DOT``, ``MULS``, ``SHRR``,
        saturation, with the residual add where there is one) follows inline.
``SIG``/``SILU`` sigmoid and ``x sigmoid(x)`` of ``A`` (``R3`` = alpha's mantissa, ``R4`` =
        the shift ``k + frac - EXP_FRAC``), used by the MLGRU and GLU element loops.

For the shipped iCEBreaker model (d 64, L 4, I 256, V 256) the program is 470 words and ``M``
28,644 words; a step takes about 1,081K cycles without a token, 1,115K greedy, 1,145K sampled
(x0 = -40), 44% of them in ``MUL``/``MULS`` (docs/serial.md).

Memory map (word addresses, in this order)
------------------------------------------
constants and scratch words, ``CUR``, the final norm's and lm_head's descriptors, the vectors
``X`` (residual), ``R`` (residual after the token mixer), ``Y`` (norm output), ``T`` (normalized
input of a norm), ``I``, ``F``, ``G``, ``O``, ``GU`` (gate rows then up rows), ``PV`` (GLU
product), ``LG`` (logits, then the sampler's exps and cumulative sums), ``H``, ``LB`` and
``OML`` (each ``L d``: the lower bounds and ``2**20 - lb``, zero and ``2**20`` for layer 0), the
exp tables and ``2**q`` for ``q <= EXP_N``, the embedding multipliers and the int8 embeddings
(4 per word, each row from a word boundary), the layer descriptor blocks, the norm weights (one
per word) and the ternary rows (``ceil(n / 16)`` words each, 2-bit codes,
:func:`~mmfree.sim.packing.pack_ternary`).
"""

from __future__ import annotations

import numpy as np

from mmfree.sim import golden, serial
from mmfree.sim.packing import pack_ternary
from mmfree.sim.serial import Cond, Instr, Op, Src

__all__ = ["SerialImage", "Assembler", "DESC_FIELDS", "LAYER_FIELDS"]

#: Words of a norm/BitLinear descriptor, by name (a stand-alone norm uses the first six).
DESC_FIELDS = {"eps": 0, "inp": 2, "n": 3, "osh": 4, "w": 5, "m": 6, "k": 7, "wt": 8}
DESC_WORDS = 9
_DESCS = ("attn_norm", "i_proj", "f_proj", "g_proj", "g_norm", "o_proj", "mlp_norm",
          "gate_proj", "down_proj")
_SCALARS = ("h", "sh_f", "sh_i", "o_sh", "sh_gu", "p_sh")
#: Offsets in a layer's descriptor block (and in ``CUR``): descriptors, then scalars.
LAYER_FIELDS = {**{name: DESC_WORDS * i for i, name in enumerate(_DESCS)},
                **{name: DESC_WORDS * len(_DESCS) + i for i, name in enumerate(_SCALARS)}}
LAYER_WORDS = DESC_WORDS * len(_DESCS) + len(_SCALARS)

_ONE = 1 << golden.F_GATE


def _fits16(value: int) -> bool:
    return -(1 << 15) <= value < (1 << 15)


class Assembler:
    """Instructions with symbolic jump targets, resolved by :meth:`assemble`.

    ``a(op, ...)`` appends an instruction (``imm`` may be a label name); the helpers name the
    operand: ``a.imm(op, v)``, ``a.reg(op, r)``, ``a.mem(op, addr, jx=, px=)``, ``a.acc(op)``.
    """

    def __init__(self):
        self.items = []
        self.labels = {}

    def __len__(self):
        return len(self.items)

    def label(self, name: str):
        if name in self.labels:
            raise ValueError(f"label {name!r} defined twice")
        self.labels[name] = len(self.items)

    def __call__(self, op: Op, src: Src = Src.IMM, imm=0, aux: int = 0, jx: bool = False,
                 px: bool = False):
        self.items.append((op, src, imm, aux, jx, px))

    def imm(self, op: Op, value: int, aux: int = 0):
        if not (0 <= value < (1 << 16) if op is Op.AND else _fits16(value)):
            raise ValueError(f"immediate {value} of {op.name} does not fit 16 bits")
        self(op, Src.IMM, value, aux)

    def reg(self, op: Op, r: int, aux: int = 0):
        self(op, Src.REG, r, aux)

    def mem(self, op: Op, addr: int, aux: int = 0, jx: bool = False, px: bool = False):
        self(op, Src.MEM, addr, aux, jx, px)

    def acc(self, op: Op, aux: int = 0):
        self(op, Src.ACC, 0, aux)

    def put(self, r: int):
        self(Op.PUT, aux=r)

    def assemble(self) -> list[Instr]:
        return [Instr(op, src, self.labels[imm] if isinstance(imm, str) else imm, aux, jx, px)
                for op, src, imm, aux, jx, px in self.items]


class SerialImage:
    """The serial engine's program and ``M`` image for one integer model.

    Raises ``ValueError`` (one sentence, with the numbers) when the model does not fit the
    engine: its memory, its program memory, its activation buffer, or a range of the
    instruction set.
    """

    lanes = serial.DOT_LANES
    width = 1
    packing = "2bit"
    #: The data memory (SPRAM on the iCEBreaker) cannot be initialized by a bitstream: a
    #: device starts with no valid model and the host always loads one (protocol.identity_for).
    starts_loaded = False
    #: Part of the configuration hash (protocol.config_hash): a host never takes a serial
    #: engine for a parallel one of the same lanes and width.
    engine = "serial"

    def __init__(self, im: golden.IntModel):
        self.im = im
        cfg = im.config
        self.d, self.inter, self.vocab = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
        self.layers = cfg.num_layers
        self.token_bits = max(1, (self.vocab - 1).bit_length())
        self.n_max = max(self.d, self.inter)
        if self.n_max > serial.QBUF_BYTES:
            raise ValueError(f"the model's largest BitLinear input has {self.n_max} elements, "
                             f"more than the serial engine's {serial.QBUF_BYTES}-byte "
                             f"activation buffer")
        for name, value in (("2 x intermediate_size", 2 * self.inter),
                            ("vocab_size", self.vocab),
                            ("num_layers x hidden_size", self.layers * self.d)):
            if value >= (1 << 15):
                raise ValueError(f"{name} = {value:,} exceeds the serial engine's loop count "
                                 f"of {(1 << 15) - 1:,}")
        self._words: list[int] = []
        self._consts: dict[int, int] = {}
        self.regions: dict[str, int] = {}
        self.descs: dict = {}
        self._layout()
        if len(self._words) > serial.MEM_WORDS:
            raise ValueError(f"the model needs {len(self._words):,} words of the serial "
                             f"engine's {serial.MEM_WORDS:,}-word memory")
        self._asm = Assembler()
        self._build()
        self.program = self._asm.assemble()
        self.labels = dict(self._asm.labels)
        if len(self.program) > serial.PROG_WORDS:
            raise ValueError(f"the model needs a program of {len(self.program):,} words, more "
                             f"than the serial engine's {serial.PROG_WORDS:,}")
        self.mem = np.array([w & 0xFFFF_FFFF for w in self._words], dtype=np.uint32)

    # -- memory ---------------------------------------------------------------------------

    def _alloc(self, name: str | None, size: int) -> int:
        base = len(self._words)
        self._words.extend([0] * size)
        if name is not None:
            self.regions[name] = base
        return base

    def _place(self, values) -> int:
        base = len(self._words)
        self._words.extend(int(v) for v in values)
        return base

    def _const(self, value: int) -> int:
        """Address of a constant word (two words, low first, when it needs 64 bits)."""
        value = int(value)
        if value not in self._consts:
            if -(1 << 31) <= value < (1 << 31):
                self._consts[value] = self._place([value])
            else:
                assert -(1 << 63) <= value < (1 << 63), value
                self._consts[value] = self._place([value & 0xFFFF_FFFF, value >> 32])
        return self._consts[value]

    def _saturate(self, a, bits: int):
        """``golden.saturate(A, bits)`` for ``bits <= 32``: MIN and MAX with constant words."""
        assert 2 <= bits <= 32, bits
        a.mem(Op.MIN, self._const((1 << (bits - 1)) - 1))
        a.mem(Op.MAX, self._const(-(1 << (bits - 1))))

    def _range(self, what: str, value: int, lo: int, hi: int) -> int:
        if not lo <= value <= hi:
            raise ValueError(f"{what} = {value} is outside the serial engine's range {lo}..{hi}")
        return int(value)

    def _layout(self):
        im, d, inter, V, L = self.im, self.d, self.inter, self.vocab, self.layers
        for value in (20 << golden.EXP_FRAC, _ONE, golden.INT31_MAX, golden.LOG2E[0],
                      self._act_alpha()[0]):
            self._const(value)
        for bits in sorted({golden.ACT_BITS, golden.X_BITS, golden.NORM_BITS,
                            golden.LOGIT_BITS}):
            self._const((1 << (bits - 1)) - 1)
            self._const(-(1 << (bits - 1)))
        for name in ("EMIT", "X0", "LAYER"):
            self._alloc(name, 1)
        self._alloc("CUR", LAYER_WORDS)
        self._alloc("D_NORM", DESC_WORDS)
        self._alloc("D_HEAD", DESC_WORDS)
        for name, size in (("X", d), ("R", d), ("Y", self.n_max), ("T", self.n_max), ("I", d),
                           ("F", d), ("G", d), ("O", d), ("GU", 2 * inter), ("PV", inter),
                           ("LG", V), ("H", L * d), ("LB", L * d), ("OML", L * d)):
            self._alloc(name, size)
        self.regions["EXP_HI"] = self._place(golden.EXP_HI)
        self.regions["EXP_LO"] = self._place(golden.EXP_LO)
        self.regions["POW2"] = self._place([1 << q for q in range(golden.EXP_N + 1)])
        self.regions["EMB_M"] = self._place(im.emb_m)
        self.row_words = -(-d // 4)
        emb = np.zeros((V, 4 * self.row_words), dtype=np.int8)
        emb[:, :d] = im.emb_q
        self.regions["EMB"] = self._place(emb.view("<u4").reshape(-1))
        self.regions["LAYERS"] = self._alloc(None, L * LAYER_WORDS)
        reg = self.regions
        for index, lc in enumerate(im.layers):
            block = reg["LAYERS"] + index * LAYER_WORDS
            what = f"layer {index}"
            inputs = {"attn_norm": "X", "i_proj": "Y", "f_proj": "Y", "g_proj": "Y",
                      "g_norm": "G", "o_proj": "O", "mlp_norm": "R", "gate_proj": "Y",
                      "down_proj": "PV"}
            for name in _DESCS:
                self._desc(block + LAYER_FIELDS[name], getattr(lc, name), reg[inputs[name]],
                           f"{what} {name}")
                self.descs[(index, name)] = block + LAYER_FIELDS[name]
            if lc.lb is not None:
                lb = np.asarray(lc.lb, dtype=np.int64)
                self._words[reg["LB"] + index * d:reg["LB"] + (index + 1) * d] = lb.tolist()
                oml = _ONE - lb
            else:
                oml = np.full(d, _ONE, dtype=np.int64)
            self._words[reg["OML"] + index * d:reg["OML"] + (index + 1) * d] = oml.tolist()
            f_i, f_f = lc.i_proj.f_out, lc.f_proj.f_out
            f_gu = lc.gate_proj.f_out
            scalars = {
                "h": reg["H"] + index * d,
                "sh_f": golden.LOG2E[1] + f_f - golden.EXP_FRAC,
                "sh_i": golden.LOG2E[1] + f_i - golden.EXP_FRAC,
                "o_sh": golden.F_NORM + f_i - lc.f_o,
                "sh_gu": self._act_alpha()[1] + f_gu - golden.EXP_FRAC,
                "p_sh": 2 * f_gu - lc.f_p,
            }
            for name, value in scalars.items():
                self._words[block + LAYER_FIELDS[name]] = self._range(
                    f"{what} {name}", value, -(1 << 31), (1 << 31) - 1)
        self._desc(reg["D_NORM"], im.norm, reg["X"], "final norm")
        self._desc(reg["D_HEAD"], im.lm_head, reg["Y"], "lm_head")
        self.descs["norm"], self.descs["lm_head"] = reg["D_NORM"], reg["D_HEAD"]

    def _act_alpha(self) -> tuple[int, int]:
        return golden.LOG2E if self.im.config.hidden_act == "silu" else golden.GELU_LOG2E

    def _desc(self, addr: int, const, inp: int, what: str):
        """Write the descriptor of a NormConst or BitLinearConst at ``addr``."""
        norm = const if isinstance(const, golden.NormConst) else const.norm
        n = len(norm.w)
        if not 1 <= norm.eps < (1 << 63):
            raise ValueError(f"{what}: RMSNorm epsilon {norm.eps} does not fit 64 bits")
        if np.any(np.abs(norm.w) >= (1 << 23)):
            raise ValueError(f"{what}: a norm weight does not fit 24 bits")
        words = [norm.eps & 0xFFFF_FFFF, norm.eps >> 32, inp, n,
                 self._range(f"{what}: norm shift", 30 + norm.w_frac - norm.f_out, -63, 63),
                 self._place(norm.w)]
        if isinstance(const, golden.BitLinearConst):
            rows = const.T.shape[0]
            n16 = -(-n // serial.TRITS_PER_WORD) * serial.TRITS_PER_WORD
            t = np.zeros((rows, n16), dtype=np.int8)
            t[:, :n] = const.T
            packed = np.ascontiguousarray(pack_ternary(t, "2bit"))
            words += [self._range(f"{what}: requantizer multiplier m", const.m, 1,
                                  (1 << golden.MANT_BITS) - 1),
                      self._range(f"{what}: requantizer shift k", const.k, 1, 63),
                      self._place(packed.view("<u4").reshape(-1))]
        self._words[addr:addr + len(words)] = words

    # -- program --------------------------------------------------------------------------

    def _build(self):
        a, reg, d, inter, V = self._asm, self.regions, self.d, self.inter, self.vocab
        cur = reg["CUR"]
        # Step start: keep emit and x0 in M, zero the state when fresh, start at layer 0.
        a.reg(Op.LD, 6)
        a.mem(Op.ST, reg["EMIT"])
        a.reg(Op.LD, 5)
        a.mem(Op.ST, reg["X0"])
        a.reg(Op.SKIP, 4, Cond.EQ0)
        a(Op.CALL, imm="zero_h")
        a.imm(Op.LD, reg["LAYERS"])
        a.mem(Op.ST, reg["LAYER"])
        # Embedding: X = shift_round(emb_q[token] * emb_m[token], emb_k).
        a.reg(Op.LD, 7)
        a.imm(Op.LDX, reg["EMB_M"])
        a(Op.PUTS)
        a.reg(Op.LD, 7)
        rw = self.row_words
        if rw & (rw - 1) == 0:
            a.imm(Op.SHL, rw.bit_length() - 1)
        else:
            a.imm(Op.MUL, rw, aux=rw.bit_length())
        a.imm(Op.ADD, reg["EMB"])
        a(Op.SETP)
        a.imm(Op.FOR, d)
        a(Op.LDB, px=True)
        a(Op.MULS, aux=7)
        a.imm(Op.SHRR, self._range("embedding shift emb_k", self.im.emb_k, -(1 << 15),
                                   (1 << 15) - 1))
        a.mem(Op.ST, reg["X"], jx=True)
        a(Op.NEXT)

        # One layer: copy its block to CUR.
        a.label("layer")
        a.mem(Op.LD, reg["LAYER"])
        a(Op.SETP)
        a.imm(Op.FOR, LAYER_WORDS)
        a.mem(Op.LD, 0, jx=True, px=True)
        a.mem(Op.ST, cur, jx=True)
        a(Op.NEXT)
        desc = {name: cur + LAYER_FIELDS[name] for name in _DESCS}
        # Token mixer: a = attn_norm(x); i, f, g = BitLinear(a).
        self._call(desc["attn_norm"], "np")
        self._call(desc["attn_norm"], "nys")
        self._call(desc["i_proj"], "np")
        for index, lc in enumerate(self.im.layers):
            if not lc.i_proj.norm.eps == lc.f_proj.norm.eps == lc.g_proj.norm.eps:
                raise ValueError(f"layer {index}: i_proj, f_proj and g_proj have different "
                                 f"RMSNorm epsilons, but the serial engine normalizes their "
                                 f"shared input once")
        for name, dst in (("i_proj", "I"), ("f_proj", "F"), ("g_proj", "G")):
            self._call(desc[name], "blq")
            self._rows(d, d, golden.ACT_BITS, reg[dst])
        self._call(desc["g_norm"], "np")
        self._call(desc["g_norm"], "nys")
        # MLGRU, element by element: f, c, h (in place in H[l]), o = gn * SiLU(h).
        a.mem(Op.LD, self._const(golden.LOG2E[0]))
        a.put(3)
        a.mem(Op.LD, cur + LAYER_FIELDS["h"])
        a(Op.SETP)
        a.imm(Op.FOR, d)
        a.mem(Op.LD, cur + LAYER_FIELDS["sh_f"])
        a.put(4)
        a.mem(Op.LD, reg["F"], jx=True)
        a(Op.CALL, imm="sig")
        a.put(5)
        a.mem(Op.LD, reg["OML"] - reg["H"], jx=True, px=True)     # 2**20 - lb
        a.reg(Op.MUL, 5, aux=20)                                   # sigmoid < 2**20
        a.imm(Op.SHRR, golden.F_GATE)
        a.mem(Op.ADD, reg["LB"] - reg["H"], jx=True, px=True)
        a.put(5)                                                   # f <= 2**20
        a(Op.NEG)
        a.mem(Op.ADD, self._const(_ONE))
        a.put(6)                                                   # 1 - f
        a.mem(Op.LD, cur + LAYER_FIELDS["sh_i"])
        a.put(4)
        a.mem(Op.LD, reg["I"], jx=True)
        a(Op.CALL, imm="silu")
        a.reg(Op.MUL, 6, aux=21)
        a.imm(Op.SHRR, golden.F_GATE)
        a.put(6)                                                   # c
        a.mem(Op.LD, 0, jx=True, px=True)
        a.reg(Op.MUL, 5, aux=21)
        a.imm(Op.SHRR, golden.F_GATE)
        a.reg(Op.ADD, 6)
        self._saturate(a, golden.ACT_BITS)
        a.mem(Op.ST, 0, jx=True, px=True)                          # h
        a(Op.CALL, imm="silu")
        a.mem(Op.MUL, reg["Y"], aux=31, jx=True)                   # g_norm(g)
        a.mem(Op.SHRR, cur + LAYER_FIELDS["o_sh"])
        self._saturate(a, golden.ACT_BITS)
        a.mem(Op.ST, reg["O"], jx=True)
        a(Op.NEXT)
        # r = x + o_proj(o)
        self._call(desc["o_proj"], "np")
        self._call(desc["o_proj"], "blq")
        self._rows(d, d, golden.X_BITS, reg["R"], add=reg["X"])
        # Channel mixer: m = mlp_norm(r); gate, up = BitLinear(m); p = act(gate) * up.
        self._call(desc["mlp_norm"], "np")
        self._call(desc["mlp_norm"], "nys")
        self._call(desc["gate_proj"], "np")
        self._call(desc["gate_proj"], "blq")
        self._rows(2 * inter, d, golden.ACT_BITS, reg["GU"])
        a.mem(Op.LD, self._const(self._act_alpha()[0]))
        a.put(3)
        a.mem(Op.LD, cur + LAYER_FIELDS["sh_gu"])
        a.put(4)
        a.imm(Op.FOR, inter)
        a.mem(Op.LD, reg["GU"], jx=True)
        a(Op.CALL, imm="silu")
        a.mem(Op.MUL, reg["GU"] + inter, aux=31, jx=True)
        a.mem(Op.SHRR, cur + LAYER_FIELDS["p_sh"])
        self._saturate(a, golden.ACT_BITS)
        a.mem(Op.ST, reg["PV"], jx=True)
        a(Op.NEXT)
        # x = r + down_proj(p)
        self._call(desc["down_proj"], "np")
        self._call(desc["down_proj"], "blq")
        self._rows(d, inter, golden.X_BITS, reg["X"], add=reg["R"])
        # Next layer.
        end = reg["LAYERS"] + self.layers * LAYER_WORDS
        a.mem(Op.LD, reg["LAYER"])
        a.imm(Op.ADD, LAYER_WORDS)
        a.mem(Op.ST, reg["LAYER"])
        a.imm(Op.SUB, end)
        a.acc(Op.SKIP, Cond.GE0)
        a(Op.JMP, imm="layer")

        # A step without a token ends here.
        a.mem(Op.LD, reg["EMIT"])
        a.acc(Op.SKIP, Cond.NE0)
        a(Op.HALT)
        self._call(reg["D_NORM"], "np")
        self._call(reg["D_NORM"], "nys")
        self._call(reg["D_HEAD"], "np")
        self._call(reg["D_HEAD"], "blq")
        # lm_head rows; R6 = the largest logit so far, R7 = its (first) index.
        a.imm(Op.LD, -1)
        a.imm(Op.SHL, golden.LOGIT_BITS)
        a.put(6)
        self._rows(V, d, golden.LOGIT_BITS, reg["LG"], argmax=True)
        a.mem(Op.LD, reg["X0"])
        a.acc(Op.SKIP, Cond.NE0)
        a(Op.JMP, imm="greedy")
        self._sampler()
        a.label("greedy")
        a.reg(Op.LD, 7)
        a(Op.TOK)
        a(Op.HALT)
        self._subroutines()

    def _call(self, desc: int, routine: str):
        self._asm.imm(Op.LD, desc)
        self._asm(Op.SETP)
        self._asm(Op.CALL, imm=routine)

    def _rows(self, rows: int, n: int, bits: int, dst: int, add: int | None = None,
              argmax: bool = False):
        """The row loop after ``BLQ``: ``dst[j] = sat(shift_round(DOT * S, R1), bits)`` (plus
        ``add[j]``, saturated to 32 bits); ``argmax`` tracks the first maximum in R6/R7."""
        a = self._asm
        a.imm(Op.FOR, rows)
        a.imm(Op.DOT, n)
        a(Op.MULS, aux=golden.accumulator_bits(n) - 1)
        a.reg(Op.SHRR, 1)
        self._saturate(a, bits)
        if add is not None:
            a.mem(Op.ADD, add, jx=True)
            self._saturate(a, golden.X_BITS)
        a.mem(Op.ST, dst, jx=True)
        if argmax:
            a.reg(Op.SUB, 6)
            a.acc(Op.SKIP, Cond.LE0)
            a(Op.JMP, imm="argmax_update")
            a.label("argmax_next")
        a(Op.NEXT)

    def _sampler(self):
        """golden.sample: Shiftmax (n = 15, 16 bits) of the logits in LG, a draw, the scan."""
        a, reg, V = self._asm, self.regions, self.vocab
        lg = reg["LG"]
        cap = self._const(golden.INT31_MAX)
        a.label("sample")                        # A = x0, R6 = the largest logit
        a.put(5)                                 # x0 (A holds it)
        a(Op.NEG)
        a(Op.PUTS)                               # S = -x0
        a.reg(Op.LD, 5)
        a.imm(Op.SHL, 4)
        a.reg(Op.SUB, 5)
        a.put(2)                                 # 15 x0
        a.imm(Op.LD, 0)
        a.put(7)                                 # sum of e, clamped
        a.imm(Op.FOR, V)
        a.mem(Op.LD, lg, jx=True)
        a.reg(Op.SUB, 6)
        a.put(0)                                 # x = logit - max <= 0
        a.imm(Op.SHR, 4)
        a.put(1)
        a.reg(Op.LD, 0)
        a.imm(Op.SHR, 1)
        a.reg(Op.ADD, 0)
        a.reg(Op.SUB, 1)                         # p = x + (x >> 1) - (x >> 4)
        a.reg(Op.MAX, 2)
        a(Op.NEG)
        a.put(3)                                 # -p
        a(Op.DIVS, aux=4)                        # q = p // x0 <= 15
        a.put(4)
        a(Op.MULS, aux=4)
        a.reg(Op.SUB, 3)                         # r = p - q x0
        a.imm(Op.SHR, 1)
        a.reg(Op.SUB, 5)
        a.imm(Op.SHL, golden.SAMPLER_N)
        a.reg(Op.SHR, 4)                         # e = ((r >> 1) - x0) << (n - q)
        a.mem(Op.ST, lg, jx=True)
        a.reg(Op.ADD, 7)
        a.mem(Op.MIN, cap)
        a.put(7)
        a(Op.NEXT)
        # factor = (2**31 - 1) // total < 2**14 (total >= e of the maximum >= 4 << 15)
        a.reg(Op.LD, 7)
        a(Op.PUTS)
        a.mem(Op.LD, cap)
        a(Op.DIVS, aux=13)
        a.put(0)
        a(Op.SCLR)
        a.imm(Op.FOR, V)
        a.mem(Op.LD, lg, jx=True)
        a.reg(Op.MUL, 0, aux=14)
        a.imm(Op.SHR, 31 - golden.SAMPLER_BITS + 1)
        a(Op.SADD)
        a(Op.GETS)
        a.mem(Op.ST, lg, jx=True)                # cumulative sum
        a(Op.NEXT)
        a(Op.RAND)
        a(Op.MULS, aux=32)                       # draw * total (S = the last sum)
        a.imm(Op.SHR, 32)
        a(Op.NEG)
        a(Op.PUTS)                               # S = -r
        a.imm(Op.FOR, V)
        a.mem(Op.LD, lg, jx=True)
        a(Op.ADDS)
        a.acc(Op.SKIP, Cond.LE0)
        a(Op.JMP, imm="sampled")
        a(Op.NEXT)
        a.label("sampled")
        a(Op.GETJ)
        a(Op.TOK)
        a(Op.HALT)

    def _subroutines(self):
        a, reg = self._asm, self.regions
        F = DESC_FIELDS
        # argmax update (a jump target inside the lm_head row loop, not a subroutine)
        a.label("argmax_update")
        a.reg(Op.ADD, 6)
        a.put(6)
        a(Op.GETJ)
        a.put(7)
        a(Op.JMP, imm="argmax_next")

        a.label("zero_h")
        a.imm(Op.LD, 0)
        a.imm(Op.FOR, self.layers * self.d)
        a.mem(Op.ST, reg["H"], jx=True)
        a(Op.NEXT)
        a(Op.RET)

        # NP: S = sum(x*x) + eps; e; R = 2**31 // isqrt(ss >> e); T = shift_round(x R, 1 + e/2)
        a.label("np")
        a.mem(Op.LD2, F["eps"], px=True)
        a(Op.PUTS)
        a.mem(Op.LD, F["n"], px=True)
        a.put(3)
        a.mem(Op.LD, F["inp"], px=True)
        a(Op.SETP)
        a.reg(Op.LD, 3)
        a.acc(Op.FOR)
        a.mem(Op.LD, 0, jx=True, px=True)
        a.mem(Op.MUL, 0, aux=31, jx=True, px=True)
        a(Op.SADD)
        a(Op.NEXT)
        a(Op.GETS)
        a(Op.BITLEN)
        a.imm(Op.SUB, 32)
        a.put(0)
        a.imm(Op.AND, 1)
        a.reg(Op.ADD, 0)
        a.put(0)                                 # e (even)
        a(Op.GETS)
        a.reg(Op.SHR, 0)
        a(Op.ISQRT)
        a(Op.PUTS)                               # r in [2**15, 2**16)
        a.imm(Op.LD, 1)
        a.imm(Op.SHL, 31)
        a(Op.DIVS, aux=16)
        a.put(1)                                 # R in (2**15, 2**16]
        a.reg(Op.LD, 0)
        a.imm(Op.SHR, 1)
        a.imm(Op.ADD, 1)
        a.put(2)
        a.reg(Op.LD, 3)
        a.acc(Op.FOR)
        a.mem(Op.LD, 0, jx=True, px=True)
        a.reg(Op.MUL, 1, aux=17)
        a.reg(Op.SHRR, 2)
        a.mem(Op.ST, reg["T"], jx=True)
        a(Op.NEXT)
        a(Op.RET)

        # NYS: Y = saturate(shift_round(T * w, osh), 32)
        a.label("nys")
        self._norm_weight_loop(ymax=False)
        a(Op.RET)

        # BLQ: Y and ymax, qbuf, S = ys * m, R1 = k - s, P = the weights.
        a.label("blq")
        a.mem(Op.LD, F["m"], px=True)
        a.put(4)
        a.mem(Op.LD, F["k"], px=True)
        a.put(5)
        a.mem(Op.LD, F["wt"], px=True)
        a.put(6)
        self._norm_weight_loop(ymax=True)
        a.reg(Op.LD, 6)
        a(Op.SETP)
        a(Op.GETS)
        a(Op.BITLEN)
        a.imm(Op.SUB, 23)
        a.imm(Op.MAX, 0)
        a.put(0)                                 # s
        a.reg(Op.LD, 5)
        a.reg(Op.SUB, 0)
        a.put(1)                                 # k - s
        a(Op.GETS)
        a.reg(Op.SHRR, 0)
        a.put(2)                                 # ys <= 2**23
        a(Op.GETS)
        a.acc(Op.SKIP, Cond.NE0)
        a(Op.RET)                                # ymax = 0: S = 0, every output 0
        a.imm(Op.SHR, 1)
        a.put(7)                                 # ymax >> 1
        # golden's (254 |y| + ymax) // (2 ymax) is (127 |y| + (ymax >> 1)) // ymax: the
        # dropped half never reaches the next multiple of ymax.
        a.reg(Op.LD, 3)
        a.acc(Op.FOR)
        a.mem(Op.LD, reg["Y"], jx=True)
        a.put(0)                                 # y (|y| = 2**31 would not fit)
        a.imm(Op.SHL, 7)
        a.reg(Op.SUB, 0)
        a(Op.ABS)                                # 127 |y|
        a.reg(Op.ADD, 7)
        a(Op.DIVS, aux=7)                        # <= 127
        a.mem(Op.NEGIF, reg["Y"], jx=True)
        a(Op.STQ)
        a(Op.NEXT)
        a.reg(Op.LD, 2)
        a.reg(Op.MUL, 4, aux=golden.MANT_BITS)
        a(Op.PUTS)
        a(Op.RET)

        self._sigmoid("sig", silu=False)
        self._sigmoid("silu", silu=True)

    def _norm_weight_loop(self, ymax: bool):
        """The second half of a norm over the descriptor at P: R0 = its output shift, R3 = n,
        P = its weights, then ``_norm_element`` for every element (``S`` = 0 first when the
        loop also takes ``max |y|``)."""
        a, F = self._asm, DESC_FIELDS
        a.mem(Op.LD, F["osh"], px=True)
        a.put(0)
        a.mem(Op.LD, F["n"], px=True)
        a.put(3)
        a.mem(Op.LD, F["w"], px=True)
        a(Op.SETP)
        if ymax:
            a(Op.SCLR)
        a.reg(Op.LD, 3)
        a.acc(Op.FOR)
        self._norm_element(ymax=ymax)
        a(Op.NEXT)

    def _norm_element(self, ymax: bool):
        a, reg = self._asm, self.regions
        a.mem(Op.LD, reg["T"], jx=True)                       # |t| <= 2**30
        a.mem(Op.MUL, 0, aux=golden.NORM_W_BITS - 1, jx=True, px=True)
        a.reg(Op.SHRR, 0)
        self._saturate(a, golden.NORM_BITS)
        a.mem(Op.ST, reg["Y"], jx=True)
        if ymax:
            a(Op.ABS)
            a(Op.SMAX)

    def _sigmoid(self, name: str, silu: bool):
        """``sigmoid(A)`` (R3 = alpha's mantissa, R4 = its shift plus frac - EXP_FRAC), or
        ``silu``: ``saturate(shift_round(A * sigmoid(A), 20), 32)``. Uses R0-R2 and S.

        With ``e = t 2**(20 - q)`` (q <= 20) golden's ``(num << 20) // (2**40 + e)`` is, both
        sides divided by ``2**(20 - q)``: ``(u << 20) // D`` for x >= 0 and ``(t << 20) // D``
        for x < 0, ``u = 2**(20 + q)``, ``D = u + t``."""
        a, reg = self._asm, self.regions
        a.label(name)
        a.put(0)                                              # x
        a(Op.ABS)
        a.reg(Op.MUL, 3, aux=24)                              # |x| * m, m < 2**24
        a.reg(Op.SHRR, 4)
        a.mem(Op.MIN, self._const(golden.EXP_N << golden.EXP_FRAC))
        a.put(1)                                              # p
        a.imm(Op.SHR, 8)
        a.imm(Op.AND, 255)
        a.imm(Op.LDX, reg["EXP_HI"])
        a(Op.PUTS)
        a.reg(Op.LD, 1)
        a.imm(Op.AND, 255)
        a.imm(Op.LDX, reg["EXP_LO"])
        a(Op.MULS, aux=golden.EXP_BITS + 1)                   # both <= 2**20
        a.imm(Op.SHRR, golden.EXP_BITS)
        a.put(2)                                              # t
        a.reg(Op.LD, 1)
        a.imm(Op.SHR, golden.EXP_FRAC)
        a.imm(Op.LDX, reg["POW2"])
        a.imm(Op.SHL, golden.EXP_BITS)                        # u = 2**(20 + q)
        a.reg(Op.ADD, 2)
        a(Op.PUTS)                                            # D = u + t
        a.reg(Op.SUB, 2)
        a.reg(Op.SKIP, 0, Cond.GE0)
        a.reg(Op.LD, 2)                                       # x < 0: t
        a.imm(Op.SHL, golden.F_GATE)
        a(Op.DIVS, aux=golden.F_GATE - 1)                     # < 2**20
        if silu:
            a.put(1)
            a.reg(Op.LD, 0)
            a.reg(Op.MUL, 1, aux=golden.F_GATE)
            a.imm(Op.SHRR, golden.F_GATE)
            self._saturate(a, golden.ACT_BITS)
        a(Op.RET)

    # -- contents -------------------------------------------------------------------------

    def program_words(self) -> list[int]:
        return [ins.encode() for ins in self.program]

    def load_words(self) -> list[tuple[int, int]]:
        """``(address, word)`` pairs that write this image through the load port: every
        ``M`` word at its address, then every program word at ``PROG_BASE + i``."""
        return ([(i, int(w)) for i, w in enumerate(self.mem)] +
                [(serial.PROG_BASE + i, w) for i, w in enumerate(self.program_words())])

    def ternary_weights(self) -> int:
        """Ternary weights per emitted token (every BitLinear and the lm_head)."""
        d, inter = self.d, self.inter
        return self.layers * (4 * d * d + 2 * inter * d + d * inter) + self.vocab * d

    def machine(self, **kwargs) -> serial.Machine:
        """A fresh :class:`~mmfree.sim.serial.Machine` loaded with this image."""
        return serial.Machine(self.program_words(), self.mem, token_bits=self.token_bits,
                              **kwargs)
