"""Frames of the host link (:mod:`mmfree.sim.protocol`) on a byte stream: receiver with a
two-bank payload buffer, and transmitter. CRCs are computed a byte per cycle."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.sim.protocol import HEADER_BYTES, MAX_PAYLOAD, SYNC, ErrorCode

__all__ = ["crc16_next", "FRAME_INFO", "FrameReceiver", "FrameTransmitter",
           "BANK_BYTES"]

BANK_BYTES = 1 << (MAX_PAYLOAD - 1).bit_length()      # payload buffer bank, a power of two
LENGTH_BITS = 16
PAYLOAD_BITS = MAX_PAYLOAD.bit_length()             # a payload index, a length that fits


def _linear_crc(width, poly):
    """Each next-state bit of a bytewise MSB-first CRC as the set of current-state bits
    (0..width-1) and byte bits (width..width+7) whose XOR it is: a CRC step is linear over
    GF(2), so the logic is one XOR tree per bit instead of eight chained multiplexers."""
    state = [{i} for i in range(width)]
    byte = [{width + i} for i in range(8)]
    state = [state[i] ^ byte[i - (width - 8)] if i >= width - 8 else state[i]
             for i in range(width)]
    for _ in range(8):
        high = state[width - 1]
        state = [set()] + state[:-1]
        state = [state[i] ^ high if (poly >> i) & 1 else state[i] for i in range(width)]
    return state


def _xor_tree(terms, bits):
    value = Const(0, 1)
    for index in sorted(terms):
        value = value ^ bits[index]
    return value


_CRC16 = _linear_crc(16, 0x1021)


def crc16_next(crc, byte):
    """CRC-16/CCITT-FALSE of one more byte (combinational), as
    :func:`mmfree.sim.protocol.crc16_update`."""
    bits = [crc[i] for i in range(16)] + [byte[i] for i in range(8)]
    return Cat(*[_xor_tree(terms, bits) for terms in _CRC16])


FRAME_INFO = data.StructLayout({
    "cmd":    8,
    "seq":    8,
    "length": LENGTH_BITS,
    "bank":   1,
    "error":  4,          # 0, or the ErrorCode of a dropped frame (no bank then)
})


class _RxState(enum.Enum, shape=3):
    HUNT    = 0
    CMD     = 1
    SEQ     = 2
    LEN0    = 3
    LEN1    = 4
    PAYLOAD = 5
    CRC0    = 6
    CRC1    = 7


class FrameReceiver(wiring.Component):
    """Bytes -> frames. Never stalls the byte stream (``data.ready`` is always high).

    Payloads go into one of two banks of a ``2 * BANK_BYTES`` byte buffer; a frame with a
    good CRC is announced on ``frame`` with its bank, which stays the consumer's until it
    pulses ``free`` with ``free_bank`` (an announced frame owns its bank until then). A frame
    that starts while no bank is free, or that ends while the previous announcement is still
    pending, is dropped (the host times out and retries).
    Dropped frames with a readable header are announced with an error code and no bank:
    ``BAD_CRC``, ``BAD_LENGTH`` (over :data:`MAX_PAYLOAD`), ``LINE`` (a UART error inside the
    frame). A frame with no byte for ``timeout`` cycles is abandoned silently.

    Read the buffer through ``rd_addr`` (``bank * BANK_BYTES + index``), ``rd_en`` and
    ``rd_data`` (one cycle latency; the data holds while ``rd_en`` is low). Latency: ``frame`` is valid the cycle after the last CRC byte.
    """

    def __init__(self, *, timeout: int):
        if not isinstance(timeout, int) or timeout < 16:
            raise ValueError(f"timeout must be an integer of at least 16 cycles, not {timeout!r}")
        self._timeout = timeout
        super().__init__({
            "data":       In(stream.Signature(8)),
            "line_error": In(1),
            "frame":      Out(stream.Signature(FRAME_INFO)),
            "free":       In(1),
            "free_bank":  In(1),
            "rd_addr":    In(range(2 * BANK_BYTES)),
            "rd_en":      In(1, init=1),
            "rd_data":    Out(8),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.buf = buf = Memory(shape=unsigned(8), depth=2 * BANK_BYTES, init=[])
        wr = buf.write_port()
        rd = buf.read_port()
        m.d.comb += [rd.addr.eq(self.rd_addr), rd.en.eq(self.rd_en), self.rd_data.eq(rd.data)]

        state = Signal(_RxState)
        busy = Signal(2)                  # banks owned by the consumer (or announced)
        bank = Signal()                   # the bank of the frame being received
        cmd, seq = Signal(8), Signal(8)
        length = Signal(PAYLOAD_BITS)     # of a frame that is received (not over MAX_PAYLOAD)
        index = Signal(PAYLOAD_BITS)
        crc = Signal(16)
        crc_lo_ok = Signal()              # the first CRC byte matched
        dropping = Signal()               # no bank for this frame: parse, then forget it
        idle = Signal(range(self._timeout + 1))
        byte = self.data.payload
        got = self.data.valid

        m.d.comb += self.data.ready.eq(1)
        with m.If(self.frame.valid & self.frame.ready):
            m.d.sync += self.frame.valid.eq(0)
        with m.If(self.free):
            m.d.sync += busy.eq(busy & ~(Const(1, 2) << self.free_bank))

        def announce(error, own_bank):
            with m.If(~self.frame.valid | self.frame.ready):
                m.d.sync += [
                    self.frame.valid.eq(1),
                    self.frame.payload.cmd.eq(cmd), self.frame.payload.seq.eq(seq),
                    self.frame.payload.length.eq(length), self.frame.payload.bank.eq(bank),
                    self.frame.payload.error.eq(error),
                ]
                if own_bank:
                    m.d.sync += busy.eq((busy | (Const(1, 2) << bank))
                                        & ~Mux(self.free, Const(1, 2) << self.free_bank, 0))

        in_frame = state != _RxState.HUNT
        with m.If(got | ~in_frame):
            m.d.sync += idle.eq(0)
        with m.Else():
            m.d.sync += idle.eq(idle + 1)

        with m.If(in_frame & self.line_error):
            with m.If(state != _RxState.CMD):
                announce(ErrorCode.LINE, False)
            m.d.sync += state.eq(_RxState.HUNT)
        with m.Elif(in_frame & (idle == self._timeout)):
            m.d.sync += state.eq(_RxState.HUNT)
        with m.Elif(got):
            with m.If((state != _RxState.HUNT) & (state != _RxState.CRC0)
                      & (state != _RxState.CRC1)):
                m.d.sync += crc.eq(crc16_next(crc, byte))
            with m.Switch(state):
                with m.Case(_RxState.HUNT):
                    with m.If(byte == SYNC):
                        free0 = ~busy[0]
                        free1 = ~busy[1]
                        m.d.sync += [
                            state.eq(_RxState.CMD), crc.eq(0xFFFF),
                            bank.eq(~free0),
                            dropping.eq(~free0 & ~free1),
                        ]
                with m.Case(_RxState.CMD):
                    m.d.sync += [cmd.eq(byte), state.eq(_RxState.SEQ)]
                with m.Case(_RxState.SEQ):
                    m.d.sync += [seq.eq(byte), state.eq(_RxState.LEN0)]
                with m.Case(_RxState.LEN0):
                    m.d.sync += [length[:8].eq(byte), state.eq(_RxState.LEN1)]
                with m.Case(_RxState.LEN1):
                    total = Cat(length[:8], byte)
                    m.d.sync += [length[8:].eq(byte), index.eq(0)]
                    with m.If(total > MAX_PAYLOAD):
                        with m.If(~dropping):
                            announce(ErrorCode.BAD_LENGTH, False)
                        m.d.sync += state.eq(_RxState.HUNT)
                    with m.Elif(total == 0):
                        m.d.sync += state.eq(_RxState.CRC0)
                    with m.Else():
                        m.d.sync += state.eq(_RxState.PAYLOAD)
                with m.Case(_RxState.PAYLOAD):
                    m.d.comb += [wr.addr.eq(Cat(index[:len(wr.addr) - 1], bank)),
                                 wr.data.eq(byte), wr.en.eq(~dropping)]
                    m.d.sync += index.eq(index + 1)
                    with m.If(index + 1 == length):
                        m.d.sync += state.eq(_RxState.CRC0)
                with m.Case(_RxState.CRC0):
                    m.d.sync += [crc_lo_ok.eq(byte == crc[:8]), state.eq(_RxState.CRC1)]
                with m.Case(_RxState.CRC1):
                    m.d.sync += state.eq(_RxState.HUNT)
                    with m.If(~dropping):
                        with m.If(crc_lo_ok & (byte == crc[8:])):
                            announce(0, True)
                        with m.Else():
                            announce(ErrorCode.BAD_CRC, False)
        return m


class _TxState(enum.Enum, shape=3):
    IDLE    = 0
    HEADER  = 1
    PAYLOAD = 2
    CRC0    = 3
    CRC1    = 4


class FrameTransmitter(wiring.Component):
    """Frames -> bytes: a ``header`` transfer (cmd, seq, length), then ``length`` bytes on
    ``payload``; ``out`` carries SYNC, the header, the payload and the CRC.

    Throughput: one byte per cycle while ``out`` is ready (``length + 7`` cycles a frame, plus
    one to take the header). ``busy`` is high from the header transfer to the last CRC byte.
    """

    def __init__(self):
        super().__init__({
            "header":  In(stream.Signature(data.StructLayout({
                "cmd": 8, "seq": 8, "length": LENGTH_BITS}))),
            "payload": In(stream.Signature(8)),
            "out":     Out(stream.Signature(8)),
            "busy":    Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        state = Signal(_TxState)
        head = Signal(8 * (HEADER_BYTES - 1))   # cmd, seq, length (after the SYNC)
        index = Signal(range(HEADER_BYTES))
        left = Signal(LENGTH_BITS)              # payload bytes to go
        crc = Signal(16)
        sent = self.out.valid & self.out.ready

        m.d.comb += [self.busy.eq(state != _TxState.IDLE),
                     self.header.ready.eq(state == _TxState.IDLE)]
        with m.Switch(state):
            with m.Case(_TxState.IDLE):
                with m.If(self.header.valid):
                    h = self.header.payload
                    m.d.sync += [head.eq(Cat(h.cmd, h.seq, h.length)), left.eq(h.length),
                                 index.eq(0), crc.eq(0xFFFF), state.eq(_TxState.HEADER)]
            with m.Case(_TxState.HEADER):
                m.d.comb += [self.out.valid.eq(1),
                             self.out.payload.eq(Cat(Const(SYNC, 8), head).word_select(index, 8))]
                with m.If(sent):
                    with m.If(index != 0):
                        m.d.sync += crc.eq(crc16_next(crc, self.out.payload))
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == HEADER_BYTES - 1):
                        m.d.sync += state.eq(Mux(left == 0, _TxState.CRC0, _TxState.PAYLOAD))
            with m.Case(_TxState.PAYLOAD):
                m.d.comb += [self.out.valid.eq(self.payload.valid),
                             self.out.payload.eq(self.payload.payload),
                             self.payload.ready.eq(self.out.ready)]
                with m.If(sent):
                    m.d.sync += [crc.eq(crc16_next(crc, self.out.payload)), left.eq(left - 1)]
                    with m.If(left == 1):
                        m.d.sync += state.eq(_TxState.CRC0)
            with m.Case(_TxState.CRC0):
                m.d.comb += [self.out.valid.eq(1), self.out.payload.eq(crc[:8])]
                with m.If(sent):
                    m.d.sync += state.eq(_TxState.CRC1)
            with m.Case(_TxState.CRC1):
                m.d.comb += [self.out.valid.eq(1), self.out.payload.eq(crc[8:])]
                with m.If(sent):
                    m.d.sync += state.eq(_TxState.IDLE)
        return m
