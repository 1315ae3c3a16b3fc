# amaranth: UnusedElaboratable=no
"""hw/sigmoid.py (ExpCore; Sigmoid in modes sigmoid, SiLU, GELU) against the golden model:
Amaranth simulation (random traffic, per-vector frac, latency) and cocotb on Verilator
(exhaustive over int16 at frac 12, random 32-bit at frac 20 and 27, full rate and random
gaps/back-pressure; measured latency and throughput)."""

import random
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from mmfree.hw.sigmoid import ExpCore, Sigmoid
from mmfree.sim import golden
from mmfree.sim.toolchain import amaranth_to_verilog, run_cocotb

TB_DIR = Path(__file__).parent / "tb"
MODES = ["sigmoid", "silu", "gelu"]


def reference(mode, x, frac):
    x = np.asarray(x, dtype=np.int64)
    if mode == "sigmoid":
        return golden.sigmoid(x, frac)
    return getattr(golden, mode)(x, frac)


def random_inputs(rng, n):
    """A mix of small values (where the curve bends) and full-range 32-bit values."""
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:
            out.append(rng.randint(-(1 << 16), 1 << 16))
        elif kind < 0.9:
            out.append(rng.randint(-(1 << 31), (1 << 31) - 1))
        else:
            out.append(rng.choice([0, 1, -1, (1 << 31) - 1, -(1 << 31)]))
    return out


def stream_through(dut, words, *, gap, ready_p, seed, out_field, extra=None):
    """Drive ``words`` (dicts of payload fields plus optional port values under "ports") into
    ``dut.inp`` and collect ``dut.out`` payloads, with random valid gaps and back-pressure;
    checks the output stream rules. Returns (outputs, cycle of the first output valid,
    total cycles until the last output transferred)."""
    rng = random.Random(seed)
    outputs = []
    result = {}

    async def testbench(ctx):
        index = 0
        held = None
        cycle = 0
        first_valid = None
        while len(outputs) < len(words):
            if index < len(words) and rng.random() >= gap:
                word = words[index]
                ctx.set(dut.inp.valid, 1)
                for name, value in word["payload"].items():
                    ctx.set(getattr(dut.inp.payload, name), value)
                for port, value in word.get("ports", {}).items():
                    ctx.set(getattr(dut, port), value)
            else:
                ctx.set(dut.inp.valid, 0)
            ready = rng.random() < ready_p
            ctx.set(dut.out.ready, ready)
            in_xfer = ctx.get(dut.inp.valid) and ctx.get(dut.inp.ready)
            valid = ctx.get(dut.out.valid)
            if held is not None:
                assert valid, f"seed {seed}: out.valid dropped before the transfer"
                assert ctx.get(dut.out.payload) == held, f"seed {seed}: payload changed"
            if valid:
                if first_valid is None:
                    first_valid = cycle
                payload = ctx.get(dut.out.payload)
                if ready:
                    outputs.append({name: ctx.get(getattr(dut.out.payload, name))
                                    for name in out_field})
                    held = None
                else:
                    held = payload
            if in_xfer:
                index += 1
            await ctx.tick()
            cycle += 1
            assert cycle < 50 * len(words) + 1000, f"seed {seed}: stuck"
        result["first_valid"] = first_valid
        result["cycles"] = cycle

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return outputs, result["first_valid"], result["cycles"]


# --- Parameters ------------------------------------------------------------------------------

def test_parameters():
    with pytest.raises(ValueError, match="mode must be one of 'sigmoid', 'silu', 'gelu', "
                                         "not 'tanh'"):
        Sigmoid(mode="tanh")
    with pytest.raises(ValueError, match=r"m must be an integer in 1 \.\. 2\*\*24 - 1, not 0"):
        ExpCore(m=0, k=23)
    with pytest.raises(ValueError, match=r"m must be an integer in 1 \.\. 2\*\*24 - 1, "
                                         r"not 16777216"):
        ExpCore(m=1 << 24, k=23)
    with pytest.raises(ValueError, match=r"k must be an integer in 17 \.\. 40, not 16"):
        ExpCore(m=3, k=16)
    with pytest.raises(TypeError, match="tag_shape must be None or a shape-castable object, "
                                        "not 'x'"):
        ExpCore(m=3, k=23, tag_shape="x")
    for steps in (0, 22, True, 1.5):
        with pytest.raises(ValueError, match=f"steps must be an integer from 1 to 21, "
                                             f"not {steps!r}"):
            Sigmoid(steps=steps)
    blocks = [Sigmoid(mode=mode) for mode in MODES]
    assert [(b.mode, b.latency, b.out_width) for b in blocks] == [
        ("sigmoid", 32, 22), ("silu", 35, 32), ("gelu", 35, 32)]
    fast = [Sigmoid(mode=mode, steps=2) for mode in MODES]
    assert [(b.steps, b.latency) for b in fast] == [(2, 22), (2, 25), (2, 25)]
    blocks += fast
    core = ExpCore(m=golden.LOG2E[0], k=golden.LOG2E[1])
    assert (core.m, core.k, core.tag_shape) == (*golden.LOG2E, None)
    for block in [*blocks, core]:
        Fragment.get(block, None)       # elaborated, so not reported as unused


@pytest.mark.parametrize("mode", MODES)
def test_verilog_elaborates(mode):
    text = amaranth_to_verilog(Sigmoid(mode=mode), f"sigmoid_{mode}")
    for port in ["frac", "inp__payload", "inp__valid", "inp__ready", "out__payload"]:
        assert f" {port};" in text, port
    amaranth_to_verilog(ExpCore(m=golden.GELU_LOG2E[0], k=golden.GELU_LOG2E[1]), "exp_core")


# --- Amaranth simulator ----------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [golden.LOG2E, golden.GELU_LOG2E, (12345678, 40), (1, 17)],
                         ids=["log2e", "gelu", "k40", "m1"])
def test_exp_core_sim(alpha):
    seed = alpha[0] ^ alpha[1]
    rng = random.Random(seed)
    dut = ExpCore(m=alpha[0], k=alpha[1], tag_shape=8)
    words, expected = [], []
    for i in range(300):
        mag = random_inputs(rng, 1)[0]
        mag = min(abs(mag), 1 << 31)
        frac = rng.randrange(32)
        words.append({"payload": {"mag": mag, "frac": frac, "tag": i & 255}})
        expected.append((int(golden.exp_core(np.array([-mag]), frac, *alpha)[0]), i & 255))
    got, first_valid, cycles = stream_through(dut, words, gap=0.3, ready_p=0.6, seed=seed,
                                              out_field=["e", "tag"])
    for i, (word, exp, out) in enumerate(zip(words, expected, got)):
        assert (out["e"], out["tag"]) == exp, f"alpha {alpha}, seed {seed}, word {i} {word}"
    assert len(got) == len(words)


@pytest.mark.parametrize("steps", [1, 2], ids=["steps1", "steps2"])
@pytest.mark.parametrize("mode", MODES)
def test_sigmoid_sim(mode, steps):
    """Random traffic, vectors of random length, frac sampled with each vector's first
    element (the port holds garbage during the other elements); the divider one or two
    quotient bits a stage."""
    seed = MODES.index(mode) + 10
    rng = random.Random(seed)
    dut = Sigmoid(mode=mode, steps=steps)
    words, expected = [], []
    while len(words) < 400:
        length = rng.randint(1, 9)
        frac = rng.randrange(32)
        xs = random_inputs(rng, length)
        ref = reference(mode, xs, frac)
        for i, x in enumerate(xs):
            words.append({"payload": {"data": x, "first": i == 0, "last": i == length - 1},
                          "ports": {"frac": frac if i == 0 else rng.randrange(32)}})
            expected.append((int(ref[i]), i == 0, i == length - 1, frac))
    got, _, _ = stream_through(dut, words, gap=0.3, ready_p=0.6, seed=seed,
                               out_field=["data", "first", "last"])
    assert len(got) == len(words)
    for i, (word, exp, out) in enumerate(zip(words, expected, got)):
        assert (out["data"], out["first"], out["last"]) == exp[:3], (
            f"mode {mode}, seed {seed}, element {i}: x {word['payload']['data']}, "
            f"frac {exp[3]}")


@pytest.mark.parametrize("steps", [1, 2], ids=["steps1", "steps2"])
@pytest.mark.parametrize("mode", MODES)
def test_sigmoid_sim_latency(mode, steps):
    """Full rate: the first output is valid `latency` cycles after the first input transfer
    (cycle 0) and n elements take n + latency cycles (1 element/cycle)."""
    dut = Sigmoid(mode=mode, steps=steps)
    rng = random.Random(3)
    xs = random_inputs(rng, 64)
    words = [{"payload": {"data": x, "first": i == 0, "last": i == 63}, "ports": {"frac": 12}}
             for i, x in enumerate(xs)]
    got, first_valid, cycles = stream_through(dut, words, gap=0.0, ready_p=1.0, seed=3,
                                              out_field=["data"])
    assert [g["data"] for g in got] == [int(v) for v in reference(mode, xs, 12)]
    assert first_valid == dut.latency
    assert cycles == dut.latency + len(xs)


# --- cocotb on Verilator ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES, ids=MODES)
def test_sigmoid_cocotb(mode):
    """Every int16 input at frac 12 at full rate (latency and throughput measured), 10**4
    random 32-bit inputs each at frac 20 and 27 at full rate, and a shorter run with random
    valid gaps and back-pressure; exact equality with the golden model."""
    dut = Sigmoid(mode=mode)
    result = run_cocotb(
        toplevel=f"sigmoid_{mode}", verilog=amaranth_to_verilog(dut, f"sigmoid_{mode}"),
        test_module="sigmoid_tb", python_path=[TB_DIR], seed=1,
        extra_env={"SIGMOID_MODE": mode, "SIGMOID_SEED": "1",
                   "SIGMOID_LATENCY": str(dut.latency), "SIGMOID_OUT_WIDTH": str(dut.out_width)},
    )
    assert sorted(result.passed) == ["exhaustive_int16_full_rate", "random_int32_full_rate",
                                     "random_traffic"]
