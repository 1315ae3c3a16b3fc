"""On-chip memory budget: does a model fit a board's block RAM?

Everything the decode step touches lives on chip (no DRAM): packed ternary weights, the int8
embedding table with its per-row multipliers, norm weights, lower bounds, the recurrent state and
the engine's vector buffers. The bit counts follow the formats of docs/numerics.md and
docs/formats.md; block RAM is counted in whole primitives of the widths the engine uses, so the
estimate is a little pessimistic rather than optimistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..sim import golden
from ..sim.model import ModelConfig
from ..sim.packing import packed_row_bytes

__all__ = ["Board", "BOARDS", "MemoryBudget", "memory_budget", "fits"]


@dataclass(frozen=True)
class Board:
    name: str
    device: str
    bram_bits: int          # general block RAM (ECP5 EBR / iCE40 EBR)
    bram_blocks: int
    spram_bits: int = 0     # iCE40 UP5K single-port RAM (weights and embeddings go here)

    @property
    def total_bits(self) -> int:
        return self.bram_bits + self.spram_bits


BOARDS = {
    "ulx3s-85f": Board("ulx3s-85f", "LFE5U-85F", bram_bits=208 * 18 * 1024, bram_blocks=208),
    "icebreaker": Board("icebreaker", "iCE40UP5K", bram_bits=30 * 4 * 1024, bram_blocks=30,
                        spram_bits=4 * 256 * 1024),
}


@dataclass(frozen=True)
class MemoryBudget:
    weights: int            # packed ternary weights, bits
    embeddings: int         # int8 table + 15-bit row multipliers
    norms: int              # 24-bit norm weights
    lower_bounds: int       # 21-bit lower bounds (layers 1..L-1)
    state: int              # 32-bit recurrent state
    buffers: int            # engine vector buffers and the sigmoid core's tables

    @property
    def bulk(self) -> int:
        """The read-only parameters, which an iCE40 keeps in SPRAM."""
        return self.weights + self.embeddings + self.norms + self.lower_bounds

    @property
    def small(self) -> int:
        """What is written while decoding: state, vector buffers (and the exp tables)."""
        return self.state + self.buffers

    @property
    def total(self) -> int:
        return self.bulk + self.small


def memory_budget(config: ModelConfig, packing: str | None = None) -> MemoryBudget:
    packing = packing or config.packing
    d, inter, n_l, v = config.hidden_size, config.intermediate_size, config.num_layers, \
        config.vocab_size
    rows = [(o, i) for o, i in config.ternary_shapes.values()] * n_l + [(v, d)]
    weights = sum(o * packed_row_bytes(i, packing) * 8 for o, i in rows)
    embeddings = v * d * 8 + v * golden.MANT_BITS
    norm_count = n_l * (7 * d + d + inter) + 2 * d     # attn, i/f/g/o, g, mlp, gate | down; final
    norms = norm_count * golden.NORM_W_BITS
    lower_bounds = max(n_l - 1, 0) * d * (golden.F_GATE + 1)
    state = n_l * d * golden.ACT_BITS
    # x, r, a, i, f, g, o (d each) and gate/up, product (3I) at 32 bits; one int8 operand buffer;
    # the exp tables (2 x 256 x 21 bits).
    buffers = (7 * d + 3 * inter) * 32 + max(d, inter) * 8 + 2 * 256 * (golden.EXP_BITS + 1)
    return MemoryBudget(weights, embeddings, norms, lower_bounds, state, buffers)


def fits(config: ModelConfig, board: Board, packing: str | None = None) -> tuple[bool, str]:
    """(fits, one-line explanation). On ECP5 everything shares the EBRs, of which 10% are kept
    for the engine's own FIFOs and for packing granularity; on iCE40 the read-only parameters
    must fit SPRAM and the state and buffers the EBRs."""
    b = memory_budget(config, packing)
    if board.spram_bits:
        ok = b.bulk <= board.spram_bits and b.small <= board.bram_bits
        return ok, (f"SPRAM {_kbit(b.bulk)} of {_kbit(board.spram_bits)}, "
                    f"EBR {_kbit(b.small)} of {_kbit(board.bram_bits)}")
    usable = math.floor(board.bram_bits * 0.9)
    return b.total <= usable, f"EBR {_kbit(b.total)} of {_kbit(usable)} usable"


def _kbit(bits: int) -> str:
    return f"{bits / 1024:,.0f} Kbit"
