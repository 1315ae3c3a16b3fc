"""The device side of the host link: executes the commands of :mod:`mmfree.sim.protocol`
on the decode engine."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.hw.framing import BANK_BYTES, FRAME_INFO, crc32_next
from mmfree.hw.vector_reader import VectorReader
from mmfree.sim.protocol import (ERROR, MAX_CHUNK_WORDS, REPLY, TOKEN, Command, ErrorCode,
                                 Identity)

__all__ = ["LinkController", "LED"]

REPLY_BYTES = 41             # the largest reply payload (Identity)
X0_MIN = -65535


class LED(enum.IntEnum):
    """Bits of ``leds``."""
    IDLE       = 0   # ready, with a verified model
    LOADING    = 1   # between LOAD_BEGIN and a successful VERIFY
    GENERATING = 2   # a PREFILL or GENERATE runs
    ERROR      = 3   # an error reply was sent (held about 2**22 cycles)


class _S(enum.Enum, shape=5):
    IDLE       = 0
    DISPATCH   = 1
    ARGS       = 2    # args <- the first n_args payload bytes
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
    PREP       = 18   # the checks on the arguments settle in their registers


class LinkController(wiring.Component):
    """Takes frames from a :class:`~mmfree.hw.framing.FrameReceiver`, executes them on an
    :class:`~mmfree.hw.engine.Engine` and sends replies through a
    :class:`~mmfree.hw.framing.FrameTransmitter`.

    ``identity`` gives the constant fields of the IDENTIFY reply; ``model_hash``/``model_valid``
    there are the power-up values of the loaded-model record, which no reset changes (the
    memories keep their contents through a reset too): after a reset in the middle of a load
    the device still reports no valid model.

    Timing: a command is taken the cycle after the frame is announced; LOAD_CHUNK writes a
    word every 4 cycles; replies go out a byte per cycle into the transmitter.
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
                                                    addr_width=len(self.rd_addr))
        m.d.comb += [self.rd_addr.eq(reader.addr), self.rd_en.eq(reader.en),
                     reader.data.eq(self.rd_data)]
        byte = reader.out.payload.data

        state = Signal(_S)
        ret = Signal(_S)                 # where SEND returns
        cmd, seq = Signal(8), Signal(8)
        length = Signal(16)
        bank = Signal()
        args = Signal(16 * 8)
        n_args = Signal(5)
        arg_i = Signal(5)

        reply = Signal(REPLY_BYTES * 8)
        reply_cmd, reply_seq = Signal(8), Signal(8)
        reply_len = Signal(range(REPLY_BYTES + 1))
        reply_i = Signal(range(REPLY_BYTES + 1))

        # The loaded-model record: not reset (see the class docstring).
        model_hash = Signal(64, init=ident.model_hash, reset_less=True)
        model_valid = Signal(init=ident.model_valid, reset_less=True)
        loading = Signal()
        pending_hash = Signal(64)
        total = Signal(32)
        expected = Signal(32)
        crc = Signal(32, init=0xFFFF_FFFF)
        word = Signal(32)
        word_i = Signal(2)
        addr = Signal(32)
        load_valid = Signal()
        apply_left = Signal(16)
        long_op = Signal()               # a PREFILL or GENERATE runs

        x0 = Signal(signed(17))
        m.d.comb += self.x0.eq(x0)

        index = Signal(16)               # PREFILL/GENERATE progress
        count = Signal(16)
        cur = Signal(unsigned(self._token_bits))
        tok_lo = Signal(8)
        tok_half = Signal()
        scan_token = Signal(16)          # PREFILL's check of the tokens
        scan_last = Signal()
        scan_check = Signal()
        stop = Signal()
        stop_seq = Signal(8)
        err_pending = Signal()
        err_reply = Signal(6 * 8)
        err_seq = Signal(8)
        err_led = Signal(22)

        def send(cmd_value, seq_value, payload_bits, nbytes, then):
            bits = Cat(*payload_bits) if isinstance(payload_bits, (list, tuple)) else \
                payload_bits
            m.d.sync += [reply_cmd.eq(cmd_value), reply_seq.eq(seq_value),
                         reply.eq(bits), reply_len.eq(nbytes), reply_i.eq(0),
                         ret.eq(then), state.eq(_S.SEND)]

        def error(code, detail=0, then=_S.DONE):
            send(ERROR, seq, [Const(code, 8), cmd, Const(0, 32) | detail], 6, then)
            m.d.sync += err_led.eq((1 << 22) - 1)

        def start_reader(offset, nbytes):
            m.d.comb += [reader.start.eq(1),
                         reader.base.eq(Cat(Const(0, len(self.rd_addr) - 1), bank)
                                        + offset),
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
                        err_pending.eq(1), err_seq.eq(f.seq),
                        err_reply.eq(Cat(Mux(f.error != 0, f.error, ErrorCode.BUSY),
                                         Const(0, 4), f.cmd, Const(0, 32))),
                    ]

        # --- identity -------------------------------------------------------------------
        identity_bits = Cat(
            Const(int.from_bytes(b"MMFR", "little"), 32), Const(ident.version, 8),
            Const(ident.board, 8), Const(ident.lanes, 16), Const(ident.width, 8),
            Const(ident.num_layers, 8), Const(ident.hidden_size, 16),
            Const(ident.hidden_act, 8), Const(ident.intermediate_size, 16),
            Const(ident.vocab_size, 32), Const(ident.packing, 8), Const(ident.clock_hz, 32),
            Const(ident.divisor, 32), Const(ident.config_hash, 32), model_hash,
            model_valid, Const(0, 7))
        assert len(identity_bits) == REPLY_BYTES * 8

        # --- outputs --------------------------------------------------------------------
        m.d.comb += [
            self.leds[LED.IDLE].eq((state == _S.IDLE) & model_valid),
            self.leds[LED.LOADING].eq(loading),
            self.leds[LED.GENERATING].eq(long_op),
            self.leds[LED.ERROR].eq(err_led != 0),
            self.step.payload.token.eq(cur),
            self.tx_header.payload.cmd.eq(reply_cmd),
            self.tx_header.payload.seq.eq(reply_seq),
            self.tx_header.payload.length.eq(reply_len),
            self.tx_payload.payload.eq(reply.word_select(reply_i, 8)),
            self.load.payload.addr.eq(addr),
            self.load.payload.data.eq(word),
        ]
        with m.If(err_led != 0):
            m.d.sync += err_led.eq(err_led - 1)

        a32 = [args[32 * k:32 * (k + 1)] for k in range(4)]
        a16 = [args[16 * k:16 * (k + 1)] for k in range(2)]

        # The checks EXEC decides on, registered every cycle from registers that are stable
        # from PREP on (arguments, length, load progress), so that no comparison or 32-bit
        # add sits in front of EXEC's reply and state multiplexers (the SoC's clock).
        words = Signal(16)                 # LOAD_CHUNK: payload words
        chunk_next = Signal()              # the chunk continues the load
        chunk_over = Signal()              # it would run past the announced total
        chunk_again = Signal()             # a retransmission of words already applied
        verify_ok = Signal()
        verify_hash = Signal()
        sampling_bad = Signal()
        gen_bad_token = Signal()
        gen_zero = Signal()
        value = a32[0].as_signed()
        m.d.sync += [
            words.eq((length - 8) >> 2),
            chunk_next.eq(a32[0] == expected),
            chunk_over.eq(expected + words > total),
            chunk_again.eq(a32[0] + words <= expected),
            verify_ok.eq((a32[0] == expected) & (expected == total) & (a32[1] == ~crc)),
            verify_hash.eq(args[64:128] == pending_hash),
            sampling_bad.eq((value != 0) & ((value > -4) | (value < X0_MIN))),
            gen_bad_token.eq(a16[0] >= vocab),
            gen_zero.eq(a16[1] == 0),
        ]

        with m.Switch(state):
            with m.Case(_S.IDLE):
                m.d.comb += self.frame.ready.eq(1)
                f = self.frame.payload
                with m.If(self.frame.valid):
                    m.d.sync += [cmd.eq(f.cmd), seq.eq(f.seq), length.eq(f.length),
                                 bank.eq(f.bank), stop.eq(0), err_pending.eq(0)]
                    with m.If(f.error != 0):
                        m.d.sync += [
                            reply_cmd.eq(ERROR), reply_seq.eq(f.seq),
                            reply.eq(Cat(f.error, Const(0, 4), f.cmd, Const(0, 32))),
                            reply_len.eq(6), reply_i.eq(0), ret.eq(_S.IDLE),
                            state.eq(_S.SEND), err_led.eq((1 << 22) - 1),
                        ]
                    with m.Else():
                        m.d.sync += state.eq(_S.DISPATCH)

            with m.Case(_S.DISPATCH):
                fixed = {Command.IDENTIFY: 0, Command.LOAD_BEGIN: 12, Command.VERIFY: 16,
                         Command.RESET_STATE: 0, Command.SET_SAMPLING: 8,
                         Command.GENERATE: 4, Command.STOP: 0}
                with m.Switch(cmd):
                    for command, size in fixed.items():
                        with m.Case(command):
                            with m.If(length != size):
                                error(ErrorCode.BAD_LENGTH, length)
                            with m.Else():
                                if size == 0:
                                    m.d.sync += state.eq(_S.EXEC)
                                else:
                                    start_reader(0, size)
                                    m.d.sync += [n_args.eq(size), arg_i.eq(0),
                                                 state.eq(_S.ARGS)]
                    with m.Case(Command.LOAD_CHUNK):
                        with m.If((length < 12) | (length[:2] != 0)
                                  | (length > 8 + 4 * MAX_CHUNK_WORDS)):
                            error(ErrorCode.BAD_LENGTH, length)
                        with m.Else():
                            start_reader(0, length)
                            m.d.sync += [n_args.eq(8), arg_i.eq(0), state.eq(_S.ARGS)]
                    with m.Case(Command.PREFILL):
                        with m.If((length == 0) | length[0]):
                            error(ErrorCode.BAD_LENGTH, length)
                        with m.Elif(~model_valid):
                            error(ErrorCode.NO_MODEL)
                        with m.Else():
                            start_reader(0, length)
                            m.d.sync += [index.eq(0), tok_half.eq(0), long_op.eq(1),
                                         scan_check.eq(0), state.eq(_S.P_SCAN)]
                    with m.Default():
                        error(ErrorCode.UNKNOWN_COMMAND)

            with m.Case(_S.ARGS):
                m.d.comb += reader.out.ready.eq(1)
                with m.If(reader.out.valid):
                    m.d.sync += [args.word_select(arg_i, 8).eq(byte), arg_i.eq(arg_i + 1)]
                    with m.If(arg_i + 1 == n_args):
                        m.d.sync += state.eq(_S.PREP)

            with m.Case(_S.PREP):
                # words (from length) settled in ARGS; the argument checks settle here.
                m.d.sync += state.eq(_S.EXEC)

            with m.Case(_S.EXEC):
                with m.Switch(cmd):
                    with m.Case(Command.IDENTIFY):
                        send(REPLY | Command.IDENTIFY, seq, identity_bits, REPLY_BYTES, _S.DONE)
                    with m.Case(Command.LOAD_BEGIN):
                        m.d.sync += [model_valid.eq(0), loading.eq(1), total.eq(a32[0]),
                                     pending_hash.eq(args[32:96]), expected.eq(0),
                                     crc.eq(0xFFFF_FFFF)]
                        send(REPLY | Command.LOAD_BEGIN, seq, Const(0, 8), 0, _S.DONE)
                    with m.Case(Command.LOAD_CHUNK):
                        with m.If(~loading):
                            error(ErrorCode.NOT_LOADING)
                        with m.Elif(chunk_next):
                            with m.If(chunk_over):
                                error(ErrorCode.BAD_LENGTH, length)
                            with m.Else():
                                m.d.sync += [addr.eq(a32[1]), word_i.eq(0), load_valid.eq(0),
                                             apply_left.eq(words), state.eq(_S.APPLY)]
                        with m.Elif(chunk_again):                 # a retransmission
                            send(REPLY | Command.LOAD_CHUNK, seq, expected, 4, _S.DONE)
                        with m.Else():
                            error(ErrorCode.OUT_OF_ORDER, expected)
                    with m.Case(Command.VERIFY):
                        with m.If(~loading):
                            error(ErrorCode.NOT_LOADING)
                        with m.Else():
                            with m.If(verify_ok & verify_hash):
                                m.d.sync += [model_hash.eq(pending_hash), model_valid.eq(1),
                                             loading.eq(0)]
                            send(REPLY | Command.VERIFY, seq,
                                 [expected, ~crc, verify_ok & verify_hash, Const(0, 7)], 9,
                                 _S.DONE)
                    with m.Case(Command.RESET_STATE):
                        m.d.comb += self.reset_state.eq(1)
                        send(REPLY | Command.RESET_STATE, seq, Const(0, 8), 0, _S.DONE)
                    with m.Case(Command.SET_SAMPLING):
                        with m.If(sampling_bad):
                            error(ErrorCode.BAD_VALUE, a32[0])
                        with m.Else():
                            m.d.comb += [self.seed.eq(a32[1]), self.seed_load.eq(1)]
                            m.d.sync += x0.eq(value)
                            send(REPLY | Command.SET_SAMPLING, seq, Const(0, 8), 0, _S.DONE)
                    with m.Case(Command.GENERATE):
                        with m.If(~model_valid):
                            error(ErrorCode.NO_MODEL)
                        with m.Elif(gen_bad_token):
                            error(ErrorCode.BAD_TOKEN, 0)
                        with m.Elif(gen_zero):
                            error(ErrorCode.BAD_VALUE, 0)
                        with m.Else():
                            m.d.sync += [cur.eq(a16[0]), count.eq(a16[1]), index.eq(0),
                                         long_op.eq(1), state.eq(_S.G_STEP)]
                    with m.Case(Command.STOP):
                        send(REPLY | Command.STOP, seq, Const(0, 8), 0, _S.DONE)

            with m.Case(_S.APPLY):
                # A byte every cycle until a word is complete; the word waits on the load port.
                m.d.comb += [self.load.valid.eq(load_valid),
                             reader.out.ready.eq(~load_valid | self.load.ready)]
                with m.If(self.load.valid & self.load.ready):
                    m.d.sync += [load_valid.eq(0), addr.eq(addr + 1),
                                 expected.eq(expected + 1), apply_left.eq(apply_left - 1)]
                    with m.If(apply_left == 1):               # that was the last word
                        send(REPLY | Command.LOAD_CHUNK, seq, expected + 1, 4, _S.DONE)
                with m.If(reader.out.valid & reader.out.ready):
                    m.d.sync += [word.word_select(word_i, 8).eq(byte), word_i.eq(word_i + 1),
                                 crc.eq(crc32_next(crc, byte))]
                    with m.If(word_i == 3):
                        m.d.sync += load_valid.eq(1)

            with m.Case(_S.SEND):
                m.d.comb += self.tx_header.valid.eq(1)
                with m.If(self.tx_header.ready):
                    m.d.sync += state.eq(Mux(reply_len == 0, ret, _S.SEND_BODY))
            with m.Case(_S.SEND_BODY):
                m.d.comb += self.tx_payload.valid.eq(1)
                with m.If(self.tx_payload.ready):
                    m.d.sync += reply_i.eq(reply_i + 1)
                    with m.If(reply_i + 1 == reply_len):
                        m.d.sync += state.eq(ret)

            with m.Case(_S.DONE):
                m.d.comb += [self.free.eq(1), self.free_bank.eq(bank),
                             reader.start.eq(1), reader.count.eq(0)]
                m.d.sync += [long_op.eq(0), state.eq(_S.IDLE)]

            # --- PREFILL -------------------------------------------------------------------
            with m.Case(_S.P_SCAN):
                # Each token is checked the cycle after its high byte (registered: the byte
                # comes straight out of the frame buffer's block RAM).
                m.d.comb += reader.out.ready.eq(1)
                m.d.sync += scan_check.eq(0)
                with m.If(reader.out.valid):
                    m.d.sync += [tok_lo.eq(byte), tok_half.eq(~tok_half)]
                    with m.If(tok_half):
                        m.d.sync += [scan_token.eq(Cat(tok_lo, byte)),
                                     scan_last.eq(reader.out.payload.last), scan_check.eq(1)]
                with m.If(scan_check):
                    with m.If(scan_token >= vocab):
                        error(ErrorCode.BAD_TOKEN, index)
                    with m.Elif(scan_last):
                        start_reader(0, length)
                        m.d.sync += [index.eq(0), tok_half.eq(0), state.eq(_S.P_STEP)]
                    with m.Else():
                        m.d.sync += index.eq(index + 1)
            with m.Case(_S.P_STEP):
                control_frames()
                m.d.comb += reader.out.ready.eq(~tok_half | self.step.ready)
                m.d.comb += self.step.payload.token.eq(Cat(tok_lo, byte))
                with m.If(stop):
                    m.d.sync += state.eq(_S.FINISH)
                with m.Elif(reader.out.valid):
                    with m.If(~tok_half):
                        m.d.sync += [tok_lo.eq(byte), tok_half.eq(1)]
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
                control_frames()
                with m.If(~self.busy):
                    send(TOKEN, seq, [index, Const(0, 16) | cur, self.cycles], 8, _S.G_NEXT)
                    m.d.sync += index.eq(index + 1)
            with m.Case(_S.G_NEXT):
                control_frames()
                with m.If(err_pending):
                    m.d.sync += state.eq(_S.PEND_ERR)
                with m.Elif(stop | (index == count)):
                    m.d.sync += state.eq(_S.FINISH)
                with m.Else():
                    m.d.sync += state.eq(_S.G_STEP)

            with m.Case(_S.PEND_ERR):
                m.d.sync += [err_pending.eq(0), err_led.eq((1 << 22) - 1)]
                is_prefill = cmd == Command.PREFILL
                send(ERROR, err_seq, err_reply, 6, Mux(is_prefill, _S.P_WAIT, _S.G_NEXT))
            with m.Case(_S.FINISH):
                with m.If(cmd == Command.PREFILL):
                    send(REPLY | Command.PREFILL, seq, index, 2,
                         Mux(stop, _S.STOP_REPLY, _S.DONE))
                with m.Else():
                    send(REPLY | Command.GENERATE, seq, [index, stop, Const(0, 7)], 3,
                         Mux(stop, _S.STOP_REPLY, _S.DONE))
            with m.Case(_S.STOP_REPLY):
                send(REPLY | Command.STOP, stop_seq, Const(0, 8), 0, _S.DONE)
        return m
