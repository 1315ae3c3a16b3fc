# amaranth: UnusedElaboratable=no
"""hw/quantizer.py: ActivationQuantizer against golden.activation_quant."""

import random
from pathlib import Path

import numpy as np
import pytest

from mmfree.hw.quantizer import ActivationQuantizer
from mmfree.sim.golden import activation_quant
from mmfree.sim.toolchain import amaranth_to_verilog, run_cocotb
from stream_sim import run_stream

TB_DIR = Path(__file__).parent / "tb"


def make_vectors(n_max, in_width, count, rng):
    """Vectors of lengths 1, n_max and random, with all-zero, extreme, tie and random values."""
    lo, hi = -(1 << (in_width - 1)), (1 << (in_width - 1)) - 1
    vectors = [[0], [lo], [hi], [0] * n_max, [lo] + [hi] * (n_max - 1)]
    ties = [254] + [(2 * j + 1) * (1 if j % 2 else -1) for j in range(127)]  # exact halves
    vectors.append((ties * n_max)[:n_max])
    while len(vectors) < count:
        n = rng.choice([1, n_max, rng.randint(1, n_max)])
        bits = rng.randint(1, in_width)
        mag = 1 << (bits - 1)
        vectors.append([max(lo, min(hi, rng.randint(-mag, mag))) for _ in range(n)])
    return vectors


def elements(vectors):
    return [{"data": v, "first": int(j == 0), "last": int(j == len(vec) - 1)}
            for vec in vectors for j, v in enumerate(vec)]


def expected(vectors):
    out = []
    for vec in vectors:
        q, ymax = activation_quant(np.array(vec, dtype=np.int64))
        out += [(int(x), int(j == 0), int(j == len(vec) - 1), ymax) for j, x in enumerate(q)]
    return out


def test_quantizer_parameters():
    with pytest.raises(ValueError, match="n_max must be a positive integer, not 0"):
        ActivationQuantizer(n_max=0)
    with pytest.raises(ValueError, match="n_max must be a positive integer, not 2.0"):
        ActivationQuantizer(n_max=2.0)
    with pytest.raises(ValueError, match="in_width must be an integer from 2 to 32, not 33"):
        ActivationQuantizer(n_max=4, in_width=33)
    dut = ActivationQuantizer(n_max=64)
    assert (dut.n_max, dut.in_width) == (64, 32)
    with pytest.raises(AttributeError):
        dut.n_max = 3
    assert "module activation_quantizer" in amaranth_to_verilog(dut, "activation_quantizer")


CONFIGS = [(64, 32), (200, 32), (5, 12)]


@pytest.mark.parametrize("traffic", [(1.0, 0.0), (0.6, 0.3)], ids=["full_rate", "random"])
@pytest.mark.parametrize("n_max,in_width", CONFIGS, ids=[f"n{a}_w{b}" for a, b in CONFIGS])
def test_quantizer_sim(n_max, in_width, traffic):
    """Vectors of length 1, n_max and random equal the golden (q, ymax); at full rate the
    latency (last input to first output) is in_width + 29 and a vector of n elements takes
    2 n + in_width + 28 cycles."""
    ready_probability, gap_probability = traffic
    seed = n_max * 1000 + in_width
    rng = random.Random(seed)
    vectors = make_vectors(n_max, in_width, 12, rng)
    words = elements(vectors)
    dut = ActivationQuantizer(n_max=n_max, in_width=in_width)
    outs, in_cycles, out_cycles = run_stream(dut, words, ready_probability=ready_probability,
                                             gap_probability=gap_probability, seed=seed)
    got = [(o.data, o.first, o.last, o.ymax) for o in outs]
    want = expected(vectors)
    for k, (g, e) in enumerate(zip(got, want)):
        assert g == e, f"n_max {n_max} in_width {in_width} seed {seed} {traffic}: " \
                       f"element {k}: got {g}, expected {e}"
    assert len(got) == len(want) == len(words)
    if traffic == (1.0, 0.0):
        start = 0
        for vec in vectors:
            n = len(vec)
            last_in, first_out = in_cycles[start + n - 1], out_cycles[start]
            assert first_out - last_in == in_width + 29, (n_max, in_width, vec[:3])
            assert out_cycles[start:start + n] == list(range(first_out, first_out + n))
            assert in_cycles[start:start + n] == list(range(in_cycles[start],
                                                            in_cycles[start] + n))
            if start + n < len(words):
                assert in_cycles[start + n] - in_cycles[start] == 2 * n + in_width + 28
            start += n


def test_quantizer_sim_overlong_vector():
    """A vector longer than n_max: the first n_max elements come out, scaled by the max over
    all elements, with last on the n_max-th; the next vector is unaffected."""
    dut = ActivationQuantizer(n_max=4, in_width=16)
    long = [10, -20, 30, 5, 1000, 7]
    nxt = [3, -6]
    outs, _, _ = run_stream(dut, elements([long, nxt]), count=6, limit=1000)
    ymax = 1000
    want = [(int(np.sign(v)) * ((254 * abs(v) + ymax) // (2 * ymax)), int(j == 0), int(j == 3),
             ymax) for j, v in enumerate(long[:4])]
    want += expected([nxt])
    got = [(o.data, o.first, o.last, o.ymax) for o in outs]
    assert got == want


@pytest.mark.parametrize("n_max", [64, 200], ids=["n64", "n200"])
def test_quantizer_cocotb(n_max, monkeypatch):
    """>= 10**4 elements per traffic pattern in Verilator, random and full rate."""
    dut = ActivationQuantizer(n_max=n_max)
    result = run_cocotb(
        toplevel="activation_quantizer",
        verilog=amaranth_to_verilog(dut, "activation_quantizer"),
        test_module="quantizer_tb", python_path=[TB_DIR, Path(__file__).parent], seed=1,
        extra_env={"QUANT_N_MAX": str(n_max), "QUANT_IN_WIDTH": "32", "QUANT_SEED": "5",
                   "QUANT_ELEMENTS": "10000"},
    )
    assert sorted(result.passed) == ["vectors_match/traffic=full_rate",
                                     "vectors_match/traffic=random"]
