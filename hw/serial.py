"""The serial engine: a small accumulator machine that runs a whole decode step from a program.

The instruction set, the machine state and the cycle count of every instruction are specified
by :mod:`mmfree.sim.serial` (:class:`~mmfree.sim.serial.Machine`,
:func:`~mmfree.sim.serial.instr_cycles`); this is its hardware, for the iCE40 UP5K.
"""

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal
from amaranth.lib import enum, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.hw.engine import engine_members
from mmfree.hw.xorshift import Xorshift32
from mmfree.sim.serial import (ACC_BITS, DOT_LANES, MEM_WORDS, MUL_X_BITS, PROG_BASE,
                               PROG_WORDS, QBUF_BYTES, SHIFT_STEP, TRITS_PER_WORD, Instr, Op,
                               Src)

__all__ = ["SerialEngine"]

_W = ACC_BITS                        # 80: A, S, T and the adder (plus a sign bit)
_MBITS = (MEM_WORDS - 1).bit_length()  # 15
_PBITS = (PROG_WORDS - 1).bit_length()  # 10
_JBITS = 16                          # J and C: loop counts up to 65535
_QROWS = QBUF_BYTES // DOT_LANES     # qbuf rows of DOT_LANES bytes
_LANE_BITS = (DOT_LANES - 1).bit_length()
_PARTS = TRITS_PER_WORD // DOT_LANES  # DOT cycles a weight word
_PART_BITS = (_PARTS - 1).bit_length()
assert DOT_LANES == 1 << _LANE_BITS and _PARTS == 1 << _PART_BITS
_HALT = Instr(Op.HALT).encode()


class _S(enum.Enum, shape=4):
    IDLE    = 0
    START   = 1    # the step's first cycles: R7, R6, R5
    FETCH   = 2    # program read at pc
    EXEC    = 3    # the instruction is decoded; execute, or read M or a register
    MEM1    = 4    # M or register data of the first read; execute (LD2: read the high word)
    MEM2    = 5    # LD2: the high word
    ITER    = 6    # MUL/MULS/DIVS/ISQRT/BITLEN iterations
    DOT     = 7    # DOT: DOT_LANES products a cycle
    DOT_ACC = 8    # DOT: the last sum into the accumulator
    DOT_OUT = 9    # DOT: A = the accumulator
    SHIFT   = 10   # a shift: its amount is in shamt; SHIFT_STEP bits a cycle, then execute


class _ASel(enum.Enum, shape=3):
    SUM  = 0       # also the shifter's result: X = SH, Y off
    Y    = 1
    MISC = 3
    AND  = 4
    LD2  = 6


class _YSel(enum.Enum, shape=3):
    B = 0          # the operand B of src
    M = 1          # M data, sign-extended
    A = 2
    S = 3
    T = 4


class _XSel(enum.Enum, shape=2):
    A    = 0
    ZERO = 1
    SH   = 2


class _Sh(enum.Enum, shape=2):
    SIGNED    = 0  # SHR/SHRR: right by B, left by -B when B < 0
    LEFT_B    = 1  # SHL
    RIGHT_AUX = 2  # DIVS


class _Misc(enum.Enum, shape=3):
    ZERO   = 0
    J      = 1
    PRNG   = 2
    DOT    = 3
    BITLEN = 4      # the iteration count (BITLEN shifts A left until its bit 78 is set)
    ISQRT  = 5
    BYTE   = 6


def _shift_right(v, amount, width, *, max_amount):
    """``(v >> amount)[:width]`` as a log shifter, largest stage first, each stage only as wide
    as the stages after it need (``amount <= max_amount``; bits past ``v`` are 0)."""
    bits = list(v)
    for k in reversed(range(len(amount))):
        step = 1 << k
        below = step - 1                         # the most the later stages still shift
        after_set = min(below, max_amount - step)  # ... when this stage shifts
        if after_set < 0:
            continue                             # amount never has this bit
        need = width + below
        out = []
        for j in range(min(need, len(bits))):
            far = bits[j + step] if j + step < len(bits) else Const(0, 1)
            out.append(Mux(amount[k], far, bits[j]) if j < width + after_set else bits[j])
        bits = out
    return Cat(*bits[:width])


class SerialEngine(wiring.Component):
    """Runs programs of the serial instruction set (:mod:`mmfree.sim.serial`), one decode step
    per ``step`` transfer, bit-exactly and cycle-exactly as :class:`~mmfree.sim.serial.Machine`.

    Datapath: 80-bit ``A`` and ``S``, scratch registers ``T`` (48 bits: MUL's multiplicand,
    DIVS's quotient) and ``Q`` (64 bits, the multiplier/dividend bits), one 81-bit
    adder/subtractor that every arithmetic op, every shift (``+ 0``) and the MUL/MULS/DIVS
    iterations go through (1 bit a cycle: MUL/MULS MSB first with Horner's rule, the first bit
    subtracting; DIVS non-restoring, its first bit from ``A >> aux``), one funnel shifter
    (right arithmetic with a round bit, or left, by 0..7 bits a cycle; a shift's amount goes
    into a register first, so the shifter's amount comes from registers only, and longer
    shifts take 7 bits a cycle in ``SHIFT``), BITLEN by shifting left a bit a cycle, a 16-step
    square root, the eight 32-bit registers in block RAM (read the cycle after the
    instruction), the DOT unit (4 int8 x ternary products a cycle: a 32-bit row of the qbuf
    block RAM and a quarter of a weight word, a balanced adder tree) and the xorshift32 PRNG
    (:class:`~mmfree.hw.xorshift.Xorshift32`). Program (1024 x 32) and qbuf (512 x 32) are
    block RAM; ``M`` is one single-port RAM of :data:`MEM_WORDS` x 32 (four SPRAMs with
    ``spram=True``).

    Latency: a step takes ``Machine.cycles`` cycles from the ``step`` transfer until ``busy``
    falls: :data:`~mmfree.sim.serial.STEP_START` (the start writes ``R7``..``R4``) + the
    :func:`~mmfree.sim.serial.instr_cycles` of its instructions + the cycles ``TOK`` waits for
    ``token.ready``. Throughput: one step at a time; the load port takes a word every cycle
    while idle.

    Parameters
    ----------
    token_bits : int
        Width of a token.
    program : list of int, optional
        Initial program words (at most :data:`PROG_WORDS`); the rest is ``HALT``.
    mem : list of int, optional
        Initial ``M`` words (at most :data:`MEM_WORDS`); only without ``spram``.
    debug : bool
        Adds ``peek_addr``/``peek_data``.
    spram : bool
        Builds ``M`` from four ``SB_SPRAM256KA`` (iCE40 UP5K; no initial contents).

    Members
    -------
    step : In(stream.Signature(StructLayout({"token": token_bits, "emit": 1})))
        One step per transfer, taken while idle: ``R7`` = token, ``R6`` = emit, ``R5`` = x0,
        ``R4`` = fresh, pc = 0, run until ``HALT``.
    token : Out(stream.Signature(unsigned(token_bits)))
        ``TOK``: A's low ``token_bits``; the step waits until the transfer.
    x0 : In(signed(17))
        ``R5`` at each step (sign-extended).
    seed, seed_load :
        PRNG seed and load strobe (``xorshift32_seed``). The PRNG starts from seed 0.
    reset_state : In(1)
        Strobe: ``R4`` is 1 at the next step.
    load : In(stream.Signature(StructLayout({"addr": 32, "data": 32})))
        Word writes, taken while idle: ``M`` at 0.., the program at :data:`PROG_BASE`..;
        other addresses are ignored.
    busy : Out(1)
        High from the cycle after the ``step`` transfer until the step ends.
    cycles : Out(32)
        Cycles of the last step (``Machine.cycles``, plus the cycles ``TOK`` waited).
    peek_addr : In(15), peek_data : Out(32)
        With ``debug``: reads ``M`` while idle, one cycle latency.
    """

    def __init__(self, *, token_bits: int, program=None, mem=None, debug: bool = True,
                 spram: bool = False):
        if not isinstance(token_bits, int) or not 1 <= token_bits <= 32:
            raise ValueError(f"token_bits must be an integer from 1 to 32, not {token_bits!r}")
        program = [] if program is None else [int(w) for w in program]
        if len(program) > PROG_WORDS:
            raise ValueError(f"program must have at most {PROG_WORDS} words, not "
                             f"{len(program)}")
        if any(not 0 <= w < (1 << 32) for w in program):
            raise ValueError("program words must be unsigned 32-bit integers")
        if mem is not None and spram:
            raise ValueError("mem (initial contents of M) is not possible with spram=True: "
                             "SPRAM has no initial contents; write M through the load port")
        mem = [] if mem is None else [int(w) & 0xFFFF_FFFF for w in mem]
        if len(mem) > MEM_WORDS:
            raise ValueError(f"mem must have at most {MEM_WORDS} words, not {len(mem)}")
        self._token_bits = token_bits
        self._program = program + [_HALT] * (PROG_WORDS - len(program))
        self._mem = mem
        self._debug = bool(debug)
        self._spram = bool(spram)
        members = engine_members(token_bits)
        if self._debug:
            members["peek_addr"] = In(_MBITS)
            members["peek_data"] = Out(32)
        super().__init__(members)

    @property
    def token_bits(self) -> int:
        return self._token_bits

    @property
    def debug(self) -> bool:
        return self._debug

    @property
    def spram(self) -> bool:
        return self._spram

    # M: one single-port RAM --------------------------------------------------------------

    def _memory(self, m, addr, re, we, wdata, rdata):
        if not self._spram:
            m.submodules.mem = mem = Memory(shape=32, depth=MEM_WORDS, init=self._mem)
            rd, wr = mem.read_port(), mem.write_port()
            m.d.comb += [rd.addr.eq(addr), rd.en.eq(re), wr.addr.eq(addr), wr.en.eq(we),
                         wr.data.eq(wdata), rdata.eq(rd.data)]
            return
        # Two pairs of 16K x 16 side by side (32 bits); address bit 14 selects the pair. A
        # pair is selected only to read or write, so its output holds between reads.
        outs = []
        for pair in range(2):
            sel = addr[14] == pair
            halves = []
            for half in range(2):
                dout = Signal(16, name=f"spram{pair}{half}_dout")
                m.submodules[f"spram{pair}{half}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=addr[:14], i_DATAIN=wdata[16 * half:16 * half + 16],
                    i_MASKWREN=Const(0b1111, 4), i_WREN=we & sel,
                    i_CHIPSELECT=(we | re) & sel, i_CLOCK=ClockSignal(),
                    i_STANDBY=Const(0, 1), i_SLEEP=Const(0, 1), i_POWEROFF=Const(1, 1),
                    o_DATAOUT=dout)
                halves.append(dout)
            outs.append(Cat(*halves))
        rsel = Signal()
        with m.If(re):
            m.d.sync += rsel.eq(addr[14])
        m.d.comb += rdata.eq(Mux(rsel, outs[1], outs[0]))

    def elaborate(self, platform):
        m = Module()

        # --- memories and the PRNG ----------------------------------------------------------
        m.submodules.prog = prog = Memory(shape=32, depth=PROG_WORDS, init=self._program)
        prog_rd, prog_wr = prog.read_port(), prog.write_port()
        m.submodules.qbuf = qbuf = Memory(shape=8 * DOT_LANES, depth=_QROWS, init=[])
        q_rd, q_wr = qbuf.read_port(), qbuf.write_port(granularity=8)
        m_addr, m_re, m_we = Signal(_MBITS), Signal(), Signal()
        m_wdata, m_rdata = Signal(32), Signal(32)
        self._memory(m, m_addr, m_re, m_we, m_wdata, m_rdata)

        m.submodules.prng = prng = Xorshift32()
        boot = Signal(init=1)          # load the PRNG with seed 0 after reset, as Machine
        m.d.sync += boot.eq(0)
        m.d.comb += [prng.load.eq(self.seed_load | boot),
                     prng.seed.eq(Mux(self.seed_load, self.seed, 0))]

        # --- machine state ------------------------------------------------------------------
        state = Signal(_S)
        A, S = Signal(_W), Signal(_W)
        Q = Signal(64)
        T = Signal(MUL_X_BITS)         # MUL's multiplicand; DIVS's quotient (< 2**47)
        # R0..R7: block RAM, read the cycle after EXEC (a REG operand costs a cycle).
        m.submodules.rf = rf = Memory(shape=32, depth=8, init=[])
        rf_rd, rf_wr = rf.read_port(), rf.write_port()
        tok_in = Signal(self._token_bits)
        emit_in = Signal()
        J, C = Signal(_JBITS), Signal(_JBITS)
        L, pc, link = Signal(_PBITS), Signal(_PBITS), Signal(_PBITS)
        P = Signal(_MBITS)
        fresh = Signal(init=1)
        skip = Signal()
        cnt = Signal(9)                # iterations left (DOT: parts of words left)
        cycles = Signal(32)
        # DOT
        phase = Signal(_PART_BITS)     # DOT: the part of the weight word
        wrest = Signal(2 * DOT_LANES * (_PARTS - 1))   # ... its parts after the first
        qaddr = Signal(range(_QROWS))
        psum = Signal(range(-1024, 1025))
        acc = Signal(range(-(1 << 19), 1 << 19))
        # ISQRT
        rem = Signal(20)
        root = Signal(16)

        m.d.comb += [self.busy.eq(state != _S.IDLE), self.cycles.eq(cycles)]
        with m.If(state != _S.IDLE):
            m.d.sync += cycles.eq(cycles + 1)

        # --- decode -------------------------------------------------------------------------
        ins = prog_rd.data
        op, src, jx, px = ins[26:32], ins[24:26], ins[23], ins[22]
        aux, imm = ins[16:22], ins[0:16]
        needs_mem = (op.matches(Op.LDB, Op.LDX, Op.LD2) |
                     ((src == Src.MEM) & ~op.matches(Op.ST, Op.JMP, Op.CALL)))
        reads_b = op.matches(Op.LD, Op.LDU, Op.ADD, Op.SUB, Op.MUL, Op.MAX, Op.MIN, Op.AND,
                             Op.NEGIF, Op.SHR, Op.SHRR, Op.SHL, Op.DOT, Op.FOR, Op.SKIP)
        needs_reg = (src == Src.REG) & reads_b
        ready = Signal()               # the operands are there: execute, or shift first
        first = Signal()               # ... a shift's amount into shamt first
        pre = Signal()                 # ... shift SHIFT_STEP bits first
        go = Signal()                  # the cycle an instruction executes
        m.d.comb += [
            ready.eq(((state == _S.EXEC) & ~skip & ~needs_mem & ~needs_reg) |
                     ((state == _S.MEM1) & (op != Op.LD2)) | (state == _S.SHIFT)),
            go.eq(ready & ~first & ~pre),
            rf_rd.addr.eq(imm[:3]),
        ]

        # Effective addresses.
        ea_inc = Signal()
        xterm = Signal(_MBITS)
        with m.Switch(op):
            with m.Case(Op.LDB):
                m.d.comb += xterm.eq(J[2:])
            with m.Case(Op.LDX):
                m.d.comb += xterm.eq(A[:_MBITS])
            with m.Default():
                m.d.comb += xterm.eq(Mux(jx, J, 0))
        ea = Signal(_MBITS)
        m.d.comb += ea.eq(imm + Mux(px, P, 0) + xterm + ea_inc)

        # --- operand Y: B of src, or a register -----------------------------------------
        ysel = Signal(_YSel)
        # by op (ITER and LD2 override below): never by ``go``, which depends on the shifter's
        # amount, which depends on Y
        with m.Switch(op):
            with m.Case(Op.LDX):
                m.d.comb += ysel.eq(_YSel.M)
            with m.Case(Op.GETS, Op.ADDS, Op.SADD, Op.SMAX, Op.DIVS):
                m.d.comb += ysel.eq(_YSel.S)
            with m.Case(Op.ABS, Op.NEG, Op.NEGIF):
                m.d.comb += ysel.eq(_YSel.A)
        lo = Signal(32)
        lo_src = Signal(2)
        m.d.comb += lo_src.eq(Mux(ysel == _YSel.M, Src.MEM, src))
        with m.Switch(lo_src):
            with m.Case(Src.IMM):
                m.d.comb += lo.eq(imm.as_signed())
            with m.Case(Src.REG):
                m.d.comb += lo.eq(rf_rd.data)
            with m.Default():
                m.d.comb += lo.eq(m_rdata)
        wide = Signal(_W)
        is_wide = Signal()
        with m.Switch(ysel):
            with m.Case(_YSel.B):
                m.d.comb += [wide.eq(A), is_wide.eq(src == Src.ACC)]
            with m.Case(_YSel.A):
                m.d.comb += [wide.eq(A), is_wide.eq(1)]
            with m.Case(_YSel.S):
                m.d.comb += [wide.eq(S), is_wide.eq(1)]
            with m.Case(_YSel.T):
                m.d.comb += [wide.eq(T.as_signed()), is_wide.eq(1)]
        y = Signal(_W)
        m.d.comb += y.eq(Mux(is_wide, wide,
                             Cat(lo, (lo[31] & (op != Op.LDU)).replicate(_W - 32))))
        y_zero = y == 0
        y_neg = y[-1]
        b_neg = Signal()               # B < 0 (NEGIF, whose Y is A)
        with m.Switch(src):
            with m.Case(Src.IMM):
                m.d.comb += b_neg.eq(imm[15])
            with m.Case(Src.REG):
                m.d.comb += b_neg.eq(rf_rd.data[31])
            with m.Case(Src.MEM):
                m.d.comb += b_neg.eq(m_rdata[31])
            with m.Case(Src.ACC):
                m.d.comb += b_neg.eq(A[-1])

        # --- shifter: right arithmetic (bit 0: the round bit) or left, by 0..SHIFT_STEP -----
        # A shift by k <= 80 bits takes ceil(k / SHIFT_STEP) cycles: SHIFT_STEP bits a cycle in
        # SHIFT (no rounding needed: the round bit is the last bit out), the rest with the op.
        sh_mode = Signal(_Sh)
        sh_right = Signal()
        mag = Signal(7)
        low = y[:7]
        pos_ok = (y[7:] == 0) & (low < _W)
        neg_ok = (y[7:] == (1 << (_W - 7)) - 1) & (low >= 128 - _W)
        pos_mag = Mux(pos_ok, low, _W)
        with m.If(op == Op.SHL):
            m.d.comb += sh_mode.eq(_Sh.LEFT_B)
        with m.Elif(op == Op.DIVS):
            m.d.comb += sh_mode.eq(_Sh.RIGHT_AUX)
        with m.Switch(sh_mode):
            with m.Case(_Sh.SIGNED):
                m.d.comb += [sh_right.eq(~y_neg),
                             mag.eq(Mux(y_neg, Mux(neg_ok, -low, _W), pos_mag))]
            with m.Case(_Sh.LEFT_B):
                m.d.comb += [sh_right.eq(0), mag.eq(pos_mag)]
            with m.Case(_Sh.RIGHT_AUX):
                m.d.comb += [sh_right.eq(1), mag.eq(aux)]
        shamt = Signal(7)              # SHIFT: the bits still to shift, and the direction
        shamt_right = Signal()
        left = Signal(7)
        right = Signal()
        in_shift = state == _S.SHIFT
        # The shifter's amount comes from registers only: a shift's amount (from its operand)
        # goes into shamt first (the cycle ``first``), the iterations shift left by 1.
        m.d.comb += [left.eq(Mux(in_shift, shamt, 1)), right.eq(in_shift & shamt_right),
                     first.eq(ready & op.matches(Op.SHR, Op.SHRR, Op.SHL, Op.DIVS) &
                              ~in_shift),
                     pre.eq(in_shift & (shamt > SHIFT_STEP))]
        k = Signal(range(SHIFT_STEP + 1))
        m.d.comb += k.eq(Mux(pre, SHIFT_STEP, left))
        fin = Signal(_W + 1 + SHIFT_STEP)
        m.d.comb += fin.eq(Mux(right, Cat(Const(0, 1), A, A[-1].replicate(SHIFT_STEP)),
                               Cat(Const(0, 1 + SHIFT_STEP), A)))
        amt = Signal(range(SHIFT_STEP + 1))
        m.d.comb += amt.eq(Mux(right, k, SHIFT_STEP - k))
        sh = Signal(_W + 1)
        m.d.comb += sh.eq(_shift_right(fin, amt, _W + 1, max_amount=SHIFT_STEP))
        x_bit = Signal()               # DIVS: the next dividend bit into bit 0
        shx = Signal(_W)
        m.d.comb += shx.eq(sh[1:] | x_bit)

        # --- adder: X + (Y ^ inv) + cin, 81 bits ------------------------------------------
        xsel = Signal(_XSel)
        y_off, inv, cin = Signal(), Signal(), Signal()
        xa = Signal(_W + 1)
        with m.Switch(xsel):
            with m.Case(_XSel.A):
                m.d.comb += xa.eq(Cat(A, A[-1]))
            with m.Case(_XSel.SH):
                m.d.comb += xa.eq(Cat(shx, shx[-1]))
        ya = Signal(_W + 1)
        m.d.comb += ya.eq(Mux(y_off, 0, Cat(y, y[-1])) ^ inv.replicate(_W + 1))
        total = Signal(_W + 2)
        m.d.comb += total.eq(Cat(cin, xa) + Cat(cin, ya))
        sum_ = total[1:]               # 81 bits
        sum_neg = sum_[-1]

        # --- small results ------------------------------------------------------------------
        byte = m_rdata.word_select(J[:2], 8)
        # ISQRT: one root bit a cycle, two radicand bits (Q[31:0], MSB first).
        cand = Cat(Q[:32].word_select(cnt[:4], 2), rem)[:20]
        trial = Signal(21)
        m.d.comb += trial.eq(cand - Cat(Const(1, 2), root))
        sq_ok = ~trial[-1]
        root_next = Cat(sq_ok, root)[:16]
        misc_sel = Signal(_Misc)
        misc = Signal(32)
        misc_signed = Signal()
        with m.Switch(misc_sel):
            with m.Case(_Misc.J):
                m.d.comb += misc.eq(J)
            with m.Case(_Misc.PRNG):
                m.d.comb += misc.eq(prng.out.payload)
            with m.Case(_Misc.DOT):
                m.d.comb += [misc.eq(acc), misc_signed.eq(1)]
            with m.Case(_Misc.BITLEN):
                m.d.comb += misc.eq(cnt)
            with m.Case(_Misc.ISQRT):
                m.d.comb += misc.eq(root_next)
            with m.Case(_Misc.BYTE):
                m.d.comb += [misc.eq(byte.as_signed()), misc_signed.eq(1)]


        # --- A ------------------------------------------------------------------------------
        a_sel = Signal(_ASel)
        a_we = Signal()
        a_next = Signal(_W)
        with m.Switch(a_sel):
            with m.Case(_ASel.SUM):
                m.d.comb += a_next.eq(sum_[:_W])
            with m.Case(_ASel.Y):
                m.d.comb += a_next.eq(y)
            with m.Case(_ASel.MISC):
                m.d.comb += a_next.eq(Cat(misc, (misc[31] & misc_signed).replicate(_W - 32)))
            with m.Case(_ASel.AND):
                m.d.comb += a_next.eq(A[:16] & imm)
            with m.Case(_ASel.LD2):
                m.d.comb += a_next.eq(Cat(A[:32], m_rdata, m_rdata[31].replicate(_W - 64)))
        with m.If(a_we):
            m.d.sync += A.eq(a_next)

        # --- ports ----------------------------------------------------------------------
        m.d.comb += self.token.payload.eq(A[:self._token_bits])
        load_mem = self.load.payload.addr[_MBITS:] == 0
        load_prog = self.load.payload.addr[_PBITS:] == PROG_BASE >> _PBITS
        m.d.comb += [
            prog_wr.addr.eq(self.load.payload.addr[:_PBITS]),
            prog_wr.data.eq(self.load.payload.data),
            prog_rd.addr.eq(pc),
            prog_rd.en.eq(state == _S.FETCH),
            q_wr.addr.eq(J[_LANE_BITS:]),
            q_wr.data.eq(A[:8].replicate(DOT_LANES)),
            q_rd.addr.eq(Mux(state == _S.DOT, qaddr, 0)),
            m_wdata.eq(Mux(state == _S.IDLE, self.load.payload.data, A[:32])),
        ]
        use_p = Signal()
        peek = self.peek_addr if self._debug else 0
        with m.If(state == _S.IDLE):
            m.d.comb += m_addr.eq(Mux(self.load.valid & load_mem, self.load.payload.addr,
                                      peek))
        with m.Else():
            m.d.comb += m_addr.eq(Mux(use_p, P, ea))
        if self._debug:
            m.d.comb += self.peek_data.eq(m_rdata)

        with m.If(self.reset_state):
            m.d.sync += fresh.eq(1)

        # --- sequencer --------------------------------------------------------------------
        with m.Switch(state):
            with m.Case(_S.IDLE):
                m.d.comb += [self.step.ready.eq(1), self.load.ready.eq(1)]
                if self._debug:
                    m.d.comb += m_re.eq(~(self.load.valid & load_mem))
                with m.If(self.load.valid):
                    m.d.comb += [m_we.eq(load_mem), prog_wr.en.eq(load_prog)]
                with m.If(self.step.valid):
                    m.d.comb += [rf_wr.en.eq(1), rf_wr.addr.eq(4), rf_wr.data.eq(fresh)]
                    m.d.sync += [
                        tok_in.eq(self.step.payload.token), emit_in.eq(self.step.payload.emit),
                        fresh.eq(self.reset_state), pc.eq(0), skip.eq(0), cycles.eq(0),
                        cnt.eq(0), state.eq(_S.START),
                    ]
            with m.Case(_S.START):
                m.d.comb += [rf_wr.en.eq(1), rf_wr.addr.eq(7 - cnt[:2])]
                with m.Switch(cnt[:2]):
                    with m.Case(0):
                        m.d.comb += rf_wr.data.eq(tok_in)
                    with m.Case(1):
                        m.d.comb += rf_wr.data.eq(emit_in)
                    with m.Default():
                        m.d.comb += rf_wr.data.eq(self.x0)
                m.d.sync += cnt.eq(cnt + 1)
                with m.If(cnt[:2] == 2):
                    m.d.sync += state.eq(_S.FETCH)
            with m.Case(_S.FETCH):
                m.d.sync += [pc.eq(pc + 1), state.eq(_S.EXEC)]
            with m.Case(_S.EXEC):
                with m.If(skip):
                    m.d.sync += [skip.eq(0), state.eq(_S.FETCH)]
                with m.Elif(needs_mem | needs_reg):
                    m.d.comb += m_re.eq(needs_mem)
                    m.d.sync += state.eq(_S.MEM1)
            with m.Case(_S.MEM1):
                with m.If(op == Op.LD2):
                    m.d.comb += [ysel.eq(_YSel.M), a_sel.eq(_ASel.Y), a_we.eq(1),
                                 ea_inc.eq(1), m_re.eq(1)]
                    m.d.sync += state.eq(_S.MEM2)
            with m.Case(_S.MEM2):
                m.d.comb += [a_sel.eq(_ASel.LD2), a_we.eq(1)]
                m.d.sync += state.eq(_S.FETCH)
            with m.Case(_S.ITER):
                m.d.sync += cnt.eq(cnt - 1)
                with m.If(cnt == 0):
                    m.d.sync += state.eq(_S.FETCH)
                with m.Switch(op):
                    with m.Case(Op.MUL, Op.MULS):
                        bit = Q.bit_select(cnt[:6], 1)
                        m.d.comb += [xsel.eq(_XSel.SH), y_off.eq(~bit),
                                     ysel.eq(_YSel.S), inv.eq(cnt == aux), cin.eq(cnt == aux),
                                     a_sel.eq(_ASel.SUM), a_we.eq(1)]
                        with m.If(op == Op.MUL):
                            m.d.comb += ysel.eq(_YSel.T)
                    with m.Case(Op.DIVS):
                        with m.If(cnt == 0):
                            m.d.comb += [ysel.eq(_YSel.T), a_sel.eq(_ASel.Y), a_we.eq(1)]
                        with m.Else():
                            # Non-restoring: subtract S from a remainder >= 0, add it to
                            # one < 0; the quotient bits are the restoring division's.
                            m.d.comb += [
                                x_bit.eq(Q.bit_select((cnt - 1)[:6], 1)),
                                xsel.eq(_XSel.SH), ysel.eq(_YSel.S),
                                inv.eq(~A[-1]), cin.eq(~A[-1]),
                                a_sel.eq(_ASel.SUM), a_we.eq(1),
                            ]
                            m.d.sync += T.eq(Cat(~sum_neg, T))
                    with m.Case(Op.BITLEN):
                        # A << 1 until its bit 78 is set (A >= 0): the bit length is cnt.
                        m.d.comb += a_we.eq(1)
                        with m.If(A[_W - 2] | (cnt == 0)):
                            m.d.comb += [misc_sel.eq(_Misc.BITLEN), a_sel.eq(_ASel.MISC)]
                            m.d.sync += state.eq(_S.FETCH)
                        with m.Else():
                            m.d.comb += [xsel.eq(_XSel.SH), y_off.eq(1), a_sel.eq(_ASel.SUM)]
                    with m.Case(Op.ISQRT):
                        m.d.sync += [root.eq(root_next), rem.eq(Mux(sq_ok, trial, cand))]
                        with m.If(cnt == 0):
                            m.d.comb += [misc_sel.eq(_Misc.ISQRT), a_sel.eq(_ASel.MISC),
                                         a_we.eq(1)]
            with m.Case(_S.DOT):
                m.d.sync += [qaddr.eq(qaddr + 1), phase.eq(phase + 1), cnt.eq(cnt - 1),
                             acc.eq(acc + psum)]
                with m.If(cnt == 0):
                    m.d.sync += state.eq(_S.DOT_ACC)
                with m.If(phase == 0):
                    m.d.sync += wrest.eq(m_rdata[2 * DOT_LANES:])
                with m.Else():
                    m.d.sync += wrest.eq(wrest[2 * DOT_LANES:])
                with m.If((phase == _PARTS - 1) & (cnt != 0)):
                    m.d.comb += [use_p.eq(1), m_re.eq(1)]
                    m.d.sync += P.eq(P + 1)
            with m.Case(_S.DOT_ACC):
                m.d.sync += [acc.eq(acc + psum), state.eq(_S.DOT_OUT)]
            with m.Case(_S.DOT_OUT):
                m.d.comb += [misc_sel.eq(_Misc.DOT), a_sel.eq(_ASel.MISC), a_we.eq(1)]
                m.d.sync += state.eq(_S.FETCH)

        # DOT: DOT_LANES products a cycle, registered.
        weights = Mux(phase == 0, m_rdata[:2 * DOT_LANES], wrest[:2 * DOT_LANES])
        terms, negs = [], []
        for lane in range(DOT_LANES):
            q = q_rd.data[8 * lane:8 * lane + 8]
            code = weights[2 * lane:2 * lane + 2]
            # code 1: +q; code 3: -q = ~q + 1 (the +1s are added once, below); code 0: 0.
            terms.append((Mux(code[0], q ^ code[1].replicate(8), 0)).as_signed())
            negs.append(code[0] & code[1])
        def tree(values):
            while len(values) > 1:
                values = [values[i] + values[i + 1] if i + 1 < len(values) else values[i]
                          for i in range(0, len(values), 2)]
            return values[0]
        m.d.sync += psum.eq(Mux(state == _S.DOT, tree(terms) + tree(negs), 0))

        # --- execute ----------------------------------------------------------------------
        with m.If(first):
            # The amount into shamt; DIVS keeps its dividend's low bits in Q.
            m.d.sync += [shamt.eq(mag), shamt_right.eq(sh_right), state.eq(_S.SHIFT)]
            with m.If(op == Op.DIVS):
                m.d.sync += Q.eq(A)
        with m.If(pre):
            # SHIFT_STEP bits now, the rest later in SHIFT.
            m.d.comb += [xsel.eq(_XSel.SH), y_off.eq(1), a_sel.eq(_ASel.SUM), a_we.eq(1)]
            m.d.sync += shamt.eq(shamt - SHIFT_STEP)
        with m.If(go):
            m.d.sync += state.eq(_S.FETCH)
            with m.Switch(op):
                with m.Case(Op.HALT):
                    m.d.sync += state.eq(_S.IDLE)
                with m.Case(Op.LD, Op.LDU):
                    m.d.comb += [a_sel.eq(_ASel.Y), a_we.eq(1)]
                with m.Case(Op.LDB):
                    m.d.comb += [misc_sel.eq(_Misc.BYTE), a_sel.eq(_ASel.MISC), a_we.eq(1)]
                with m.Case(Op.LDX):
                    m.d.comb += [a_sel.eq(_ASel.Y), a_we.eq(1)]
                with m.Case(Op.ST):
                    m.d.comb += m_we.eq(1)
                with m.Case(Op.PUT):
                    m.d.comb += [rf_wr.en.eq(1), rf_wr.addr.eq(aux[:3]), rf_wr.data.eq(A[:32])]
                with m.Case(Op.PUTS):
                    m.d.sync += S.eq(A)
                with m.Case(Op.GETS):
                    m.d.comb += [a_sel.eq(_ASel.Y), a_we.eq(1)]
                with m.Case(Op.GETJ):
                    m.d.comb += [misc_sel.eq(_Misc.J), a_sel.eq(_ASel.MISC), a_we.eq(1)]
                with m.Case(Op.SETP):
                    m.d.sync += P.eq(A[:_MBITS])
                with m.Case(Op.ADD):
                    m.d.comb += [a_sel.eq(_ASel.SUM), a_we.eq(1)]
                with m.Case(Op.SUB):
                    m.d.comb += [inv.eq(1), cin.eq(1), a_sel.eq(_ASel.SUM), a_we.eq(1)]
                with m.Case(Op.ADDS):
                    m.d.comb += [a_sel.eq(_ASel.SUM), a_we.eq(1)]
                with m.Case(Op.MUL):
                    m.d.comb += [misc_sel.eq(_Misc.ZERO), a_sel.eq(_ASel.MISC), a_we.eq(1)]
                    m.d.sync += [Q.eq(y), T.eq(A), cnt.eq(aux), state.eq(_S.ITER)]
                with m.Case(Op.MULS):
                    m.d.comb += [misc_sel.eq(_Misc.ZERO), a_sel.eq(_ASel.MISC), a_we.eq(1)]
                    m.d.sync += [Q.eq(A), cnt.eq(aux), state.eq(_S.ITER)]
                with m.Case(Op.DIVS):
                    # The first quotient bit: (A >> aux) - S.
                    m.d.comb += [xsel.eq(_XSel.SH), inv.eq(1), cin.eq(1),
                                 a_sel.eq(_ASel.SUM), a_we.eq(1)]
                    m.d.sync += [T.eq(~sum_neg), cnt.eq(aux), state.eq(_S.ITER)]
                with m.Case(Op.ISQRT):
                    m.d.sync += [Q.eq(A), rem.eq(0), root.eq(0), cnt.eq(15),
                                 state.eq(_S.ITER)]
                with m.Case(Op.BITLEN):
                    m.d.sync += [cnt.eq(_W - 1), state.eq(_S.ITER)]
                with m.Case(Op.SHR):
                    m.d.comb += [xsel.eq(_XSel.SH), y_off.eq(1), a_sel.eq(_ASel.SUM), a_we.eq(1)]
                with m.Case(Op.SHRR):
                    m.d.comb += [xsel.eq(_XSel.SH), y_off.eq(1),
                                 cin.eq(sh[0]), a_sel.eq(_ASel.SUM), a_we.eq(1)]
                with m.Case(Op.SHL):
                    m.d.comb += [xsel.eq(_XSel.SH), y_off.eq(1), a_sel.eq(_ASel.SUM), a_we.eq(1)]
                with m.Case(Op.ABS, Op.NEG, Op.NEGIF):
                    m.d.comb += [xsel.eq(_XSel.ZERO), inv.eq(1), cin.eq(1),
                                 a_sel.eq(_ASel.SUM)]
                    with m.Switch(op):
                        with m.Case(Op.ABS):
                            m.d.comb += a_we.eq(A[-1])
                        with m.Case(Op.NEG):
                            m.d.comb += a_we.eq(1)
                        with m.Case(Op.NEGIF):
                            m.d.comb += a_we.eq(b_neg)
                with m.Case(Op.MAX):
                    m.d.comb += [inv.eq(1), cin.eq(1), a_sel.eq(_ASel.Y), a_we.eq(sum_neg)]
                with m.Case(Op.MIN):
                    m.d.comb += [inv.eq(1), cin.eq(1), a_sel.eq(_ASel.Y), a_we.eq(~sum_neg)]
                with m.Case(Op.AND):
                    m.d.comb += [a_sel.eq(_ASel.AND), a_we.eq(1)]
                with m.Case(Op.SCLR):
                    m.d.sync += S.eq(0)
                with m.Case(Op.SADD):
                    m.d.sync += S.eq(sum_[:_W])
                with m.Case(Op.SMAX):
                    m.d.comb += [inv.eq(1), cin.eq(1)]
                    with m.If(~sum_neg):
                        m.d.sync += S.eq(A)
                with m.Case(Op.STQ):
                    m.d.comb += q_wr.en.eq(1 << J[:_LANE_BITS])
                with m.Case(Op.DOT):
                    words = (y[:12] + 15)[4:12]
                    m.d.comb += [use_p.eq(1), m_re.eq(1)]
                    m.d.sync += [P.eq(P + 1), qaddr.eq(1), phase.eq(0), acc.eq(0),
                                 cnt.eq(Cat(Const(_PARTS - 1, _PART_BITS), words) - _PARTS),
                                 state.eq(_S.DOT)]
                with m.Case(Op.RAND):
                    m.d.comb += [prng.out.ready.eq(1), misc_sel.eq(_Misc.PRNG),
                                 a_sel.eq(_ASel.MISC), a_we.eq(1)]
                with m.Case(Op.TOK):
                    m.d.comb += self.token.valid.eq(1)
                    with m.If(~self.token.ready):
                        m.d.sync += state.eq(state)
                with m.Case(Op.FOR):
                    m.d.sync += [C.eq(y), J.eq(0), L.eq(pc)]
                with m.Case(Op.NEXT):
                    m.d.sync += J.eq(J + 1)
                    with m.If(J + 1 < C):
                        m.d.sync += pc.eq(L)
                with m.Case(Op.JMP):
                    m.d.sync += pc.eq(imm)
                with m.Case(Op.CALL):
                    m.d.sync += [link.eq(pc), pc.eq(imm)]
                with m.Case(Op.RET):
                    m.d.sync += pc.eq(link)
                with m.Case(Op.SKIP):
                    conds = Cat(y_neg, ~y_neg, y_zero, ~y_zero, y_neg | y_zero,
                                ~y_neg & ~y_zero, Const(0, 2))
                    m.d.sync += skip.eq(conds.bit_select(aux[:3], 1))

        return m
