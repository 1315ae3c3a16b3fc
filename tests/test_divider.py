# amaranth: UnusedElaboratable=no
"""hw/divider.py: SerialDivider and PipelinedDivider against Python's ``//`` and ``%``."""

import itertools
import random
from pathlib import Path

import pytest
from amaranth.hdl import unsigned

from mmfree.hw.divider import PipelinedDivider, SerialDivider
from mmfree.sim.toolchain import amaranth_to_verilog, run_cocotb
from stream_sim import run_stream

TB_DIR = Path(__file__).parent / "tb"


# --- parameters ------------------------------------------------------------------------------

def test_divider_parameters():
    with pytest.raises(TypeError, match="num_width must be a positive integer, not 0"):
        SerialDivider(num_width=0, den_width=4)
    with pytest.raises(TypeError, match="den_width must be a positive integer, not '4'"):
        SerialDivider(num_width=4, den_width="4")
    with pytest.raises(TypeError, match="quot_width must be a positive integer, not -1"):
        PipelinedDivider(num_width=4, den_width=4, quot_width=-1)
    with pytest.raises(ValueError, match=r"quot_width must be at most num_width \(4\), not 5"):
        PipelinedDivider(num_width=4, den_width=4, quot_width=5)
    with pytest.raises(TypeError, match="tag_shape must be None or a shape-castable object, "
                                        "not 'x'"):
        PipelinedDivider(num_width=4, den_width=4, quot_width=4, tag_shape="x")
    d = PipelinedDivider(num_width=8, den_width=5, quot_width=6, tag_shape=unsigned(2))
    assert (d.num_width, d.den_width, d.quot_width, d.tag_shape) == (8, 5, 6, unsigned(2))
    with pytest.raises(AttributeError):
        d.quot_width = 3
    s = SerialDivider(num_width=8, den_width=5)
    assert (s.num_width, s.den_width, s.quotient_width, s.latency) == (8, 5, 8, 9)
    with pytest.raises(ValueError, match="quotient_width must be at most num_width 8, not 9"):
        SerialDivider(num_width=8, den_width=5, quotient_width=9)
    with pytest.raises(TypeError, match="quotient_width must be a positive integer, not 0"):
        SerialDivider(num_width=8, den_width=5, quotient_width=0)
    assert SerialDivider(num_width=8, den_width=5, quotient_width=3).latency == 4
    assert SerialDivider(num_width=8, den_width=5, quotient_width=3, steps=2).latency == 3
    assert SerialDivider(num_width=54, den_width=32, quotient_width=23, steps=2).latency == 13
    with pytest.raises(TypeError, match="steps must be a positive integer, not 0"):
        SerialDivider(num_width=8, den_width=5, steps=0)
    for block, name in [(s, "serial_divider"), (d, "pipelined_divider")]:
        assert "module " + name in amaranth_to_verilog(block, name)


# --- Amaranth simulator ----------------------------------------------------------------------

SERIAL_CONFIGS = [(6, 4), (5, 7)]


@pytest.mark.parametrize("traffic", [(1.0, 0.0), (0.5, 0.3)], ids=["full_rate", "random"])
@pytest.mark.parametrize("steps", [1, 2, 3], ids=lambda k: f"s{k}")
@pytest.mark.parametrize("num_width,den_width", SERIAL_CONFIGS,
                         ids=[f"n{a}_d{b}" for a, b in SERIAL_CONFIGS])
def test_serial_divider_sim_exhaustive(num_width, den_width, steps, traffic):
    """Every (num, den) pair, den = 0 included (quotient all ones, remainder num mod
    2**den_width), one to three quotient bits a cycle (a width that ``steps`` does not divide
    makes more bits than the dividend has); at full rate latency ``ceil(num_width / steps) +
    1`` and one division per latency."""
    ready_probability, gap_probability = traffic
    dut = SerialDivider(num_width=num_width, den_width=den_width, steps=steps)
    pairs = list(itertools.product(range(1 << num_width), range(1 << den_width)))
    random.Random(1).shuffle(pairs)
    words = [{"num": a, "den": b} for a, b in pairs]
    outs, in_cycles, out_cycles = run_stream(dut, words, ready_probability=ready_probability,
                                             gap_probability=gap_probability, seed=2)
    for (a, b), got in zip(pairs, outs):
        want = ((a // b, a % b) if b else
                ((1 << num_width) - 1, a % (1 << den_width)))
        assert (got.quotient, got.remainder) == want, (
            f"n{num_width}_d{den_width} {traffic}: {a} / {b}: got "
            f"({got.quotient}, {got.remainder}), expected {want}")
    assert len(outs) == len(pairs)
    lat = -(-num_width // steps) + 1
    assert dut.latency == lat
    if traffic == (1.0, 0.0):
        assert [o - i for i, o in zip(in_cycles, out_cycles)] == [lat] * len(pairs)
        assert in_cycles == [k * lat for k in range(len(pairs))]


SHORT_CONFIGS = [(7, 4, 3), (8, 3, 5), (6, 6, 1)]


@pytest.mark.parametrize("traffic", [(1.0, 0.0), (0.5, 0.3)], ids=["full_rate", "random"])
@pytest.mark.parametrize("steps", [1, 2, 3], ids=lambda k: f"s{k}")
@pytest.mark.parametrize("num_width,den_width,quotient_width", SHORT_CONFIGS,
                         ids=[f"n{a}_d{b}_q{c}" for a, b, c in SHORT_CONFIGS])
def test_serial_divider_short_quotient_exhaustive(num_width, den_width, quotient_width,
                                                  steps, traffic):
    """``quotient_width`` below ``num_width``: every (num, den) pair with ``num >> k < den``
    (the quotient fits ``k`` bits) divides exactly, one to three quotient bits a cycle, in
    ``ceil(k / steps) + 1`` cycles a division."""
    ready_probability, gap_probability = traffic
    k = quotient_width
    dut = SerialDivider(num_width=num_width, den_width=den_width, quotient_width=k,
                        steps=steps)
    lat = -(-k // steps) + 1
    assert dut.latency == lat
    pairs = [(a, b) for a in range(1 << num_width) for b in range(1, 1 << den_width)
             if a >> k < b]
    assert len(pairs) > 50 and any(a >> k for a, _ in pairs)   # a nonzero start remainder
    random.Random(3).shuffle(pairs)
    outs, in_cycles, out_cycles = run_stream(dut, [{"num": a, "den": b} for a, b in pairs],
                                             ready_probability=ready_probability,
                                             gap_probability=gap_probability, seed=4)
    assert len(outs) == len(pairs)
    for (a, b), got in zip(pairs, outs):
        assert (got.quotient, got.remainder) == (a // b, a % b), (a, b, got)
    if traffic == (1.0, 0.0):
        assert [o - i for i, o in zip(in_cycles, out_cycles)] == [lat] * len(pairs)
        assert in_cycles == [j * lat for j in range(len(pairs))]


PIPE_CONFIGS = [(6, 4, 6), (8, 4, 5), (4, 6, 4)]


@pytest.mark.parametrize("traffic", [(1.0, 0.0), (0.5, 0.3)], ids=["full_rate", "random"])
@pytest.mark.parametrize("steps", [1, 2, 3], ids=["steps1", "steps2", "steps3"])
@pytest.mark.parametrize("num_width,den_width,quot_width", PIPE_CONFIGS,
                         ids=[f"n{a}_d{b}_q{c}" for a, b, c in PIPE_CONFIGS])
def test_pipelined_divider_sim_exhaustive(num_width, den_width, quot_width, steps, traffic):
    """Every (num, den) pair whose quotient fits quot_width bits, den = 0 included, with a tag
    passed through; at full rate latency ``ceil(quot_width / steps)`` and one division per
    cycle."""
    ready_probability, gap_probability = traffic
    dut = PipelinedDivider(num_width=num_width, den_width=den_width, quot_width=quot_width,
                           steps=steps, tag_shape=unsigned(3))
    assert dut.latency == -(-quot_width // steps)
    pairs = [(a, b) for a in range(1 << num_width) for b in range(1 << den_width)
             if b == 0 or a // b < (1 << quot_width)]
    random.Random(1).shuffle(pairs)
    words = [{"num": a, "den": b, "tag": k % 8} for k, (a, b) in enumerate(pairs)]
    outs, in_cycles, out_cycles = run_stream(dut, words, ready_probability=ready_probability,
                                             gap_probability=gap_probability, seed=3)
    for k, ((a, b), got) in enumerate(zip(pairs, outs)):
        want = ((a // b, a % b) if b else
                ((1 << quot_width) - 1, a % (1 << den_width)))
        assert (got.quotient, got.remainder, got.tag) == (*want, k % 8), (
            f"n{num_width}_d{den_width}_q{quot_width} {traffic}: {a} / {b}: got "
            f"({got.quotient}, {got.remainder}, {got.tag}), expected {want}, tag {k % 8}")
    assert len(outs) == len(pairs)
    if traffic == (1.0, 0.0):
        assert in_cycles == list(range(len(pairs)))
        assert out_cycles == [k + dut.latency for k in range(len(pairs))]


# --- Verilator, cocotb -----------------------------------------------------------------------

COCOTB_CONFIGS = [
    ("serial", dict(num_width=16, den_width=9)),
    ("pipelined", dict(num_width=24, den_width=12, quot_width=14)),
]


@pytest.mark.parametrize("kind,params", COCOTB_CONFIGS, ids=[k for k, _ in COCOTB_CONFIGS])
def test_divider_cocotb(kind, params, monkeypatch):
    """Random divisions (den = 0 and extreme values included) in Verilator, with random valid
    gaps and back-pressure and at full rate; full-rate latency and throughput as documented."""
    if kind == "serial":
        block = SerialDivider(**params)
        count = 10000
    else:
        block = PipelinedDivider(**params, tag_shape=unsigned(2))
        count = 12000
    name = f"{kind}_divider"
    result = run_cocotb(
        toplevel=name, verilog=amaranth_to_verilog(block, name), test_module="divider_tb",
        python_path=[TB_DIR], seed=1,
        extra_env={"DIV_KIND": kind, "DIV_PARAMS": repr(params), "DIV_COUNT": str(count)},
    )
    assert sorted(result.passed) == ["divisions_match/traffic=full_rate",
                                     "divisions_match/traffic=random"]
