"""cocotb testbench of hw/sigmoid.py (Sigmoid in one mode) against the golden model.

Run from tests/test_sigmoid.py through :func:`mmfree.sim.toolchain.run_cocotb`. Environment:
``SIGMOID_MODE`` (sigmoid, silu or gelu), ``SIGMOID_SEED``, ``SIGMOID_LATENCY`` and
``SIGMOID_OUT_WIDTH`` (the block's documented latency and output width).
"""

import os
import random

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge
from streams import StreamSink, StreamSource, pack, reset, start_clock, unpack

from mmfree.hw.sigmoid import element_layout
from mmfree.sim import golden

MODE = os.environ["SIGMOID_MODE"]
SEED = int(os.environ["SIGMOID_SEED"])
LATENCY = int(os.environ["SIGMOID_LATENCY"])
IN_LAYOUT = element_layout(32)
OUT_LAYOUT = element_layout(int(os.environ["SIGMOID_OUT_WIDTH"]))
VECTOR = 256


def reference(xs, frac):
    xs = np.asarray(xs, dtype=np.int64)
    if MODE == "sigmoid":
        return golden.sigmoid(xs, frac)
    return getattr(golden, MODE)(xs, frac)


def words_of(xs, length=VECTOR):
    """Payload words for ``xs`` cut into vectors of ``length`` (first/last set)."""
    return [pack(IN_LAYOUT, data=x, first=i % length == 0,
                 last=i % length == length - 1 or i == len(xs) - 1)
            for i, x in enumerate(xs)]


async def start(dut):
    start_clock(dut)
    dut.inp__valid.value = 0
    dut.out__ready.value = 0
    dut.frac.value = 0
    await reset(dut)
    await RisingEdge(dut.clk)


async def run_full_rate(dut, xs, frac, what):
    """Stream ``xs`` at full rate (no gaps, no back-pressure) and check the results, and that
    n elements take LATENCY + n cycles from the first input transfer (cycle 0)."""
    dut.frac.value = frac
    words = words_of(xs)
    source = StreamSource(dut, "inp", seed=SEED)
    sink = StreamSink(dut, "out", seed=SEED + 1)
    send = cocotb.start_soon(source.send(words))
    got = await sink.recv(len(words))
    await send
    check(got, xs, frac, what)
    assert sink.cycles == LATENCY + len(xs), (
        f"mode {MODE}, {what}: {len(xs)} elements took {sink.cycles} cycles, documented "
        f"latency {LATENCY} + 1 element/cycle = {LATENCY + len(xs)}")


def check(got, xs, frac, what, length=VECTOR):
    expected = reference(xs, frac)
    assert len(got) == len(xs), (MODE, what, len(got), len(xs))
    for i, word in enumerate(got):
        out = unpack(OUT_LAYOUT, word)
        first, last = i % length == 0, i % length == length - 1 or i == len(xs) - 1
        assert (out["data"], out["first"], out["last"]) == (int(expected[i]), first, last), (
            f"mode {MODE}, seed {SEED}, {what}, element {i}: x {xs[i]}, frac {frac}: got "
            f"{out}, expected data {int(expected[i])}, first {first}, last {last}")


@cocotb.test()
async def exhaustive_int16_full_rate(dut):
    """Every int16 input at frac 12, vectors of 256, at full rate; then one element alone
    (its output is valid LATENCY cycles after its transfer)."""
    await start(dut)
    xs = list(range(-(1 << 15), 1 << 15))
    await run_full_rate(dut, xs, 12, "exhaustive int16")
    await run_full_rate(dut, [-12345], 12, "single element")
    dut._log.info("mode %s: %d int16 inputs exact; latency %d, 1 element/cycle",
                  MODE, len(xs), LATENCY)


@cocotb.test()
async def random_int32_full_rate(dut):
    """10**4 random 32-bit inputs at frac 20 and again at frac 27, full rate."""
    await start(dut)
    rng = random.Random(SEED)
    for frac in (20, 27):
        xs = [rng.randint(-(1 << 31), (1 << 31) - 1) if rng.random() < 0.5
              else rng.randint(-(1 << (frac + 4)), 1 << (frac + 4)) for _ in range(10_000)]
        await run_full_rate(dut, xs, frac, f"random int32 at frac {frac}")


@cocotb.test()
async def random_traffic(dut):
    """Random valid gaps and back-pressure; vectors of random length, each with its own frac
    (set on the port between vectors, sampled with the first element)."""
    await start(dut)
    rng = random.Random(SEED + 2)
    vectors = []
    while sum(len(v[1]) for v in vectors) < 3000:
        frac = rng.randrange(32)
        xs = [rng.randint(-(1 << 31), (1 << 31) - 1) if rng.random() < 0.5
              else rng.randint(-(1 << 16), 1 << 16) for _ in range(rng.randint(1, 40))]
        vectors.append((frac, xs))
    total = sum(len(xs) for _, xs in vectors)
    source = StreamSource(dut, "inp", gap_probability=0.3, seed=SEED + 3)
    sink = StreamSink(dut, "out", ready_probability=0.5, seed=SEED + 4)

    async def send_all():
        for frac, xs in vectors:
            dut.frac.value = frac
            await source.send(words_of(xs, len(xs)))

    send = cocotb.start_soon(send_all())
    got = await sink.recv(total)
    await send
    offset = 0
    for n, (frac, xs) in enumerate(vectors):
        check(got[offset:offset + len(xs)], xs, frac, f"vector {n}", length=len(xs))
        offset += len(xs)
    assert offset == total == len(got)
