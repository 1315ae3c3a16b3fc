"""The device side of the host link: executes the commands of :mod:`mmfree.sim.protocol`
on the decode engine."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.hw.framing import BANK_BYTES, FRAME_INFO
from mmfree.hw.vector_reader import VectorReader
from mmfree.sim.protocol import (ERROR, MAX_CHUNK_WORDS, MAX_PAYLOAD, REPLY, TOKEN, Command,
                                 ErrorCode, Identity)

__all__ = ["LinkController", "LED"]

CRC32_POLY = 0xEDB8_8320         # zlib's CRC-32, reflected
CRC_BITS = 4                     # payload bits into the load CRC-32 a cycle: 1, 2 or 4
assert CRC_BITS in (1, 2, 4)     # whole steps in a byte, at least 4 in a word


def _crc32_bits(crc, bits):
    """The reflected CRC-32 register after ``len(bits)`` more bits (LSB first): each bit of
    it the XOR of a set of register and data bits (the step is linear over GF(2))."""
    state = [{i} for i in range(32)]
    for k in range(len(bits)):
        feedback = state[0] ^ {32 + k}
        state = state[1:] + [set()]
        state = [state[i] ^ feedback if (CRC32_POLY >> i) & 1 else state[i]
                 for i in range(32)]
    inputs = [crc[i] for i in range(32)] + list(bits)
    result = []
    for terms in state:
        value = Const(0, 1)
        for i in sorted(terms):
            value = value ^ inputs[i]
        result.append(value)
    return Cat(*result)


def _at_least(value, bound):
    """``value >= bound`` for a constant ``bound``: a chain of ANDs and ORs (LUTs, no carry
    chain)."""
    if bound <= 0:
        return Const(1, 1)
    if bound >= 1 << len(value):
        return Const(0, 1)
    result = Const(1, 1)
    for i in range(len(value)):
        result = (value[i] & result) if (bound >> i) & 1 else (value[i] | result)
    return result


class LED(enum.IntEnum):
    """Bits of ``leds``."""
    IDLE       = 0   # ready, with a verified model
    LOADING    = 1   # between LOAD_BEGIN and a successful VERIFY
    GENERATING = 2   # a PREFILL or GENERATE runs
    ERROR      = 3   # an error reply was sent (held about 2**22 cycles)


class _S(enum.Enum, shape=5):
    IDLE       = 0
    DISPATCH   = 1
    ARGS       = 2    # the first argument bytes: registers, or compared as they come
    EXEC       = 3    # the command, with its arguments
    APPLY      = 4    # LOAD_CHUNK: payload words -> load port
    SEND       = 5    # header of the reply
    SEND_BODY  = 6    # reply payload bytes
    DONE       = 7    # free the frame's bank
    P_SCAN     = 8    # PREFILL: check every token
    P_STEP     = 9
    P_WAIT     = 10
    G_STEP     = 11
    G_WAIT     = 12   # wait for the token
    G_END      = 13   # wait for the end of the step (cycles)
    G_NEXT     = 14
    PEND_ERR   = 15   # send the error of a frame that came during a PREFILL/GENERATE
    FINISH     = 16   # the reply of PREFILL/GENERATE, then STOP's if one came
    STOP_REPLY = 17
    G_COUNT    = 18   # after a TOKEN frame: count the step


# Reply payloads are read out of one byte-addressed space (``ptr``), a byte per cycle, from
# the registers that hold the values; nothing is copied into a reply buffer. Where a reply
# starts in that space:
_AT_LOAD = 0          # 0..3 expected (words applied), 4..7 ~crc, 8 ok
_AT_TOKEN = 9         # 9..10 index, 11..12 token (or stopped), 13..16 cycles
_AT_ARG = 17          # 17..20 arg0
_AT_LENGTH = 21       # 21..22 length
_AT_IDENTITY = 23     # 23..63: the identity (constants, model hash, model valid)
_IDENTITY_BYTES = 41
_LENGTH_BITS = MAX_PAYLOAD.bit_length()


class _K(enum.Enum, shape=2):
    """The kind of reply being sent."""
    REPLY   = 0       # REPLY | cmd to the request (cmd, seq); payload from cmd
    TOKEN   = 1
    ERROR   = 2       # to the request: err_code, err_cmd, detail (err_detail)
    PENDING = 3       # to a frame that came during PREFILL/GENERATE: err_seq, detail 0


class _Detail(enum.Enum, shape=2):
    """The detail of an error reply. An error reply is its code and command (err_code,
    err_cmd), then the four bytes at the detail's place (_DETAIL_AT), as many as it has (no
    byte of ZERO, two of LENGTH) and zeros."""
    ZERO     = 0
    LENGTH   = 1
    EXPECTED = 2
    ARG      = 3


_DETAIL_AT = {_Detail.ZERO: 0, _Detail.LENGTH: _AT_LENGTH, _Detail.EXPECTED: _AT_LOAD,
              _Detail.ARG: _AT_ARG}


class LinkController(wiring.Component):
    """Takes frames from a :class:`~mmfree.hw.framing.FrameReceiver`, executes them on an
    :class:`~mmfree.hw.engine.Engine` and sends replies through a
    :class:`~mmfree.hw.framing.FrameTransmitter`.

    ``identity`` gives the constant fields of the IDENTIFY reply; ``model_hash``/``model_valid``
    there are the power-up values of the loaded-model record, which no reset changes (the
    memories keep their contents through a reset too): after a reset in the middle of a load
    the device still reports no valid model. Frames without an error have a ``length`` of at
    most :data:`~mmfree.sim.protocol.MAX_PAYLOAD` (the receiver answers longer ones).

    Timing: a command is taken the cycle after the frame is announced; LOAD_CHUNK takes its
    words 4 bits a cycle (into the load CRC-32) and writes a word every 8 cycles; replies go
    out a byte per cycle into the transmitter.
    """

    def __init__(self, *, identity: Identity):
        if not isinstance(identity, Identity):
            raise TypeError(f"identity must be an Identity, not {identity!r}")
        self._identity = identity
        vocab = identity.vocab_size
        self._token_bits = max(1, (vocab - 1).bit_length())
        super().__init__({
            "frame":      In(stream.Signature(FRAME_INFO)),
            "free":       Out(1),
            "free_bank":  Out(1),
            "rd_addr":    Out(range(2 * BANK_BYTES)),
            "rd_en":      Out(1),
            "rd_data":    In(8),
            "tx_header":  Out(stream.Signature(data.StructLayout({
                "cmd": 8, "seq": 8, "length": 16}))),
            "tx_payload": Out(stream.Signature(8)),
            # the engine
            "step":        Out(stream.Signature(data.StructLayout({
                "token": unsigned(self._token_bits), "emit": 1}))),
            "token":       In(stream.Signature(unsigned(self._token_bits))),
            "busy":        In(1),
            "cycles":      In(32),
            "x0":          Out(signed(17)),
            "seed":        Out(32),
            "seed_load":   Out(1),
            "reset_state": Out(1),
            "load":        Out(stream.Signature(data.StructLayout({"addr": 32, "data": 32}))),
            "leds":        Out(4),
        })

    def elaborate(self, platform):
        m = Module()
        ident = self._identity
        vocab = ident.vocab_size

        # Payload bytes of the current frame, in order.
        m.submodules.reader = reader = VectorReader(shape=unsigned(8),
                                                    addr_width=len(self.rd_addr),
                                                    count_width=_LENGTH_BITS)
        m.d.comb += [self.rd_addr.eq(reader.addr), self.rd_en.eq(reader.en),
                     reader.data.eq(self.rd_data)]
        byte = reader.out.payload.data

        state = Signal(_S)
        ret = Signal(_S)                 # where SEND returns
        cmd, seq = Signal(8), Signal(8)
        length = Signal(_LENGTH_BITS)
        bank = Signal()

        # The argument words: a shift register the argument bytes go through, so that after
        # n bytes ``arg1`` holds the last four and ``arg0`` the four before. arg1 is also the
        # load address (LOAD_CHUNK) and PREFILL's token (arg1[16:]); arg0 the word being
        # loaded, the step index of PREFILL/GENERATE (arg0[:16]) and the ARG detail.
        arg0 = Signal(32)
        arg1 = Signal(32)
        addr = arg1
        word = arg0
        index = arg0[:16]

        kind = Signal(_K)
        reply_len = Signal(range(_IDENTITY_BYTES + 1))
        reply_at = Signal(6)
        reply_i = Signal(range(_IDENTITY_BYTES + 1))
        ptr = Signal(6)                  # the reply byte (and the argument byte in ARGS)

        # The loaded-model record: not reset (see the class docstring).
        model_hash = Signal(64, init=ident.model_hash, reset_less=True)
        model_valid = Signal(init=ident.model_valid, reset_less=True)
        loading = Signal()
        pending_hash = Signal(64)
        total = Signal(32)
        # expected (words applied) and the load address are counted a byte at a time: they
        # rotate by a byte, the low byte through an 8-bit incrementer (carry in 0: just a
        # rotation), four times a word. expected rotates whenever its bytes are read (ARGS,
        # SEND_BODY at _AT_LOAD..+3) and is whole again after four.
        expected = Signal(32)
        exp_cin = Signal()
        exp_c = Signal()
        exp_low = expected[:8] + exp_cin
        exp_rotate = expected.eq(Cat(expected[8:], exp_low[:8]))
        addr_cin = Signal()
        addr_c = Signal()
        addr_inc = Signal()              # not the first word of the chunk
        addr_low = addr[:8] + addr_cin
        crc = Signal(32, init=0xFFFF_FFFF)
        crc_step = Signal(range(32 // CRC_BITS))     # of the word being loaded
        load_valid = Signal()
        chunk_end = Signal()             # the chunk's last byte is in the word
        long_op = Signal()               # a PREFILL or GENERATE runs

        x0 = Signal(signed(17))
        m.d.comb += self.x0.eq(x0)

        count = arg1[16:]                # GENERATE's count
        cur = Signal(unsigned(self._token_bits))
        scan_last = Signal()
        scan_check = Signal()
        tok_half = Signal()
        stop = Signal()
        stop_seq = Signal(8)
        err_pending = Signal()
        err_code = Signal(4)
        err_cmd = Signal(8)
        err_detail = Signal(_Detail)
        err_seq = Signal(8)
        err_time = Signal(23, init=1 << 22)     # counts 2**22 cycles after an error reply

        def send(kind_value, then=_S.DONE):
            m.d.sync += [kind.eq(kind_value), reply_i.eq(0), ret.eq(then), state.eq(_S.SEND)]

        def error(code, detail=_Detail.ZERO, then=_S.DONE):
            send(_K.ERROR, then)
            m.d.sync += [err_code.eq(code), err_detail.eq(detail)]

        def start_reader(nbytes):
            m.d.comb += [reader.start.eq(1),
                         reader.base.eq(Cat(Const(0, len(self.rd_addr) - 1), bank)),
                         reader.count.eq(nbytes)]

        def control_frames():
            """While the engine runs: STOP sets the flag, anything else is BUSY."""
            m.d.comb += self.frame.ready.eq(~err_pending)
            f = self.frame.payload
            with m.If(self.frame.valid & ~err_pending):
                with m.If(f.error == 0):
                    m.d.comb += [self.free.eq(1), self.free_bank.eq(f.bank)]
                with m.If((f.error == 0) & (f.cmd == Command.STOP) & (f.length == 0)):
                    m.d.sync += [stop.eq(1), stop_seq.eq(f.seq)]
                with m.Else():
                    m.d.sync += [
                        err_pending.eq(1), err_seq.eq(f.seq), err_cmd.eq(f.cmd),
                        err_code.eq(Mux(f.error != 0, f.error, ErrorCode.BUSY)),
                    ]

        # --- the reply bytes ------------------------------------------------------------
        identity = ident.pack()
        sources = {}

        def place(at, value):
            for k in range(0, len(value), 8):
                sources[at + k // 8] = Const(0, 8) | value[k:k + 8]

        for k in range(_IDENTITY_BYTES - 9):
            sources[_AT_IDENTITY + k] = Const(identity[k], 8)
        place(_AT_IDENTITY + _IDENTITY_BYTES - 9, Cat(model_hash, model_valid, Const(0, 7)))
        # ok: a VERIFY that matched ends the load (loading was 1, or it is NOT_LOADING).
        place(_AT_LOAD, Cat(expected[:8], expected[:8], expected[:8], expected[:8], ~crc,
                            ~loading, Const(0, 7)))
        place(_AT_TOKEN, Cat(index, Const(0, 16) | cur, self.cycles))
        place(_AT_ARG, arg0)
        place(_AT_LENGTH, length)
        def tree(first, bits):
            """The byte at ``ptr`` among ``first .. first + 2**bits - 1``: a tree of
            multiplexers, one level a bit of ``ptr``, shared where both halves agree."""
            if bits == 0:
                return sources.get(first, Const(0, 8))
            low = tree(first, bits - 1)
            high = tree(first + (1 << (bits - 1)), bits - 1)
            if low is high:
                return low
            return Mux(ptr[bits - 1], high, low)

        source = Signal(8)
        m.d.comb += source.eq(tree(0, len(ptr)))

        # The header, its payload's length and place, from the kind of reply and the command.
        lengths = {Command.IDENTIFY: (_AT_IDENTITY, _IDENTITY_BYTES),
                   Command.LOAD_CHUNK: (_AT_LOAD, 4), Command.VERIFY: (_AT_LOAD, 9),
                   Command.PREFILL: (_AT_TOKEN, 2), Command.GENERATE: (_AT_TOKEN, 3)}
        with m.Switch(kind):
            with m.Case(_K.REPLY):
                m.d.comb += self.tx_header.payload.cmd.eq(REPLY | cmd[:4])
                with m.Switch(cmd[:4]):
                    for command, (at, nbytes) in lengths.items():
                        with m.Case(command):
                            m.d.comb += [reply_at.eq(at), reply_len.eq(nbytes)]
            with m.Case(_K.TOKEN):
                m.d.comb += [self.tx_header.payload.cmd.eq(TOKEN), reply_at.eq(_AT_TOKEN),
                             reply_len.eq(8)]
            with m.Default():
                m.d.comb += [self.tx_header.payload.cmd.eq(ERROR), reply_len.eq(6)]
                with m.Switch(Mux(kind == _K.PENDING, _Detail.ZERO, err_detail)):
                    for detail, at in _DETAIL_AT.items():
                        with m.Case(detail):
                            m.d.comb += reply_at.eq((at - 2) % 64)  # code, cmd, the detail

        # --- outputs --------------------------------------------------------------------
        m.d.comb += [
            self.leds[LED.IDLE].eq((state == _S.IDLE) & model_valid),
            self.leds[LED.LOADING].eq(loading),
            self.leds[LED.GENERATING].eq(long_op),
            self.leds[LED.ERROR].eq(~err_time[22]),
            self.step.payload.token.eq(cur),
            self.tx_header.payload.seq.eq(Mux(kind == _K.PENDING, err_seq, seq)),
            self.tx_header.payload.length.eq(reply_len),
            self.tx_payload.payload.eq(Mux(
                kind.as_value()[1] & (reply_i[1:] == 0),               # an error's first two
                Mux(reply_i[0], err_cmd, err_code),
                Mux(kind.as_value()[1] & ((kind == _K.PENDING) | (err_detail == _Detail.ZERO)
                                          | ((err_detail == _Detail.LENGTH) & reply_i[2])),
                    0, source))),
            self.load.payload.addr.eq(addr),
            self.load.payload.data.eq(word),
            self.seed.eq(arg1),
        ]
        with m.If(~err_time[22]):
            m.d.sync += err_time.eq(err_time + 1)

        # The checks EXEC decides on, made a byte at a time as the arguments come in ARGS
        # and kept in registers, so that no comparison or 32-bit add sits in front of EXEC's
        # reply and state multiplexers (the SoC's clock).
        words = Signal(range(MAX_CHUNK_WORDS + 1))     # LOAD_CHUNK: payload words
        offset_differs = Signal()          # LOAD_CHUNK/VERIFY: word 0 != expected
        total_differs = Signal()           # VERIFY: word 0 != total
        rest_differs = Signal()            # VERIFY: crc, hash
        # LOAD_CHUNK: expected - offset - words and total - offset - words, a byte at a time
        # (two borrows each: the first subtraction, the second).
        after_c = Signal()                 # carry of offset + words (the offset after it)
        again_b = Signal()                 # borrow of expected - that: not a retransmission
        over_b = Signal()                  # borrow of total - that: past the announced total
        # Word 0 (SET_SAMPLING's x0, GENERATE's token and count) a half at a time.
        low_zero = Signal()                # bytes 0, 1 are 0
        low_top = Signal()                 # bytes 0, 1 are 0xFFFD .. 0xFFFF
        high_zero = Signal()               # bytes 2, 3 are 0
        high_ones = Signal()               # bytes 2, 3 are 0xFFFF
        sampling_bad = ~((low_zero & high_zero) | (high_ones & ~low_zero & ~low_top))
        gen_zero = high_zero
        gen_bad_token = Signal()
        token_bad = _at_least(arg1[16:], vocab)       # GENERATE's token, PREFILL's tokens
        m.d.sync += words.eq((length - 8) >> 2)

        with m.Switch(state):
            with m.Case(_S.IDLE):
                m.d.comb += self.frame.ready.eq(1)
                f = self.frame.payload
                with m.If(self.frame.valid):
                    m.d.sync += [cmd.eq(f.cmd), seq.eq(f.seq), length.eq(f.length),
                                 bank.eq(f.bank), stop.eq(0), err_pending.eq(0),
                                 err_cmd.eq(f.cmd)]
                    with m.If(f.error != 0):
                        error(f.error, then=_S.IDLE)
                    with m.Else():
                        m.d.sync += state.eq(_S.DISPATCH)

            with m.Case(_S.DISPATCH):
                m.d.sync += [ptr.eq(_AT_LOAD), offset_differs.eq(0), total_differs.eq(0),
                             rest_differs.eq(0), after_c.eq(0), again_b.eq(0),
                             over_b.eq(0)]
                fixed = {Command.IDENTIFY: 0, Command.LOAD_BEGIN: 12, Command.VERIFY: 16,
                         Command.RESET_STATE: 0, Command.SET_SAMPLING: 8,
                         Command.GENERATE: 4, Command.STOP: 0}
                size = Signal(range(17))
                known = Signal()
                bad_length = Signal()
                prefill = cmd == Command.PREFILL
                with m.Switch(cmd):
                    for command, nbytes in fixed.items():
                        with m.Case(command):
                            m.d.comb += [size.eq(nbytes), known.eq(1),
                                         bad_length.eq(length != size)]
                    with m.Case(Command.LOAD_CHUNK):
                        m.d.comb += [known.eq(1), bad_length.eq(
                            ~_at_least(length, 12) | (length[:2] != 0)
                            | _at_least(length, 8 + 4 * MAX_CHUNK_WORDS + 1))]
                    with m.Case(Command.PREFILL):
                        m.d.comb += [known.eq(1), bad_length.eq((length == 0) | length[0])]
                with m.If(~known):
                    error(ErrorCode.UNKNOWN_COMMAND)
                with m.Elif(bad_length):
                    error(ErrorCode.BAD_LENGTH, _Detail.LENGTH)
                with m.Elif(prefill & ~model_valid):
                    error(ErrorCode.NO_MODEL)
                with m.Elif(prefill):
                    start_reader(length)
                    m.d.sync += [arg0.eq(0), tok_half.eq(0), long_op.eq(1),
                                 scan_check.eq(0), state.eq(_S.P_SCAN)]
                with m.Elif(length == 0):
                    m.d.sync += state.eq(_S.EXEC)
                with m.Else():
                    start_reader(length)
                    m.d.sync += state.eq(_S.ARGS)

            with m.Case(_S.ARGS):
                # ptr runs over expected, ~crc (0..7) with the argument bytes 0..7; VERIFY's
                # hash (bytes 8..15) is compared with pending_hash, rotated a byte at a time,
                # word 0 with total, rotated a byte at a time (all but LOAD_BEGIN, which shifts
                # its arguments into total and pending_hash).
                m.d.comb += reader.out.ready.eq(1)
                first_word = ~ptr[2] & ~ptr[3]
                begin = cmd == Command.LOAD_BEGIN
                words_byte = Mux(ptr[:2] == 0, words[:8], Mux(ptr[:2] == 1, words[8:], 0))
                # a + b + carry in as one adder: Cat(carry, a) + Cat(1, b), bits 1..
                after = Signal(10)
                again = Signal(10)
                over = Signal(10)
                m.d.comb += [after.eq(Cat(after_c, byte) + Cat(1, words_byte)),
                             again.eq(Cat(~again_b, source) + Cat(1, ~after[1:9])),
                             over.eq(Cat(~over_b, total[:8]) + Cat(1, ~after[1:9]))]
                with m.If(reader.out.valid):
                    m.d.sync += [ptr.eq(ptr + 1), arg0.eq(Cat(arg0[8:], arg1[:8])),
                                 arg1.eq(Cat(arg1[8:], byte))]
                    with m.If(first_word):
                        m.d.sync += exp_rotate
                    with m.If(begin | first_word):
                        m.d.sync += total.eq(Cat(total[8:], Mux(begin, pending_hash[:8],
                                                                total[:8])))
                    with m.If(begin):
                        m.d.sync += pending_hash.eq(Cat(pending_hash[8:], byte))
                    with m.If((cmd == Command.VERIFY) & ptr[3]):
                        m.d.sync += pending_hash.eq(Cat(pending_hash[8:], pending_hash[:8]))
                    with m.If(ptr == _AT_LOAD + 2):                # arg1[16:]: bytes 0, 1
                        m.d.sync += gen_bad_token.eq(token_bad)
                    with m.If(first_word):
                        m.d.sync += [after_c.eq(after[9]), again_b.eq(~again[9]),
                                     over_b.eq(~over[9])]
                        is_zero = byte == 0
                        is_ones = byte == 0xFF
                        half_first = ~ptr[0]
                        with m.If(~ptr[1]):
                            m.d.sync += [low_zero.eq(is_zero & (half_first | low_zero)),
                                         low_top.eq(Mux(half_first, _at_least(byte, 0xFD),
                                                        is_ones & low_top))]
                        with m.Else():
                            m.d.sync += [high_zero.eq(is_zero & (half_first | high_zero)),
                                         high_ones.eq(is_ones & (half_first | high_ones))]
                        with m.If(byte != total[:8]):
                            m.d.sync += total_differs.eq(1)
                    with m.If(byte != Mux(ptr[3], pending_hash[:8], source)):
                        with m.If(first_word):
                            m.d.sync += offset_differs.eq(1)
                        with m.Else():
                            m.d.sync += rest_differs.eq(1)
                    with m.If(reader.out.payload.last
                              | ((cmd == Command.LOAD_CHUNK) & (ptr == _AT_LOAD + 7))):
                        m.d.sync += state.eq(_S.EXEC)

            with m.Case(_S.EXEC):
                with m.Switch(cmd):
                    with m.Case(Command.IDENTIFY):
                        send(_K.REPLY)
                    with m.Case(Command.LOAD_BEGIN):
                        m.d.sync += [model_valid.eq(0), loading.eq(1), expected.eq(0),
                                     crc.eq(0xFFFF_FFFF)]
                        send(_K.REPLY)
                    with m.Case(Command.LOAD_CHUNK):
                        with m.If(~loading):
                            error(ErrorCode.NOT_LOADING)
                        with m.Elif(~offset_differs):
                            with m.If(over_b | after_c):
                                error(ErrorCode.BAD_LENGTH, _Detail.LENGTH)
                            with m.Else():
                                m.d.sync += [crc_step.eq(0), load_valid.eq(0), chunk_end.eq(0),
                                             addr_inc.eq(0), state.eq(_S.APPLY)]
                        with m.Elif(~again_b & ~after_c):         # a retransmission
                            send(_K.REPLY)
                        with m.Else():
                            error(ErrorCode.OUT_OF_ORDER, _Detail.EXPECTED)
                    with m.Case(Command.VERIFY):
                        with m.If(~loading):
                            error(ErrorCode.NOT_LOADING)
                        with m.Else():
                            with m.If(~offset_differs & ~total_differs & ~rest_differs):
                                m.d.sync += [model_hash.eq(pending_hash), model_valid.eq(1),
                                             loading.eq(0)]
                            send(_K.REPLY)
                    with m.Case(Command.RESET_STATE):
                        m.d.comb += self.reset_state.eq(1)
                        send(_K.REPLY)
                    with m.Case(Command.SET_SAMPLING):
                        with m.If(sampling_bad):
                            error(ErrorCode.BAD_VALUE, _Detail.ARG)
                        with m.Else():
                            m.d.comb += self.seed_load.eq(1)
                            m.d.sync += x0.eq(arg0)
                            send(_K.REPLY)
                    with m.Case(Command.GENERATE):
                        with m.If(~model_valid):
                            error(ErrorCode.NO_MODEL)
                        with m.Elif(gen_bad_token):
                            error(ErrorCode.BAD_TOKEN)
                        with m.Elif(gen_zero):
                            error(ErrorCode.BAD_VALUE)
                        with m.Else():
                            m.d.sync += [cur.eq(arg1), index.eq(0), long_op.eq(1),
                                         state.eq(_S.G_STEP)]
                    with m.Case(Command.STOP):
                        send(_K.REPLY)

            with m.Case(_S.APPLY):
                # CRC_BITS bits every cycle into the CRC (LSB first: it is reflected), a byte
                # into the word (little-endian) when they are done with it, until the word is
                # complete; the word waits on the load port.
                go = reader.out.valid & (~load_valid | self.load.ready)
                sub = crc_step[:(8 // CRC_BITS - 1).bit_length()]    # the step in the byte
                bits = byte.word_select(sub, CRC_BITS)
                byte_done = sub == 8 // CRC_BITS - 1
                m.d.comb += [self.load.valid.eq(load_valid),
                             reader.out.ready.eq(go & byte_done)]
                with m.If(self.load.valid & self.load.ready):
                    m.d.sync += load_valid.eq(0)
                    with m.If(chunk_end):                     # that was the last word
                        send(_K.REPLY)
                with m.If(go):
                    m.d.sync += [crc_step.eq(crc_step + 1),
                                 crc.eq(_crc32_bits(crc, [bits[i] for i in range(CRC_BITS)]))]
                    with m.If(crc_step[2:] == 0):
                        # Steps 0..3: count the word (expected + 1: it is written before
                        # anything reads expected again) and step the address past the word
                        # before it, if any (it has been written: this word is not complete).
                        first = crc_step[:2] == 0
                        m.d.comb += [exp_cin.eq(first | exp_c),
                                     addr_cin.eq(Mux(first, addr_inc, addr_c))]
                        m.d.sync += [exp_rotate, exp_c.eq(exp_low[8]),
                                     addr.eq(Cat(addr[8:], addr_low[:8])),
                                     addr_c.eq(addr_low[8])]
                    with m.If(byte_done):
                        m.d.sync += word.eq(Cat(word[8:], byte))
                    with m.If(crc_step == 32 // CRC_BITS - 1):
                        m.d.sync += [load_valid.eq(1), chunk_end.eq(reader.out.payload.last),
                                     addr_inc.eq(1)]

            with m.Case(_S.SEND):
                m.d.comb += self.tx_header.valid.eq(1)
                m.d.sync += ptr.eq(reply_at)
                with m.If(self.tx_header.ready):
                    with m.If(kind.as_value()[1]):            # ERROR, PENDING
                        m.d.sync += err_time.eq(0)
                    m.d.sync += state.eq(Mux(reply_len == 0, ret, _S.SEND_BODY))
            with m.Case(_S.SEND_BODY):
                m.d.comb += self.tx_payload.valid.eq(1)
                with m.If(self.tx_payload.ready):
                    m.d.sync += [reply_i.eq(reply_i + 1), ptr.eq(ptr + 1)]
                    with m.If(ptr[2:] == _AT_LOAD >> 2):        # wraps: EXPECTED
                        m.d.sync += exp_rotate
                    with m.If(reply_i + 1 == reply_len):
                        m.d.sync += state.eq(ret)

            with m.Case(_S.DONE):
                m.d.comb += [self.free.eq(1), self.free_bank.eq(bank),
                             reader.start.eq(1), reader.count.eq(0)]
                m.d.sync += [long_op.eq(0), state.eq(_S.IDLE)]

            # --- PREFILL -------------------------------------------------------------------
            with m.Case(_S.P_SCAN):
                # Each token is checked the cycle after its high byte (registered: the byte
                # comes straight out of the frame buffer's block RAM) in arg1[16:].
                m.d.comb += reader.out.ready.eq(1)
                m.d.sync += scan_check.eq(0)
                with m.If(reader.out.valid):
                    m.d.sync += [arg1.eq(Cat(arg1[8:], byte)), tok_half.eq(~tok_half)]
                    with m.If(tok_half):
                        m.d.sync += [scan_last.eq(reader.out.payload.last), scan_check.eq(1)]
                with m.If(scan_check):
                    with m.If(token_bad):
                        error(ErrorCode.BAD_TOKEN, _Detail.ARG)
                    with m.Elif(scan_last):
                        start_reader(length)
                        m.d.sync += [index.eq(0), tok_half.eq(0), state.eq(_S.P_STEP)]
                    with m.Else():
                        m.d.sync += index.eq(index + 1)
            with m.Case(_S.P_STEP):
                control_frames()
                m.d.comb += reader.out.ready.eq(~tok_half | self.step.ready)
                m.d.comb += self.step.payload.token.eq(Cat(arg1[24:], byte))
                with m.If(stop):
                    m.d.sync += state.eq(_S.FINISH)
                with m.Elif(reader.out.valid):
                    with m.If(~tok_half):
                        m.d.sync += [arg1.eq(Cat(arg1[8:], byte)), tok_half.eq(1)]
                    with m.Else():
                        m.d.comb += [self.step.valid.eq(1), self.step.payload.emit.eq(0)]
                        with m.If(self.step.ready):
                            m.d.sync += [tok_half.eq(0), index.eq(index + 1),
                                         state.eq(_S.P_WAIT)]
            with m.Case(_S.P_WAIT):
                control_frames()
                with m.If(~self.busy & ~self.step.valid):
                    with m.If(err_pending):
                        m.d.sync += state.eq(_S.PEND_ERR)
                    with m.Elif(index == (length >> 1)):
                        m.d.sync += state.eq(_S.FINISH)
                    with m.Else():
                        m.d.sync += state.eq(_S.P_STEP)

            # --- GENERATE ------------------------------------------------------------------
            with m.Case(_S.G_STEP):
                control_frames()
                with m.If(stop):
                    m.d.sync += state.eq(_S.FINISH)
                with m.Else():
                    m.d.comb += [self.step.valid.eq(1), self.step.payload.emit.eq(1)]
                    with m.If(self.step.ready):
                        m.d.sync += state.eq(_S.G_WAIT)
            with m.Case(_S.G_WAIT):
                control_frames()
                m.d.comb += self.token.ready.eq(1)
                with m.If(self.token.valid):
                    m.d.sync += [cur.eq(self.token.payload), state.eq(_S.G_END)]
            with m.Case(_S.G_END):
                # The engine's cycles hold from the end of the step until the next one.
                control_frames()
                with m.If(~self.busy):
                    send(_K.TOKEN, _S.G_COUNT)
            with m.Case(_S.G_COUNT):
                m.d.sync += [index.eq(index + 1), state.eq(_S.G_NEXT)]
            with m.Case(_S.G_NEXT):
                control_frames()
                with m.If(err_pending):
                    m.d.sync += state.eq(_S.PEND_ERR)
                with m.Elif(stop | (index == count)):
                    m.d.sync += state.eq(_S.FINISH)
                with m.Else():
                    m.d.sync += state.eq(_S.G_STEP)

            with m.Case(_S.PEND_ERR):
                m.d.sync += err_pending.eq(0)
                is_prefill = cmd == Command.PREFILL
                send(_K.PENDING, Mux(is_prefill, _S.P_WAIT, _S.G_NEXT))
            with m.Case(_S.FINISH):
                # produced u16, stopped u8: the TOKEN frame's index, and its token byte.
                m.d.sync += cur.eq(stop)
                send(_K.REPLY, Mux(stop, _S.STOP_REPLY, _S.DONE))
            with m.Case(_S.STOP_REPLY):
                # The request is done: its cmd and seq become STOP's.
                m.d.sync += [cmd.eq(Command.STOP), seq.eq(stop_seq)]
                send(_K.REPLY)
        return m
