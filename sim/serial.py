"""The serial engine's instruction set and its reference simulator.

The serial engine (:mod:`mmfree.hw.serial`) is the decode engine for small FPGAs (the
iCEBreaker's UP5K: 5,280 logic cells, 8 DSPs, 4 SPRAMs): one accumulator machine with an
80-bit datapath, a program of 32-bit instructions in block RAM and one data memory ``M`` of
32-bit words in SPRAM that holds everything else — packed ternary weights, int8 embeddings,
norm weights, exp tables, vectors and the recurrent state. A host-side compiler
(:mod:`mmfree.sim.serial_program`) turns an integer model into a program and a memory image
that run one decode step bit-exactly as :func:`mmfree.sim.golden.decode_step` plus the sampler
of :func:`mmfree.sim.decoding.generate`.

This module is the specification: :class:`Machine` executes programs one instruction at a time
and counts the cycles the hardware takes (:func:`instr_cycles`); the hardware is tested for
equal results and equal cycle counts. Plain Python, no Amaranth.

Machine state
-------------
``A``, ``S``
    80-bit signed registers: the accumulator and a second accumulator (sums, maxima, divisor).
``R[0..7]``
    32-bit registers, read sign-extended. At the start of a step ``R7`` = token, ``R6`` =
    emit (0/1), ``R5`` = x0 (the sampler constant, 0 for greedy), ``R4`` = fresh (1 after a
    reset or ``reset_state`` until the first step starts; the program zeroes the state).
``J``, ``C``, ``L``
    Loop index (counts up from 0), loop count, loop start: one loop level (``FOR``/``NEXT``).
``P``
    15-bit pointer, an optional term of every address; ``DOT`` advances it.
``link``
    Return address of ``CALL``.
``M``
    :data:`MEM_WORDS` words of 32 bits. ``qbuf``: :data:`QBUF_BYTES` int8 activations that
    ``DOT`` reads (written by ``STQ``).
PRNG
    Xorshift32 (:func:`mmfree.sim.golden.xorshift32`), loaded with
    :func:`~mmfree.sim.golden.xorshift32_seed` of the link's seed; ``RAND`` advances it.

Instruction word (32 bits)
--------------------------
``op[31:26] src[25:24] jx[23] px[22] aux[21:16] imm[15:0]``

The operand ``B`` of an instruction is, by ``src``: ``IMM`` the sign-extended ``imm`` (``AND``
zero-extends it), ``REG`` ``R[imm & 7]``, ``MEM`` ``M[ea]`` sign-extended, ``ACC`` ``A``.
``ea = (imm + (J if jx) + (P if px)) mod MEM_WORDS``. ``aux`` holds an op's small parameter
(a register number, a width, a condition).

Cycles
------
An executed instruction takes 2 cycles (fetch, execute), plus 1 when it reads ``M``
(``src = MEM``, ``LDB``, ``LDX``; ``LD2`` 2) or reads ``B`` from a register (``src = REG``:
the registers are block RAM), plus its op's extra (``MUL``/``MULS`` ``w``, ``DIVS`` ``bits``,
``ISQRT`` 16, ``BITLEN`` ``80 - bitlen(A)``, ``DOT`` ``4 ceil(n / 16) + 2``), plus
``1 + (k - 1) // 7`` for a shift by ``k`` bits (``SHR``/``SHRR``/``SHL`` by ``k = min(|B|, 80)``,
``DIVS`` by ``k = aux``: the amount goes into a register first, then the shifter moves at most
7 bits a cycle). A skipped instruction takes 2. A step takes 3 cycles more than its
instructions (the step's start writes ``R6``, ``R5``, ``R4``); the token handoff (``TOK``) adds
the cycles the consumer holds ``ready`` low (none in :class:`Machine`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from mmfree.sim import golden

__all__ = ["Op", "Src", "Cond", "Instr", "Machine", "instr_cycles", "MEM_WORDS", "PROG_WORDS",
           "QBUF_BYTES", "ACC_BITS", "MUL_X_BITS", "PROG_BASE", "SHIFT_STEP", "STEP_START",
           "MachineError"]

MEM_WORDS = 1 << 15          # M: four SPRAMs of 16K x 16, two side by side, two deep
PROG_WORDS = 1024            # program memory (block RAM)
QBUF_BYTES = 2048            # int8 activations for DOT
ACC_BITS = 80                # A and S
MUL_X_BITS = 48              # the multiplicand (A of MUL, S of MULS) fits this signed width
PROG_BASE = 0x1_0000         # load-port address of program word 0 (M words are at 0..)
TRITS_PER_WORD = 16          # DOT: 2-bit codes, weight i of a word in bits [2i+1:2i]
DOT_LANES = 4                # DOT consumes 4 weights a cycle


class Op(enum.IntEnum):
    NOP    = 0
    HALT   = 1    # end of the step
    LD     = 2    # A = B
    LDU    = 3    # A = B as unsigned 32 bits (REG or MEM)
    LD2    = 4    # A = signed 64-bit M[ea+1]:M[ea]
    LDB    = 5    # A = signed byte (J & 3) of M[(imm + (P if px) + (J >> 2))]
    LDX    = 6    # A = M[(imm + (P if px) + A) mod MEM_WORDS], signed
    ST     = 7    # M[ea] = A[31:0]
    PUT    = 8    # R[aux & 7] = A[31:0]
    PUTS   = 9    # S = A
    GETS   = 10   # A = S
    GETJ   = 11   # A = J
    SETP   = 12   # P = A mod MEM_WORDS
    ADD    = 13   # A = A + B
    SUB    = 14   # A = A - B
    ADDS   = 15   # A = A + S
    MUL    = 16   # A = A * B; B fits aux + 1 bits signed, A fits MUL_X_BITS
    MULS   = 17   # A = S * A; A fits aux + 1 bits signed, S fits MUL_X_BITS
    DIVS   = 18   # A = A // S; 0 <= A < S * 2**(aux + 1), 0 < S < 2**47, aux < 46
    ISQRT  = 19   # A = isqrt(A); 0 <= A < 2**32
    BITLEN = 20   # A = A.bit_length(); A >= 0
    SHR    = 21   # A = A >> B (arithmetic; B < 0 shifts left by -B)
    SHRR   = 22   # A = golden.shift_round(A, B) (B <= 0 shifts left)
    SHL    = 23   # A = A << B, B >= 0
    # 24: not used (saturation is MIN and MAX with constant words)
    ABS    = 25   # A = |A|
    NEG    = 26   # A = -A
    NEGIF  = 27   # A = -A if B < 0
    MAX    = 28   # A = max(A, B)
    MIN    = 29   # A = min(A, B)
    AND    = 30   # A = A & imm (src IMM only; imm zero-extended)
    SCLR   = 31   # S = 0
    SADD   = 32   # S = S + A
    SMAX   = 33   # S = max(S, A)
    STQ    = 34   # qbuf[J] = A[7:0]
    DOT    = 35   # A = sum_i<n trit(P, i) * qbuf[i], n = B (IMM); P += ceil(n / 16)
    RAND   = 36   # advance the PRNG; A = its new state (unsigned 32 bits)
    TOK    = 37   # the step's token is A (unsigned, the token width)
    FOR    = 38   # C = B (>= 1), J = 0, L = the next instruction
    NEXT   = 39   # J += 1; jump to L while J < C
    JMP    = 40   # pc = imm
    CALL   = 41   # link = pc + 1; pc = imm
    RET    = 42   # pc = link
    SKIP   = 43   # skip the next instruction when Cond(aux) holds for B


class Src(enum.IntEnum):
    IMM = 0
    REG = 1
    MEM = 2
    ACC = 3


class Cond(enum.IntEnum):
    LT0 = 0
    GE0 = 1
    EQ0 = 2
    NE0 = 3
    LE0 = 4
    GT0 = 5


_COND = {
    Cond.LT0: lambda b: b < 0, Cond.GE0: lambda b: b >= 0, Cond.EQ0: lambda b: b == 0,
    Cond.NE0: lambda b: b != 0, Cond.LE0: lambda b: b <= 0, Cond.GT0: lambda b: b > 0,
}


class MachineError(Exception):
    """A program broke one of the instruction set's preconditions (a compiler bug)."""


@dataclass(frozen=True)
class Instr:
    op: Op
    src: Src = Src.IMM
    imm: int = 0
    aux: int = 0
    jx: bool = False
    px: bool = False

    def __post_init__(self):
        if not -(1 << 15) <= self.imm < (1 << 16):
            raise ValueError(f"imm {self.imm} does not fit 16 bits")
        if not 0 <= self.aux < 64:
            raise ValueError(f"aux {self.aux} does not fit 6 bits")

    def encode(self) -> int:
        return ((int(self.op) << 26) | (int(self.src) << 24) | (int(self.jx) << 23) |
                (int(self.px) << 22) | (self.aux << 16) | (self.imm & 0xFFFF))

    @classmethod
    def decode(cls, word: int) -> "Instr":
        return cls(op=Op((word >> 26) & 63), src=Src((word >> 24) & 3), imm=word & 0xFFFF,
                   aux=(word >> 16) & 63, jx=bool((word >> 23) & 1), px=bool((word >> 22) & 1))


def _sext(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _fits(value: int, bits: int) -> bool:
    return -(1 << (bits - 1)) <= value < (1 << (bits - 1))


# Ops whose B operand is read (the others ignore src, but for ST it names the address mode).
_READS_B = {Op.LD, Op.LDU, Op.ADD, Op.SUB, Op.MUL, Op.MAX, Op.MIN, Op.AND, Op.NEGIF,
            Op.SHR, Op.SHRR, Op.SHL, Op.DOT, Op.FOR, Op.SKIP}


SHIFT_STEP = 7                # the most bits the shifter moves in a cycle
STEP_START = 3                # cycles a step takes besides its instructions


def _shift_extra(k: int) -> int:
    return 1 + max(0, min(k, ACC_BITS) - 1) // SHIFT_STEP


def instr_cycles(ins: Instr, b: int | None = None, a: int | None = None) -> int:
    """Cycles an executed instruction takes; ``b`` is its operand ``B`` (``DOT``'s ``n``, a
    shift's amount), ``a`` the accumulator before it (``BITLEN``)."""
    cycles = 2
    if ins.op in (Op.LDB, Op.LDX):
        cycles += 1
    elif ins.op is Op.LD2:
        cycles += 2
    elif ins.src is Src.MEM and ins.op not in (Op.ST, Op.JMP, Op.CALL):
        cycles += 1
    elif ins.src is Src.REG and ins.op in _READS_B:
        cycles += 1
    if ins.op in (Op.SHR, Op.SHRR, Op.SHL):
        cycles += _shift_extra(abs(b))
    elif ins.op is Op.DIVS:
        cycles += _shift_extra(ins.aux)
    if ins.op in (Op.MUL, Op.MULS, Op.DIVS):
        cycles += ins.aux + 1
    elif ins.op is Op.ISQRT:
        cycles += 16
    elif ins.op is Op.BITLEN:
        cycles += ACC_BITS - a.bit_length()
    elif ins.op is Op.DOT:
        cycles += TRITS_PER_WORD // DOT_LANES * -(-b // TRITS_PER_WORD) + 2
    return cycles


class Machine:
    """The serial engine, one instruction at a time.

    ``program``: instruction words (at most :data:`PROG_WORDS`); ``mem``: the initial ``M``
    (a sequence of at most :data:`MEM_WORDS` unsigned 32-bit words; the rest is zero).
    ``token_bits``: width of a token. State persists across :meth:`step` calls, as in the
    hardware.
    """

    def __init__(self, program, mem, *, token_bits: int, max_instructions: int = 50_000_000):
        program = [int(w) & 0xFFFF_FFFF for w in program]
        if len(program) > PROG_WORDS:
            raise ValueError(f"program of {len(program)} words, at most {PROG_WORDS}")
        self.program = program + [Instr(Op.HALT).encode()] * (PROG_WORDS - len(program))
        self._decoded = [Instr.decode(w) for w in self.program]
        mem = np.asarray(mem, dtype=np.int64)
        if mem.size > MEM_WORDS:
            raise ValueError(f"memory image of {mem.size} words, at most {MEM_WORDS}")
        self.M = [0] * MEM_WORDS
        self.M[:mem.size] = [int(w) & 0xFFFF_FFFF for w in mem]
        self.qbuf = [0] * QBUF_BYTES
        self.token_bits = token_bits
        self.max_instructions = max_instructions
        self.A = self.S = 0
        self.R = [0] * 8
        self.J = self.C = self.L = self.P = self.link = 0
        self.prng = golden.xorshift32_seed(0)
        self.fresh = 1
        self.instructions = 0        # executed in the last step
        self.cycles = 0              # of the last step
        self.profile = None          # a Counter: cycles by Op, added to by each step when set

    # Link-side controls -------------------------------------------------------------------

    def seed(self, seed: int):
        self.prng = golden.xorshift32_seed(seed)

    def reset_state(self):
        self.fresh = 1

    def write(self, address: int, word: int):
        """A word through the load port: ``M`` at 0.., program at :data:`PROG_BASE`.."""
        word &= 0xFFFF_FFFF
        if 0 <= address < MEM_WORDS:
            self.M[address] = word
        elif PROG_BASE <= address < PROG_BASE + PROG_WORDS:
            self.program[address - PROG_BASE] = word
            self._decoded[address - PROG_BASE] = Instr.decode(word)
        else:
            raise ValueError(f"load address {address:#x} is outside the serial engine")

    # One step --------------------------------------------------------------------------------

    def step(self, token: int, emit: bool, x0: int = 0) -> int | None:
        """Run the program from 0 until ``HALT``; returns the token of ``TOK`` (or None)."""
        self.R[7], self.R[6], self.R[5], self.R[4] = int(token), int(bool(emit)), int(x0), \
            self.fresh
        self.fresh = 0
        pc = 0
        out = None
        cycles = STEP_START
        count = 0
        M, R = self.M, self.R
        profile = self.profile
        while True:
            count += 1
            if count > self.max_instructions:
                raise MachineError("the step did not reach HALT")
            ins = self._decoded[pc]
            op, src = ins.op, ins.src
            pc += 1
            b = None
            if op in _READS_B:
                if src is Src.IMM:
                    b = ins.imm & 0xFFFF if op is Op.AND else _sext(ins.imm, 16)
                elif src is Src.REG:
                    b = _sext(R[ins.imm & 7], 32)
                elif src is Src.MEM:
                    b = _sext(M[self._ea(ins)], 32)
                else:
                    b = self.A
            spent = instr_cycles(ins, b, self.A)
            cycles += spent
            if profile is not None:
                profile[op] += spent
            A = self.A
            if op is Op.NOP:
                pass
            elif op is Op.HALT:
                break
            elif op is Op.LD:
                A = b
            elif op is Op.LDU:
                if src not in (Src.REG, Src.MEM):
                    raise MachineError("LDU reads a register or memory")
                A = b & 0xFFFF_FFFF
            elif op is Op.LD2:
                ea = self._ea(ins)
                A = _sext(M[ea] | (M[(ea + 1) % MEM_WORDS] << 32), 64)
            elif op is Op.LDB:
                word = M[(ins.imm + (self.P if ins.px else 0) + (self.J >> 2)) % MEM_WORDS]
                A = _sext(word >> (8 * (self.J & 3)), 8)
            elif op is Op.LDX:
                A = _sext(M[(ins.imm + (self.P if ins.px else 0) + A) % MEM_WORDS], 32)
            elif op is Op.ST:
                M[self._ea(ins)] = A & 0xFFFF_FFFF
            elif op is Op.PUT:
                R[ins.aux & 7] = A & 0xFFFF_FFFF
            elif op is Op.PUTS:
                self.S = A
            elif op is Op.GETS:
                A = self.S
            elif op is Op.GETJ:
                A = self.J
            elif op is Op.SETP:
                self.P = A % MEM_WORDS
            elif op is Op.ADD:
                A = A + b
            elif op is Op.SUB:
                A = A - b
            elif op is Op.ADDS:
                A = A + self.S
            elif op is Op.MUL:
                self._check(_fits(b, ins.aux + 1), f"MUL operand {b} wider than {ins.aux + 1}")
                self._check(_fits(A, MUL_X_BITS), f"MUL multiplicand {A} too wide")
                A = A * b
            elif op is Op.MULS:
                self._check(_fits(A, ins.aux + 1), f"MULS operand {A} wider than {ins.aux + 1}")
                self._check(_fits(self.S, MUL_X_BITS), f"MULS multiplicand {self.S} too wide")
                A = self.S * A
            elif op is Op.DIVS:
                self._check(0 < self.S < (1 << (MUL_X_BITS - 1))
                            and 0 <= A < (self.S << (ins.aux + 1)) and ins.aux + 1 < MUL_X_BITS,
                            f"DIVS {A} // {self.S} in {ins.aux + 1} bits")
                A = A // self.S
            elif op is Op.ISQRT:
                self._check(0 <= A < (1 << 32), f"ISQRT of {A}")
                A = golden.isqrt(A)
            elif op is Op.BITLEN:
                self._check(A >= 0, f"BITLEN of {A}")
                A = A.bit_length()
            elif op is Op.SHR:
                A = A >> b if b >= 0 else A << -b
            elif op is Op.SHRR:
                A = golden.shift_round(A, b)
            elif op is Op.SHL:
                self._check(b >= 0, f"SHL by {b}")
                A = A << b
            elif op is Op.ABS:
                A = abs(A)
            elif op is Op.NEG:
                A = -A
            elif op is Op.NEGIF:
                A = -A if b < 0 else A
            elif op is Op.MAX:
                A = max(A, b)
            elif op is Op.MIN:
                A = min(A, b)
            elif op is Op.AND:
                self._check(src is Src.IMM, "AND takes an immediate")
                A = A & b
            elif op is Op.SCLR:
                self.S = 0
            elif op is Op.SADD:
                self.S = self.S + A
            elif op is Op.SMAX:
                self.S = max(self.S, A)
            elif op is Op.STQ:
                self._check(self.J < QBUF_BYTES, f"STQ at {self.J}")
                self.qbuf[self.J] = A & 0xFF
            elif op is Op.DOT:
                A = self._dot(b)
            elif op is Op.RAND:
                self.prng = golden.xorshift32(self.prng)
                A = self.prng
            elif op is Op.TOK:
                self._check(out is None and 0 <= A < (1 << self.token_bits), f"TOK {A}")
                out = A
            elif op is Op.FOR:
                self._check(b >= 1, f"FOR {b}")
                self.C, self.J, self.L = b, 0, pc
            elif op is Op.NEXT:
                self.J += 1
                if self.J < self.C:
                    pc = self.L
            elif op is Op.JMP:
                pc = ins.imm
            elif op is Op.CALL:
                self.link, pc = pc, ins.imm
            elif op is Op.RET:
                pc = self.link
            elif op is Op.SKIP:
                if _COND[Cond(ins.aux)](b):
                    pc += 1
                    cycles += 2
            else:
                raise MachineError(f"unknown op {op}")
            self._check(_fits(A, ACC_BITS) and _fits(self.S, ACC_BITS), "A or S overflowed")
            self.A = A
            self._check(pc < PROG_WORDS, "pc ran off the program")
        self.instructions = count
        self.cycles = cycles
        return out

    def _ea(self, ins: Instr) -> int:
        return (ins.imm + (self.J if ins.jx else 0) + (self.P if ins.px else 0)) % MEM_WORDS

    def _dot(self, n: int) -> int:
        self._check(1 <= n <= QBUF_BYTES, f"DOT over {n}")
        words = -(-n // TRITS_PER_WORD)
        total = 0
        for w in range(words):
            word = self.M[(self.P + w) % MEM_WORDS]
            for i in range(TRITS_PER_WORD):
                j = w * TRITS_PER_WORD + i
                code = (word >> (2 * i)) & 3
                if j >= n:
                    self._check(code == 0, f"weight code past the row at M[{self.P + w}]")
                    continue
                if code == 0:
                    continue
                self._check(code != 2, f"invalid weight code at M[{self.P + w}]")
                q = _sext(self.qbuf[j], 8)
                total += q if code == 1 else -q
        self.P = (self.P + words) % MEM_WORDS
        return total

    @staticmethod
    def _check(ok: bool, message: str):
        if not ok:
            raise MachineError(message)
