"""Vector reader: streams ``count`` consecutive words of a memory read port."""

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["VectorReader"]


class VectorReader(wiring.Component):
    """Reads ``count`` words starting at ``base`` through a synchronous memory read port
    (connect ``addr``/``en``/``data`` to ``Memory.read_port()``) and streams them out with
    ``first``/``last`` flags.

    ``start`` (a one-cycle strobe, only while the previous vector has been read out) samples
    ``base`` and ``count``. The read port is enabled only when the output register advances,
    so the memory's output register holds the word under back-pressure.

    Latency: the first word is valid 2 cycles after ``start``. Throughput: one word per cycle
    while ``out.ready`` is high (``out.valid`` is a register: it never depends on ``ready``).

    Parameters
    ----------
    shape : shape of the words (``out.payload.data``).
    addr_width, count_width : int
        Widths of the address and of the count.
    """

    def __init__(self, *, shape, addr_width, count_width=16):
        self._shape = shape
        super().__init__({
            "start": In(1),
            "base":  In(unsigned(addr_width)),
            "count": In(unsigned(count_width)),
            "addr":  Out(unsigned(addr_width)),
            "en":    Out(1),
            "data":  In(shape),
            "out":   Out(stream.Signature(data.StructLayout({
                "data": shape, "first": 1, "last": 1}))),
        })

    def elaborate(self, platform):
        m = Module()
        remaining = Signal.like(self.count)
        first = Signal()
        advance = ~self.out.valid | self.out.ready
        m.d.comb += [
            self.en.eq(advance),
            self.out.payload.data.eq(self.data),
        ]
        with m.If(self.start):
            m.d.sync += [
                self.addr.eq(self.base),
                remaining.eq(self.count),
                first.eq(1),
                self.out.valid.eq(0),
            ]
        with m.Elif(advance):
            m.d.sync += [
                self.out.valid.eq(remaining != 0),
                self.out.payload.first.eq(first),
                self.out.payload.last.eq(remaining == 1),
            ]
            with m.If(remaining != 0):
                m.d.sync += [
                    self.addr.eq(self.addr + 1),
                    remaining.eq(remaining - 1),
                    first.eq(0),
                ]
        return m
