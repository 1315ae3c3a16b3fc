"""Ternary weight decoder: packed weight bytes to per-lane +1/-1 select bits."""

import numpy as np
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mmfree.sim.packing import PACKINGS, WEIGHTS_PER_BYTE, pack_ternary, packed_row_bytes

__all__ = ["TernaryDecoder", "chunk_bytes"]


def chunk_bytes(lanes: int, packing: str) -> int:
    """Bytes that hold one chunk of ``lanes`` weights: ``lanes / 4`` for ``"2bit"``,
    ``ceil(lanes / 5)`` for ``"1.6bit"`` (the chunk is packed on its own by
    :func:`~mmfree.sim.packing.pack_ternary`, its last byte padded with zero weights)."""
    return packed_row_bytes(lanes, packing)


def _two_bit_codes() -> dict[int, int]:
    """The 2-bit code of each weight (+1, -1), read back from :func:`pack_ternary`."""
    return {w: int(pack_ternary(np.array([[w]], dtype=np.int8), "2bit")[0, 0]) for w in (1, -1)}


class TernaryDecoder(wiring.Component):
    """Combinational decoder of one chunk of packed ternary weights, with adders, no tables.

    The chunk is ``chunk_bytes(lanes, packing)`` bytes, byte ``b`` in bits ``[8b+7 : 8b]`` of
    ``w``, as :func:`mmfree.sim.packing.pack_ternary` lays out a row of ``lanes`` weights
    (``docs/formats.md``), each byte in the on-chip code of
    :func:`mmfree.sim.packing.chip_bytes`. Lane ``j`` gets ``pos[j] = (t_j == +1)`` and
    ``neg[j] = (t_j == -1)``, as :func:`mmfree.sim.packing.chip_byte_weights` decodes the byte;
    padding weights beyond ``lanes`` are ignored.

    ``"2bit"`` compares each 2-bit field with the codes of +1 and -1 (an invalid ``0b10`` is a
    zero weight). ``"1.6bit"`` makes the five digits of a byte with five 8-bit adders in a
    chain: ``z = y + 2 y``, digit ``z[9:8]`` (0, 1, 2 for -1, 0, +1), then ``y = z[7:0]``; an
    adder (five CCU2C) a weight instead of the some forty LUT4 that a 256-entry table of the
    base-3 bytes costs after synthesis (docs/boards.md, "Cheaper lanes").

    Latency: combinational. Throughput: one chunk per cycle.

    Parameters
    ----------
    lanes : int
        Weights per chunk, a positive power of two (at least 4 for ``"2bit"``).
    packing : str
        ``"2bit"`` or ``"1.6bit"``.

    Members
    -------
    w : In(8 * chunk_bytes(lanes, packing))
        The packed chunk.
    pos, neg : Out(lanes)
        Lane ``j`` holds weight +1 / -1 (never both).
    """

    def __init__(self, *, lanes: int, packing: str = "2bit"):
        if packing not in PACKINGS:
            raise ValueError(f"packing must be one of {', '.join(PACKINGS)}, not {packing!r}")
        if not isinstance(lanes, int) or isinstance(lanes, bool):
            raise TypeError(f"lanes must be an integer, not {lanes!r}")
        if lanes <= 0 or lanes & (lanes - 1):
            raise ValueError(f"lanes must be a positive power of two, not {lanes}")
        if lanes < WEIGHTS_PER_BYTE[packing] and packing == "2bit":
            raise ValueError(f"lanes must be at least 4 for 2bit packing (whole bytes), "
                             f"not {lanes}")
        self._lanes = lanes
        self._packing = packing
        super().__init__({
            "w":   In(8 * chunk_bytes(lanes, packing)),
            "pos": Out(lanes),
            "neg": Out(lanes),
        })

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def packing(self) -> str:
        return self._packing

    def elaborate(self, platform):
        m = Module()
        per_byte = WEIGHTS_PER_BYTE[self.packing]
        pos, neg = [], []
        if self.packing == "2bit":
            codes = _two_bit_codes()
            for j in range(self.lanes):
                code = self.w[2 * j:2 * j + 2]
                pos.append(code == codes[1])
                neg.append(code == codes[-1])
        else:
            for b in range(chunk_bytes(self.lanes, self.packing)):
                y = self.w[8 * b:8 * b + 8]
                for k in range(min(per_byte, self.lanes - per_byte * b)):
                    z = Signal(10, name=f"z{b}_{k}")
                    m.d.comb += z.eq(y + (y << 1))
                    pos.append(z[9])                    # digit 2
                    neg.append(~z[8] & ~z[9])           # digit 0
                    y = z[:8]
        for j in range(self.lanes):
            m.d.comb += [self.pos[j].eq(pos[j]), self.neg[j].eq(neg[j])]
        return m
