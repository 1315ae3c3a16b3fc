# amaranth: UnusedElaboratable=no
"""TernaryAccumulate (hw/ternary.py) and its weight decoder (hw/unpack.py) against the golden
ternary_accumulate and the packing module: Amaranth simulation and cocotb on Verilator."""

import random
import zlib
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from mmfree.hw.ternary import TernaryAccumulate, grouped_chunk, ternary_chunks
from mmfree.hw.unpack import TernaryDecoder, chunk_bytes
from mmfree.sim.golden import accumulator_bits, ternary_accumulate
from mmfree.sim.packing import chip_byte_weights, chip_bytes, pack_ternary, unpack_ternary
from mmfree.sim.toolchain import amaranth_to_verilog, run_cocotb

TB_DIR = Path(__file__).parent / "tb"


# --- Parameters --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(lanes=12, n=64), ValueError, "lanes must be a positive power of two, not 12"),
    (dict(lanes=0, n=64), ValueError, "lanes must be a positive power of two, not 0"),
    (dict(lanes=-4, n=64), ValueError, "lanes must be a positive power of two, not -4"),
    (dict(lanes=2, n=64), ValueError, "lanes must be at least 4 for 2bit packing .*not 2"),
    (dict(lanes=16.0, n=64), TypeError, "lanes must be an integer, not 16.0"),
    (dict(lanes=16, n=0), ValueError, "n must be positive, not 0"),
    (dict(lanes=16, n="64"), TypeError, "n must be an integer, not '64'"),
    (dict(lanes=16, n=64, packing="3bit"), ValueError,
     "packing must be one of 2bit, 1.6bit, not '3bit'"),
    (dict(lanes=16, n=64, pairs=True), ValueError,
     "pairs of rows come from grouped chunks: give groups"),
], ids=["lanes12", "lanes0", "lanes-4", "lanes2-2bit", "lanes-float", "n0", "n-str", "3bit",
        "pairs-without-groups"])
def test_bad_parameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        TernaryAccumulate(**kwargs)


def test_parameters_and_ports():
    dut = TernaryAccumulate(lanes=256, n=6912, packing="1.6bit")
    assert (dut.lanes, dut.n, dut.packing) == (256, 6912, "1.6bit")
    assert dut.acc_bits == accumulator_bits(6912) == 21
    assert dut.w_bits == 8 * 52 and chunk_bytes(256, "2bit") == 64
    assert [TernaryAccumulate(lanes=lanes, n=8, packing="1.6bit").latency
            for lanes in (1, 2, 4, 16, 32, 64, 256)] == [3, 4, 4, 5, 6, 6, 7]
    assert TernaryAccumulate(lanes=512, n=8, input_reg=True).latency == 9
    with pytest.raises(AttributeError):
        dut.lanes = 8
    assert TernaryAccumulate(lanes=1, n=1, packing="1.6bit").acc_bits == 8
    with pytest.raises(ValueError, match="lanes must be a positive power of two, not 3"):
        TernaryDecoder(lanes=3, packing="1.6bit")


# --- The host's chunk format -------------------------------------------------------------------

@pytest.mark.parametrize("packing", ["2bit", "1.6bit"])
def test_chunks_are_pack_ternary_bytes(packing):
    """2bit chunks are slices of the packed row; 1.6bit chunks are packed on their own, in the
    on-chip code; both unpack to the row's weights."""
    rng = np.random.default_rng(7)
    lanes = 16
    t = rng.integers(-1, 2, 37).astype(np.int8)
    q = rng.integers(-128, 128, 37).astype(np.int8)
    chunks = ternary_chunks(t, q, lanes=lanes, packing=packing)
    assert [c["last"] for c in chunks] == [0, 0, 1]
    width = chunk_bytes(lanes, packing)
    codes = np.array([[c["w"] >> 8 * b & 0xFF for b in range(width)] for c in chunks], np.uint8)
    weights = [w for row in codes
               for w in [w for code in row for w in chip_byte_weights(int(code), packing)][:lanes]]
    assert weights[:37] == t.tolist() and not any(weights[37:])
    packed = np.stack([pack_ternary(t_chunk[None, :], packing)[0] for t_chunk in
                       np.pad(t, (0, 11)).reshape(3, lanes)])
    assert np.array_equal(codes, chip_bytes(packed, packing))
    flat_q = [v for c in chunks for v in c["q"]]
    assert flat_q[:37] == q.tolist() and flat_q[37:] == [0] * 11
    if packing == "2bit":
        assert codes.reshape(-1)[:10].tolist() == pack_ternary(t[None, :], "2bit")[0].tolist()


def test_chip_code():
    """The 1.6-bit on-chip code is a bijection of the 243 valid bytes that decodes (by its
    adder rule) to the weights unpack_ternary reads; 2-bit bytes are stored as they are."""
    valid = np.arange(243, dtype=np.uint8)
    codes = chip_bytes(valid, "1.6bit")
    assert len(set(codes.tolist())) == 243
    for byte, code in zip(valid, codes):
        assert chip_byte_weights(int(code), "1.6bit") == \
            unpack_ternary(np.array([[byte]], np.uint8), 5, "1.6bit")[0].tolist()
    zero = pack_ternary(np.zeros((1, 5), np.int8), "1.6bit")
    assert chip_bytes(zero, "1.6bit").tolist() == [[128]]
    every = np.arange(256, dtype=np.uint8)
    assert np.array_equal(chip_bytes(every, "2bit"), every)
    with pytest.raises(ValueError, match="invalid 1.6-bit byte 243"):
        chip_bytes(np.array([1, 243], np.uint8), "1.6bit")


# --- Amaranth simulator ------------------------------------------------------------------------

@pytest.mark.parametrize("packing", ["2bit", "1.6bit"])
def test_decoder_every_byte(packing):
    """Every on-chip byte value at every byte position decodes as chip_byte_weights says (for
    the valid bytes: as unpack_ternary reads them, test_chip_code)."""
    lanes = 8
    dut = TernaryDecoder(lanes=lanes, packing=packing)
    per_byte = 4 if packing == "2bit" else 5
    width = chunk_bytes(lanes, packing)
    zero = int(chip_bytes(pack_ternary(np.zeros((1, per_byte), np.int8), packing),
                          packing)[0, 0])      # the other bytes

    async def testbench(ctx):
        for byte in range(256):
            t = chip_byte_weights(byte, packing)
            for b in range(width):
                ctx.set(dut.w, sum((byte if c == b else zero) << 8 * c for c in range(width)))
                pos, neg = ctx.get(dut.pos), ctx.get(dut.neg)
                for j in range(lanes):
                    k = j - per_byte * b
                    want = t[k] if 0 <= k < per_byte else 0
                    assert (pos >> j & 1, neg >> j & 1) == (want == 1, want == -1), (
                        f"{packing}: byte {byte} at position {b}, lane {j}")

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()


def _sim_rows(lanes, n, count, rng):
    rows = []
    for length in sorted({1, lanes, n}):
        for w, qv in [(1, 127), (-1, 127), (1, -127), (-1, -127), (1, -128)]:
            rows.append((np.full(length, w, np.int8), np.full(length, qv, np.int8)))
    for _ in range(count):
        length = int(rng.integers(1, n + 1))
        rows.append((rng.integers(-1, 2, length).astype(np.int8),
                     rng.integers(-128, 128, length).astype(np.int8)))
    return rows


def _run_chunks(dut, chunks, rows, gap, ready, traffic, where):
    """Send ``chunks`` to ``dut.inp`` (pausing with probability ``gap``) and take ``rows``
    results from ``dut.out`` (ready with probability ``ready``), checking that a result holds
    until it is taken. Returns the results, the cycles they were taken, and the cycles the
    chunks went in."""
    layout = dut.inp.payload.shape()
    got, out_cycles, in_cycles = [], [], []

    async def source(ctx):
        for chunk in chunks:
            while traffic.random() < gap:
                ctx.set(dut.inp.valid, 0)
                await ctx.tick()
            ctx.set(dut.inp.valid, 1)
            ctx.set(dut.inp.payload, layout.const(chunk))
            await ctx.tick().until(dut.inp.ready)
        ctx.set(dut.inp.valid, 0)

    async def sink(ctx):
        held = None
        cycle = 0
        while len(got) < rows:
            accept = traffic.random() < ready
            ctx.set(dut.out.ready, accept)
            _, _, valid, payload, in_valid, in_ready = await ctx.tick().sample(
                dut.out.valid, dut.out.payload, dut.inp.valid, dut.inp.ready)
            if held is not None:
                assert valid and payload == held, f"{where}: out changed before its transfer"
            held = payload if valid and not accept else None
            if valid and accept:
                got.append(payload)
                out_cycles.append(cycle)
            if in_valid and in_ready:
                in_cycles.append(cycle)
            cycle += 1
            assert cycle < 40 * len(chunks) + 100, f"{where}: stuck"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return got, out_cycles, in_cycles


@pytest.mark.parametrize("lanes, n, packing, input_reg", [
    (16, 40, "2bit", False), (16, 48, "1.6bit", False), (4, 9, "2bit", False),
    (1, 3, "1.6bit", False), (16, 48, "1.6bit", True),
], ids=["l16-n40-2bit", "l16-n48-1.6bit", "l4-n9-2bit", "l1-n3-1.6bit", "l16-n48-1.6bit-reg"])
@pytest.mark.parametrize("gap, ready", [(0.0, 1.0), (0.3, 0.4)], ids=["full-rate", "random"])
def test_sim_matches_golden(lanes, n, packing, input_reg, gap, ready):
    """Row sums equal the golden model; at full rate, latency and throughput are as
    documented (``input_reg``: one more cycle of latency, the same throughput)."""
    seed = zlib.crc32(f"{lanes}-{n}-{packing}-{gap}".encode())
    where = (f"lanes {lanes}, n {n}, packing {packing}, input_reg {input_reg}, gap {gap}, "
             f"ready {ready}, seed {seed}")
    rng = np.random.default_rng(seed)
    traffic = random.Random(seed)
    dut = TernaryAccumulate(lanes=lanes, n=n, packing=packing, input_reg=input_reg)
    rows = _sim_rows(lanes, n, 150, rng)
    chunks = [c for t, q in rows for c in ternary_chunks(t, q, lanes=lanes, packing=packing)]
    expected = [int(ternary_accumulate(t[None, :], q)[0]) for t, q in rows]
    got, out_cycles, inp_cycles = _run_chunks(dut, chunks, len(rows), gap, ready, traffic,
                                              where)
    last_cycles = [cycle for cycle, chunk in zip(inp_cycles, chunks) if chunk["last"]]
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"{where}: row {i} (length {len(rows[i][0])}): got {g}, expected {e}"
    assert len(got) == len(expected) and len(inp_cycles) == len(chunks), where
    if gap == 0.0 and ready == 1.0:
        assert inp_cycles == list(range(inp_cycles[0], inp_cycles[0] + len(chunks))), where
        latencies = {o - i for i, o in zip(last_cycles, out_cycles)}
        assert latencies == {dut.latency}, f"{where}: latencies {latencies}"


@pytest.mark.parametrize("lanes, groups, packing, input_reg", [
    (16, (1, 2, 3), "2bit", False), (32, (2,), "1.6bit", False), (64, (1, 3), "1.6bit", False),
    (32, (2,), "1.6bit", True)])
@pytest.mark.parametrize("gap, ready", [(0.0, 1.0), (0.3, 0.4)], ids=["full-rate", "random"])
def test_grouped_chunks(lanes, groups, packing, input_reg, gap, ready):
    """Grouped chunks (several short rows a chunk) mixed with row chunks: every row's sum
    equals the golden model, in order; at full rate one row a cycle, row ``m`` of a chunk
    ``latency + m`` cycles after it."""
    seed = zlib.crc32(f"{lanes}-{groups}-{packing}-{gap}".encode())
    where = (f"lanes {lanes}, groups {groups}, packing {packing}, input_reg {input_reg}, "
             f"gap {gap}, seed {seed}")
    rng = np.random.default_rng(seed)
    traffic = random.Random(seed)
    n = 3 * lanes
    dut = TernaryAccumulate(lanes=lanes, n=n, packing=packing, groups=groups,
                            input_reg=input_reg)
    chunks, expected, source_of = [], [], []     # source_of: (chunk, row in it) of each row
    for _ in range(120):
        g = int(rng.choice((0,) + groups))
        if g == 0:
            length = int(rng.integers(1, n + 1))
            t = rng.integers(-1, 2, length).astype(np.int8)
            q = rng.integers(-127, 128, length).astype(np.int8)
            chunks += [dict(c, group=0, rows=0)
                       for c in ternary_chunks(t, q, lanes=lanes, packing=packing)]
            expected.append(int(ternary_accumulate(t[None, :], q)[0]))
            source_of.append((len(chunks) - 1, 0))
            continue
        count = int(rng.integers(1, (1 << g) + 1))
        length = int(rng.integers(1, (lanes >> g) + 1))
        t = rng.integers(-1, 2, (count, length)).astype(np.int8)
        q = rng.integers(-127, 128, length).astype(np.int8)
        if rng.random() < 0.2:
            t[:], q[:] = 1, 127      # the largest sums a segment holds
        chunks.append(grouped_chunk(t, q, lanes=lanes, group=g, packing=packing))
        expected += [int(v) for v in ternary_accumulate(t, q)]
        source_of += [(len(chunks) - 1, k) for k in range(count)]
    got, out_cycles, in_cycles = _run_chunks(dut, chunks, len(expected), gap, ready, traffic,
                                             where)
    assert got == expected, where
    if gap == 0.0 and ready == 1.0:
        # Row m of a chunk leaves latency + m cycles after the chunk, or the cycle after the
        # row before it, whichever is later.
        want = []
        for chunk, row in source_of:
            earliest = in_cycles[chunk] + dut.latency + row
            want.append(max(earliest, want[-1] + 1) if want else earliest)
        assert out_cycles == want, where
        # Holding a chunk back never costs a row: where the rows pause, the chunk of the
        # row after the pause went in right after the chunk before it.
        for i in range(1, len(got)):
            chunk = source_of[i][0]
            if out_cycles[i] > out_cycles[i - 1] + 1 and chunk > 0:
                assert in_cycles[chunk] == in_cycles[chunk - 1] + 1, (where, i)


@pytest.mark.parametrize("lanes, groups, packing, input_reg", [
    (16, (1, 2), "2bit", False), (64, (2, 3), "1.6bit", False), (64, (2, 3), "1.6bit", True)])
@pytest.mark.parametrize("gap, ready", [(0.0, 1.0), (0.3, 0.4)], ids=["full-rate", "random"])
def test_paired_chunks(lanes, groups, packing, input_reg, gap, ready):
    """With ``pairs``, grouped chunks marked ``pair`` (an even count of rows) send two rows a
    transfer, in order, others one; every sum equals the golden model. At full rate a run of
    chunks of pairs delivers two rows every cycle."""
    seed = zlib.crc32(f"pairs-{lanes}-{groups}-{packing}-{gap}".encode())
    where = (f"lanes {lanes}, groups {groups}, packing {packing}, input_reg {input_reg}, "
             f"gap {gap}, seed {seed}")
    rng = np.random.default_rng(seed)
    traffic = random.Random(seed)
    n = 2 * lanes
    dut = TernaryAccumulate(lanes=lanes, n=n, packing=packing, groups=groups, pairs=True,
                            input_reg=input_reg)
    chunks, expected = [], []          # expected: one entry per transfer, one or two sums
    for index in range(100):
        kind = "pair" if index >= 60 else rng.choice(["row", "group", "pair"])
        if kind == "row":
            length = int(rng.integers(1, n + 1))
            t = rng.integers(-1, 2, length).astype(np.int8)
            q = rng.integers(-127, 128, length).astype(np.int8)
            chunks += [dict(c, group=0, rows=0, pair=int(rng.random() < 0.5))
                       for c in ternary_chunks(t, q, lanes=lanes, packing=packing)]
            expected.append((int(ternary_accumulate(t[None, :], q)[0]),))
            continue
        g = int(rng.choice(groups))
        count = 2 * int(rng.integers(1, (1 << g) // 2 + 1)) if kind == "pair" else \
            int(rng.integers(1, (1 << g) + 1))
        length = int(rng.integers(1, (lanes >> g) + 1))
        t = rng.integers(-1, 2, (count, length)).astype(np.int8)
        q = rng.integers(-127, 128, length).astype(np.int8)
        sums = [int(v) for v in ternary_accumulate(t, q)]
        chunks.append(dict(grouped_chunk(t, q, lanes=lanes, group=g, packing=packing),
                           pair=int(kind == "pair")))
        expected += [tuple(sums[k:k + 2]) for k in range(0, count, 2)] if kind == "pair" \
            else [(v,) for v in sums]
    got, out_cycles, _ = _run_chunks(dut, chunks, len(expected), gap, ready, traffic, where)
    got = [tuple(int(v[k]) for k in range(len(e))) for v, e in zip(got, expected)]
    assert got == expected, where
    if gap == 0.0 and ready == 1.0:
        tail = out_cycles[-sum(len(e) == 2 for e in expected[-40:]):]
        assert tail == list(range(tail[0], tail[0] + len(tail))), where


def test_grouped_chunk_format():
    t = np.array([[1, -1, 0], [0, 1, 1]], np.int8)
    chunk = grouped_chunk(t, [5, 6, 7], lanes=8, group=1, packing="2bit")
    assert chunk["q"] == [5, 6, 7, 0, 5, 6, 7, 0] and (chunk["group"], chunk["rows"]) == (1, 1)
    packed = np.array([[chunk["w"] >> 8 * b & 0xFF for b in range(2)]], np.uint8)
    assert unpack_ternary(packed, 8, "2bit")[0].tolist() == [1, -1, 0, 0, 0, 1, 1, 0]
    with pytest.raises(ValueError, match="3 rows of 3 weights do not fit a group 1 chunk"):
        grouped_chunk(np.zeros((3, 3)), [0, 0, 0], lanes=8, group=1, packing="2bit")
    with pytest.raises(ValueError, match="groups must be integers from 1 to log2"):
        TernaryAccumulate(lanes=8, n=8, groups=(3,))


# --- Verilog, Verilator, cocotb ----------------------------------------------------------------

COCOTB_CONFIGS = [(16, 40, "2bit"), (16, 64, "1.6bit"), (64, 200, "1.6bit"), (64, 256, "2bit")]


@pytest.mark.parametrize("lanes, n, packing", COCOTB_CONFIGS,
                         ids=[f"l{lanes}-n{n}-{packing}" for lanes, n, packing in COCOTB_CONFIGS])
def test_ternary_cocotb(lanes, n, packing):
    """Verilator: 1,300 random rows plus extremes per traffic pattern (random gaps and
    back-pressure; full rate with latency and throughput measured), 4 configurations."""
    dut = TernaryAccumulate(lanes=lanes, n=n, packing=packing)
    result = run_cocotb(
        toplevel="ternary_accumulate",
        verilog=amaranth_to_verilog(dut, "ternary_accumulate"),
        test_module="ternary_tb", python_path=[TB_DIR], seed=1,
        extra_env={"TERNARY_LANES": str(lanes), "TERNARY_N": str(n),
                   "TERNARY_PACKING": packing, "TERNARY_ROWS": "1300",
                   "TERNARY_SEED": str(lanes * 1000 + n)},
    )
    assert sorted(result.passed) == ["full_rate", "random_traffic"]
