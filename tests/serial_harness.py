"""Shared by tests/test_serial.py: program builders and the reference run of the serial engine
(:class:`mmfree.sim.serial.Machine`), so that the Amaranth and cocotb tests compare the same
things: the token of every step, every step's cycle count and a window of ``M``."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from mmfree.sim.serial import (MEM_WORDS, PROG_BASE, PROG_WORDS, Instr, Machine, MachineError, Op,
                               Src)

HALT = Instr(Op.HALT).encode()
POOL = 2048          # constant pool (pairs of words for LD2)
DUMP = 3072          # register dumps
WINDOW = 4096        # M words compared after a run


@dataclass
class Step:
    """One decode step: an optional program and M words written through the load port
    first, then the step's inputs."""
    token: int = 0
    emit: int = 0
    x0: int = 0
    program: list[int] | None = None
    writes: list[tuple[int, int]] = field(default_factory=list)
    reset_state: bool = False
    tok_wait: int = 0              # cycles token.ready stays low once token.valid is high


def machine_run(steps, mem, *, token_bits, seed=None):
    """``([(token or None, cycles), ...], M)`` of :class:`Machine` for the steps; the program
    of the first step is the initial program."""
    mach = Machine(steps[0].program or [], mem, token_bits=token_bits)
    if seed is not None:
        mach.seed(seed)
    results = []
    for index, st in enumerate(steps):
        for address, word in st.writes:
            if address < MEM_WORDS or PROG_BASE <= address < PROG_BASE + PROG_WORDS:
                mach.write(address, word)      # the hardware ignores other addresses
        if index and st.program is not None:
            for i, word in enumerate(st.program):
                mach.write(PROG_BASE + i, word)
        if st.reset_state:
            mach.reset_state()
        out = mach.step(st.token, st.emit, st.x0)
        results.append((out, mach.cycles + (st.tok_wait if out is not None else 0)))
    return results, mach.M


def enc(op, src=Src.IMM, imm=0, aux=0, jx=False, px=False) -> int:
    return Instr(Op(op), Src(src), imm, aux, jx, px).encode()


class Builder:
    """Programs with constants: ``const(v)`` loads any 80-bit ``v`` into A (LD2 of a pool
    pair, SHL 16, two ADDs); ``dump()`` stores A, S, R0..R7 and J at DUMP onwards."""

    def __init__(self, rng: random.Random, mem: list[int]):
        self.rng = rng
        self.mem = mem
        self.pool = POOL
        self.dump_at = DUMP
        self.words: list[int] = []

    def emit(self, *words):
        self.words.extend(words)

    def const(self, value: int):
        assert -(1 << 79) <= value < (1 << 79), value
        hi, lo = value >> 16, value & 0xFFFF
        address = self.pool
        self.pool += 2
        self.mem[address] = hi & 0xFFFF_FFFF
        self.mem[address + 1] = (hi >> 32) & 0xFFFF_FFFF
        self.emit(enc(Op.LD2, Src.MEM, address), enc(Op.SHL, imm=16))
        first = min(lo, 0x7FFF)
        self.emit(enc(Op.ADD, imm=first), enc(Op.ADD, imm=lo - first))

    def const_s(self, value: int):
        self.const(value)
        self.emit(enc(Op.PUTS))

    def const_r(self, reg: int, value: int):
        self.const(value)
        self.emit(enc(Op.PUT, aux=reg))

    def dump(self):
        """A (3 words), S (3 words), R0..R7, J: 15 words; A and S are lost."""
        base = self.dump_at
        self.dump_at += 16
        self.emit(enc(Op.ST, imm=base), enc(Op.SHR, imm=32), enc(Op.ST, imm=base + 1),
                  enc(Op.SHR, imm=32), enc(Op.ST, imm=base + 2), enc(Op.GETS),
                  enc(Op.ST, imm=base + 3), enc(Op.SHR, imm=32), enc(Op.ST, imm=base + 4),
                  enc(Op.SHR, imm=32), enc(Op.ST, imm=base + 5))
        for reg in range(8):
            self.emit(enc(Op.LD, Src.REG, reg), enc(Op.ST, imm=base + 6 + reg))
        self.emit(enc(Op.GETJ), enc(Op.ST, imm=base + 14))


def random_value(rng: random.Random, bits: int = 80) -> int:
    """A signed value of at most ``bits`` bits, biased to edge cases."""
    kind = rng.randrange(8)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if kind == 0:
        return rng.choice([0, 1, -1, lo, hi, lo + 1, hi - 1])
    if kind == 1:
        return rng.randint(-300, 300)
    if kind == 2:
        width = rng.randint(1, bits)
        return rng.randint(-(1 << (width - 1)), (1 << (width - 1)) - 1)
    if kind == 3:
        return rng.choice([1, -1]) << rng.randrange(max(1, bits - 1))
    return rng.randint(lo, hi)


def try_machine(words, mem, token_bits=8, **kwargs):
    """Runs a program on :class:`Machine`; None if it breaks a precondition."""
    try:
        return machine_run([Step(program=words + [HALT], **kwargs)], mem,
                           token_bits=token_bits)
    except (MachineError, AssertionError, OverflowError, MemoryError):
        return None



def _width(value: int) -> int:
    """Signed bits of ``value``."""
    return (value if value >= 0 else ~value).bit_length() + 1


def op_block(rng: random.Random, bld: Builder, op: Op, src: Src, *, token_bits: int = 8):
    """Setup with random operands (meeting ``op``'s preconditions most of the time) and one
    ``op`` instruction with operand mode ``src``."""
    aux = rng.randrange(64)
    jx = px = False
    imm = rng.randrange(-(1 << 15), 1 << 15)
    a = random_value(rng)
    s = random_value(rng)
    b = None                                   # wanted value of B (IMM/REG/MEM)
    if op in (Op.MUL,):
        a = random_value(rng, 48)
        b = random_value(rng, rng.choice([16, 32]))
        if src is Src.ACC:
            b = a = random_value(rng, rng.randint(2, 40))
    elif op is Op.MULS:
        s = random_value(rng, 48)
        a = random_value(rng, rng.randint(1, 64))
        aux = min(63, _width(a) - 1 + rng.randrange(3))
    elif op is Op.DIVS:
        s = abs(random_value(rng, rng.randint(2, 79))) or 1
        w = rng.randint(1, 64)
        a = rng.randrange(0, min(s << w, 1 << 79))
        if rng.random() < 0.2:
            a = min(s << w, 1 << 79) - 1
        aux = w - 1
    elif op is Op.ISQRT:
        a = rng.choice([0, 1, (1 << 32) - 1, rng.randrange(1 << 16) ** 2,
                        rng.randrange(1 << 32), rng.randrange(1 << 32)])
    elif op is Op.BITLEN:
        a = rng.choice([a if a >= 0 else ~a, 0, 1, (1 << 79) - 1])
    elif op in (Op.SHR, Op.SHRR, Op.SHL):
        amount = rng.choice([0, 1, 79, 80, 81, 200, rng.randint(-90, 90),
                             rng.randint(-90, 90), rng.randint(0, 90)])
        if op is Op.SHL:
            amount = abs(amount)
        if src is Src.ACC:
            amount = rng.choice([rng.randint(-20, 200), (1 << 40) + 3, -rng.randint(1, 6)])
            a = amount
        elif amount <= 0 or op is Op.SHL:
            a = random_value(rng, max(1, 80 - abs(amount)))
        b = amount
        if op is not Op.SHL and src is not Src.ACC and rng.random() < 0.1:
            b = rng.choice([(1 << 31) - 1, 1 << 20, 32767])
    elif op is Op.TOK:
        a = rng.randrange(1 << token_bits)
    elif op is Op.LDX:
        a = rng.choice([rng.randrange(1 << 15), rng.randrange(-(1 << 15), 0),
                        random_value(rng)])
    elif op is Op.SETP:
        a = rng.choice([rng.randrange(1 << 15), random_value(rng)])
    elif op is Op.FOR:
        b = rng.randint(1, 6)
        if src is Src.ACC:
            a = b
    elif op is Op.DOT:
        return _dot_block(rng, bld, src)
    elif op is Op.SKIP:
        aux = rng.randrange(6)
        b = rng.choice([0, 1, -1, rng.randint(-5, 5), random_value(rng, 32)])
        if src is Src.ACC:
            a = rng.choice([0, 1, -1, random_value(rng)])
    elif op in (Op.ABS, Op.NEG):
        if a == -(1 << 79):
            a += 1
    elif op is Op.LDU and src not in (Src.REG, Src.MEM):
        src = Src.REG
    if b is None:
        b = random_value(rng, 16 if src is Src.IMM else 32)
    if op is Op.MUL:
        aux = min(63, max(_width(b), 1) - 1 + rng.randrange(4))
    if src is Src.ACC and b is not None and op in (Op.MUL,):
        aux = min(63, _width(a) - 1 + rng.randrange(3))
    # P and J: sometimes set, for the address modes.
    if rng.random() < 0.5:
        bld.const(rng.randrange(1 << 15) if rng.random() < 0.3 else rng.randrange(512))
        bld.emit(enc(Op.SETP))
        px = rng.random() < 0.7
    if src is Src.REG:
        reg = rng.randrange(8)
        bld.const_r(reg, b if -(1 << 31) <= b < (1 << 31) else b & 0x7FFF_FFFF)
        imm = reg + 8 * rng.randrange(8)
    bld.const_s(s)
    bld.const(a)
    instr = dict(src=src, imm=imm, aux=aux, jx=jx, px=px)
    if src is Src.IMM:
        instr["imm"] = b if -(1 << 15) <= b < (1 << 15) else b & 0x7FFF
        if op is Op.AND:
            instr["imm"] = rng.randrange(1 << 16)
        if op in (Op.JMP, Op.CALL):
            instr["imm"] = len(bld.words) + 2       # the next instruction but one
    words = [enc(op, **instr)]
    if src is Src.MEM or op in (Op.ST, Op.LD2, Op.LDB, Op.LDX):
        instr["imm"] = rng.randrange(1 << 16) if rng.random() < 0.3 else rng.randrange(1024)
        words = [enc(op, **instr)]
    if op in (Op.JMP, Op.CALL):
        target = len(bld.words) + 2
        instr["imm"] = target
        words = [enc(op, **instr), enc(Op.NEG)]    # NEG is jumped over
        if op is Op.CALL:
            words = [enc(op, **instr), enc(Op.JMP, imm=target + 2),
                     enc(Op.ADD, imm=5), enc(Op.RET, src=rng.choice(list(Src)))]
    elif op is Op.RET:
        words = [enc(Op.CALL, imm=len(bld.words) + 3), enc(Op.JMP, imm=len(bld.words) + 5),
                 enc(Op.NOP), enc(Op.ADD, imm=7), enc(op, **instr)]
    elif op is Op.SKIP:
        words.append(rng.choice([enc(Op.NEG), enc(Op.LD, Src.MEM, rng.randrange(1024)),
                                 enc(Op.MUL, imm=3, aux=3)]))
    elif op is Op.NEXT:
        words = [enc(Op.FOR, imm=rng.randint(1, 4)), enc(Op.GETJ), enc(Op.SADD),
                 enc(op, **instr)]
    elif op is Op.FOR:
        words += [enc(Op.GETJ), enc(Op.SADD), enc(Op.NEXT)]
    elif op is Op.LDB or (src is Src.MEM and rng.random() < 0.3) or op is Op.STQ:
        # In a loop: J (and J >> 2) take several values.
        words = [enc(Op.FOR, imm=rng.randint(1, 9))] + words + [
            enc(Op.ST, imm=rng.randrange(1024), jx=True), enc(Op.NEXT)]
        if op is Op.STQ:
            words = [enc(Op.FOR, imm=rng.randint(1, 40)), enc(Op.GETJ),
                     enc(Op.MUL, imm=37, aux=6)] + [enc(Op.STQ, src=src)] + [enc(Op.NEXT)]
    if src is Src.MEM:
        # The word B reads: its address is known once the state is (the Machine checks).
        pass
    bld.emit(*words)


def _dot_block(rng, bld, src):
    """STQ a random q vector (bytes of M through LDB), rows of ternary codes, DOT."""
    mem = bld.mem
    n = rng.choice([1, 7, 15, 16, 17, 31, 33, 64, rng.randint(1, 200), 2048 if rng.random()
                    < 0.05 else rng.randint(1, 300)])
    fill = rng.randint(1, min(n, 120))
    base = 4096 + rng.randrange(64) * 16
    for i in range(fill // 4 + 1):
        mem[base + i] = rng.randrange(1 << 32)
    bld.emit(enc(Op.FOR, imm=fill), enc(Op.LDB, imm=base), enc(Op.STQ), enc(Op.NEXT))
    words = -(-n // 16)
    row = 8192 + rng.randrange(1024)
    for w in range(words):
        codes = [rng.choice([0, 1, 3]) if 16 * w + i < n else 0 for i in range(16)]
        mem[row + w] = sum(c << (2 * i) for i, c in enumerate(codes))
    bld.const(row)
    bld.emit(enc(Op.SETP))
    if src is Src.IMM:
        bld.emit(enc(Op.DOT, imm=n))
    elif src is Src.REG:
        reg = rng.randrange(8)
        bld.const_r(reg, n)
        bld.emit(enc(Op.DOT, Src.REG, reg))
    elif src is Src.MEM:
        address = rng.randrange(1024)
        mem[address] = n
        bld.emit(enc(Op.DOT, Src.MEM, address))
    else:
        bld.const(n)
        bld.emit(enc(Op.DOT, Src.ACC))
    bld.emit(enc(Op.ST, imm=rng.randrange(1024)), enc(Op.SETP), enc(Op.GETJ))


def random_program(rng: random.Random, ops, srcs, blocks: int, *, dump_every: int = 1,
                   token_bits: int = 8, tries: int = 60):
    """``(words, mem)``: ``blocks`` random op blocks (each op of ``ops`` with a mode of
    ``srcs``), every one checked on :class:`Machine` (a block that breaks a precondition is
    drawn again), with register dumps."""
    mem = [rng.randrange(1 << 32) if rng.random() < 0.5 else rng.randrange(-300, 300) & 0xFFFF_FFFF
           for _ in range(1024)] + [0] * (MEM_WORDS - 1024)
    bld = Builder(rng, mem)
    tok_used = False
    for index in range(blocks):
        for _ in range(tries):
            op = rng.choice(ops)
            if op is Op.TOK and tok_used:
                continue
            src = rng.choice(srcs)
            saved = (list(bld.words), bld.pool, bld.dump_at, list(mem))
            op_block(rng, bld, op, src, token_bits=token_bits)
            if (index + 1) % dump_every == 0:
                bld.dump()
            if len(bld.words) < 1000 and try_machine(bld.words, mem, token_bits) is not None:
                tok_used |= op is Op.TOK
                break
            bld.words, bld.pool, bld.dump_at = saved[:3]
            mem[:] = saved[3]
        else:
            raise AssertionError(f"no valid block for {ops} {srcs} after {tries} tries")
    return bld.words + [HALT], mem
