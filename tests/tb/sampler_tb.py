"""cocotb testbench of hw/sampler.py (Sampler) against :func:`mmfree.sim.golden.argmax` and
:func:`mmfree.sim.golden.sample` with the PRNG advanced once per sampled token, as
:func:`mmfree.sim.decoding.generate` does.

Run from tests/test_sampler.py through :func:`mmfree.sim.toolchain.run_cocotb`. Environment:
``SAMPLER_CONFIG`` (``vocab,logit_width``), ``SAMPLER_VECTORS`` (random logit vectors per seed
and traffic pattern), ``SAMPLER_SEEDS`` (comma-separated PRNG seeds, decimal or 0x-hex).
"""

import os
import random

import cocotb
import numpy as np
from amaranth.hdl import signed
from amaranth.lib import data
from cocotb.triggers import ReadOnly, RisingEdge
from streams import StreamSink, StreamSource, pack, reset, start_clock

from mmfree.sim import golden


def random_vectors(rng, count, vocab, logit_width):
    """Random logit vectors with their x0 (0 = greedy in a third of them): full-range logits,
    logits spread over a few units of |x0| (where sampling is really random), and ties."""
    lo, hi = -(1 << (logit_width - 1)), (1 << (logit_width - 1)) - 1
    out = []
    for index in range(count):
        x0 = 0 if index % 3 == 0 else golden.sampler_x0(
            rng.choice([2.0**-6, 0.5, 1.0, 2.0, 64.0, rng.uniform(2.0**-6, 8.0)]))
        kind = index % 4
        if kind == 0:
            logits = [rng.randint(lo, hi) for _ in range(vocab)]
        elif kind == 3:                          # ties at the maximum
            logits = [rng.randint(lo, hi) // 2 for _ in range(vocab)]
            top = max(logits)
            for i in rng.sample(range(vocab), 3):
                logits[i] = top
        else:
            spread = max(8, -(x0 or -256) * rng.choice([1, 4, 16]))
            base = rng.randint(lo + spread, hi)
            logits = [rng.randint(base - spread, base) for _ in range(vocab)]
        out.append((logits, x0))
    return out


def golden_tokens(vectors, seed):
    prng = golden.xorshift32_seed(seed)
    tokens = []
    for logits, x0 in vectors:
        if x0 == 0:
            tokens.append(golden.argmax(np.array(logits)))
        else:
            prng = golden.xorshift32(prng)
            tokens.append(golden.sample(np.array(logits), x0, prng))
    return tokens


async def _monitor(dut, last_in, token_valid):
    """Cycles of each vector's last logit transfer and of each token's first valid cycle."""
    cycle, waiting = 0, False
    while True:
        await ReadOnly()
        if int(dut.logits__valid.value) and int(dut.logits__ready.value):
            if int(dut.logits__payload.value) >> (len(dut.logits__payload) - 1):
                last_in.append(cycle)
        if int(dut.token__valid.value):
            if not waiting:
                token_valid.append(cycle)
                waiting = True
            if int(dut.token__ready.value):
                waiting = False
        await RisingEdge(dut.clk)
        cycle += 1


@cocotb.test()
@cocotb.parametrize(traffic=["random", "full"])
async def tokens_match_golden(dut, traffic):
    """For each seed: load the PRNG, then a run of random vectors (greedy and sampled mixed);
    the tokens equal the golden sequence. At full rate, the latency is the documented one."""
    vocab, logit_width = (int(v) for v in os.environ["SAMPLER_CONFIG"].split(","))
    count = int(os.environ["SAMPLER_VECTORS"])
    seeds = [int(s, 0) for s in os.environ["SAMPLER_SEEDS"].split(",")]
    layout = data.StructLayout({"data": signed(logit_width), "first": 1, "last": 1})
    assert layout.size == len(dut.logits__payload) and layout["last"].offset == layout.size - 1

    start_clock(dut)
    dut.x0.value = 0
    dut.seed.value = 0
    dut.load.value = 0
    gap, ready = (0.3, 0.5) if traffic == "random" else (0.0, 1.0)
    source = StreamSource(dut, "logits", gap_probability=gap, seed=len(seeds))
    sink = StreamSink(dut, "token", ready_probability=ready, seed=count)
    await reset(dut)
    last_in, token_valid = [], []
    cocotb.start_soon(_monitor(dut, last_in, token_valid))
    checked = 0
    all_vectors = []
    for seed in seeds:
        config = f"vocab={vocab} logit_width={logit_width} seed={seed:#x} traffic={traffic}"
        rng = random.Random(f"{seed}-{traffic}")
        vectors = random_vectors(rng, count, vocab, logit_width)
        all_vectors += vectors
        dut.seed.value = seed
        dut.load.value = 1
        await RisingEdge(dut.clk)
        dut.load.value = 0

        async def drive(vectors=vectors):
            for logits, x0 in vectors:
                dut.x0.value = x0
                await source.send([pack(layout, data=x, first=i == 0, last=i == vocab - 1)
                                   for i, x in enumerate(logits)])

        cocotb.start_soon(drive())
        got = await sink.recv(len(vectors))
        expected = golden_tokens(vectors, seed)
        for index, (g, e) in enumerate(zip(got, expected)):
            assert g == e, (f"{config} vector {index} (x0={vectors[index][1]}): token {g}, "
                            f"expected {e}; logits {vectors[index][0]}")
        checked += len(got)
        if traffic == "full":
            start = len(token_valid) - len(vectors)
            for index, ((_, x0), token) in enumerate(zip(vectors, expected)):
                latency = token_valid[start + index] - last_in[start + index]
                documented = 1 if x0 == 0 else 2 * vocab + 36 + token
                assert latency == documented, (
                    f"{config} vector {index} (x0={x0}, token {token}): latency {latency} "
                    f"cycles, documented {documented}")
        await RisingEdge(dut.clk)
    assert checked == count * len(seeds) == len(last_in) == len(token_valid)
    dut._log.info("traffic=%s: %d tokens for %d seeds", traffic, checked, len(seeds))
