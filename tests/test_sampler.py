# amaranth: UnusedElaboratable=no
"""hw/sampler.py (Sampler) against golden.argmax / golden.sample with the PRNG sequence of
mmfree.sim.decoding.generate: Amaranth simulation, then Verilator through cocotb."""

import random
import sys
from pathlib import Path

import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from mmfree.hw.sampler import Sampler
from mmfree.sim.toolchain import amaranth_to_verilog, run_cocotb

TB_DIR = Path(__file__).parent / "tb"
sys.path.insert(0, str(TB_DIR))
from sampler_tb import golden_tokens, random_vectors  # noqa: E402

SEEDS = [0, 1, 0xDEAD_BEEF, 0xFFFF_FFFF]
CONFIGS = [(16, 24), (37, 24)]
CONFIG_IDS = ["v16-w24", "v37-w24"]


def test_parameters():
    dut = Sampler(vocab=16)
    assert (dut.vocab, dut.logit_width) == (16, 24)
    assert len(dut.token.payload) == 4
    dut17 = Sampler(vocab=17)
    assert len(dut17.token.payload) == 5
    for used in (dut, dut17):
        Fragment.get(used, None)             # elaborates (and marks used) what was built
    with pytest.raises(AttributeError):
        dut.vocab = 3
    with pytest.raises(ValueError, match="vocab must be at least 2, not 1"):
        Sampler(vocab=1)
    with pytest.raises(TypeError, match="vocab must be an integer, not '16'"):
        Sampler(vocab="16")
    with pytest.raises(ValueError, match="logit_width must be in 2..32, not 40"):
        Sampler(vocab=16, logit_width=40)


def simulate(dut, groups, *, gap, ready, rng):
    """``groups``: [(seed, [(logits, x0), ...]), ...]; load each seed, run its vectors.
    Returns the tokens per group and (last logit cycle, token valid cycle, next first logit
    cycle) per vector."""
    vocab = dut.vocab
    tokens, timing = [], []

    async def testbench(ctx):
        cycle = 0
        for seed, vectors in groups:
            ctx.set(dut.seed, seed)
            ctx.set(dut.load, 1)
            await ctx.tick()
            cycle += 1
            ctx.set(dut.load, 0)
            got = []
            items = [(x, i == 0, i == vocab - 1, x0) for logits, x0 in vectors
                     for i, x in enumerate(logits)]
            sent, holding, pending, last_cycle, valid_cycle = 0, False, None, None, None
            while len(got) < len(vectors):
                if sent < len(items) and (holding or rng.random() >= gap):
                    x, first, last, x0 = items[sent]
                    holding = True
                    ctx.set(dut.x0, x0)
                    ctx.set(dut.logits.valid, 1)
                    ctx.set(dut.logits.payload, {"data": x, "first": first, "last": last})
                else:
                    ctx.set(dut.logits.valid, 0)
                take = rng.random() < ready
                ctx.set(dut.token.ready, take)
                if ctx.get(dut.token.valid):
                    token = ctx.get(dut.token.payload)
                    assert pending in (None, token), "token changed while valid"
                    if valid_cycle is None:
                        valid_cycle = cycle
                    pending = None if take else token
                    if take:
                        got.append(token)
                        timing.append([last_cycle, valid_cycle, None])
                        valid_cycle = None
                else:
                    assert pending is None, "token valid dropped before the transfer"
                if ctx.get(dut.logits.valid) and ctx.get(dut.logits.ready):
                    if items[sent][1] and timing and timing[-1][2] is None:
                        timing[-1][2] = cycle
                    if items[sent][2]:
                        last_cycle = cycle
                    sent += 1
                    holding = False
                await ctx.tick()
                cycle += 1
            tokens.append(got)
            timing[-1][2] = -1                 # the next group starts after a PRNG load

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return tokens, timing


@pytest.mark.parametrize("traffic", [(0.0, 1.0), (0.3, 0.5)], ids=["full", "random"])
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_sampler_sim(config, traffic):
    vocab, logit_width = config
    gap, ready = traffic
    rng = random.Random(5)
    groups = [(seed, random_vectors(rng, 24, vocab, logit_width)) for seed in SEEDS]
    dut = Sampler(vocab=vocab, logit_width=logit_width)
    tokens, timing = simulate(dut, groups, gap=gap, ready=ready, rng=rng)
    flat = []
    for (seed, vectors), got in zip(groups, tokens):
        expected = golden_tokens(vectors, seed)
        assert got == expected, (config, traffic, f"seed {seed:#x}", got, expected)
        flat += [(x0, t) for (_, x0), t in zip(vectors, expected)]
    assert len(timing) == len(flat) == 24 * len(SEEDS)
    if traffic == (0.0, 1.0):
        for (x0, token), (last_in, valid, next_first) in zip(flat, timing):
            latency = valid - last_in
            assert latency == (1 if x0 == 0 else 2 * vocab + 36 + token), (x0, token, latency)
            if next_first >= 0:
                period = next_first - (last_in - (vocab - 1))
                assert period == (vocab + 1 if x0 == 0 else 3 * vocab + 36 + token), (
                    x0, token, period)


@pytest.mark.parametrize("config, vectors", [
    (CONFIGS[0], 500), (CONFIGS[1], 250),
    # 1250 vectors x 4 seeds x 2 traffic patterns: the 10**4 vectors for this block.
    pytest.param(CONFIGS[0], 1250, marks=pytest.mark.slow),
], ids=[*CONFIG_IDS, f"{CONFIG_IDS[0]}-10k"])
def test_sampler_cocotb(config, vectors):
    """Random logit vectors (per seed and traffic pattern; 4 seeds) against the golden token
    sequence on Verilator, with random gaps/back-pressure and at full rate (latency checked)."""
    vocab, logit_width = config
    dut = Sampler(vocab=vocab, logit_width=logit_width)
    result = run_cocotb(
        toplevel="sampler", verilog=amaranth_to_verilog(dut, "sampler"),
        test_module="sampler_tb", python_path=[TB_DIR], seed=1,
        extra_env={"SAMPLER_CONFIG": f"{vocab},{logit_width}",
                   "SAMPLER_VECTORS": str(vectors),
                   "SAMPLER_SEEDS": ",".join(map(hex, SEEDS))},
    )
    assert sorted(result.passed) == ["tokens_match_golden/traffic=full",
                                     "tokens_match_golden/traffic=random"]
