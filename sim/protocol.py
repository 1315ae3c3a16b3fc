"""The host link protocol: frames, commands, error codes and hashes, defined once.

The gateware (:mod:`mmfree.hw.link`), the host :class:`~mmfree.tools.interface.Interface` and
the tests import everything from here; docs/protocol.md describes the same bytes for people.

Every frame, in both directions::

    offset  size  field
    0       1     SYNC (0xA5)
    1       1     cmd        a Command (host -> device), a Reply, TOKEN or ERROR (device -> host)
    2       1     seq        chosen by the host; the device echoes the seq of the request
    3       2     length     payload bytes, little-endian, at most MAX_PAYLOAD
    5       n     payload
    5 + n   2     crc        CRC-16/CCITT-FALSE of bytes 1 .. 4 + n (cmd, seq, length, payload),
                             little-endian

All multi-byte fields are little-endian. This module has no Amaranth in it (host tools import it).
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass

__all__ = [
    "VERSION", "SYNC", "HEADER_BYTES", "FRAME_OVERHEAD", "MAX_PAYLOAD", "MAX_CHUNK_WORDS",
    "MAX_PREFILL_TOKENS", "MAGIC", "Command", "Board", "ErrorCode", "REPLY", "TOKEN", "ERROR",
    "crc16", "crc16_update", "crc32_words", "Frame", "encode", "FrameDecoder",
    "Identity", "identity_for", "config_hash", "model_hash", "load_chunks", "PAYLOAD",
]

VERSION = 1
SYNC = 0xA5
HEADER_BYTES = 5                 # SYNC, cmd, seq, length (2)
FRAME_OVERHEAD = HEADER_BYTES + 2
MAX_CHUNK_WORDS = 256            # 32-bit words of weights per LOAD_CHUNK
MAX_PAYLOAD = 8 + 4 * MAX_CHUNK_WORDS
MAX_PREFILL_TOKENS = MAX_PAYLOAD // 2
MAGIC = b"MMFR"


class Command(enum.IntEnum):
    """Host -> device requests. Each gets exactly one reply (``REPLY | cmd``) or one ERROR
    frame with the request's seq; GENERATE first streams TOKEN frames."""
    IDENTIFY     = 0x01   # -> Identity
    LOAD_BEGIN   = 0x02   # total_words u32, model_hash u64: invalidates the loaded model
    LOAD_CHUNK   = 0x03   # offset u32, addr u32, words u32[n]: -> next_offset u32
    VERIFY       = 0x04   # words u32, crc u32, model_hash u64: -> words u32, crc u32, ok u8
    RESET_STATE  = 0x05   # zero every layer's recurrent state
    SET_SAMPLING = 0x06   # x0 i32 (0: greedy), seed u32: reseeds the sampler's PRNG
    PREFILL      = 0x07   # tokens u16[n]: one decode step per token, nothing emitted -> n u16
    GENERATE     = 0x08   # token u16, count u16: TOKEN frames, then -> produced u16, stopped u8
    STOP         = 0x09   # ends a GENERATE or PREFILL after the current step; then its reply


REPLY = 0x80                      # reply cmd = REPLY | request cmd
TOKEN = 0xC0                      # index u16, token u16, cycles u32 (the step's engine cycles)
ERROR = 0xFF                      # code u8, request cmd u8, detail u32


class ErrorCode(enum.IntEnum):
    BAD_CRC         = 1    # the frame's CRC did not match: nothing was done
    BAD_LENGTH      = 2    # payload length wrong for the command (or over MAX_PAYLOAD)
    UNKNOWN_COMMAND = 3
    BUSY            = 4    # a request other than STOP while a PREFILL/GENERATE runs
    OUT_OF_ORDER    = 5    # LOAD_CHUNK past the next expected offset (detail: that offset)
    NOT_LOADING     = 6    # LOAD_CHUNK or VERIFY without a LOAD_BEGIN
    BAD_TOKEN       = 7    # a token >= the vocabulary (detail: its index in the request)
    NO_MODEL        = 8    # PREFILL/GENERATE while no verified model is loaded
    LINE            = 9    # a UART framing error or overrun inside the frame: dropped
    BAD_VALUE       = 10   # SET_SAMPLING x0 outside 0 and -65535 .. -4; GENERATE count 0


class Board(enum.IntEnum):
    SIM        = 0        # the simulated board (the SoC without pins, PLL or LEDs)
    ULX3S_85F  = 1
    ICEBREAKER = 2


# Payload layouts (struct formats, little-endian) of fixed-size requests and replies.
PAYLOAD = {
    Command.LOAD_BEGIN:           "<IQ",
    Command.VERIFY:               "<IIQ",
    Command.SET_SAMPLING:         "<iI",
    Command.GENERATE:             "<HH",
    REPLY | Command.LOAD_CHUNK:   "<I",
    REPLY | Command.VERIFY:       "<IIB",
    REPLY | Command.PREFILL:      "<H",
    REPLY | Command.GENERATE:     "<HB",
    TOKEN:                        "<HHI",
    ERROR:                        "<BBI",
}


def crc16_update(crc: int, byte: int) -> int:
    """One byte of CRC-16/CCITT-FALSE (poly 0x1021, MSB first, no reflection)."""
    crc ^= byte << 8
    for _ in range(8):
        crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        crc &= 0xFFFF
    return crc


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (init 0xFFFF): ``crc16(b"123456789") == 0x29B1``."""
    for byte in data:
        crc = crc16_update(crc, byte)
    return crc


def crc32_words(words, crc: int = 0) -> int:
    """The load checksum: standard CRC-32 (zlib) of the data words, little-endian bytes, in
    load order. Pass the previous value to continue."""
    return zlib.crc32(struct.pack(f"<{len(words)}I", *words), crc)


@dataclass(frozen=True)
class Frame:
    cmd: int
    seq: int
    payload: bytes = b""

    def fields(self) -> tuple:
        """The payload unpacked with its :data:`PAYLOAD` layout."""
        return struct.unpack(PAYLOAD[self.cmd], self.payload)


def encode(cmd: int, seq: int, payload: bytes = b"") -> bytes:
    if not 0 <= cmd <= 0xFF or not 0 <= seq <= 0xFF:
        raise ValueError(f"cmd and seq are bytes, not {cmd!r}, {seq!r}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = bytes([cmd, seq]) + struct.pack("<H", len(payload)) + bytes(payload)
    return bytes([SYNC]) + body + struct.pack("<H", crc16(body))


class FrameDecoder:
    """Byte stream -> frames, resynchronizing on garbage: bytes before a SYNC are skipped, a
    frame whose length is over :data:`MAX_PAYLOAD` or whose CRC fails is dropped and the
    search resumes one byte after its SYNC. ``dropped`` counts bytes skipped."""

    def __init__(self):
        self._buf = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames = []
        while True:
            start = self._buf.find(SYNC)
            if start < 0:
                self.dropped += len(self._buf)
                self._buf.clear()
                return frames
            if start:
                self.dropped += start
                del self._buf[:start]
            if len(self._buf) < HEADER_BYTES:
                return frames
            length = struct.unpack_from("<H", self._buf, 3)[0]
            if length > MAX_PAYLOAD:
                self.dropped += 1
                del self._buf[:1]
                continue
            end = HEADER_BYTES + length + 2
            if len(self._buf) < end:
                return frames
            body = bytes(self._buf[1:HEADER_BYTES + length])
            crc = struct.unpack_from("<H", self._buf, HEADER_BYTES + length)[0]
            if crc16(body) != crc:
                self.dropped += 1
                del self._buf[:1]
                continue
            frames.append(Frame(body[0], body[1], body[4:]))
            del self._buf[:end]

    @property
    def pending(self) -> int:
        """Bytes held: the start of a frame not yet complete."""
        return len(self._buf)

    def resync(self) -> list[Frame]:
        """Give up the incomplete frame at the front (the line went quiet inside it: its length
        was damaged or its end lost) and decode what follows its SYNC."""
        if not self._buf:
            return []
        self.dropped += 1
        del self._buf[:1]
        return self.feed(b"")


# --------------------------------------------------------------------------------------------
# Identity: what the device says about itself.

_IDENTITY = "<4sBBHBBHBHIBIIIQB"


@dataclass(frozen=True)
class Identity:
    """The IDENTIFY reply: protocol version, board, the engine's configuration (the model
    geometry it was generated for, lanes, vector width), the clock and UART divisor, the
    configuration hash (:func:`config_hash`) and the loaded model's hash (valid or not)."""
    version: int
    board: int
    lanes: int
    width: int
    num_layers: int
    hidden_size: int
    hidden_act: int            # 0 silu, 1 gelu
    intermediate_size: int
    vocab_size: int
    packing: int               # 0 2bit, 1 1.6bit
    clock_hz: int
    divisor: int
    config_hash: int
    model_hash: int
    model_valid: int

    def pack(self) -> bytes:
        return struct.pack(_IDENTITY, MAGIC, self.version, self.board, self.lanes, self.width,
                           self.num_layers, self.hidden_size, self.hidden_act,
                           self.intermediate_size, self.vocab_size, self.packing,
                           self.clock_hz, self.divisor, self.config_hash, self.model_hash,
                           self.model_valid)

    @classmethod
    def unpack(cls, payload: bytes) -> Identity:
        if len(payload) != struct.calcsize(_IDENTITY):
            raise ValueError(f"identity of {len(payload)} bytes, expected "
                             f"{struct.calcsize(_IDENTITY)}")
        magic, *fields = struct.unpack(_IDENTITY, payload)
        if magic != MAGIC:
            raise ValueError(f"not an mmfree device (magic {magic!r})")
        return cls(*fields)

    @property
    def baud(self) -> float:
        return self.clock_hz / self.divisor

    def describe(self) -> str:
        act = ("silu", "gelu")[self.hidden_act] if self.hidden_act < 2 else "?"
        try:
            board = Board(self.board).name.lower().replace("_", "-")
        except ValueError:
            board = f"board {self.board}"
        return (f"{board}: engine d={self.hidden_size} L={self.num_layers} "
                f"I={self.intermediate_size} V={self.vocab_size} {act}, {self.lanes} lanes, "
                f"{self.clock_hz / 1e6:g} MHz, {self.baud / 1e6:g} Mbaud")


def _geometry(image) -> dict:
    cfg = image.im.config
    return {"version": VERSION, "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers,
            "intermediate_size": cfg.intermediate_size, "vocab_size": cfg.vocab_size,
            "hidden_act": cfg.hidden_act, "packing": image.packing, "lanes": image.lanes,
            "width": image.width,
            # The serial engine (mmfree.sim.serial_program); absent for the parallel one, whose
            # hashes predate it.
            **({"engine": image.engine} if getattr(image, "engine", "parallel") != "parallel"
               else {})}


def identity_for(image, *, board: Board, clock_hz: int, divisor: int) -> Identity:
    """What a device built for ``image`` (an :class:`~mmfree.sim.engine.EngineImage`)
    answers to IDENTIFY at power-up: its memories hold ``image``, so that model is loaded —
    unless the image says its engine starts empty (``starts_loaded`` False: the serial
    engine's SPRAM cannot be initialized by a bitstream), then no model is valid."""
    cfg = image.im.config
    return Identity(
        version=VERSION, board=int(board), lanes=image.lanes, width=image.width,
        num_layers=cfg.num_layers, hidden_size=cfg.hidden_size,
        hidden_act=("silu", "gelu").index(cfg.hidden_act),
        intermediate_size=cfg.intermediate_size, vocab_size=cfg.vocab_size,
        packing=("2bit", "1.6bit").index(image.packing), clock_hz=int(clock_hz),
        divisor=int(divisor), config_hash=config_hash(image),
        **_loaded_model(image))


def _loaded_model(image) -> dict:
    if getattr(image, "starts_loaded", True):
        return {"model_hash": model_hash(image.load_words()), "model_valid": 1}
    return {"model_hash": 0, "model_valid": 0}


def config_hash(image) -> int:
    """32-bit hash of an engine's configuration: what the hardware is generated for (model
    geometry, lanes, vector width). Two models with the same hash load into the same engine."""
    text = json.dumps(_geometry(image), sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


def model_hash(words) -> int:
    """64-bit hash of a load image (the ``(address, word)`` pairs of
    :meth:`EngineImage.load_words`): the contents of every engine memory."""
    digest = hashlib.sha256()
    for address, word in words:
        digest.update(struct.pack("<II", address, word))
    return int.from_bytes(digest.digest()[:8], "little")


def load_chunks(words, max_words: int = MAX_CHUNK_WORDS):
    """Split a load image into ``(offset, address, data words)`` chunks of consecutive
    addresses, at most ``max_words`` each; ``offset`` counts words from the image start."""
    chunks = []
    start = 0
    while start < len(words):
        end = start + 1
        while end < len(words) and end - start < max_words and \
                words[end][0] == words[end - 1][0] + 1:
            end += 1
        chunks.append((start, words[start][0], [w for _, w in words[start:end]]))
        start = end
    return chunks
