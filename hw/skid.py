"""A skid buffer: a stream slice whose ``inp.ready`` comes straight from a register."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """Cuts the ready path of a stream without adding latency.

    The pipelines here stall as a whole (``inp.ready = ~out.valid | out.ready``), so without a
    cut a consumer's ready runs back through every unit before it, and on to their
    hundreds of register enables, in one clock cycle. This slice passes words through
    combinationally while it is empty; a word offered while ``out.ready`` is low is taken into
    its one register, and ``inp.ready`` is that register's "empty" flag, so nothing of
    ``out.ready`` reaches ``inp.ready`` within a cycle.

    Behind a unit that stalls as a whole and has a word every cycle, words leave on the same
    cycles as through a direct connection: a word waits in the register exactly while the
    direct connection would have held it in the unit's last stage (tests/test_skid.py). With
    bubbles in the unit a word can leave earlier, never later: the unit stalls one cycle later
    than it would, and for the cycle the register empties. One word a cycle at full rate.

    Parameters
    ----------
    shape : shape-like
        The payload's shape.

    Members
    -------
    inp : In(stream.Signature(shape))
    out : Out(stream.Signature(shape))
    """

    def __init__(self, shape):
        self._shape = shape
        super().__init__({
            "inp": In(stream.Signature(shape)),
            "out": Out(stream.Signature(shape)),
        })

    def elaborate(self, platform):
        m = Module()
        held = Signal(self._shape)
        full = Signal()
        m.d.comb += [
            self.inp.ready.eq(~full),
            self.out.valid.eq(full | self.inp.valid),
            self.out.payload.eq(Mux(full, held, self.inp.payload)),
        ]
        with m.If(full):
            with m.If(self.out.ready):
                m.d.sync += full.eq(0)
        with m.Elif(self.inp.valid & ~self.out.ready):
            m.d.sync += [full.eq(1), held.eq(self.inp.payload)]
        return m
