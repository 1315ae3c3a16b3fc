"""Ternary weight decoder: packed weight bytes to per-lane +1/-1 select bits."""

import numpy as np
from amaranth.hdl import Const, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mmfree.sim.packing import (PACKINGS, WEIGHTS_PER_BYTE, pack_ternary, packed_row_bytes,
                                 unpack_ternary)

__all__ = ["TernaryDecoder", "chunk_bytes"]


def chunk_bytes(lanes: int, packing: str) -> int:
    """Bytes that hold one chunk of ``lanes`` weights: ``lanes / 4`` for ``"2bit"``,
    ``ceil(lanes / 5)`` for ``"1.6bit"`` (the chunk is packed on its own by
    :func:`~mmfree.sim.packing.pack_ternary`, its last byte padded with zero weights)."""
    return packed_row_bytes(lanes, packing)


def _byte_table(packing: str) -> list[tuple[int, int]]:
    """``(pos, neg)`` lane masks of every byte value, from :func:`unpack_ternary` (invalid
    bytes decode as all-zero weights)."""
    per_byte = WEIGHTS_PER_BYTE[packing]
    table = []
    for byte in range(256):
        try:
            t = unpack_ternary(np.array([[byte]], dtype=np.uint8), per_byte, packing)[0]
        except ValueError:                      # 2-bit code 0b10, 1.6-bit byte > 242
            t = np.zeros(per_byte, dtype=np.int8)
        pos = sum(1 << k for k in range(per_byte) if t[k] == 1)
        neg = sum(1 << k for k in range(per_byte) if t[k] == -1)
        table.append((pos, neg))
    return table


def _two_bit_codes() -> dict[int, int]:
    """The 2-bit code of each weight (+1, -1), read back from :func:`pack_ternary`."""
    return {w: int(pack_ternary(np.array([[w]], dtype=np.int8), "2bit")[0, 0]) for w in (1, -1)}


class TernaryDecoder(wiring.Component):
    """Combinational decoder of one chunk of packed ternary weights.

    The chunk is ``chunk_bytes(lanes, packing)`` bytes, byte ``b`` in bits ``[8b+7 : 8b]`` of
    ``w``, as :func:`mmfree.sim.packing.pack_ternary` lays out a row of ``lanes`` weights
    (``docs/formats.md``). Lane ``j`` gets ``pos[j] = (t_j == +1)`` and ``neg[j] = (t_j == -1)``.
    Invalid codes decode as 0: a 2-bit ``0b10`` as one zero weight, a 1.6-bit byte 243..255 as
    five; padding weights beyond ``lanes`` are ignored.

    ``"2bit"`` decodes each 2-bit field by comparison with the codes of +1 and -1; ``"1.6bit"``
    looks every byte up in a 256-entry table of 10-bit ``(pos, neg)`` masks (LUTs on an FPGA).
    Both tables come from the packing module.

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
            table = Const(sum((p | n << per_byte) << (2 * per_byte * byte)
                              for byte, (p, n) in enumerate(_byte_table(self.packing))),
                          256 * 2 * per_byte)
            for b in range(chunk_bytes(self.lanes, self.packing)):
                entry = table.word_select(self.w[8 * b:8 * b + 8], 2 * per_byte)
                for k in range(per_byte):
                    if per_byte * b + k < self.lanes:
                        pos.append(entry[k])
                        neg.append(entry[per_byte + k])
        for j in range(self.lanes):
            m.d.comb += [self.pos[j].eq(pos[j]), self.neg[j].eq(neg[j])]
        return m
