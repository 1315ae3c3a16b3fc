"""The link's gateware (hw/uart.py, hw/framing.py, hw/link.py, hw/soc.py) byte by byte, with
raw frames written to the simulated board's UART (the Verilated SoC with the engine of a tiny
model): every command, every error code, the load with a repeated and a skipped chunk,
verification, generation equal to the golden model, BUSY and STOP during a generation,
truncated frames and garbage. The host :class:`Interface` on top of this is tested in
test_board_sim.py."""

import socket
import struct
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from mmfree.hw.link import LED
from mmfree.sim import golden
from mmfree.sim import protocol as proto
from mmfree.sim.model import ModelConfig, random_model
from mmfree.sim.protocol import ERROR, REPLY, TOKEN, Board, Command, ErrorCode
from mmfree.sim.simboard import SimBoard
from mmfree.tools.device import BOARD_CONFIGS, engine_image, sim_verilog

sys.path.insert(0, str(Path(__file__).parent / "tb"))
from engine_tb import golden_run  # noqa: E402

CONFIG = ModelConfig(vocab_size=16, hidden_size=16, num_layers=2, intermediate_size=22)
# The fastest line the UART takes (4 clock cycles a bit): short simulations, same RTL.
ULX3S = BOARD_CONFIGS["ulx3s-85f"]
BOARD = replace(ULX3S, lanes=8, baud=ULX3S.clock_hz // 4)


@pytest.fixture(scope="module")
def models():
    return {seed: golden.prepare(random_model(CONFIG, seed=seed)) for seed in (1, 2)}


@pytest.fixture(scope="module")
def images():
    return {seed: engine_image(random_model(CONFIG, seed=seed), BOARD) for seed in (1, 2)}


@pytest.fixture(scope="module")
def board(images):
    """Built with model 1 in its memories, LEDs readable."""
    with SimBoard(sim_verilog(images[1], BOARD), divisor=BOARD.divisor, name="soc-link",
                  leds=True) as sim:
        yield sim


class _Host:
    """Raw frames over a socket to the board's UART."""

    def __init__(self, board):
        self.sock = board.connect()
        self.decoder = proto.FrameDecoder()
        self.frames = []
        self.seq = 0

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def wait(self, predicate, timeout=20.0):
        deadline = time.monotonic() + timeout
        while not predicate(self.frames):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; frames so far: {self.frames}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            assert data, "the board closed the connection"
            self.frames += self.decoder.feed(data)

    def next_seq(self):
        self.seq = (self.seq + 1) & 0xFF
        return self.seq

    def request(self, cmd, payload=b"", *, seq=None, raw=None):
        """Send one frame and return the frame that answers it (REPLY or ERROR, its seq)."""
        seq = self.next_seq() if seq is None else seq
        self.send(raw if raw is not None else proto.encode(cmd, seq, payload))

        def answer(frames):
            return next((f for f in frames if f.seq == seq and f.cmd in (ERROR, REPLY | cmd)),
                        None)

        self.wait(lambda fs: answer(fs) is not None)
        reply = answer(self.frames)
        self.frames.remove(reply)
        return reply


@pytest.fixture
def host(board):
    host = _Host(board)
    yield host
    host.close()


def _error(frame, code):
    assert frame.cmd == ERROR, frame
    assert frame.fields()[0] == code, (ErrorCode(frame.fields()[0]), code)


def test_identify(board, host, images):
    board.reset()
    reply = host.request(Command.IDENTIFY)
    ident = proto.Identity.unpack(reply.payload)
    assert ident == proto.identity_for(images[1], board=Board.SIM, clock_hz=BOARD.clock_hz,
                                       divisor=BOARD.divisor)
    assert reply.payload[:4] == proto.MAGIC and ident.version == proto.VERSION
    assert ident.config_hash == proto.config_hash(images[2])       # same geometry
    assert ident.model_hash == proto.model_hash(images[1].load_words()) and ident.model_valid
    assert board.leds() & 0b0111 == 1 << LED.IDLE


def test_error_codes(host):
    frame = bytearray(proto.encode(Command.IDENTIFY, 77))
    frame[-1] ^= 0x40
    _error(host.request(Command.IDENTIFY, seq=77, raw=bytes(frame)), ErrorCode.BAD_CRC)
    _error(host.request(Command.IDENTIFY, b"x"), ErrorCode.BAD_LENGTH)
    _error(host.request(Command.RESET_STATE, b"xy"), ErrorCode.BAD_LENGTH)
    _error(host.request(0x42), ErrorCode.UNKNOWN_COMMAND)
    _error(host.request(Command.LOAD_CHUNK, struct.pack("<III", 0, 0, 0)), ErrorCode.NOT_LOADING)
    _error(host.request(Command.VERIFY, struct.pack("<IIQ", 0, 0, 0)), ErrorCode.NOT_LOADING)
    _error(host.request(Command.SET_SAMPLING, struct.pack("<iI", 5, 0)), ErrorCode.BAD_VALUE)
    _error(host.request(Command.GENERATE, struct.pack("<HH", 16, 1)), ErrorCode.BAD_TOKEN)
    _error(host.request(Command.PREFILL, struct.pack("<3H", 1, 99, 2)), ErrorCode.BAD_TOKEN)
    # After all of that the device answers normally.
    assert host.request(Command.IDENTIFY).cmd == REPLY | Command.IDENTIFY


def _load(host, words, model_hash, *, chunk=7, faults=True):
    reply = host.request(Command.LOAD_BEGIN, struct.pack("<IQ", len(words), model_hash))
    assert reply.cmd == REPLY | Command.LOAD_BEGIN
    chunks = proto.load_chunks(words, chunk)
    for index, (offset, address, data) in enumerate(chunks):
        payload = struct.pack(f"<II{len(data)}I", offset, address, *data)
        if faults and index == 2:             # a chunk ahead of its turn: OUT_OF_ORDER + offset
            skipped = chunks[3]
            reply = host.request(Command.LOAD_CHUNK, struct.pack(
                f"<II{len(skipped[2])}I", skipped[0], skipped[1], *skipped[2]))
            _error(reply, ErrorCode.OUT_OF_ORDER)
            assert reply.fields()[2] == offset
        reply = host.request(Command.LOAD_CHUNK, payload)
        assert reply.fields() == (offset + len(data),)
        if faults and index == 1:             # a chunk again: acknowledged, not applied twice
            reply = host.request(Command.LOAD_CHUNK, payload)
            assert reply.fields() == (offset + len(data),)


def test_load_verify_generate(board, host, models, images):
    words = images[2].load_words()
    model_hash = proto.model_hash(words)
    _load(host, words, model_hash)
    # Loading: no model, generation refused, LED says loading.
    assert not proto.Identity.unpack(host.request(Command.IDENTIFY).payload).model_valid
    _error(host.request(Command.GENERATE, struct.pack("<HH", 1, 1)), ErrorCode.NO_MODEL)
    assert board.leds() & 0b0111 == 1 << LED.LOADING
    crc = proto.crc32_words([w for _, w in words])
    reply = host.request(Command.VERIFY, struct.pack("<IIQ", len(words), crc ^ 1, model_hash))
    assert reply.fields() == (len(words), crc, 0)
    reply = host.request(Command.VERIFY, struct.pack("<IIQ", len(words), crc, model_hash))
    assert reply.fields() == (len(words), crc, 1)
    ident = proto.Identity.unpack(host.request(Command.IDENTIFY).payload)
    assert (ident.model_hash, ident.model_valid) == (model_hash, 1)
    # The model survives the reset button (the hash registers are not reset).
    board.reset()
    ident = proto.Identity.unpack(host.request(Command.IDENTIFY).payload)
    assert (ident.model_hash, ident.model_valid) == (model_hash, 1)

    prompt = [3, 1, 4]
    for temperature, seed, n in ((0.0, 0, 16), (0.8, 99, 16), (2.0, 5, 8)):
        x0 = golden.sampler_x0(temperature) if temperature else 0
        expected = [t for _, emit, t, _ in golden_run(models[2], prompt, n, x0, seed) if emit]
        host.request(Command.RESET_STATE)
        host.request(Command.SET_SAMPLING, struct.pack("<iI", x0, seed))
        reply = host.request(Command.PREFILL, struct.pack("<2H", *prompt[:-1]))
        assert reply.fields() == (2,)
        seq = host.next_seq()
        host.send(proto.encode(Command.GENERATE, seq, struct.pack("<HH", prompt[-1], n)))
        host.wait(lambda fs: any(f.cmd == REPLY | Command.GENERATE for f in fs))
        tokens = [f.fields() for f in host.frames if f.cmd == TOKEN and f.seq == seq]
        assert [i for i, _, _ in tokens] == list(range(n))
        assert [t for _, t, _ in tokens] == expected, (temperature, tokens, expected)
        assert all(cycles > 0 for _, _, cycles in tokens)
        final = next(f for f in host.frames if f.cmd == REPLY | Command.GENERATE)
        assert final.fields() == (n, 0)
        host.frames.clear()


def test_wrong_verify_leaves_no_model(host, images):
    words = images[1].load_words()
    model_hash = proto.model_hash(words)
    _load(host, words, model_hash, chunk=64, faults=False)
    crc = proto.crc32_words([w for _, w in words])
    # The right CRC, the wrong word count; then a model hash that is not the one announced.
    reply = host.request(Command.VERIFY, struct.pack("<IIQ", len(words) - 1, crc, model_hash))
    assert reply.fields()[2] == 0
    reply = host.request(Command.VERIFY, struct.pack("<IIQ", len(words), crc, model_hash ^ 1))
    assert reply.fields()[2] == 0
    ident = proto.Identity.unpack(host.request(Command.IDENTIFY).payload)
    assert not ident.model_valid
    reply = host.request(Command.VERIFY, struct.pack("<IIQ", len(words), crc, model_hash))
    assert reply.fields() == (len(words), crc, 1)


def test_busy_and_stop(board, host):
    host.request(Command.RESET_STATE)
    seq = host.next_seq()
    host.send(proto.encode(Command.GENERATE, seq, struct.pack("<HH", 1, 5000)))
    host.wait(lambda fs: sum(f.cmd == TOKEN for f in fs) >= 1)
    assert board.leds() & 0b0111 == 1 << LED.GENERATING
    _error(host.request(Command.IDENTIFY), ErrorCode.BUSY)
    stop = host.request(Command.STOP)
    assert stop.cmd == REPLY | Command.STOP
    host.wait(lambda fs: any(f.cmd == REPLY | Command.GENERATE for f in fs))
    final = next(f for f in host.frames if f.cmd == REPLY | Command.GENERATE)
    produced, stopped = final.fields()
    assert stopped == 1 and 1 <= produced < 5000
    assert sum(f.cmd == TOKEN for f in host.frames) == produced
    host.frames.clear()
    assert host.request(Command.IDENTIFY).cmd == REPLY | Command.IDENTIFY
    # STOP when idle is answered too.
    assert host.request(Command.STOP).cmd == REPLY | Command.STOP


def test_truncated_frame_and_garbage(board, host):
    # Half a frame, then silence: the receiver gives up after its timeout (4096 byte times).
    host.send(proto.encode(Command.IDENTIFY, 5)[:3])
    byte_cycles = 10 * BOARD.divisor
    start = board.cycles()
    while board.cycles() - start < 4200 * byte_cycles:
        time.sleep(0.05)
    # Garbage (no SYNC, and a SYNC with an impossible length) is skipped.
    host.send(b"\x00\x13\x37" + bytes([proto.SYNC, 1, 9, 0xFF, 0xFF]))
    reply = host.request(Command.IDENTIFY)
    assert reply.cmd == REPLY | Command.IDENTIFY
    errors = [f for f in host.frames if f.cmd == ERROR]
    assert [f.fields()[0] for f in errors] == [ErrorCode.BAD_LENGTH]
    assert board.leds() & 1 << LED.ERROR                        # stretched


def test_decoder_gives_up_a_frame_cut_short():
    """A reply whose length was damaged on the line asks for bytes that never come; when the
    line goes quiet the host calls ``resync()``, which skips that frame's SYNC and decodes the
    frames behind it."""
    damaged = bytearray(proto.encode(TOKEN, 7, struct.pack("<HHI", 0, 3, 100)))
    damaged[3:5] = struct.pack("<H", 600)            # under MAX_PAYLOAD: the decoder waits
    replies = [proto.encode(REPLY | Command.STOP, seq) for seq in (8, 9)]
    decoder = proto.FrameDecoder()
    assert decoder.feed(bytes(damaged) + b"".join(replies)) == []
    assert decoder.pending == len(damaged) + sum(map(len, replies))
    frames = decoder.resync()
    assert [(f.cmd, f.seq) for f in frames] == [(REPLY | Command.STOP, 8),
                                                (REPLY | Command.STOP, 9)]
    assert decoder.pending == 0 and decoder.dropped == len(damaged)
    assert decoder.resync() == []
