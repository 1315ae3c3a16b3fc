"""The decode engine's program and memory image, computed on the host from an integer model.

:class:`EngineImage` turns an :class:`~mmfree.sim.golden.IntModel` and a lane count into what
:class:`mmfree.hw.engine.Engine` holds in its memories: the layer program (one
:data:`INSTR_LAYOUT` instruction per step of the schedule), the constants (norm weights,
lower bounds, embedding multipliers), the int8 embeddings, and the packed ternary weights
in the order the ternary unit reads them. The same words are the memory initialization of a
generated engine and the payload of the load port (:meth:`EngineImage.load_words`).

Everything here is plain Python/numpy: the host tools import it without Amaranth.

Vector memory (``vmem``, 32-bit signed words), regions in this order: ``X`` (residual
stream), ``R`` (residual after the token mixer), ``N`` (output of a stand-alone RMSNorm:
attention/mlp/final norm), ``I``, ``F``, ``G`` (the MLGRU projections), ``O`` (the token
mixer's output), ``H`` (the recurrent state, ``L x d``, layer ``l`` at ``H + l d``). Two
regions share space with vectors that are dead while they live (the engine runs one
instruction at a time): ``GN`` (RMSNorm(g)) is ``N`` (the attention norm's output has been read
by the i/f/g BitLinears before the g norm writes it, and the mlp norm overwrites it after
MLGRU_O has read it), and ``P`` (the GLU product, ``I`` elements) starts at ``I`` (``I``, ``F``,
``G`` and ``O`` are dead once o_proj has run); the space from ``I`` to ``H`` holds
``max(4 d, I)`` elements. Fewer words make fewer block RAMs: the vector memory has three read
ports, and each is a copy of it in block RAM.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field

import numpy as np

from mmfree.sim import golden
from mmfree.sim.packing import PACKINGS, chip_bytes, pack_ternary, packed_row_bytes

__all__ = ["Op", "EngineImage", "INSTR_FIELDS", "REGION", "act_saves", "op_cycles",
           "row_cycles", "step_cycles"]


class Op(enum.IntEnum):
    """Instruction opcodes (the hardware's ``op`` field)."""
    END       = 0   # the step is over
    EMBED     = 1   # X = shift_round(emb_q[token] * emb_m[token], emb_k)
    NORM      = 2   # dst = RMSNorm(src) with the constants at cbase
    BITLINEAR = 3   # dst = BitLinear(src) (+ aux, saturated, when `add`)
    MLGRU_H   = 4   # H[l] = f * H[l] + SiLU(i) * (1 - f), f = lb + (1 - lb) * sigmoid(F)
    MLGRU_O   = 5   # O = RMSNorm(g) * SiLU(H[l])
    HEAD      = 7   # logits = BitLinear(src) into the sampler; the step's token comes out


#: Fields of an instruction, (name, width, signed). The hardware layout is built from this
#: list; :meth:`EngineImage.instr_words` packs instructions in this order, LSB first.
INSTR_FIELDS = [
    ("op",        3, False),
    ("emit_only", 1, False),   # skipped in a step that does not emit a token (prefill)
    ("add",       1, False),   # BITLINEAR: add the vector at aux, saturate to 32 bits
    ("has_lb",    1, False),   # MLGRU_H: the layer has a lower bound (layers > 0)
    ("glu",       1, False),   # BITLINEAR: rows alternate gate/up; write act(gate) * up
    ("layer",     8, False),   # MLGRU_H/O: the layer (its state-valid flag)
    ("src",      18, False),   # vmem addresses
    ("dst",      18, False),
    ("aux",      18, False),
    ("n_in",     16, False),   # input length (BITLINEAR/HEAD/NORM) or vector length
    ("n_out",    16, False),   # rows (BITLINEAR/HEAD)
    ("cbase",    22, False),   # cmem address of the norm weights (or lower bounds)
    ("eps",      61, False),   # RMSNorm constants
    ("out_shift", 6, False),
    ("tbase",    24, False),   # tmem row of the first chunk
    ("chunks",   16, False),   # chunks per row: ceil(n_in / lanes) (1 when grouped)
    ("group",     3, False),   # grouped chunks: 2**group rows of lanes >> group lanes each
    ("issues",   16, False),   # chunks the instruction reads: rows * chunks, or
                               # ceil(rows / 2**group) grouped
    ("m",        15, False),   # requantizer multiplier and shift
    ("k",         6, False),
    ("frac_a",    5, False),   # sigmoid/SiLU input formats
    ("frac_b",    5, False),
    ("shift",     7, True),    # the shift of the elementwise product (EMBED: emb_k)
    ("reuse",     1, False),   # BITLINEAR: normalize with the last BitLinear's R (shared_r)
]
INSTR_BITS = sum(width for _, width, _ in INSTR_FIELDS)
#: 32-bit words an instruction takes in the program memory, and its stride in the load port's
#: address space (a power of two, so that the hardware splits an address with a shift).
PROG_WORDS = -(-INSTR_BITS // 32)
INSTR_WORDS = 1 << math.ceil(math.log2(PROG_WORDS))

#: Load-port regions: word address = (region << REGION_SHIFT) | index.
REGION_SHIFT = 24
REGION = {"prog": 0, "cmem": 1, "emb": 2, "tmem": 3}

#: Bits of a cmem word on chip: the norm weights' signed ``NORM_W_BITS``, which holds the
#: other constants too (lower bounds up to ``2**F_GATE``, embedding multipliers under
#: ``2**MANT_BITS``). The load port takes 32-bit words and the engine keeps their low bits:
#: a row of 4 words fills 11 of the ECP5 block RAMs' 9-bit byte lanes instead of 16.
CMEM_BITS = golden.NORM_W_BITS


def _pow2_words(bits: int) -> int:
    return 1 << max(0, math.ceil(math.log2(-(-bits // 32))))


@dataclass
class EngineImage:
    """The program and memory contents of an engine for one model and lane count.

    ``lanes``: a power of two, at least 4 (``"2bit"``) or 1 (``"1.6bit"``).
    ``vector_width``: elements per cycle of the normalize/quantize path
    (:class:`~mmfree.hw.normquant.NormQuant`), a power of two; the engine uses
    ``width = min(vector_width, lanes)``. Vectors in ``vmem`` and norm weights in ``cmem`` start
    at multiples of ``width`` (both memories are ``width`` words wide).
    ``packing``: how the engine stores the ternary weights (``"2bit"`` or ``"1.6bit"``,
    :mod:`mmfree.sim.packing`); empty: the model's. The weights are the same either way; a
    board whose block RAM is short stores 1.6-bit rows (20% fewer bits).
    ``fused_sums``: the writer keeps the sum of squares of every vector a norm reads, so
    NormQuant makes one pass for a NORM and two for a BITLINEAR (docs/engine.md); without it
    NormQuant makes its own sum in a first pass (three passes; the layout some boards route).
    ``glu_pairs``: where the gate/up rows are grouped (``lanes >= 2 n``), a gate row and its up
    row leave the ternary unit together, through a requantizer of two (docs/engine.md):
    half the cycles of the GLU's rows. Without it, one row a cycle.
    ``row_pairs``: the same for the other BitLinears (``i``, ``f``, ``g``, ``o_proj``,
    ``down_proj``) where grouped: two rows leave the ternary unit together, and the writer
    stores both in one cycle, or both are added to two residual elements read together
    (needs ``width >= 2``; docs/engine.md).
    ``weight_reg``: a second register between the weight memory's read and the ternary unit's
    decoders (:class:`~mmfree.hw.ternary.TernaryAccumulate`'s ``input_reg``), for a board whose
    weight block RAMs are far from the lanes: one more cycle for every BITLINEAR and HEAD.
    ``shared_r``: a BITLINEAR that normalizes the vector its predecessor normalized (the f
    and g BitLinears of a layer, after i: the same address, length and ``eps``, so the same
    sum of squares) takes the predecessor's ``R`` instead of computing it (its ``reuse``;
    NormQuant skips the square root and the reciprocal, :data:`REUSE_SAVES` cycles). The
    specification is unchanged: ``R`` is a function of the sum and ``eps`` alone. With
    ``fused_sums`` only (NormQuant's ``reuse`` needs the sum from outside).
    ``sigmoid_steps``: quotient bits a stage of the sigmoid/SiLU/GELU units' divider
    (:class:`~mmfree.hw.sigmoid.Sigmoid`'s ``steps``): 2 (the default) makes their 21 bits in
    11 stages, 10 cycles off every MLGRU op and GLU (:func:`act_saves`); 1, 21 stages.
    """
    im: golden.IntModel
    lanes: int
    vector_width: int = 8
    packing: str = ""
    fused_sums: bool = True
    glu_pairs: bool = True
    row_pairs: bool = True
    weight_reg: bool = False
    shared_r: bool = True
    sigmoid_steps: int = 2
    regions: dict = field(init=False)
    program: list = field(init=False)
    cmem: list = field(init=False)
    emb: list = field(init=False)
    tmem: list = field(init=False)          # one int per chunk of lanes weights, little-endian

    def __post_init__(self):
        cfg = self.im.config
        lanes = self.lanes
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes <= 0 or \
                lanes & (lanes - 1):
            raise ValueError(f"lanes must be a positive power of two, not {lanes!r}")
        self.packing = self.packing or cfg.packing
        if self.packing not in PACKINGS:
            raise ValueError(f"packing must be one of {', '.join(PACKINGS)}, "
                             f"not {self.packing!r}")
        if self.packing == "2bit" and lanes < 4:
            raise ValueError(f"lanes must be at least 4 for 2bit packing, not {lanes}")
        vw = self.vector_width
        if not isinstance(vw, int) or isinstance(vw, bool) or vw <= 0 or vw & (vw - 1) or \
                vw > 64:
            raise ValueError(f"vector_width must be a power of two from 1 to 64, not {vw!r}")
        self.width = min(vw, lanes)
        st = self.sigmoid_steps
        if not isinstance(st, int) or isinstance(st, bool) or not 1 <= st <= golden.F_GATE + 1:
            raise ValueError(f"sigmoid_steps must be an integer from 1 to {golden.F_GATE + 1}, "
                             f"not {st!r}")
        d, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
        if d % 4:
            raise ValueError(f"hidden_size must be a multiple of 4 for the engine, not {d}")
        if layers > 255:
            raise ValueError(f"num_layers must be at most 255 for the engine, not {layers}")
        self.h_stride = self._align(d)
        self.regions, base = {}, 0
        for name in ("X", "R", "N", "I", "F", "G", "O"):
            self.regions[name] = base
            base += self._align(d)
        self.regions["GN"] = self.regions["N"]
        self.regions["P"] = self.regions["I"]
        base = self.regions["I"] + max(4 * self._align(d), self._align(inter))
        self.regions["H"] = base
        self.vmem_depth = base + self._align(layers * self.h_stride)
        self.n_max = self._align(max(d, inter))
        self._cmem, self._tmem, self.program = [], [], []
        self.cmem_emb_m = self._const(self.im.emb_m)
        self._build()
        self._cmem.extend([0] * (self._align(len(self._cmem)) - len(self._cmem)))
        self.cmem = self._cmem
        self.tmem = self._tmem
        self.emb = [int.from_bytes(row.tobytes(), "little")
                    for row in self.im.emb_q.astype(np.int8).reshape(-1, 4)]

    # -- construction ---------------------------------------------------------------------

    def _align(self, n: int) -> int:
        return -(-n // self.width) * self.width

    def _const(self, values) -> int:
        """Append ``values`` to cmem at the next multiple of ``width``; returns its address."""
        self._cmem.extend([0] * (self._align(len(self._cmem)) - len(self._cmem)))
        base = len(self._cmem)
        for v in values:
            self._cmem.append(self._check("a constant in cmem", int(v),
                                          -(1 << (CMEM_BITS - 1)), (1 << (CMEM_BITS - 1)) - 1))
        return base

    def _check(self, name, value, lo, hi):
        if not lo <= value <= hi:
            raise ValueError(f"{name} = {value} is outside the engine's range {lo}..{hi}")
        return value

    def _norm_fields(self, nc: golden.NormConst, what: str) -> dict:
        return {"cbase": self._const(nc.w), "eps": nc.eps,
                "out_shift": self._check(f"{what}: RMSNorm out_shift",
                                         30 + nc.w_frac - nc.f_out, 0, 63)}

    def group_of(self, n: int) -> int:
        """The grouping of rows of ``n`` weights: ``g`` such that ``2**g`` rows share a chunk
        in segments of ``lanes >> g >= n`` lanes (0: one row a chunk). A segment is at least
        the normalize/quantize path's ``width`` (the q buffer is written ``width`` elements a
        beat, the same beat into every segment) and ``g`` at most 7."""
        g = 0
        while g < 7 and self.lanes >> (g + 1) >= max(n, self.width):
            g += 1
        return g

    @property
    def paired_glu(self) -> bool:
        """Whether the GLU's gate and up rows leave the ternary unit in pairs: ``glu_pairs``
        and the gate/up rows grouped."""
        return self.glu_pairs and any(instr["glu"] and instr["group"] for instr in self.program)

    @property
    def paired_rows(self) -> bool:
        """Whether the rows of the BitLinears without a GLU leave the ternary unit and reach
        ``vmem`` in pairs: ``row_pairs``, ``width >= 2`` (the writer stores two adjacent words
        of a row of ``vmem``, the residual reader reads them), some of them grouped and all of
        those an even number of rows."""
        grouped = [instr for instr in self.program
                   if instr["op"] == Op.BITLINEAR and not instr["glu"] and instr["group"]]
        return (self.row_pairs and self.width >= 2 and bool(grouped)
                and all(instr["n_out"] % 2 == 0 for instr in grouped))

    @property
    def reuses_r(self) -> bool:
        """Whether a BITLINEAR of the program takes the last one's ``R`` (``shared_r``)."""
        return any(instr["reuse"] for instr in self.program)

    @property
    def groups(self) -> tuple[int, ...]:
        """The groupings the program uses (the ternary unit's taps)."""
        return tuple(sorted({instr["group"] for instr in self.program if instr["group"]}))

    def _ternary(self, T: np.ndarray) -> dict:
        rows, n = T.shape
        g = self.group_of(n)
        if g:
            # 2**g rows a chunk, row m of a chunk in lanes [m seg, m seg + n).
            per, seg = 1 << g, self.lanes >> g
            count = -(-rows // per)
            t = np.zeros((count * per, seg), dtype=np.int8)
            t[:rows, :n] = T
            packed = pack_ternary(t.reshape(count, self.lanes), self.packing)
            fields = {"chunks": 1, "group": g, "issues": count}
        else:
            chunks = -(-n // self.lanes)
            t = np.zeros((rows, chunks * self.lanes), dtype=np.int8)
            t[:, :n] = T
            packed = pack_ternary(t.reshape(rows * chunks, self.lanes), self.packing)
            fields = {"chunks": chunks, "group": 0, "issues": rows * chunks}
        fields["tbase"] = len(self._tmem)
        # tmem holds the bytes in the code the lanes decode (sim/packing.py, chip_bytes).
        self._tmem.extend(int.from_bytes(row.tobytes(), "little")
                          for row in chip_bytes(packed, self.packing))
        return fields

    def _bitlinear(self, bl: golden.BitLinearConst, what: str, src: int, dst: int = 0,
                   **extra) -> dict:
        instr = {"op": Op.BITLINEAR, "src": src, "dst": dst, "n_in": bl.T.shape[1],
                 "n_out": bl.T.shape[0], **self._ternary(bl.T), "m": bl.m,
                 "k": self._check(f"{what}: requantizer shift k", bl.k, 1, 63),
                 **self._norm_fields(bl.norm, what)}
        instr.update(extra)
        return instr

    def _frac(self, what, value):
        return self._check(f"{what}: activation format", value, 0, 31)

    def _build(self):
        im, reg, d = self.im, self.regions, self.im.config.hidden_size
        inter = im.config.intermediate_size
        prog = self.program
        prog.append({"op": Op.EMBED, "dst": reg["X"], "n_in": d, "cbase": self.cmem_emb_m,
                     "shift": self._check("embedding shift emb_k", im.emb_k, -15, 63)})
        for index, lc in enumerate(im.layers):
            what = f"layer {index}"
            h = reg["H"] + index * self.h_stride
            prog.append({"op": Op.NORM, "src": reg["X"], "dst": reg["N"], "n_in": d,
                         **self._norm_fields(lc.attn_norm, f"{what} attn_norm")})
            for name, region in (("i_proj", "I"), ("f_proj", "F"), ("g_proj", "G")):
                prog.append(self._bitlinear(getattr(lc, name), f"{what} {name}", reg["N"],
                                            reg[region]))
            prog.append({"op": Op.NORM, "src": reg["G"], "dst": reg["GN"], "n_in": d,
                         **self._norm_fields(lc.g_norm, f"{what} g_norm")})
            f_i, f_f = lc.i_proj.f_out, lc.f_proj.f_out
            lb = {"has_lb": 1, "cbase": self._const(lc.lb)} if lc.lb is not None else {}
            prog.append({"op": Op.MLGRU_H, "src": reg["F"], "dst": h, "aux": h, "n_in": d, "layer": index,
                         "frac_a": self._frac(f"{what} f_proj", f_f),
                         "frac_b": self._frac(f"{what} i_proj", f_i), **lb})
            prog.append({"op": Op.MLGRU_O, "aux": h, "dst": reg["O"], "n_in": d,
                         "layer": index, "frac_b": f_i,
                         "shift": self._check(f"{what}: o shift", golden.F_NORM + f_i - lc.f_o,
                                              1, 63)})
            prog.append(self._bitlinear(lc.o_proj, f"{what} o_proj", reg["O"], reg["R"],
                                        add=1, aux=reg["X"]))
            prog.append({"op": Op.NORM, "src": reg["R"], "dst": reg["N"], "n_in": d,
                         **self._norm_fields(lc.mlp_norm, f"{what} mlp_norm")})
            # gate and up rows interleaved (gate_j, up_j): the GLU product is computed as the
            # rows come out, act(gate_j) * up_j into P.
            f_gu = lc.gate_proj.f_out
            rows = np.empty_like(lc.gate_proj.T)
            rows[0::2], rows[1::2] = lc.gate_proj.T[:inter], lc.gate_proj.T[inter:]
            prog.append(self._bitlinear(
                dataclasses.replace(lc.gate_proj, T=rows), f"{what} gate_proj", reg["N"],
                reg["P"], glu=1, frac_a=self._frac(f"{what} gate_proj", f_gu),
                shift=self._check(f"{what}: GLU shift", 2 * f_gu - lc.f_p, 1, 63)))
            prog.append(self._bitlinear(lc.down_proj, f"{what} down_proj", reg["P"], reg["X"],
                                        add=1, aux=reg["R"]))
        prog.append({"op": Op.NORM, "src": reg["X"], "dst": reg["N"], "n_in": d,
                     "emit_only": 1, **self._norm_fields(im.norm, "final norm")})
        head = self._bitlinear(im.lm_head, "lm_head", reg["N"], emit_only=1)
        head["op"] = Op.HEAD
        prog.append(head)
        prog.append({"op": Op.END})
        for instr in prog:
            for name, width, signed in INSTR_FIELDS:
                value = int(instr.setdefault(name, 0))
                lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else \
                    (0, (1 << width) - 1)
                self._check(f"instruction field {name}", value, lo, hi)
        if self.shared_r and self.fused_sums:
            self._share_r()
        if self.fused_sums:
            self._check_sums()

    def _share_r(self):
        """``reuse`` on every BITLINEAR whose predecessor is a BITLINEAR of the same input
        (address, length, ``eps``; both run in the same steps) that does not write it."""
        for prev, instr in zip(self.program, self.program[1:]):
            if instr["op"] == prev["op"] == Op.BITLINEAR and \
                    all(instr[k] == prev[k] for k in ("src", "n_in", "eps", "emit_only")):
                n = self._align(self._written(prev))
                if not (prev["dst"] < instr["src"] + instr["n_in"] and
                        instr["src"] < prev["dst"] + n):
                    instr["reuse"] = 1

    @property
    def norm_sources(self) -> list[int]:
        """The vmem addresses that a NORM, BITLINEAR or HEAD normalizes: the engine keeps the
        sum of squares of the last vector written at each (its writer computes it), so its
        NormQuant reads such a vector once, not twice."""
        return sorted({instr["src"] for instr in self.program
                       if instr["op"] in (Op.NORM, Op.BITLINEAR, Op.HEAD)})

    @staticmethod
    def _written(instr: dict) -> int:
        """The elements ``instr`` writes at ``dst`` (0: none); a NORM writes whole beats,
        zeros past the vector's end."""
        op = instr["op"]
        if op in (Op.EMBED, Op.NORM, Op.MLGRU_H, Op.MLGRU_O):
            return instr["n_in"]
        if op == Op.BITLINEAR:
            return instr["n_out"] // 2 if instr["glu"] else instr["n_out"]
        return 0

    def _check_sums(self):
        """Every vector normalized in a step (with and without the emitting instructions)
        was written whole at its address by an earlier instruction of the step, and not
        overwritten since in part: the sum of squares the engine keeps per address (see
        :attr:`norm_sources`) is then that of the vector read."""
        sources = set(self.norm_sources)
        for emit in (True, False):
            held = {}                             # address -> elements of its sum
            for instr in self.program:
                if instr["emit_only"] and not emit:
                    continue
                if instr["op"] in (Op.NORM, Op.BITLINEAR, Op.HEAD) and \
                        held.get(instr["src"]) != instr["n_in"]:
                    raise AssertionError(f"{Op(instr['op']).name} reads vmem {instr['src']} "
                                         f"with no sum of squares of its {instr['n_in']} "
                                         f"elements")
                n, dst = self._written(instr), instr["dst"]
                if n:
                    for base, length in list(held.items()):
                        if base < dst + self._align(n) and dst < base + self._align(length):
                            del held[base]
                    if dst in sources:
                        held[dst] = n

    # -- contents -------------------------------------------------------------------------

    @property
    def chunk_bits(self) -> int:
        return 8 * packed_row_bytes(self.lanes, self.packing)   # a chunk packed on its own

    @property
    def tmem_words(self) -> int:
        """32-bit words per tmem row (a power of two)."""
        return _pow2_words(self.chunk_bits)

    def cmem_rows(self, bits: int = CMEM_BITS) -> list[int]:
        """cmem as ``width``-word rows (element ``i`` in word ``i % width`` of row
        ``i // width``), ``bits``-bit two's complement words: the engine's memory
        (``CMEM_BITS``), or the load port's 32-bit words."""
        W, mask = self.width, (1 << bits) - 1
        return [sum((self.cmem[r * W + j] & mask) << (bits * j) for j in range(W))
                for r in range(len(self.cmem) // W)]

    @staticmethod
    def instr_value(instr: dict) -> int:
        value, offset = 0, 0
        for name, width, _ in INSTR_FIELDS:
            value |= (int(instr.get(name, 0)) & ((1 << width) - 1)) << offset
            offset += width
        return value

    def prog_init(self) -> list[int]:
        return [self.instr_value(instr) for instr in self.program]

    def load_words(self) -> list[tuple[int, int]]:
        """``(word address, 32-bit word)`` pairs that write this image through the load
        port: every memory, row by row, low word first."""
        words = []
        for name, rows, per_row in (("prog", self.prog_init(), INSTR_WORDS),
                                    ("cmem", self.cmem_rows(32), self.width),
                                    ("emb", self.emb, 1),
                                    ("tmem", self.tmem, self.tmem_words)):
            for row, value in enumerate(rows):
                value &= (1 << (32 * per_row)) - 1
                for sub in range(per_row):
                    address = (REGION[name] << REGION_SHIFT) | (row * per_row + sub)
                    words.append((address, (value >> (32 * sub)) & 0xFFFF_FFFF))
        return words

    def memories(self) -> dict[str, tuple[int, int, int, int]]:
        """The engine's memories as :class:`mmfree.hw.engine.Engine` declares them (without
        its debug port): ``name: (width, depth, read ports, write granularity)``, the
        granularity being the width for rows written whole. In block RAM every read port is
        a copy of the memory (one port of a block writes, the other reads)."""
        W = self.width
        return {
            "prog": (32 * PROG_WORDS, len(self.program), 1, 32),
            "cmem": (CMEM_BITS * W, len(self.cmem) // W, 1, CMEM_BITS * W),
            "emb":  (32, len(self.emb), 1, 32),
            "tmem": (self.chunk_bits, len(self.tmem), 1, self.chunk_bits),
            "vmem": (32 * W, self.vmem_depth // W, 3, 32),
            "qbuf": (8 * self.lanes, -(-self.n_max // self.lanes), 1, 8),
        }

    def instr_cycles(self, instr: dict, *, token: int = 0, sampled: bool = False) -> int:
        """:func:`op_cycles` of ``instr`` in this image's engine: its lanes, vector width,
        ``fused_sums``, ``paired_glu``, ``paired_rows``, ``weight_reg`` and vocabulary."""
        return op_cycles(instr, self.lanes, self.width, fused=self.fused_sums,
                         pairs=self.paired_glu, row_pairs=self.paired_rows,
                         weight_reg=self.weight_reg, sigmoid_steps=self.sigmoid_steps,
                         vocab=self.im.config.vocab_size, token=token, sampled=sampled)

    def ternary_weights(self) -> int:
        """Ternary weights per emitted token (every BitLinear and the lm_head)."""
        cfg = self.im.config
        d, inter = cfg.hidden_size, cfg.intermediate_size
        return cfg.num_layers * (4 * d * d + 2 * inter * d + d * inter) + cfg.vocab_size * d

    def memory_bits(self) -> dict[str, int]:
        """Bits of every engine memory (before the synthesizer rounds them to block RAMs)."""
        return {
            "prog": len(self.program) * PROG_WORDS * 32,
            "cmem": len(self.cmem) * CMEM_BITS,
            "emb": len(self.emb) * 32,
            "tmem": len(self.tmem) * self.chunk_bits,
            "vmem": self.vmem_depth * 32,
            "qbuf": -(-self.n_max // self.lanes) * self.lanes * 8,
        }


# --------------------------------------------------------------------------------------------
# The schedule: cycles per instruction and per step (docs/engine.md derives every term).

#: Cycles to fetch, decode and start an instruction (FETCH, DECODE, START), and of the
#: reader's 2-cycle latency, are in the constants below; a skipped instruction costs 2.
SKIP_CYCLES = 2


def tree_latency(lanes: int, input_reg: bool = False) -> int:
    """:attr:`mmfree.hw.ternary.TernaryAccumulate.latency`: ``ceil(log2(lanes) / 2) + 3``, plus
    1 with ``input_reg`` (the image's ``weight_reg``)."""
    return ((lanes.bit_length() - 1) + 1) // 2 + 3 + bool(input_reg)


#: BITLINEAR with ``reuse``: the cycles NormQuant saves (its square root, its reciprocal ``R``
#: and the three cycles before them: ``NormQuant.LATENCY_SUM_IN - NormQuant.LATENCY_REUSE``).
REUSE_SAVES = 21

#: BITLINEAR with paired GLU rows: cycles after the last pair leaves the ternary unit (the
#: activation, then the product), with the activation's divider one bit a stage (less
#: :func:`act_saves` with more).
PAIR_TAIL = 41


def act_saves(sigmoid_steps: int) -> int:
    """Cycles that a sigmoid/SiLU/GELU unit whose divider makes ``sigmoid_steps`` quotient
    bits a stage saves against one bit a stage: ``21 - ceil(21 / sigmoid_steps)`` (10 for 2),
    :attr:`mmfree.hw.sigmoid.Sigmoid.latency`."""
    bits = golden.F_GATE + 1
    return bits - -(-bits // sigmoid_steps)


def row_cycles(instr: dict, pairs: bool = False, row_pairs: bool = False) -> int:
    """Cycles of a BITLINEAR's or HEAD's ternary rows: ``rows * chunks``, one row a cycle, or
    ``rows / 2`` for rows in pairs: the GLU's gate/up rows with ``pairs`` (the image's
    :attr:`~EngineImage.paired_glu`), another BITLINEAR's with ``row_pairs`` (the image's
    :attr:`~EngineImage.paired_rows`); grouped rows only (never the lm_head's)."""
    if instr["group"] and ((pairs and instr["glu"]) or
                           (row_pairs and instr["op"] == Op.BITLINEAR and not instr["glu"])):
        return instr["n_out"] // 2
    return instr["n_out"] * instr["chunks"]


def op_cycles(instr: dict, lanes: int, width: int = 1, *, fused: bool = True,
              pairs: bool = False, row_pairs: bool = False, weight_reg: bool = False,
              sigmoid_steps: int = 1, vocab: int = 0, token: int = 0,
              sampled: bool = False) -> int:
    """Cycles the engine spends on one instruction, from its fetch to the next fetch.

    ``n`` = ``n_in``, ``B = ceil(n / width)`` beats of the normalize/quantize path,
    ``rows`` = ``n_out``, ``chunks`` = ``ceil(n / lanes)``:

    - EMBED: ``n + 10``;
    - NORM: ``B + 37`` (:class:`~mmfree.hw.normquant.NormQuant` with ``sum_in`` and
      without the quantizer, ``y`` written as pass 2 makes it: ``B + 32``, plus the beat
      readers and the sequencer); ``3 B + 52`` without ``fused`` (the image's ``fused_sums``:
      NormQuant's own sum of squares in pass 1, ``y`` out in pass 3);
    - BITLINEAR: ``2 B + rows * chunks + 72 + tree_latency(lanes, weight_reg) + 2 add``
      (``add``: 1 with the residual add; ``weight_reg``: the image's), less
      :data:`REUSE_SAVES` (21) with ``reuse`` (the last BitLinear's ``R``);
      ``3 B + rows * chunks + 75 + ...`` without ``fused``; ``rows / 2`` for ``rows * chunks``
      with ``row_pairs`` (the image's :attr:`~EngineImage.paired_rows`), grouped rows and no
      GLU: two rows a cycle, the same cycles after the last pair;
    - HEAD: as BITLINEAR plus 1 (the logits' register in front of the sampler), plus
      ``2 V + 35 + token`` when sampling (the sampler's Shiftmax, draw and scan,
      :class:`~mmfree.hw.sampler.Sampler`);
    - BITLINEAR with ``glu`` (gate/up rows interleaved): as BITLINEAR plus
      ``max(41 - chunks, 8)``: the last product (6 cycles) waits for SiLU/GELU (35 cycles)
      of the last gate row, which left the ternary unit ``chunks`` cycles before the last up
      row; with ``pairs`` (the image's :attr:`~EngineImage.paired_glu`) and grouped rows,
      ``rows / 2`` cycles of rows, plus :data:`PAIR_TAIL` (41) instead: the gate and up rows
      leave together, the last product waits for the last gate's activation;
    - MLGRU_H: ``n + 49``; MLGRU_O: ``n + 46``.

    Every term with the activation's latency in it (the GLU's 41, MLGRU_H's 49, MLGRU_O's
    46) is :func:`act_saves` ``(sigmoid_steps)`` shorter with its divider ``sigmoid_steps``
    bits a stage.
    """
    act = act_saves(sigmoid_steps)
    op, n = Op(instr["op"]), instr["n_in"]
    beats = -(-n // width)
    if op == Op.EMBED:
        return n + 10
    if op == Op.NORM:
        return beats + 37 if fused else 3 * beats + 52
    if op in (Op.BITLINEAR, Op.HEAD):
        front = 2 * beats + 72 - REUSE_SAVES * instr.get("reuse", 0) if fused else \
            3 * beats + 75
        cycles = (front + row_cycles(instr, pairs, row_pairs) + tree_latency(lanes, weight_reg)
                  + 2 * instr["add"])
        if pairs and instr["glu"] and instr["group"]:
            cycles += PAIR_TAIL - act
        elif instr["glu"]:
            cycles += max(41 - act - instr["chunks"], 8)
        if op == Op.HEAD:
            cycles += 1               # the logits' register in front of the sampler
        if op == Op.HEAD and sampled:
            cycles += 2 * vocab + 35 + token
        return cycles
    if op == Op.MLGRU_H:
        return n + 49 - act
    if op == Op.MLGRU_O:
        return n + 46 - act
    if op == Op.END:
        return 0
    raise ValueError(f"no cycle count for {op!r}")


def step_cycles(image: EngineImage, *, emit: bool = True, token: int = 0,
                sampled: bool = False) -> int:
    """Cycles of one decode step (the engine's ``cycles`` output): ``emit`` runs the final
    norm, the lm_head and the sampler; ``token`` is the sampled token (its scan time)."""
    total = 1 + SKIP_CYCLES    # the step transfer, and the END instruction's fetch and decode
    for instr in image.program:
        if instr["emit_only"] and not emit:
            total += SKIP_CYCLES
        else:
            total += image.instr_cycles(instr, token=token, sampled=sampled)
    return total
