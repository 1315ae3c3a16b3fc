"""The host side of the link: transports (serial port, TCP socket) and the :class:`Interface`
that owns the byte stream to an mmfree device — frames out, replies checked, retries.

The protocol is :mod:`mmfree.sim.protocol` (docs/protocol.md). Recovery rules:

- every request gets a fresh ``seq``; replies with another ``seq`` are stale and ignored;
- idempotent requests (IDENTIFY, LOAD_CHUNK, VERIFY, RESET_STATE, SET_SAMPLING, STOP) are
  resent on a timeout, a BAD_CRC/LINE/BAD_LENGTH error (the request was damaged on the line
  and not executed) or BUSY (after a STOP);
- a reply frame cut short (its length damaged, or its end lost) is given up after a quiet
  line of ``QUIET`` seconds, and the frames behind its first byte are decoded;
- a weight load resumes where the device says it stands (LOAD_CHUNK is deduplicated by its
  offset), restarts from LOAD_BEGIN if the device lost it (a reset), and is only accepted
  when VERIFY agrees on the word count, the CRC-32 and the model hash;
- a generation that fails midway is replayed from RESET_STATE (decoding is deterministic):
  tokens already delivered must come out the same, only the new ones are yielded.
"""

from __future__ import annotations

import bisect
import logging
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator, Sequence

from ..sim import protocol as proto
from ..sim.protocol import ERROR, REPLY, TOKEN, Command, ErrorCode, Frame, FrameDecoder

__all__ = ["LinkError", "DeviceError", "Transport", "SocketTransport", "SerialTransport",
           "Interface", "LoadStats"]

logger = logging.getLogger(__name__)


class LinkError(Exception):
    """The link failed (timeouts, corrupted replies, retries exhausted); one line."""


class DeviceError(LinkError):
    """The device answered with an ERROR frame."""

    def __init__(self, code: int, cmd: int, detail: int):
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = f"error {code}"
        try:
            what = Command(cmd).name
        except ValueError:
            what = f"command 0x{cmd:02x}"
        super().__init__(f"device refused {what}: {name} (detail {detail})")
        self.code, self.cmd, self.detail = code, cmd, detail


# --------------------------------------------------------------------------------------------
# Transports: write bytes, read what arrives within a timeout.

class Transport:
    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def read(self, timeout: float) -> bytes:
        """Whatever bytes arrive within ``timeout`` seconds (``b""`` if none)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SocketTransport(Transport):
    """A TCP connection (the simulated board)."""

    def __init__(self, address: tuple[str, int], *, connect_timeout: float = 10.0):
        try:
            self._sock = socket.create_connection(address, timeout=connect_timeout)
        except OSError as error:
            raise LinkError(f"cannot connect to {address[0]}:{address[1]}: "
                            f"{error.strerror or error}") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.settimeout(None)

    def write(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as error:
            raise LinkError(f"link write failed: {error.strerror or error}") from None

    def read(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self._sock], [], [], max(timeout, 0))
        if not ready:
            return b""
        try:
            data = self._sock.recv(65536)
        except OSError as error:
            raise LinkError(f"link read failed: {error.strerror or error}") from None
        if not data:
            raise LinkError("the simulated board closed the connection")
        return data

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


class SerialTransport(Transport):
    """A serial port through pyserial (the board's FTDI UART)."""

    def __init__(self, port: str, baud: int):
        import serial
        try:
            self._port = serial.Serial(port, baudrate=baud, timeout=0)
        except (serial.SerialException, ValueError, OSError) as error:
            raise LinkError(f"cannot open {port}: {error}") from None
        self._serial = serial

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except (self._serial.SerialException, OSError) as error:
            raise LinkError(f"serial write failed: {error}") from None

    def read(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        try:
            while True:
                waiting = self._port.in_waiting
                if waiting:
                    return self._port.read(waiting)
                if time.monotonic() >= deadline:
                    return b""
                time.sleep(0.0005)
        except (self._serial.SerialException, OSError) as error:
            raise LinkError(f"serial read failed: {error}") from None

    def close(self) -> None:
        self._port.close()


# --------------------------------------------------------------------------------------------

# Errors that mean the request arrived damaged and nothing was done: the host's own frames are
# well formed, so a wrong length is a length byte hit on the line.
DAMAGED = (ErrorCode.BAD_CRC, ErrorCode.LINE, ErrorCode.BAD_LENGTH)
# A device sends a frame back to back at the line rate: this long without a byte in the middle
# of one means the frame is broken (a damaged length asks for bytes that never come).
QUIET = 0.1


class LoadStats:
    def __init__(self, words: int, skipped: bool, seconds: float, resends: int):
        self.words, self.skipped, self.seconds, self.resends = words, skipped, seconds, resends

    @property
    def bytes(self) -> int:
        return 4 * self.words


class Interface:
    """Owns the byte stream to a device.

    ``timeout``: seconds to wait for a reply to a short request; ``step_timeout``: seconds
    allowed per decode step (PREFILL, GENERATE); ``retries``: attempts per request (and per
    weight load, per generation).
    """

    def __init__(self, transport: Transport, *, timeout: float = 2.0,
                 step_timeout: float = 2.0, retries: int = 8):
        self._t = transport
        self._decoder = FrameDecoder()
        self._frames: list[Frame] = []
        self._last_byte = time.monotonic()
        self._seq = 0
        self.timeout = timeout
        self.step_timeout = step_timeout
        self.retries = retries
        self.resends = 0

    def close(self) -> None:
        self._t.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- frames --------------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def _send(self, cmd: int, payload: bytes = b"") -> int:
        seq = self._next_seq()
        self._t.write(proto.encode(cmd, seq, payload))
        return seq

    def _receive(self, deadline: float) -> Frame | None:
        """The next frame, or None at the deadline."""
        while not self._frames:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            data = self._t.read(min(left, QUIET))
            if data:
                self._last_byte = time.monotonic()
                self._frames += self._decoder.feed(data)
            elif self._decoder.pending and time.monotonic() - self._last_byte >= QUIET:
                self._frames += self._decoder.resync()
        return self._frames.pop(0)

    def _await(self, seq: int, timeout: float) -> Frame | None:
        """The reply (or ERROR) with ``seq``; other frames are stale and dropped."""
        deadline = time.monotonic() + timeout
        while (frame := self._receive(deadline)) is not None:
            if frame.seq == seq and (frame.cmd == ERROR or frame.cmd & REPLY):
                if frame.cmd == TOKEN:
                    continue
                return frame
            logger.debug("stale frame cmd 0x%02x seq %d", frame.cmd, frame.seq)
        return None

    def _check(self, frame: Frame, cmd: int) -> Frame:
        if frame.cmd == ERROR:
            if len(frame.payload) != 6:
                raise LinkError("malformed ERROR frame from the device")
            raise DeviceError(*frame.fields())
        if frame.cmd != REPLY | cmd:
            raise LinkError(f"unexpected reply 0x{frame.cmd:02x} to {Command(cmd).name}")
        return frame

    def request(self, cmd: Command, payload: bytes = b"", *, timeout: float | None = None
                ) -> Frame:
        """Send an idempotent request and return its reply, resending on timeouts and on
        errors that mean the request was not executed."""
        last = None
        for attempt in range(self.retries):
            if attempt:
                self.resends += 1
            seq = self._send(cmd, payload)
            frame = self._await(seq, self.timeout if timeout is None else timeout)
            if frame is None:
                last = f"no reply to {cmd.name}"
                continue
            try:
                return self._check(frame, cmd)
            except DeviceError as error:
                if error.code in DAMAGED:
                    last = str(error)
                    continue
                if error.code == ErrorCode.BUSY:
                    last = str(error)
                    self.stop()
                    continue
                raise
        raise LinkError(f"{last} after {self.retries} attempts")

    # --- commands ------------------------------------------------------------------------
    def sync(self) -> None:
        """Bring the device to idle whatever it was doing (an earlier host may have left in
        the middle of a generation): STOP until STOP's own reply comes back."""
        self.stop()

    def stop(self) -> None:
        for attempt in range(self.retries):
            seq = self._send(Command.STOP)
            deadline = time.monotonic() + self.timeout + self.step_timeout
            while (frame := self._receive(deadline)) is not None:
                if frame.seq == seq and frame.cmd in (REPLY | Command.STOP, ERROR):
                    if frame.cmd == REPLY | Command.STOP:
                        return
                    break                   # resend
        raise LinkError(f"the device does not answer STOP after {self.retries} attempts")

    def identify(self) -> proto.Identity:
        frame = self.request(Command.IDENTIFY)
        try:
            return proto.Identity.unpack(frame.payload)
        except ValueError as error:
            raise LinkError(f"bad IDENTIFY reply: {error}") from None

    def reset_state(self) -> None:
        self.request(Command.RESET_STATE)

    def set_sampling(self, x0: int, seed: int) -> None:
        self.request(Command.SET_SAMPLING, struct.pack("<iI", x0, seed & 0xFFFF_FFFF))

    def load(self, words: Sequence[tuple[int, int]], model_hash: int, *, window: int = 4,
             progress: Callable[[int], None] | None = None) -> LoadStats:
        """Stream a load image to the device and verify it (count, CRC-32, hash)."""
        chunks = proto.load_chunks(words)
        total = len(words)
        crc = proto.crc32_words([w for _, w in words])
        begin = time.monotonic()
        resends = self.resends
        for attempt in range(self.retries):
            try:
                self.request(Command.LOAD_BEGIN, struct.pack("<IQ", total, model_hash))
                self._stream_chunks(chunks, total, window, progress)
                frame = self.request(Command.VERIFY, struct.pack("<IIQ", total, crc, model_hash))
            except DeviceError as error:
                if error.code == ErrorCode.NOT_LOADING:      # the device was reset: again
                    logger.info("the device lost the load (reset?); starting again")
                    self.resends += 1
                    continue
                raise
            count, device_crc, ok = frame.fields()
            if ok and count == total and device_crc == crc:
                return LoadStats(total, False, time.monotonic() - begin, self.resends - resends)
            logger.info("verify failed: device has %d words, CRC %08x (expected %d, %08x)",
                        count, device_crc, total, crc)
            self.resends += 1
        raise LinkError(f"the weights did not verify after {self.retries} loads")

    def _stream_chunks(self, chunks, total, window, progress) -> None:
        """Go-back-N: up to ``window`` chunks in flight; the device's ``next_offset`` (in
        every LOAD_CHUNK reply and OUT_OF_ORDER error) says where to resume."""
        frames = [proto.encode(Command.LOAD_CHUNK, 0,
                               struct.pack(f"<II{len(data)}I", offset, address, *data))
                  for offset, address, data in chunks]
        offsets = [offset for offset, _, _ in chunks]
        acked = 0                        # words the device has
        nxt = 0                          # next chunk to send
        inflight: dict[int, int] = {}    # seq -> chunk index
        stalls = 0
        while acked < total:
            while nxt < len(chunks) and len(inflight) < window:
                seq = self._next_seq()
                frame = bytearray(frames[nxt])
                frame[2] = seq
                frame[-2:] = struct.pack("<H", proto.crc16(bytes(frame[1:-2])))
                self._t.write(bytes(frame))
                inflight[seq] = nxt
                nxt += 1
            reply = self._receive(time.monotonic() + self.timeout)
            if reply is None or reply.seq not in inflight:
                if reply is None:
                    stalls += 1
                    if stalls > self.retries:
                        raise LinkError(f"weight load stalled at word {acked} of {total}")
                    self.resends += 1
                    inflight.clear()
                    nxt = self._chunk_at(offsets, acked)
                continue
            inflight.pop(reply.seq)
            go_back = False
            if reply.cmd == REPLY | Command.LOAD_CHUNK and len(reply.payload) == 4:
                (device_next,) = reply.fields()
            elif reply.cmd == ERROR and len(reply.payload) == 6:
                code, cmd, detail = reply.fields()
                if code == ErrorCode.OUT_OF_ORDER:
                    device_next, go_back = detail, True
                elif code in DAMAGED:
                    device_next, go_back = acked, True
                else:
                    raise DeviceError(code, cmd, detail)
            else:
                raise LinkError(f"unexpected reply 0x{reply.cmd:02x} during the weight load")
            stalls = 0
            if device_next > total:
                raise LinkError(f"the device reports {device_next} words of {total}")
            if device_next > acked:
                if progress is not None:
                    progress(4 * (device_next - acked))
                acked = device_next
            if go_back:                  # something was lost: resume where the device stands
                self.resends += 1
                inflight.clear()
                nxt = self._chunk_at(offsets, acked)

    @staticmethod
    def _chunk_at(offsets, word) -> int:
        return max(0, bisect.bisect_right(offsets, word) - 1)

    def generate(self, prompt: Sequence[int], count: int, *, x0: int = 0, seed: int = 0
                 ) -> Iterator[tuple[int, int]]:
        """``(token, engine cycles)`` for ``count`` new tokens after ``prompt``, as
        :func:`mmfree.sim.decoding.generate` produces them; replayed from the start if the
        link fails midway (up to ``retries`` times)."""
        if not prompt:
            raise ValueError("the prompt is empty")
        delivered: list[int] = []
        for attempt in range(self.retries):
            try:
                for index, (token, cycles) in enumerate(self._generate_once(prompt, count,
                                                                            x0, seed)):
                    if index < len(delivered):
                        if token != delivered[index]:
                            raise LinkError(f"replayed generation differs at token {index}")
                        continue
                    delivered.append(token)
                    yield token, cycles
                return
            except DeviceError as error:
                if error.code not in (*DAMAGED, ErrorCode.BUSY):
                    raise
                last = str(error)
            except _Replay as replay:
                last = str(replay)
            logger.info("generation interrupted (%s); replaying", last)
            self.resends += 1
            self.sync()
        raise LinkError(f"generation failed after {self.retries} attempts: {last}")

    def _generate_once(self, prompt, count, x0, seed) -> Iterator[tuple[int, int]]:
        self.reset_state()
        self.set_sampling(x0, seed)
        context = list(prompt[:-1])
        for start in range(0, len(context), proto.MAX_PREFILL_TOKENS):
            part = context[start:start + proto.MAX_PREFILL_TOKENS]
            seq = self._send(Command.PREFILL, struct.pack(f"<{len(part)}H", *part))
            frame = self._await(seq, self.timeout + len(part) * self.step_timeout)
            if frame is None:
                raise _Replay("no reply to PREFILL")
            self._check(frame, Command.PREFILL)
            if frame.fields()[0] != len(part):
                raise _Replay("PREFILL stopped early")
        token = prompt[-1]
        produced = 0
        while produced < count:
            n = min(count - produced, 0xFFFF)
            seq = self._send(Command.GENERATE, struct.pack("<HH", token, n))
            index = 0
            while True:
                deadline = time.monotonic() + self.timeout + self.step_timeout
                frame = self._receive(deadline)
                if frame is None:
                    raise _Replay("no token from the device")
                if frame.seq != seq:
                    continue
                if frame.cmd == TOKEN and len(frame.payload) == 8:
                    got_index, token, cycles = frame.fields()
                    if got_index != index:
                        raise _Replay(f"token {index} lost")
                    index += 1
                    yield token, cycles
                    continue
                self._check(frame, Command.GENERATE)
                done, stopped = frame.fields()
                if done != n or index != n or stopped:
                    raise _Replay("generation ended early")
                break
            produced += n


class _Replay(LinkError):
    """The generation lost its way; start it again."""
