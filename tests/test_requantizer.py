# amaranth: UnusedElaboratable=no
"""hw/requantizer.py: Requantizer against golden.requantize."""

import random
from pathlib import Path

import numpy as np
import pytest

from mmfree.hw.requantizer import Requantizer
from mmfree.sim.golden import requantize
from mmfree.sim.toolchain import amaranth_to_verilog, run_cocotb
from stream_sim import run_stream

TB_DIR = Path(__file__).parent / "tb"
CONFIGS = [(15, 32), (21, 24)]
IDS = [f"acc{a}_out{b}" for a, b in CONFIGS]


def make_words(acc_width, count, rng):
    """Random elements: accumulators at and near the extremes and random, ymax of every bit
    length (23-bit rounding carries included), m from 1 to 2**15 - 1, k small (saturation up)
    to large (tiny outputs), always with k - s >= 1; vectors of 1 to 40 elements."""
    lo, hi = -(1 << (acc_width - 1)), (1 << (acc_width - 1)) - 1
    words = []
    while len(words) < count:
        n = rng.randint(1, 40)
        bits = rng.randint(0, 32)
        ymax = rng.choice([rng.randrange(1 << bits) if bits else 0, (1 << bits) - 1,
                           (1 << 32) - 1 if bits > 24 else 0, 1 << max(0, bits - 1)])
        s = max(0, ymax.bit_length() - 23)
        m = rng.choice([rng.randrange(1 << 14, 1 << 15), rng.randrange(1, 1 << 15),
                        (1 << 15) - 1, 1])
        k = rng.choice([s + 1, s + rng.randint(1, 8), rng.randint(s + 1, 63), 63])
        for j in range(n):
            acc = rng.choice([lo, hi, rng.randint(lo, hi), rng.randint(-3, 3)])
            words.append({"acc": acc, "ymax": ymax, "m": m, "k": k,
                          "first": int(j == 0), "last": int(j == n - 1)})
    return words


def golden(word, bits):
    return int(requantize(np.array([word["acc"]]), word["ymax"], word["m"], word["k"],
                          bits)[0])


def test_requantizer_parameters():
    with pytest.raises(ValueError, match="acc_width must be an integer from 2 to 32, not 1"):
        Requantizer(acc_width=1, out_bits=8)
    with pytest.raises(ValueError, match="out_bits must be an integer from 2 to 64, not 65"):
        Requantizer(acc_width=8, out_bits=65)
    with pytest.raises(ValueError, match="out_bits must be an integer from 2 to 64, not '8'"):
        Requantizer(acc_width=8, out_bits="8")
    dut = Requantizer(acc_width=21, out_bits=24)
    assert (dut.acc_width, dut.out_bits) == (21, 24)
    with pytest.raises(AttributeError):
        dut.out_bits = 3
    assert "module requantizer" in amaranth_to_verilog(dut, "requantizer")


@pytest.mark.parametrize("traffic", [(1.0, 0.0), (0.5, 0.3)], ids=["full_rate", "random"])
@pytest.mark.parametrize("acc_width,out_bits", CONFIGS, ids=IDS)
def test_requantizer_sim(acc_width, out_bits, traffic):
    """Random elements equal the golden; at full rate latency 7 and one element per cycle."""
    ready_probability, gap_probability = traffic
    seed = acc_width * 100 + out_bits
    words = make_words(acc_width, 1500, random.Random(seed))
    dut = Requantizer(acc_width=acc_width, out_bits=out_bits)
    outs, in_cycles, out_cycles = run_stream(dut, words, ready_probability=ready_probability,
                                             gap_probability=gap_probability, seed=seed)
    saturated = [0, 0]
    for k, (word, got) in enumerate(zip(words, outs)):
        want = golden(word, out_bits)
        saturated[0] += want == (1 << (out_bits - 1)) - 1
        saturated[1] += want == -(1 << (out_bits - 1))
        assert (got.data, got.first, got.last) == (want, word["first"], word["last"]), (
            f"acc_width {acc_width} out_bits {out_bits} seed {seed} {traffic}: element {k} "
            f"{word}: got {got.data}, expected {want}")
    assert len(outs) == len(words)
    assert min(saturated) > 10, saturated   # saturation both ways was exercised
    if traffic == (1.0, 0.0):
        assert in_cycles == list(range(len(words)))
        assert out_cycles == [c + Requantizer.LATENCY for c in in_cycles]


@pytest.mark.parametrize("traffic", [(1.0, 0.0), (0.5, 0.3)], ids=["full_rate", "random"])
def test_requantizer_pairs_sim(traffic):
    """With ``pairs``, ``acc2`` goes out as ``data2`` with the same scale: both equal the
    golden, with the same latency and flags."""
    ready_probability, gap_probability = traffic
    acc_width, out_bits = 21, 24
    rng = random.Random(17)
    words = make_words(acc_width, 800, rng)
    lo, hi = -(1 << (acc_width - 1)), (1 << (acc_width - 1)) - 1
    for word in words:
        word["acc2"] = rng.choice([lo, hi, rng.randint(lo, hi), rng.randint(-3, 3)])
    dut = Requantizer(acc_width=acc_width, out_bits=out_bits, pairs=True)
    assert dut.pairs
    outs, in_cycles, out_cycles = run_stream(dut, words, ready_probability=ready_probability,
                                             gap_probability=gap_probability, seed=17)
    assert len(outs) == len(words)
    for k, (word, got) in enumerate(zip(words, outs)):
        want = (golden(word, out_bits), golden(dict(word, acc=word["acc2"]), out_bits))
        assert (got.data, got.data2, got.first, got.last) == \
            (*want, word["first"], word["last"]), f"element {k} {word}"
    if traffic == (1.0, 0.0):
        assert out_cycles == [c + Requantizer.LATENCY for c in in_cycles]


@pytest.mark.parametrize("acc_width,out_bits", CONFIGS, ids=IDS)
def test_requantizer_cocotb(acc_width, out_bits, monkeypatch):
    """>= 10**4 random elements per traffic pattern in Verilator, random and full rate."""
    dut = Requantizer(acc_width=acc_width, out_bits=out_bits)
    result = run_cocotb(
        toplevel="requantizer", verilog=amaranth_to_verilog(dut, "requantizer"),
        test_module="requantizer_tb", python_path=[TB_DIR, Path(__file__).parent], seed=1,
        extra_env={"REQ_ACC_WIDTH": str(acc_width), "REQ_OUT_BITS": str(out_bits),
                   "REQ_SEED": "11", "REQ_ELEMENTS": "10000"},
    )
    assert sorted(result.passed) == ["elements_match/traffic=full_rate",
                                     "elements_match/traffic=random"]
