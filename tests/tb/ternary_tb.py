# amaranth: UnusedElaboratable=no
"""cocotb testbench of hw/ternary.py (TernaryAccumulate) against the golden ternary_accumulate.

Run from tests/test_ternary.py through :func:`mmfree.sim.toolchain.run_cocotb`. Environment:
``TERNARY_LANES``, ``TERNARY_N``, ``TERNARY_PACKING`` (the build's parameters),
``TERNARY_ROWS`` (random rows per test, on top of the extreme rows) and ``TERNARY_SEED``.
"""

import os

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge
from streams import StreamSink, StreamSource, reset, start_clock

from mmfree.hw.ternary import TernaryAccumulate, ternary_chunks
from mmfree.sim.golden import ternary_accumulate


def _config():
    lanes = int(os.environ["TERNARY_LANES"])
    n = int(os.environ["TERNARY_N"])
    packing = os.environ["TERNARY_PACKING"]
    return lanes, n, packing, TernaryAccumulate(lanes=lanes, n=n, packing=packing)


def _rows(lanes, n, count, seed, bits):
    """Extreme rows (every length class, all +1/-1 weights, q = -128, -127, 127), then
    ``count`` random rows of random lengths (1..n, n, multiples of lanes) and weight densities.
    Rows whose exact sum does not fit ``bits`` (only q = -128 extremes can) are left out: the
    block wraps there, the golden model's precondition excludes them."""
    rng = np.random.default_rng(seed)
    lengths = sorted({1, lanes - 1 or 1, lanes, lanes + 1, n - 1 or 1, n} - {0})
    lengths = [length for length in lengths if length <= n]
    rows = []
    for length in lengths:
        for w in (1, -1):
            for qv in (-128, -127, 127):
                rows.append((np.full(length, w, np.int8), np.full(length, qv, np.int8)))
        signs = rng.choice(np.array([-1, 1], np.int8), length)
        rows.append((signs, (signs * 127).astype(np.int8)))
        rows.append((signs, (signs * -128 + (signs > 0)).astype(np.int8)))
    for _ in range(count):
        choice = rng.random()
        length = (n if choice < 0.15 else lanes * int(rng.integers(1, -(-n // lanes) + 1))
                  if choice < 0.3 else int(rng.integers(1, n + 1)))
        length = min(length, n)
        p_zero = rng.random()
        t = rng.choice(np.array([0, 1, -1], np.int8), length,
                       p=[p_zero, (1 - p_zero) / 2, (1 - p_zero) / 2])
        q = rng.integers(-128, 128, length).astype(np.int8)
        rows.append((t, q))
    limit = 1 << (bits - 1)
    return [(t, q) for t, q in rows
            if -limit <= int(ternary_accumulate(t[None, :], q)[0]) < limit]


async def _monitor(dut, last_bit, log):
    """Records the cycle of every inp transfer (with its last bit) and out transfer."""
    cycle = 0
    while True:
        await ReadOnly()
        if int(dut.inp__valid.value) and int(dut.inp__ready.value):
            log["inp"].append((cycle, int(dut.inp__payload.value) >> last_bit & 1))
        if int(dut.out__valid.value) and int(dut.out__ready.value):
            log["out"].append(cycle)
        await RisingEdge(dut.clk)
        cycle += 1


async def _run(dut, gap_probability, ready_probability, seed_offset):
    lanes, n, packing, model = _config()
    layout = model.inp.payload.shape()
    seed = int(os.environ["TERNARY_SEED"]) + seed_offset
    where = (f"lanes {lanes}, n {n}, packing {packing}, seed {seed}, gaps {gap_probability}, "
             f"ready {ready_probability}")
    rows = _rows(lanes, n, int(os.environ["TERNARY_ROWS"]), seed, model.acc_bits)
    words, expected = [], []
    for t, q in rows:
        words += [layout.const(chunk).as_bits()
                  for chunk in ternary_chunks(t, q, lanes=lanes, packing=packing)]
        expected.append(int(ternary_accumulate(t[None, :], q)[0]))

    start_clock(dut)
    dut.inp__valid.value = 0
    dut.out__ready.value = 0
    await reset(dut)
    log = {"inp": [], "out": []}
    monitor = cocotb.start_soon(_monitor(dut, layout["last"].offset, log))
    source = StreamSource(dut, "inp", gap_probability=gap_probability, seed=seed)
    sink = StreamSink(dut, "out", ready_probability=ready_probability, seed=seed + 1,
                      signed_width=model.acc_bits)
    sending = cocotb.start_soon(source.send(words))
    got = await sink.recv(len(expected), timeout=20 * len(words) + 1000)
    await sending
    monitor.cancel()
    for i, (g, e) in enumerate(zip(got, expected)):
        t, q = rows[i]
        assert g == e, (f"{where}: row {i} (length {len(t)}): got {g}, expected {e}; "
                        f"t={t.tolist()} q={q.tolist()}")
    assert len(got) == len(expected) == len(rows) and source.sent == len(words), where
    return model, rows, words, log, where


@cocotb.test()
async def random_traffic(dut):
    """Random rows and extremes equal the golden sums under random valid gaps on inp and
    random back-pressure on out."""
    _, rows, _, _, where = await _run(dut, 0.3, 0.4, 0)
    dut._log.info("%s: %d rows match", where, len(rows))


@cocotb.test()
async def full_rate(dut):
    """At full rate (no gaps, out.ready high), every row's sum is valid exactly ``latency``
    cycles after its last chunk's transfer, and inp takes one chunk in every cycle."""
    model, rows, words, log, where = await _run(dut, 0.0, 1.0, 1)
    inp_cycles = [c for c, _ in log["inp"]]
    assert len(inp_cycles) == len(words), where
    assert inp_cycles == list(range(inp_cycles[0], inp_cycles[0] + len(words))), (
        f"{where}: inp did not take one chunk per cycle")
    last_cycles = [c for c, last in log["inp"] if last]
    latencies = {o - i for i, o in zip(last_cycles, log["out"])}
    assert len(log["out"]) == len(rows) and latencies == {model.latency}, (
        f"{where}: latencies {sorted(latencies)}, documented {model.latency}")
    dut._log.info("%s: %d rows, %d chunks in %d cycles, latency %d", where, len(rows),
                  len(words), inp_cycles[-1] - inp_cycles[0] + 1, model.latency)
