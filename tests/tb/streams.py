"""cocotb drivers for Amaranth streams (``amaranth.lib.stream``), shared by every block's testbench.

Amaranth's Verilog names a stream port ``<name>__valid``, ``<name>__ready`` and
``<name>__payload`` (a struct payload is one flat vector; :func:`pack` / :func:`unpack` convert
with the Amaranth layout, so no testbench re-derives a bit order).

- :class:`StreamSource` drives a stream into the DUT, idling a random number of cycles between
  words (``gap_probability``), and checks the DUT never sees valid drop or payload change before
  the transfer (the source itself obeys the rules; the checks are on the sink side).
- :class:`StreamSink` takes words out, with random back-pressure (``ready_probability``), and
  checks the stream rules on the DUT's output: once valid is high, valid and payload hold until
  the transfer.
- Both count cycles and transfers, so tests can compare latency and throughput with the
  documented numbers.

Clock period 10 ns (``start_clock``); the DUT's reset is ``rst`` (Amaranth's default domain).
"""

from __future__ import annotations

import random

from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["start_clock", "reset", "pack", "unpack", "StreamSource", "StreamSink"]


def start_clock(dut, period_ns: int = 10):
    Clock(dut.clk, period_ns, unit="ns").start()


async def reset(dut, cycles: int = 2):
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


def pack(layout, **fields) -> int:
    """A flat integer from field values, with an Amaranth ``data.StructLayout``'s offsets.
    Signed fields take negative values."""
    value = 0
    for name, field in layout:
        width = field.width
        raw = int(fields.get(name, 0)) & ((1 << width) - 1)
        value |= raw << field.offset
    return value


def unpack(layout, value: int) -> dict[str, int]:
    """The fields of a flat integer, signed where the layout says so."""
    out = {}
    for name, field in layout:
        width = field.width
        raw = (int(value) >> field.offset) & ((1 << width) - 1)
        shape = field.shape
        signed = getattr(shape, "signed", False)
        if hasattr(shape, "as_shape"):
            signed = shape.as_shape().signed
        if signed and raw >> (width - 1):
            raw -= 1 << width
        out[name] = raw
    return out


def _signed(value, width: int) -> int:
    raw = int(value)
    return raw - (1 << width) if raw >> (width - 1) else raw


class StreamSource:
    """Drives ``<prefix>__valid/__payload`` of the DUT from a list of payload integers."""

    def __init__(self, dut, prefix: str, *, gap_probability: float = 0.0, seed: int = 0):
        self.clk = dut.clk
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.gap_probability = gap_probability
        self.rng = random.Random(seed)
        self.sent = 0
        self.valid.value = 0

    async def send(self, words):
        """Send every word; returns when the last one has transferred."""
        for word in words:
            while self.rng.random() < self.gap_probability:
                self.valid.value = 0
                await RisingEdge(self.clk)
            self.valid.value = 1
            self.payload.value = int(word)
            while True:
                await ReadOnly()
                accepted = int(self.ready.value)
                await RisingEdge(self.clk)
                if accepted:
                    break
            self.sent += 1
        self.valid.value = 0


class StreamSink:
    """Receives from ``<prefix>__valid/__payload``, driving ``__ready`` with random
    back-pressure, and checks valid/payload hold until each transfer."""

    def __init__(self, dut, prefix: str, *, ready_probability: float = 1.0, seed: int = 1,
                 signed_width: int | None = None):
        self.clk = dut.clk
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.prefix = prefix
        self.ready_probability = ready_probability
        self.rng = random.Random(seed)
        self.signed_width = signed_width
        self.received: list[int] = []
        self.cycles = 0                  # cycles spent in recv()
        self.ready.value = 0

    def _value(self) -> int:
        raw = int(self.payload.value)
        return _signed(raw, self.signed_width) if self.signed_width else raw

    async def recv(self, count: int, *, timeout: int = 1_000_000) -> list[int]:
        """Receive ``count`` words (appended to :attr:`received` and returned)."""
        words = []
        held = None                      # payload seen with valid high and no transfer yet
        while len(words) < count:
            ready = self.rng.random() < self.ready_probability
            self.ready.value = int(ready)
            await ReadOnly()
            valid = int(self.valid.value)
            if held is not None:
                assert valid, f"{self.prefix}: valid dropped before the transfer"
                assert self._value() == held, (f"{self.prefix}: payload changed while valid "
                                               f"({held} -> {self._value()})")
            if valid:
                value = self._value()
                if ready:
                    words.append(value)
                    held = None
                else:
                    held = value
            await RisingEdge(self.clk)
            self.cycles += 1
            assert self.cycles < timeout, f"{self.prefix}: no output for {timeout} cycles"
        self.ready.value = 0
        self.received.extend(words)
        return words
