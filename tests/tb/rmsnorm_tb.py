"""cocotb testbench of hw/isqrt.py (Isqrt) and hw/rmsnorm.py (RMSNorm) against the golden model.

Run from tests/test_rmsnorm.py through :func:`mmfree.sim.toolchain.run_cocotb`. Environment:
``ISQRT_RANGE`` (every input below it, then as many random 32-bit inputs and edge cases),
``RMSNORM_N_MAX`` (the DUT's n_max), ``RMSNORM_VECTORS`` (vectors per traffic pattern),
``RMSNORM_PERIOD`` and ``RMSNORM_FIRST_OUT`` (the documented cycle counts: one vector per
``2 n + PERIOD`` cycles, first output ``n + FIRST_OUT`` cycles after the first input).
"""

import math
import os
import random
import sys
from pathlib import Path

import cocotb
import numpy as np
from amaranth.hdl import signed
from amaranth.lib import data
from cocotb.triggers import ReadOnly, RisingEdge

sys.path.insert(0, str(Path(__file__).parent.parent))
from streams import StreamSink, StreamSource, pack, reset, start_clock, unpack  # noqa: E402
from test_rmsnorm import make_case, out_shift  # noqa: E402

from mmfree.sim.golden import rmsnorm  # noqa: E402

IN = data.StructLayout({"data": signed(32), "first": 1, "last": 1})
W = data.StructLayout({"data": signed(24)})
OUT = IN


@cocotb.test()
async def isqrt_matches_golden(dut):
    """Isqrt(width=32, steps=ISQRT_STEPS): every input below ISQRT_RANGE, as many random 32-bit
    inputs, and the perfect squares of random roots with their neighbours, at full rate; one
    root per ISQRT_LATENCY + 1 cycles (valid ISQRT_LATENCY cycles after the input transfer,
    empty again the cycle after the output)."""
    start_clock(dut)
    dut.inp__valid.value = 0
    dut.out__ready.value = 0
    await reset(dut)
    count = int(os.environ["ISQRT_RANGE"])
    values = list(range(count)) + [random.getrandbits(32) for _ in range(count)]
    for _ in range(count // 8):
        k = random.getrandbits(16)
        values += [max(k * k - 1, 0), k * k, min(k * k + 1, (1 << 32) - 1)]
    values += [(1 << 32) - 1, 1 << 30, (1 << 30) - 1, 65535 ** 2]
    source = StreamSource(dut, "inp")
    sink = StreamSink(dut, "out")
    start = cocotb.start_soon(source.send(values))
    got = await sink.recv(len(values))
    await start
    for v, r in zip(values, got):
        assert r == math.isqrt(v), f"isqrt({v}) = {r}, expected {math.isqrt(v)}"
    # Full rate: root k transfers in cycle L + (L + 1) k (L cycles after its input, which is
    # taken in the cycle after the previous root transfers).
    latency = int(os.environ["ISQRT_LATENCY"])
    assert sink.cycles == (latency + 1) * len(values), (sink.cycles, len(values))
    dut._log.info("compared %d roots", len(values))


async def _monitor(dut, times):
    """Cycle of every inp and out transfer."""
    cycle = 0
    while True:
        await ReadOnly()
        if int(dut.inp__valid.value) and int(dut.inp__ready.value):
            times["inp"].append(cycle)
        if int(dut.out__valid.value) and int(dut.out__ready.value):
            times["out"].append(cycle)
        await RisingEdge(dut.clk)
        cycle += 1


async def _rmsnorm_matches_golden(dut, traffic):
    """RMSNORM_VECTORS random vectors (random 32-bit, small, mixed magnitudes, all zero with
    eps, all +-2**31; lengths 1..n_max, mostly not powers of two) bit-exact with the golden
    model; with random gaps on inp and w and random back-pressure on out, or at full rate,
    where every vector's first output and the next vector's first input must come at the
    documented cycles."""
    n_max = int(os.environ["RMSNORM_N_MAX"])
    vectors = int(os.environ["RMSNORM_VECTORS"])
    period = int(os.environ["RMSNORM_PERIOD"])
    first_out = int(os.environ["RMSNORM_FIRST_OUT"])
    full = traffic == "full-rate"
    seed = random.getrandbits(32)
    rng = np.random.default_rng(seed)
    where = f"n_max {n_max}, {traffic}, seed {seed}"

    kinds = ["big", "small", "mixed", "zero", "extreme"]
    cases = []
    for k in range(vectors):
        n = int(rng.choice([1, n_max, int(rng.integers(1, n_max + 1)), int(rng.integers(1, 9))]))
        kind = kinds[k % len(kinds)] if k < 10 else str(rng.choice(kinds, p=[.4, .2, .3, .05, .05]))
        cases.append(make_case(rng, n, kind))

    start_clock(dut)
    for name in ["inp__valid", "w__valid", "out__ready", "eps", "out_shift"]:
        getattr(dut, name).value = 0
    await reset(dut)
    times = {"inp": [], "out": []}
    if full:
        cocotb.start_soon(_monitor(dut, times))
    gap = 0.0 if full else 0.3
    inp = StreamSource(dut, "inp", gap_probability=gap, seed=seed + 1)
    w = StreamSource(dut, "w", gap_probability=gap, seed=seed + 2)
    sink = StreamSink(dut, "out", ready_probability=1.0 if full else 0.6, seed=seed + 3)

    async def send_inputs():
        for x, c in cases:
            dut.eps.value = c.eps
            dut.out_shift.value = out_shift(c)
            await inp.send([pack(IN, data=v, first=i == 0, last=i == len(x) - 1)
                            for i, v in enumerate(x)])

    total = sum(len(x) for x, _ in cases)
    sender = cocotb.start_soon(send_inputs())
    weights = cocotb.start_soon(w.send([pack(W, data=v) for _, c in cases for v in c.w]))
    words = [unpack(OUT, raw) for raw in await sink.recv(total)]
    await sender
    await weights

    pos = 0
    for k, (x, c) in enumerate(cases):
        expected = rmsnorm(x, c.w, c.w_frac, c.eps, c.f_in, c.f_out)
        for i, word in enumerate(words[pos:pos + len(x)]):
            assert (word["first"], word["last"]) == (i == 0, i == len(x) - 1), (
                f"{where}, vector {k}, element {i}: first/last {word}")
            assert word["data"] == expected[i], (
                f"{where}, vector {k} (n {len(x)}, eps {c.eps}, out_shift {out_shift(c)}), "
                f"element {i}: got {word['data']}, expected {expected[i]}")
        if full:
            t0 = times["inp"][pos]
            assert times["out"][pos] - t0 == len(x) + first_out, (where, k, len(x))
            if k + 1 < len(cases):
                assert times["inp"][pos + len(x)] - t0 == 2 * len(x) + period, (where, k)
        pos += len(x)
    assert pos == total == len(words)
    dut._log.info("%s: compared %d vectors, %d elements", where, len(cases), total)


@cocotb.test()
async def rmsnorm_full_rate(dut):
    """Golden-exact at full rate, with the documented cycle counts."""
    await _rmsnorm_matches_golden(dut, "full-rate")


@cocotb.test()
async def rmsnorm_random_traffic(dut):
    """Golden-exact with random gaps on inp and w and random back-pressure on out."""
    await _rmsnorm_matches_golden(dut, "random")
