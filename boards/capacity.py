"""On-chip memory budget: does a model fit a board's block RAM?

Everything the decode step touches lives on chip (no DRAM): packed ternary weights, the int8
embedding table with its per-row multipliers, norm weights, lower bounds, the recurrent state and
the engine's vector buffers.

Two measures. :func:`memory_budget` counts bits (the formats of docs/numerics.md and
docs/formats.md): what a model needs at best, for ``mmfree info``. :func:`soc_blocks` counts
block RAMs the way Yosys maps the SoC's memories (every memory of
:meth:`~mmfree.sim.engine.EngineImage.memories`, and those inside the engine's units and the
link): whole blocks per column and per row of blocks, one copy per read port, write granules
in columns of their own. That is the number that decides whether a build places, and
:func:`fits_image` checks it before a build or a weight load. docs/boards.md compares it with
Yosys's counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..sim import golden
from ..sim.model import ModelConfig
from ..sim.packing import packed_row_bytes

__all__ = ["Board", "BOARDS", "MemoryBudget", "memory_budget", "fits", "ram_blocks",
           "soc_blocks", "fits_image"]


@dataclass(frozen=True)
class Board:
    name: str
    device: str
    bram_bits: int          # general block RAM (ECP5 EBR / iCE40 EBR)
    bram_blocks: int
    spram_bits: int = 0     # iCE40 UP5K single-port RAM (weights and embeddings go here)
    family: str = "ecp5"

    @property
    def total_bits(self) -> int:
        return self.bram_bits + self.spram_bits


BOARDS = {
    "ulx3s-85f": Board("ulx3s-85f", "LFE5U-85F", bram_bits=208 * 18 * 1024, bram_blocks=208),
    "icebreaker": Board("icebreaker", "iCE40UP5K", bram_bits=30 * 4 * 1024, bram_blocks=30,
                        spram_bits=4 * 256 * 1024, family="ice40"),
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
    must fit the SPRAM (the serial engine's one memory)."""
    b = memory_budget(config, packing)
    if board.spram_bits:
        # The serial engine (docs/serial.md) keeps everything in SPRAM; its image
        # (mmfree.sim.serial_program.SerialImage) counts the exact words.
        return b.total <= board.spram_bits, f"SPRAM {_kbit(b.total)} of {_kbit(board.spram_bits)}"
    usable = math.floor(board.bram_bits * 0.9)
    return b.total <= usable, f"EBR {_kbit(b.total)} of {_kbit(usable)} usable"


def _kbit(bits: int) -> str:
    return f"{bits / 1024:,.0f} Kbit"


#: Block RAM shapes, (data bits, rows): the ECP5 DP16KD (1..18 bits a port, and 36 with one
#: port writing and one reading, PDPW16KD) and the iCE40 SB_RAM40_4K.
RAM_SHAPES = {
    "ecp5":  ((1, 16384), (2, 8192), (4, 4096), (9, 2048), (18, 1024), (36, 512)),
    "ice40": ((2, 2048), (4, 1024), (8, 512), (16, 256)),
}
#: Yosys's cost of one block RAM and of one 16 x 4 distributed RAM (ECP5 TRELLIS_DPR16X4;
#: the iCE40 has none), as in its memory_libmap libraries, and of a bit of read multiplexer
#: (memory_libmap's FACTOR_MUX).
_BLOCK_COST, _LUTRAM_COST, _MUX_COST = 128, 4, 0.5
#: The ECP5 block RAM's byte lanes (9 bits): memory_libmap packs a memory's rows of every
#: depth slice side by side in byte lanes ("swizzle"), so slices share a block's lanes.
_ECP5_BYTE = 9


def ram_blocks(width: int, depth: int, *, granularity: int | None = None, copies: int = 1,
               family: str = "ecp5") -> int:
    """Block RAMs for one memory of ``width`` x ``depth`` with ``copies`` read ports, written
    in granules of ``granularity`` bits (``None``: whole rows), as Yosys's memory_libmap maps it:
    the cheapest shape, a block costing 128 and a slice of the depth past the first costing
    half an output multiplexer per data bit; a memory that is cheaper as ECP5 distributed RAM
    (4 per 16 x 4 cell, plus its multiplexers) takes no block. In the ECP5's 9, 18 and 36-bit
    shapes the slices' rows share blocks in 9-bit byte lanes: 96 x 2176 is 5 slices of 512
    rows, 5 x 11 lanes in 14 blocks of 4, not 5 x 3 (tests/test_boards.py has the shapes
    checked against Yosys)."""
    granules, grain = 1, width
    if granularity is not None and granularity < width:
        granules, grain = width // granularity, granularity
    best_cost, best_blocks = None, 0
    for bits, rows in RAM_SHAPES[family]:
        slices = -(-depth // rows)
        if family == "ecp5" and bits >= _ECP5_BYTE:
            lanes = granules * -(-grain // _ECP5_BYTE)
            blocks = -(-slices * lanes // (bits // _ECP5_BYTE))
        else:
            blocks = granules * -(-grain // bits) * slices
        cost = _BLOCK_COST * blocks + _MUX_COST * width * (slices - 1)
        if best_cost is None or cost < best_cost:
            best_cost, best_blocks = cost, blocks
    if family == "ecp5":
        cells = -(-depth // 16)
        lutram = _LUTRAM_COST * -(-width // 4) * cells + _MUX_COST * width * (cells - 1)
        if lutram < best_cost:
            return 0
    return copies * best_blocks


def soc_memories(image) -> dict[str, tuple[int, int, int, int | None]]:
    """Every block-RAM candidate of the board SoC for ``image`` (an
    :class:`~mmfree.sim.engine.EngineImage`): ``name: (width, depth, read ports,
    granularity)``, the engine's own and those inside its units (hw/normquant.py,
    hw/sampler.py, hw/shiftmax.py, hw/sigmoid.py, the GLU FIFO) and the link (hw/framing.py)."""
    cfg = image.im.config
    memories = {name: (width, depth, ports, None if grain == width else grain)
                for name, (width, depth, ports, grain) in image.memories().items()}
    exp_tables = 2 * (2 if cfg.hidden_act == "silu" else 3)      # sigmoid, SiLU (, GELU)
    memories.update({
        "nq.buf": (32 * image.width, -(-image.n_max // image.width), 1, None),
        "sampler.probs": (golden.SAMPLER_BITS, cfg.vocab_size, 1, None),
        "sampler.softmax.buf": (golden.LOGIT_BITS, cfg.vocab_size, 1, None),
        "exp tables": (golden.EXP_BITS + 1, 256 * exp_tables, 1, None),
        "up_fifo": (golden.ACT_BITS, 64, 1, None),
        "link.rx": (8, 4096, 1, None),
    })
    return memories


def soc_blocks(image, family: str = "ecp5") -> dict[str, int]:
    """Block RAMs of each memory of :func:`soc_memories` (the exp tables are separate 256-row
    memories, one block each)."""
    blocks = {}
    for name, (width, depth, ports, grain) in soc_memories(image).items():
        if name == "exp tables":
            blocks[name] = (depth // 256) * ram_blocks(width, 256, family=family)
        else:
            blocks[name] = ram_blocks(width, depth, granularity=grain, copies=ports,
                                      family=family)
    return blocks


def fits_image(image, board: Board) -> tuple[bool, str]:
    """(fits, one-line explanation) for the board SoC that holds ``image``: its block RAMs
    (:func:`soc_blocks`) against the device's. On the iCE40 the serial engine holds
    everything in its SPRAM words, which its image counted when it was made (a
    :class:`~mmfree.sim.serial_program.SerialImage` that does not fit is never made)."""
    if board.spram_bits:
        from ..sim.serial import MEM_WORDS
        return len(image.mem) <= MEM_WORDS, f"{len(image.mem):,} of {MEM_WORDS:,} SPRAM words"
    blocks = soc_blocks(image, board.family)
    total = sum(blocks.values())
    top = ", ".join(f"{name} {count}" for name, count in
                    sorted(blocks.items(), key=lambda item: -item[1])[:3])
    return total <= board.bram_blocks, f"{total} of {board.bram_blocks} block RAMs: {top}, ..."
