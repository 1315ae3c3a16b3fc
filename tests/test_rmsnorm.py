# amaranth: UnusedElaboratable=no
"""hw/isqrt.py (Isqrt) and hw/rmsnorm.py (RMSNorm) against the golden model
(:func:`mmfree.sim.golden.isqrt`, :func:`mmfree.sim.golden.rmsnorm`): Amaranth simulation and
cocotb on Verilator (tests/tb/rmsnorm_tb.py)."""

import math
import random
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from mmfree.hw.isqrt import Isqrt
from mmfree.hw.rmsnorm import RMSNorm
from mmfree.sim.golden import NormConst, prepare_norm, rmsnorm
from mmfree.sim.toolchain import amaranth_to_verilog, run_cocotb

TB_DIR = Path(__file__).parent / "tb"
CONFIGS = [64, 96]                       # n_max
PERIOD = 53                              # cycles per vector beyond 2 n (RMSNorm docstring)
FIRST_OUT = 58                           # first input transfer -> first output, beyond n
ISQRT_RANGE = 1 << 13                    # cocotb: inputs 0..ISQRT_RANGE-1, as many random
RMSNORM_VECTORS = 1250                   # cocotb: vectors per traffic pattern and n_max


def make_case(rng: np.random.Generator, n: int, kind: str):
    """(x, NormConst) of one test vector. ``kind``: "big" (random 32-bit), "small" (|x| < 2**8),
    "mixed" (random magnitudes), "zero" (all zero: eps alone), "extreme" (+-2**31)."""
    f_in = int(rng.integers(0, 31))
    f_out = int(rng.integers(8, 31))
    weight = rng.normal(1.0, 0.3, n) * float(rng.choice([1.0, 0.01, 30.0]))
    eps = float(rng.choice([1e-6, 1e-5, 1e-12, 0.0]))
    if kind == "big":
        x = rng.integers(-(1 << 31), 1 << 31, n)
    elif kind == "small":
        x = rng.integers(-(1 << 8), 1 << 8, n)
    elif kind == "mixed":
        bits = rng.integers(1, 33, n)
        x = rng.integers(-(1 << 31), 1 << 31, n) >> (32 - bits)
    elif kind == "zero":
        x = np.zeros(n, dtype=np.int64)
    else:
        x = rng.choice([-(1 << 31), (1 << 31) - 1], n)
    try:
        const = prepare_norm(weight, eps, f_in, f_out)
    except ValueError:                   # eps too large for this format: a coarser one
        const = prepare_norm(weight, eps, 0, f_out)
    return np.asarray(x, dtype=np.int64), const


def out_shift(const) -> int:
    return 30 + const.w_frac - const.f_out


# --- parameters --------------------------------------------------------------------------------

def test_isqrt_parameters():
    assert Isqrt().width == 32
    for bad in [0, 7, -2, 3.0]:
        with pytest.raises(TypeError, match=f"width must be a positive even integer, not {bad}"):
            Isqrt(width=bad)
    assert (Isqrt().steps, Isqrt().latency) == (1, 16)
    assert (Isqrt(steps=2).latency, Isqrt(steps=3).latency, Isqrt(width=2, steps=2).latency) \
        == (8, 6, 1)
    for bad in [0, True, 1.5]:
        with pytest.raises(TypeError, match=f"steps must be a positive integer, not {bad}"):
            Isqrt(steps=bad)


def test_rmsnorm_parameters():
    dut = RMSNorm(n_max=96)
    assert (dut.n_max, dut.in_width, dut.w_width, dut.acc_width) == (96, 32, 24, 70)
    assert RMSNorm(n_max=4, in_width=16).acc_width == 62
    with pytest.raises(ValueError, match="n_max must be a positive integer, not 0"):
        RMSNorm(n_max=0)
    with pytest.raises(ValueError, match="n_max must be a positive integer, not 8.0"):
        RMSNorm(n_max=8.0)
    with pytest.raises(ValueError, match="in_width must be an integer from 2 to 32, not 33"):
        RMSNorm(n_max=8, in_width=33)
    with pytest.raises(ValueError, match="w_width must be an integer from 2 to 24, not 25"):
        RMSNorm(n_max=8, w_width=25)


def test_out_shift_range_of_real_constants():
    """The documented out_shift range 0..63 covers what prepare_norm makes for the formats the
    model uses (f_out = F_NORM = 20) over weights from 1e-3 to 1e3."""
    for scale in [1e-3, 1.0, 1e3]:
        for n in [1, 64, 6912]:
            const = prepare_norm(np.full(n, scale), 1e-6, 16, 20)
            assert 0 <= out_shift(const) <= 63, (scale, n, out_shift(const))


# --- Amaranth simulator ------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 2, 3])
def test_isqrt_sim(steps):
    """Isqrt(width=12) on every input, Isqrt(width=32) on edges and random inputs, one, two
    and three root bits a cycle; the root is valid ceil(width / 2 / steps) cycles after the
    input transfer."""
    rng = random.Random(3)
    for width, values in [
        (12, range(1 << 12)),
        (32, [0, 1, 2, 3, (1 << 32) - 1, (1 << 30), (1 << 30) - 1, 65535 ** 2, 65535 ** 2 - 1]
             + [rng.getrandbits(32) for _ in range(200)]),
    ]:
        dut = Isqrt(width=width, steps=steps)
        assert dut.latency == -(-width // 2 // steps)
        checked = 0

        async def testbench(ctx):
            nonlocal checked
            for v in values:
                ctx.set(dut.inp.payload, v)
                ctx.set(dut.inp.valid, 1)
                assert ctx.get(dut.inp.ready)
                await ctx.tick()
                ctx.set(dut.inp.valid, 0)
                cycles = 1
                while not ctx.get(dut.out.valid):
                    assert not ctx.get(dut.inp.ready)
                    await ctx.tick()
                    cycles += 1
                assert cycles == dut.latency, (width, v, cycles)
                got = ctx.get(dut.out.payload)
                assert got == math.isqrt(v), f"width {width}: isqrt({v}) = {got}"
                ctx.set(dut.out.ready, 1)
                await ctx.tick()
                ctx.set(dut.out.ready, 0)
                checked += 1

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(testbench)
        sim.run()
        assert checked == len(values)


def _rmsnorm_sim(dut, cases, *, gap, ready, seed):
    """Runs ``cases`` [(x, const)] through ``dut`` in one cycle-by-cycle testbench driving inp,
    w and out; returns (outputs per vector, cycle of each inp/w/out transfer)."""
    rng = random.Random(seed)
    in_words = [(int(v), i == 0, i == len(x) - 1, c) for x, c in cases for i, v in enumerate(x)]
    w_words = [int(v) for _, c in cases for v in c.w]
    outs = []
    times = {"inp": [], "w": [], "out": []}

    async def testbench(ctx):
        ii = wi = 0
        iv = wv = False
        held = None
        cycle = 0
        while len(outs) < len(in_words):
            if not iv and ii < len(in_words) and rng.random() >= gap:
                v, first, last, c = in_words[ii]
                ctx.set(dut.inp.payload.data, v)
                ctx.set(dut.inp.payload.first, first)
                ctx.set(dut.inp.payload.last, last)
                # constants change at random in the middle of a vector: only first counts
                ctx.set(dut.eps, c.eps if first else rng.getrandbits(60))
                ctx.set(dut.out_shift, out_shift(c) if first else rng.getrandbits(6))
                iv = True
            ctx.set(dut.inp.valid, iv)
            if not wv and wi < len(w_words) and rng.random() >= gap:
                ctx.set(dut.w.payload.data, w_words[wi])
                wv = True
            ctx.set(dut.w.valid, wv)
            r = rng.random() < ready
            ctx.set(dut.out.ready, r)
            valid = ctx.get(dut.out.valid)
            word = (ctx.get(dut.out.payload.data), ctx.get(dut.out.payload.first),
                    ctx.get(dut.out.payload.last))
            if held is not None:
                assert valid and word == held, f"seed {seed}: out changed before the transfer"
            held = word if valid and not r else None
            if valid and r:
                outs.append(word)
                times["out"].append(cycle)
            if iv and ctx.get(dut.inp.ready):
                iv = False
                ii += 1
                times["inp"].append(cycle)
            if wv and ctx.get(dut.w.ready):
                wv = False
                wi += 1
                times["w"].append(cycle)
            await ctx.tick()
            cycle += 1
            assert cycle < 100_000, f"seed {seed}: stuck after {len(outs)} outputs"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return outs, times


@pytest.mark.parametrize("n_max", CONFIGS, ids=lambda n: f"n_max={n}")
@pytest.mark.parametrize("gap,ready", [(0.0, 1.0), (0.3, 0.6)], ids=["full-rate", "random"])
def test_rmsnorm_sim(n_max, gap, ready):
    """Vectors of every kind, lengths 1, n_max and others, bit-exact with the golden model;
    at full rate, one vector per 2 n + 53 cycles and the first output n + 58 cycles after the
    first input."""
    seed = n_max * 7 + int(gap * 10)
    rng = np.random.default_rng(seed)
    lengths = [1, n_max, 3, n_max - 1, 17, 2]
    kinds = ["big", "small", "mixed", "zero", "extreme", "big"]
    cases = [make_case(rng, n, kind) for n, kind in zip(lengths, kinds)]
    # The ends of the documented out_shift range 0..63 (and 1): saturation, rounding to 0.
    for shift, n in [(0, 5), (1, 7), (63, 4)]:
        x, c = make_case(rng, n, "mixed")
        c = NormConst(w=c.w, w_frac=c.w_frac, eps=c.eps, f_in=c.f_in, f_out=30 + c.w_frac - shift)
        assert out_shift(c) == shift
        cases.append((x, c))
    dut = RMSNorm(n_max=n_max)
    outs, times = _rmsnorm_sim(dut, cases, gap=gap, ready=ready, seed=seed)
    pos = 0
    for k, (x, c) in enumerate(cases):
        expected = rmsnorm(x, c.w, c.w_frac, c.eps, c.f_in, c.f_out)
        got = outs[pos:pos + len(x)]
        for i, (y, first, last) in enumerate(got):
            assert (first, last) == (i == 0, i == len(x) - 1), (n_max, seed, k, i)
            assert y == expected[i], (f"n_max {n_max}, seed {seed}, vector {k} ({len(x)} "
                                      f"elements), element {i}: got {y}, expected {expected[i]}")
        if gap == 0.0 and ready == 1.0:
            t0 = times["inp"][pos]
            assert times["out"][pos] - t0 == len(x) + FIRST_OUT, (n_max, k)
            if k + 1 < len(cases):
                assert times["inp"][pos + len(x)] - t0 == 2 * len(x) + PERIOD, (n_max, k)
        pos += len(x)
    assert pos == len(outs)


# --- Verilator through cocotb ------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 2])
def test_isqrt_cocotb(steps):
    """Isqrt(width=32)'s Verilog on Verilator, one and two root bits a cycle (NormQuant's):
    every input below ISQRT_RANGE, as many random 32-bit inputs and perfect squares with their
    neighbours (about 19,500 roots)."""
    block = Isqrt(width=32, steps=steps)
    result = run_cocotb(
        toplevel="isqrt", verilog=amaranth_to_verilog(block, "isqrt"),
        test_module="rmsnorm_tb", python_path=[TB_DIR], seed=11, testcase="isqrt_matches_golden",
        extra_env={"ISQRT_RANGE": str(ISQRT_RANGE), "ISQRT_LATENCY": str(block.latency)},
    )
    assert result.passed == ("isqrt_matches_golden",)


@pytest.mark.parametrize("n_max,vectors,seed", [
    pytest.param(64, RMSNORM_VECTORS, 64, id="n_max=64"),
    pytest.param(96, RMSNORM_VECTORS, 96, id="n_max=96"),
    # With the two above, 10**4 vectors in all.
    pytest.param(64, 2 * RMSNORM_VECTORS, 1064, id="n_max=64-long", marks=pytest.mark.slow),
])
def test_rmsnorm_cocotb(n_max, vectors, seed):
    """RMSNorm's Verilog on Verilator: `vectors` random vectors at full rate (with the documented
    cycle counts) and as many with random gaps and back-pressure, bit-exact with the golden
    model."""
    result = run_cocotb(
        toplevel="rmsnorm", verilog=amaranth_to_verilog(RMSNorm(n_max=n_max), "rmsnorm"),
        test_module="rmsnorm_tb", python_path=[TB_DIR], seed=seed,
        testcase=["rmsnorm_full_rate", "rmsnorm_random_traffic"],
        extra_env={"RMSNORM_N_MAX": str(n_max), "RMSNORM_VECTORS": str(vectors),
                   "RMSNORM_PERIOD": str(PERIOD), "RMSNORM_FIRST_OUT": str(FIRST_OUT)},
    )
    assert sorted(result.passed) == ["rmsnorm_full_rate", "rmsnorm_random_traffic"]
