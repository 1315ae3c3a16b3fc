"""Ternary accumulate: one BitLinear output row, ``acc = sum_j T_ij * q_j``, without multipliers."""

import numpy as np
from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from mmfree.hw.arith import carried

from mmfree.hw.unpack import TernaryDecoder, chunk_bytes
from mmfree.sim.golden import accumulator_bits
from mmfree.sim.packing import PACKINGS, chip_bytes, pack_ternary

__all__ = ["TernaryAccumulate", "ternary_chunks", "grouped_chunk"]


class TernaryAccumulate(wiring.Component):
    """Accumulates int8 activations times ternary weights, one output row per pass.

    Golden model: :func:`mmfree.sim.golden.ternary_accumulate` (one row ``i`` at a time); the
    width is :func:`mmfree.sim.golden.accumulator_bits`.

    A row of length ``len <= n`` arrives as ``ceil(len / lanes)`` chunks on ``inp``, one per
    transfer, ``last`` set on its final chunk. A chunk carries ``lanes`` activations ``q`` and
    the row's ``lanes`` weights of the same columns, packed by
    :func:`mmfree.sim.packing.pack_ternary` as a row of ``lanes`` weights (see
    :class:`~mmfree.hw.unpack.TernaryDecoder`):

    - ``"2bit"``: ``lanes / 4`` bytes, i.e. exactly bytes ``[c * lanes / 4, (c+1) * lanes / 4)``
      of the packed row for chunk ``c``;
    - ``"1.6bit"``: ``ceil(lanes / 5)`` bytes, the chunk packed on its own (its last byte padded
      with zero weights), since 5 does not divide a power of two.

    Columns past the row's end must have zero weights (``pack_ternary`` pads with them); their
    activations are don't-care. Byte ``b`` of the chunk sits in bits ``[8b+7 : 8b]`` of ``w``.

    **Grouped chunks.** Rows much shorter than the lanes would leave most of them idle and, in
    the engine, most of the weight memory empty. With ``group = g`` (one of ``groups``, 0 for
    the row chunks above) a chunk holds ``2**g`` rows of at most ``seg = lanes >> g`` columns
    each, row ``m`` in lanes ``[m seg, (m+1) seg)`` with its activations (the same vector
    repeated in every segment), and ``rows + 1`` of them are real (the rest zero weights): the
    adder tree's level ``log2(seg)`` holds the rows' sums, which go out one per cycle in
    order. Such a chunk is its row's last (``last`` is ignored).

    **Pairs.** With ``pairs``, a grouped chunk whose ``pair`` bit is set (and whose real rows
    are even in number) sends its rows out two at a time, rows ``2k`` and ``2k + 1`` in one
    transfer: the engine's GLU, whose gate and up rows alternate, takes a gate and its up row a
    cycle. ``out``'s payload is then an array of two sums (the second don't-care in a single
    row's transfer).

    Datapath: the chunk is registered (twice with ``input_reg``: in the engine it comes
    straight out of block RAM spread over the device, and a second register splits that
    route); each lane decodes its weight (adders, see
    :class:`~mmfree.hw.unpack.TernaryDecoder`) and selects ``+q``, ``~q = -q - 1`` or 0 (one
    LUT a bit, no negation, no multiplier), registered; the missing 1 of a -1 weight is the
    carry into an adder of the tree (the adder of lanes ``A`` and ``B`` takes the carry of
    ``A``'s last lane and passes on ``B``'s), except in the last lane of each segment of
    ``lanes >> max(groups)``, which negates in full;
    then a binary adder tree of ``log2(lanes)`` levels with a register after every second level
    (and after the last one), ``R = ceil(log2(lanes) / 2)`` register stages; then the row
    accumulator, which writes the row's total into a result FIFO on the last chunk. Every
    adder wraps modulo ``2**accumulator_bits(n)``: the result is exact whenever
    ``|acc| < 2**(accumulator_bits(n) - 1)``, which holds for rows of at most ``n`` columns with
    ``q >= -127`` (the golden precondition; with ``q = -128`` only where the true sum fits).

    Back-pressure: the datapath never stalls. ``inp.ready`` is high while at most ``cap``
    rows have been accepted (last chunk) and not yet delivered on ``out``, ``cap = latency``
    (``2 latency`` with ``pairs``, so that two rows a cycle keep flowing); the result FIFO
    has ``cap + max_rows`` entries, so it never overflows, and ``inp.ready`` does not depend
    on ``out.ready`` combinationally.

    Latency: ``latency = ceil(log2(lanes) / 2) + 3`` cycles from the transfer of a row's last
    chunk to ``out.valid`` (5 for 16 lanes, 6 for 64, 7 for 256; one more with
    ``input_reg``), with ``out.ready`` high; row
    ``m`` of a grouped chunk ``m`` cycles later. Throughput: one row per cycle: a chunk per
    cycle (``inp.ready`` stays high while ``out.ready`` is), a grouped chunk of ``r`` rows per
    ``r`` cycles (``inp.ready`` counts rows: high while at most ``latency`` are accepted and not
    delivered); two rows per cycle from chunks of pairs.

    Parameters
    ----------
    lanes : int
        Activations per chunk, a positive power of two (at least 4 for ``"2bit"``).
    n : int
        The longest row (input length); sets the accumulator width ``accumulator_bits(n)``.
    packing : str
        ``"2bit"`` (default) or ``"1.6bit"``, see ``docs/formats.md``.
    groups : iterable of int
        The groupings ``g`` (``1 <= g < log2(lanes)``) grouped chunks may use; each costs
        ``2**g`` pipeline registers per stage between its tree level and the output.
    pairs : bool
        Grouped chunks may send their rows out in pairs (``pair`` on ``inp``); needs
        ``groups``.
    input_reg : bool
        A second register on the chunk before the decoders: one more cycle of latency (and
        one more row in flight), for a chunk that travels far.

    Members
    -------
    inp : In(stream.Signature(StructLayout({"q": ..., "w": ..., "last": 1, "group": ...,
                                            "rows": ...})))
        Chunks: ``q`` is ``ArrayLayout(signed(8), lanes)``, ``w`` is ``unsigned(w_bits)`` with
        ``w_bits = 8 * chunk_bytes(lanes, packing)``; ``group`` (0 or one of ``groups``) and
        ``rows`` (real rows minus one, of a grouped chunk) exist when ``groups`` is not
        empty; ``pair`` with ``pairs``.
    out : Out(stream.Signature(signed(accumulator_bits(n))))
        One sum per row, in row order; with ``pairs``,
        ``ArrayLayout(signed(accumulator_bits(n)), 2)``: a row, or a pair of rows.
    """

    def __init__(self, *, lanes: int, n: int, packing: str = "2bit", groups=(),
                 pairs: bool = False, input_reg: bool = False):
        if packing not in PACKINGS:
            raise ValueError(f"packing must be one of {', '.join(PACKINGS)}, not {packing!r}")
        if not isinstance(lanes, int) or isinstance(lanes, bool):
            raise TypeError(f"lanes must be an integer, not {lanes!r}")
        if lanes <= 0 or lanes & (lanes - 1):
            raise ValueError(f"lanes must be a positive power of two, not {lanes}")
        if packing == "2bit" and lanes < 4:
            raise ValueError(f"lanes must be at least 4 for 2bit packing (whole bytes), "
                             f"not {lanes}")
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"n must be an integer, not {n!r}")
        if n <= 0:
            raise ValueError(f"n must be positive, not {n}")
        groups = tuple(sorted(set(groups)))
        for g in groups:
            if not isinstance(g, int) or not 1 <= g < lanes.bit_length() - 1:
                raise ValueError(f"groups must be integers from 1 to log2(lanes) - 1 = "
                                 f"{lanes.bit_length() - 2}, not {g!r}")
        if pairs and not groups:
            raise ValueError("pairs of rows come from grouped chunks: give groups")
        self._lanes = lanes
        self._n = n
        self._packing = packing
        self._groups = groups
        self._pairs = bool(pairs)
        self._input_reg = bool(input_reg)
        fields = {
            "q":    data.ArrayLayout(signed(8), lanes),
            "w":    unsigned(self.w_bits),
            "last": 1,
        }
        if groups:
            fields["group"] = range(max(groups) + 1)
            fields["rows"] = range(1 << max(groups))
        if pairs:
            fields["pair"] = 1
        out = data.ArrayLayout(signed(self.acc_bits), 2) if pairs else signed(self.acc_bits)
        super().__init__({
            "inp": In(stream.Signature(data.StructLayout(fields))),
            "out": Out(stream.Signature(out)),
        })

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def n(self) -> int:
        return self._n

    @property
    def packing(self) -> str:
        return self._packing

    @property
    def groups(self) -> tuple:
        return self._groups

    @property
    def pairs(self) -> bool:
        return self._pairs

    @property
    def input_reg(self) -> bool:
        return self._input_reg

    @property
    def max_rows(self) -> int:
        """Rows a chunk can hold: ``2**max(groups)`` (1 without groups)."""
        return 1 << max(self._groups, default=0)

    @property
    def acc_bits(self) -> int:
        return accumulator_bits(self._n)

    @property
    def w_bits(self) -> int:
        return 8 * chunk_bytes(self._lanes, self._packing)

    @property
    def tree_stages(self) -> int:
        """Register stages of the adder tree: ``ceil(log2(lanes) / 2)``."""
        return ((self._lanes.bit_length() - 1) + 1) // 2

    @property
    def latency(self) -> int:
        """Cycles from the transfer of a row's last chunk to ``out.valid``."""
        return self.tree_stages + 3 + self._input_reg

    def elaborate(self, platform):
        m = Module()
        m.submodules.decoder = decoder = TernaryDecoder(lanes=self.lanes, packing=self.packing)
        R = self.max_rows
        # A result: the sums of a chunk's rows (one, for a row chunk) and how many minus one.
        pair_field = {"pair": 1} if self._pairs else {}
        # Rows in flight: the tree's latency at the output rate (two rows a cycle in pairs).
        cap = self.latency * (2 if self._pairs else 1)
        entry = data.StructLayout({"sums": data.ArrayLayout(signed(self.acc_bits), R),
                                   "rows": range(R), **pair_field})
        m.submodules.results = results = SyncFIFO(width=entry.size,
                                                  depth=cap + R)

        # Flow control: count rows accepted and not yet delivered.
        pending = Signal(range(cap + R + 1))
        accept = self.inp.valid & self.inp.ready
        deliver = self.out.valid & self.out.ready
        grouped = self.inp.payload.group != 0 if self._groups else 0
        rows_in = Mux(grouped, self.inp.payload.rows + 1, self.inp.payload.last) \
            if self._groups else self.inp.payload.last
        head = Signal(entry)
        delivered = Mux(deliver, Mux(head.pair, 2, 1), 0) if self._pairs else deliver
        m.d.comb += self.inp.ready.eq(pending <= cap)
        m.d.sync += pending.eq(pending + Mux(accept, rows_in, 0) - delivered)

        # Stage 0: the chunk registered (it comes straight out of block RAM in the engine);
        # with input_reg, registered twice.
        chunk = Signal.like(self.inp.payload, name="chunk")
        chunk_valid = Signal(name="chunk_valid")
        if self._input_reg:
            chunk_in = Signal.like(self.inp.payload, name="chunk_in")
            chunk_in_valid = Signal(name="chunk_in_valid")
            m.d.sync += [chunk_in.eq(self.inp.payload), chunk_in_valid.eq(accept),
                         chunk.eq(chunk_in), chunk_valid.eq(chunk_in_valid)]
        else:
            m.d.sync += [chunk.eq(self.inp.payload), chunk_valid.eq(accept)]
        # What travels with a chunk down the tree: its last flag, group and rows.
        ctrl_layout = data.StructLayout({"last": 1,
                                         "group": range(max(self._groups, default=0) + 1),
                                         "rows": range(R), **pair_field})

        # Stage 1: +q, ~q = -q - 1 or 0 per lane, one LUT a bit; the missing +1 of a -1 weight
        # is the carry into an adder of the tree (below). The last lane of each of the
        # smallest segments negates in full instead (its +1 would otherwise leave the segment).
        m.d.comb += decoder.w.eq(chunk.w)
        seg_min = self.lanes >> max(self._groups, default=0)
        values, carries = [], []
        for j in range(self.lanes):
            q = chunk.q[j]
            if j % seg_min == seg_min - 1:
                term = Signal(signed(9), name=f"term{j}")
                m.d.sync += term.eq(Mux(decoder.pos[j], q, Mux(decoder.neg[j], -q, 0)))
                carry = None
            else:
                term = Signal(signed(8), name=f"term{j}")
                m.d.sync += term.eq(Mux(decoder.pos[j], q, Mux(decoder.neg[j], ~q, 0)))
                carry = Signal(name=f"neg{j}")
                m.d.sync += carry.eq(decoder.neg[j])
            values.append(term)
            carries.append(carry)
        valid = Signal(name="valid0")
        ctrl = Signal(ctrl_layout, name="ctrl0")
        m.d.sync += [valid.eq(chunk_valid), ctrl.last.eq(chunk.last)]
        if self._groups:
            m.d.sync += [ctrl.group.eq(chunk.group), ctrl.rows.eq(chunk.rows)]
        if self._pairs:
            m.d.sync += ctrl.pair.eq(chunk.pair & (chunk.group != 0))

        # Adder tree, a register after every second level and after the last. An adder takes
        # the carry of the last lane of its left operand's lanes, and passes on its right
        # operand's; a segment's last lane has none. A grouping g taps level log2(lanes) - g
        # (its 2**g segment sums), delayed to the output.
        levels = self.lanes.bit_length() - 1
        taps, stage = {}, 0
        for level in range(1, levels + 1):
            registered = level % 2 == 0 or level == levels
            width = min(9 + level, self.acc_bits)
            domain = m.d.sync if registered else m.d.comb
            sums, passed = [], []
            for k in range(len(values) // 2):
                s = Signal(signed(width), name=f"sum{level}_{k}")
                carry = carries[2 * k]
                domain += s.eq(values[2 * k] + values[2 * k + 1] + (0 if carry is None else carry))
                sums.append(s)
                carry = carries[2 * k + 1]
                if carry is not None and registered:
                    carry_next = Signal(name=f"neg{level}_{k}")
                    m.d.sync += carry_next.eq(carry)
                    carry = carry_next
                passed.append(carry)
            values, carries = sums, passed
            if registered:
                stage += 1
                valid_next = Signal(name=f"valid{level}")
                ctrl_next = Signal(ctrl_layout, name=f"ctrl{level}")
                m.d.sync += [valid_next.eq(valid), ctrl_next.eq(ctrl)]
                valid, ctrl = valid_next, ctrl_next
            if levels - level in self._groups:
                taps[levels - level] = (values, stage)
        final = stage
        for g, (sums, stage) in taps.items():
            taps[g] = [carried(m, s, final - stage, f"tap{g}_{k}_")[-1]
                       if final > stage else s for k, s in enumerate(sums)]

        # Row accumulator; the total of a row goes into the result FIFO with its last chunk.
        first = Signal(init=1)
        acc = Signal(signed(self.acc_bits))
        total = Signal(signed(self.acc_bits))
        m.d.comb += total.eq(Mux(first, 0, acc) + values[0])
        done = ctrl.last | (ctrl.group != 0)
        with m.If(valid):
            m.d.sync += [acc.eq(total), first.eq(done)]
        written = Signal(entry)
        m.d.comb += written.sums[0].eq(total)
        with m.Switch(ctrl.group):
            for g, sums in taps.items():
                with m.Case(g):
                    m.d.comb += [written.sums[k].eq(s) for k, s in enumerate(sums)]
                    m.d.comb += written.rows.eq(ctrl.rows)
                    if self._pairs:
                        m.d.comb += written.pair.eq(ctrl.pair)
        m.d.comb += [
            results.w_data.eq(written),
            results.w_en.eq(valid & done),
        ]

        # Out: the rows of the oldest result, one a cycle (two, of a chunk of pairs).
        index = Signal(range(R))
        m.d.comb += [
            head.eq(results.r_data),
            self.out.valid.eq(results.r_rdy),
        ]
        if self._pairs:
            m.d.comb += self.out.payload[0].eq(head.sums[index])
            with m.Switch(index):
                for k in range(R - 1):
                    with m.Case(k):
                        m.d.comb += self.out.payload[1].eq(head.sums[k + 1])
            end = index + Mux(head.pair, 2, 1) > head.rows
            step = Mux(head.pair, 2, 1)
        else:
            m.d.comb += self.out.payload.eq(head.sums[index])
            end = index == head.rows
            step = 1
        with m.If(deliver):
            with m.If(end):
                m.d.comb += results.r_en.eq(1)
                m.d.sync += index.eq(0)
            with m.Else():
                m.d.sync += index.eq(index + step)
        return m


def ternary_chunks(t_row, q_row, *, lanes: int, packing: str) -> list[dict]:
    """The chunks of one row for :class:`TernaryAccumulate`'s ``inp``, as the host sends them:
    ``[{"q": [lanes ints], "w": int, "last": 0/1}, ...]`` (``data.StructLayout.const`` input).

    ``t_row`` (ternary) and ``q_row`` (int8) have the row's length, at least 1; each chunk's
    weights are packed by :func:`mmfree.sim.packing.pack_ternary` as a row of ``lanes`` weights
    (zero-padded), its bytes little-endian in ``w``; padding activations are 0."""
    t_row = np.asarray(t_row, dtype=np.int8)
    q_row = np.asarray(q_row, dtype=np.int8)
    if t_row.ndim != 1 or t_row.shape != q_row.shape or len(t_row) == 0:
        raise ValueError(f"t_row and q_row must be 1-D of one non-zero length, not "
                         f"{t_row.shape} and {q_row.shape}")
    count = -(-len(t_row) // lanes)
    t = np.zeros(count * lanes, dtype=np.int8)
    q = np.zeros(count * lanes, dtype=np.int8)
    t[:len(t_row)] = t_row
    q[:len(q_row)] = q_row
    packed = chip_bytes(pack_ternary(t.reshape(count, lanes), packing), packing)
    return [{"q": [int(v) for v in q[c * lanes:(c + 1) * lanes]],
             "w": int.from_bytes(packed[c].tobytes(), "little"),
             "last": int(c == count - 1)} for c in range(count)]


def grouped_chunk(t_rows, q_row, *, lanes: int, group: int, packing: str) -> dict:
    """A grouped chunk for :class:`TernaryAccumulate`'s ``inp``: the rows of ``t_rows`` (at
    most ``2**group``, each of ``len(q_row) <= lanes >> group`` weights) in segments of
    ``lanes >> group`` lanes, zero-padded, packed as one row of ``lanes`` weights; ``q_row`` in
    every segment."""
    t_rows = np.asarray(t_rows, dtype=np.int8)
    q_row = np.asarray(q_row, dtype=np.int8)
    seg = lanes >> group
    count, n = t_rows.shape
    if not 1 <= count <= 1 << group or not 1 <= n <= seg or q_row.shape != (n,):
        raise ValueError(f"{count} rows of {n} weights do not fit a group {group} chunk of "
                         f"{lanes} lanes")
    t = np.zeros((1 << group, seg), dtype=np.int8)
    t[:count, :n] = t_rows
    q = np.zeros(seg, dtype=np.int8)
    q[:n] = q_row
    packed = chip_bytes(pack_ternary(t.reshape(1, lanes), packing), packing)[0]
    return {"q": [int(v) for v in np.tile(q, 1 << group)],
            "w": int.from_bytes(packed.tobytes(), "little"), "last": 1, "group": group,
            "rows": count - 1}
