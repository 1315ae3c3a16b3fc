# amaranth: UnusedElaboratable=no
"""hw/shiftmax.py (Shiftmax, ShiftExp, Reciprocal31) against the golden I-ViT Shiftmax:
Amaranth simulation, then Verilator through cocotb (tests/tb/shiftmax_tb.py)."""

import math
import random
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from mmfree.hw.shiftgelu import ShiftGELU
from mmfree.hw.shiftmax import Reciprocal31, ShiftExp, Shiftmax
from mmfree.sim.golden import GELU_ALPHA, INT31_MAX, _shiftmax_x0, shift_exp, shiftgelu
from mmfree.sim.toolchain import amaranth_to_verilog, run_cocotb

TB_DIR = Path(__file__).parent / "tb"
X0_VALUES = [-1, -12, -256, -1000, -65535]

# (n_max, in_width, out_bits, n)
CONFIGS = [(16, 8, 8, 15), (64, 16, 12, 15)]
CONFIG_IDS = ["n16-w8-o8", "n64-w16-o12"]


def simulate_vectors(dut, vectors, *, const_ports=(), gap=0.0, ready=1.0, seed=0,
                     out_fields=("data", "first", "last"), max_cycles=10**7):
    """Drive ``vectors`` (lists of ints) into ``dut.inp`` ({data, first, last}) and collect
    ``dut.out`` payloads per transfer, in the Amaranth simulator, with random input gaps and
    output back-pressure. ``const_ports`` is a list, per vector, of (port, value) pairs held while
    the vector is sent. Returns (outputs as dicts, log of (cycle, "in"/"out", last))."""
    rng = random.Random(seed)
    items = [(x, i == 0, i == len(v) - 1, k) for k, v in enumerate(vectors)
             for i, x in enumerate(v)]
    outputs, log = [], []

    async def testbench(ctx):
        sent = cycle = 0
        expected_out = None
        want = None
        while True:
            if sent < len(items) and (want is not None or rng.random() >= gap):
                x, first, last, k = items[sent]
                want = k
                for port, value in (const_ports[k] if const_ports else ()):
                    ctx.set(port, value)
                ctx.set(dut.inp.valid, 1)
                ctx.set(dut.inp.payload, {"data": x, "first": first, "last": last})
            else:
                ctx.set(dut.inp.valid, 0)
            take = rng.random() < ready
            ctx.set(dut.out.ready, take)
            if ctx.get(dut.out.valid):
                payload = ctx.get(dut.out.payload)
                word = {f: int(getattr(payload, f)) for f in out_fields}
                assert expected_out in (None, word), f"payload changed while valid: {word}"
                expected_out = None if take else word
                if take:
                    outputs.append(word)
                    log.append((cycle, "out", word.get("last", 1)))
            else:
                assert expected_out is None, "valid dropped before the transfer"
            if ctx.get(dut.inp.valid) and ctx.get(dut.inp.ready):
                log.append((cycle, "in", items[sent][2]))
                sent += 1
                want = None
            await ctx.tick()
            cycle += 1
            assert cycle < max_cycles, "timeout"
            if sent == len(items) and done(outputs):
                return

    def done(outs):
        if "last" in out_fields:
            return sum(w["last"] for w in outs) == len(vectors)
        return len(outs) == len(vectors)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return outputs, log


def random_rows(rng, count, n_max, in_width, n):
    lo, hi = -(1 << (in_width - 1)), (1 << (in_width - 1)) - 1
    rows, x0s = [], []
    for index in range(count):
        length = rng.randint(1, n_max)
        if index % 3 == 0:
            base = rng.randint(lo + 32, hi)
            rows.append([rng.randint(base - 32, base) for _ in range(length)])
        else:
            rows.append([rng.randint(lo, hi) for _ in range(length)])
        x0s.append(X0_VALUES[index % 4] if index % 5 else -rng.randint(1, (1 << (31 - n)) - 1))
    return rows, x0s


# --- Parameters --------------------------------------------------------------------------------

def test_parameters():
    dut = Shiftmax(n_max=16, in_width=8)
    assert (dut.n_max, dut.in_width, dut.out_bits, dut.n) == (16, 8, 8, 15)
    with pytest.raises(AttributeError):
        dut.n_max = 3
    Fragment.get(dut, None)                  # elaborates (and marks used) what was built
    with pytest.raises(ValueError, match="n_max must be at least 1, not 0"):
        Shiftmax(n_max=0, in_width=8)
    with pytest.raises(TypeError, match="n_max must be an integer, not 2.5"):
        Shiftmax(n_max=2.5, in_width=8)
    with pytest.raises(ValueError, match="in_width must be in 2..32, not 33"):
        Shiftmax(n_max=4, in_width=33)
    with pytest.raises(ValueError, match="out_bits must be in 2..24, not 25"):
        Shiftmax(n_max=4, in_width=8, out_bits=25)
    with pytest.raises(ValueError, match="n must be in 1..30, not 0"):
        Shiftmax(n_max=4, in_width=8, n=0)
    with pytest.raises(ValueError, match="den_min_log2 must be in 0..30, not 31"):
        Reciprocal31(den_min_log2=31)
    with pytest.raises(TypeError, match="in_width must be an integer, not '8'"):
        ShiftExp(in_width="8", n=15)
    with pytest.raises(ValueError, match="stages must be at least 0, not -1"):
        ShiftExp(in_width=8, n=15, stages=-1)


# --- Amaranth simulator ------------------------------------------------------------------------

@pytest.mark.parametrize("stages", [0, 3, 10], ids=["comb", "s3", "s10"])
@pytest.mark.parametrize("n", [15, 23])
def test_shift_exp_exhaustive(n, stages):
    """ShiftExp equals golden.shift_exp for every x in -2**12..0 at several x0: combinational,
    and pipelined (more stages than steps too) with ``en`` low in random cycles, the output
    checked in every cycle against the input ``stages`` enabled cycles before."""
    dut = ShiftExp(in_width=14, n=n, stages=stages)
    assert dut.latency == stages
    xs = np.arange(-(1 << 12), 1)
    x0s = [x0 for x0 in [-1, -2, -3, -12, -100, -256, -1000] if -x0 < 1 << (31 - n)]
    x0s.append(-(1 << (31 - n)) + 1)
    rng = random.Random(n)

    async def testbench(ctx):
        for x0 in x0s:
            expected = shift_exp(xs, x0, n).tolist()
            ctx.set(dut.x0, x0)
            if not stages:
                for x, e in zip(xs.tolist(), expected):
                    ctx.set(dut.x, x)
                    got = ctx.get(dut.e)
                    assert got == e, f"n={n} x0={x0} x={x}: got {got}, expected {e}"
                continue
            ctx.set(dut.en, 0)
            await ctx.tick()                   # |x0| and n |x0| are registered
            enabled = 0                        # enabled cycles so far
            while enabled < len(xs) + stages - 1:
                en = rng.random() < 0.75
                ctx.set(dut.en, en)
                ctx.set(dut.x, int(xs[min(enabled, len(xs) - 1)]))
                await ctx.tick()
                enabled += en
                if enabled >= stages:
                    index = enabled - stages
                    got = ctx.get(dut.e)
                    assert got == expected[index], (
                        f"n={n} stages={stages} x0={x0} x={xs[index]}: got {got}, "
                        f"expected {expected[index]}")

    sim = Simulator(dut)
    if stages:
        sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()


@pytest.mark.parametrize("den_min_log2", [0, 15])
def test_reciprocal(den_min_log2):
    dut = Reciprocal31(den_min_log2=den_min_log2)
    rng = random.Random(den_min_log2)
    dens = [1 << den_min_log2, INT31_MAX, (1 << den_min_log2) + 1]
    dens += [rng.randint(1 << den_min_log2, INT31_MAX) for _ in range(30)]

    async def testbench(ctx):
        for den in dens:
            ctx.set(dut.den, den)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles = 1
            while ctx.get(dut.busy):
                await ctx.tick()
                cycles += 1
            assert cycles == dut.steps + 1
            assert ctx.get(dut.quotient) == INT31_MAX // den, (den_min_log2, den)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()


@pytest.mark.parametrize("traffic", [(0.0, 1.0), (0.3, 0.5)], ids=["full", "random"])
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_shiftmax_sim(config, traffic):
    n_max, in_width, out_bits, n = config
    gap, ready = traffic
    seed = 7
    rng = random.Random(seed)
    rows, x0s = random_rows(rng, 60, n_max, in_width, n)
    rows[0] = [0] * n_max                      # a full row, all equal
    dut = Shiftmax(n_max=n_max, in_width=in_width, out_bits=out_bits, n=n)
    outputs, log = simulate_vectors(dut, rows, const_ports=[[(dut.x0, x0)] for x0 in x0s],
                                    gap=gap, ready=ready, seed=seed)
    position = 0
    for index, (row, x0) in enumerate(zip(rows, x0s)):
        expected = _shiftmax_x0(np.array(row), x0, n, out_bits).tolist()
        got = outputs[position:position + len(row)]
        position += len(row)
        assert [w["data"] for w in got] == expected, (config, traffic, seed, index, row, x0)
        assert [w["first"] for w in got] == [1] + [0] * (len(row) - 1)
        assert [w["last"] for w in got] == [0] * (len(row) - 1) + [1]
    assert position == len(outputs)
    if gap == 0.0 and ready == 1.0:
        last_in = [c for c, kind, last in log if kind == "in" and last]
        first_in = [c for i, (c, kind, _) in enumerate(log)
                    if kind == "in" and (i == 0 or log[i - 1][1] == "out")]
        first_out = [c for i, (c, kind, _) in enumerate(log)
                     if kind == "out" and log[i - 1][1] == "in"]
        for index, row in enumerate(rows):
            assert first_out[index] - last_in[index] == len(row) + 47 - n, (config, index)
            if index + 1 < len(rows):
                assert first_in[index + 1] - first_in[index] == 3 * len(row) + 46 - n


# --- Verilog, Verilator, cocotb ----------------------------------------------------------------

def _run_cocotb(config, rows):
    n_max, in_width, out_bits, n = config
    dut = Shiftmax(n_max=n_max, in_width=in_width, out_bits=out_bits, n=n)
    result = run_cocotb(
        toplevel="shiftmax", verilog=amaranth_to_verilog(dut, "shiftmax"),
        test_module="shiftmax_tb", python_path=[TB_DIR], seed=1,
        extra_env={"SHIFTMAX_BLOCK": "shiftmax", "SHIFTMAX_CONFIG": ",".join(map(str, config)),
                   "SHIFTMAX_ROWS": str(rows), "SHIFTMAX_SEED": "11"},
    )
    assert sorted(result.passed) == ["rows_match_golden/traffic=full",
                                     "rows_match_golden/traffic=random"]


@pytest.mark.parametrize("config, rows", [(CONFIGS[0], 1500), (CONFIGS[1], 300)], ids=CONFIG_IDS)
def test_shiftmax_cocotb(config, rows):
    """Random rows (per traffic pattern) against the golden Shiftmax on Verilator, with random
    gaps/back-pressure and at full rate (latency and throughput checked there)."""
    _run_cocotb(config, rows)


@pytest.mark.slow
def test_shiftmax_cocotb_10k_rows():
    """10,000 random rows per traffic pattern at n_max = 16 (several minutes)."""
    _run_cocotb(CONFIGS[0], 10_000)


# --- ShiftGELU (hw/shiftgelu.py) ---------------------------------------------------------------

GELU_CONFIGS = [(16, 8, 8), (5, 8, 12)]     # (n_max, in_width, out_bits)
GELU_IDS = ["n16-w8-o8", "n5-w8-o12"]


def test_shiftgelu_parameters():
    dut = ShiftGELU(n_max=8, in_width=8)
    assert (dut.n_max, dut.in_width, dut.out_bits) == (8, 8, 8)
    assert len(dut.out.payload.data) == 16
    Fragment.get(dut, None)
    with pytest.raises(ValueError, match="n_max must be at least 1, not -1"):
        ShiftGELU(n_max=-1, in_width=8)
    with pytest.raises(ValueError, match="out_bits must be in 2..24, not 1"):
        ShiftGELU(n_max=4, in_width=8, out_bits=1)


@pytest.mark.parametrize("traffic", [(0.0, 1.0), (0.3, 0.5)], ids=["full", "random"])
@pytest.mark.parametrize("config", GELU_CONFIGS, ids=GELU_IDS)
def test_shiftgelu_sim(config, traffic):
    """Random int8 rows at scales 0.05 (x0 = -12), 0.1 and 0.02 against golden.shiftgelu;
    latency 36 cycles and 35 cycles per element at full rate."""
    n_max, in_width, out_bits = config
    gap, ready = traffic
    seed = 3
    rng = random.Random(seed)
    scales = [0.05, 0.05, 0.1, 0.02]
    rows, row_scales = [[-128] * n_max, [127] * n_max, [0]], [0.05, 0.05, 0.05]
    for index in range(30):
        rows.append([rng.randint(-128, 127) for _ in range(rng.randint(1, n_max))])
        row_scales.append(scales[index % len(scales)])
    dut = ShiftGELU(n_max=n_max, in_width=in_width, out_bits=out_bits)
    x0s = [math.floor(-1.0 / (GELU_ALPHA * scale)) for scale in row_scales]
    outputs, log = simulate_vectors(dut, rows, const_ports=[[(dut.x0, x0)] for x0 in x0s],
                                    gap=gap, ready=ready, seed=seed)
    position = 0
    for index, (row, scale) in enumerate(zip(rows, row_scales)):
        expected = shiftgelu(np.array(row), scale, out_bits)[0].tolist()
        got = outputs[position:position + len(row)]
        position += len(row)
        assert [w["data"] for w in got] == expected, (config, traffic, seed, index, row, scale)
        assert [w["first"] for w in got] == [1] + [0] * (len(row) - 1)
        assert [w["last"] for w in got] == [0] * (len(row) - 1) + [1]
    assert position == len(outputs)
    if gap == 0.0 and ready == 1.0:
        outs = [c for c, kind, _ in log if kind == "out"]
        ins = [c for c, kind, _ in log if kind == "in"]
        last_in = [c for c, kind, last in log if kind == "in" and last]
        position = 0
        for index, row in enumerate(rows):
            first_in = ins[position]
            row_outs = outs[position:position + len(row)]
            position += len(row)
            assert row_outs[0] - last_in[index] == 36, (config, index)
            assert [b - a for a, b in zip(row_outs, row_outs[1:])] == [35] * (len(row) - 1)
            if index + 1 < len(rows):
                assert ins[position] - first_in == 36 * len(row) + 1, (config, index)


def test_shiftgelu_cocotb():
    """600 random int8 rows of up to 16 elements (about 5,000 elements) per traffic pattern
    against golden.shiftgelu on Verilator; latency and throughput checked at full rate."""
    n_max, in_width, out_bits = GELU_CONFIGS[0]
    dut = ShiftGELU(n_max=n_max, in_width=in_width, out_bits=out_bits)
    result = run_cocotb(
        toplevel="shiftgelu", verilog=amaranth_to_verilog(dut, "shiftgelu"),
        test_module="shiftmax_tb", python_path=[TB_DIR], seed=1,
        extra_env={"SHIFTMAX_BLOCK": "shiftgelu",
                   "SHIFTMAX_CONFIG": f"{n_max},{in_width},{out_bits},0",
                   "SHIFTMAX_ROWS": "600", "SHIFTMAX_SEED": "5"},
    )
    assert sorted(result.passed) == ["gelu_rows_match_golden/traffic=full",
                                     "gelu_rows_match_golden/traffic=random"]
