# amaranth: UnusedElaboratable=no
"""cocotb testbench of hw/quantizer.py (ActivationQuantizer) against golden.activation_quant.

Run from tests/test_quantizer.py through :func:`mmfree.sim.toolchain.run_cocotb`, which puts
tests/ on the path (the vector generator and golden wrapper are shared with the Amaranth
simulator test). Environment: ``QUANT_N_MAX``, ``QUANT_IN_WIDTH``, ``QUANT_SEED``,
``QUANT_ELEMENTS`` (vectors are generated until at least this many elements).
"""

import os
import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge
from streams import StreamSink, StreamSource, pack, reset, start_clock, unpack
from test_quantizer import elements, expected, make_vectors

from mmfree.hw.quantizer import ActivationQuantizer


async def _monitor(dut, prefix, cycles):
    """Record the cycles of every transfer on ``prefix`` (counted from the call)."""
    valid, ready = getattr(dut, f"{prefix}__valid"), getattr(dut, f"{prefix}__ready")
    cycle = 0
    while True:
        await ReadOnly()
        if int(valid.value) and int(ready.value):
            cycles.append(cycle)
        await RisingEdge(dut.clk)
        cycle += 1


def _vectors(n_max, in_width, seed, minimum):
    rng = random.Random(seed)
    vectors = make_vectors(n_max, in_width, 6, rng)
    while sum(map(len, vectors)) < minimum:
        vectors += make_vectors(n_max, in_width, 7, rng)[6:]
    return vectors


@cocotb.test()
@cocotb.parametrize(traffic=["full_rate", "random"])
async def vectors_match(dut, traffic):
    """Vectors (lengths 1, n_max and random; zero, extreme and tie values) equal the golden
    (q, ymax); at full rate latency in_width + 29 and 2 n + in_width + 28 cycles a vector."""
    n_max, in_width = int(os.environ["QUANT_N_MAX"]), int(os.environ["QUANT_IN_WIDTH"])
    seed, minimum = int(os.environ["QUANT_SEED"]), int(os.environ["QUANT_ELEMENTS"])
    full = traffic == "full_rate"
    config = f"n_max {n_max} in_width {in_width} seed {seed} {traffic}"
    block = ActivationQuantizer(n_max=n_max, in_width=in_width)
    in_layout, out_layout = block.inp.payload.shape(), block.out.payload.shape()
    vectors = _vectors(n_max, in_width, seed, minimum)
    words = elements(vectors)
    want = expected(vectors)

    start_clock(dut)
    await reset(dut)
    source = StreamSource(dut, "inp", gap_probability=0.0 if full else 0.3, seed=seed + 1)
    sink = StreamSink(dut, "out", ready_probability=1.0 if full else 0.5, seed=seed + 2)
    in_cycles, out_cycles = [], []
    cocotb.start_soon(_monitor(dut, "inp", in_cycles))
    cocotb.start_soon(_monitor(dut, "out", out_cycles))
    cocotb.start_soon(source.send([pack(in_layout, **w) for w in words]))
    got = await sink.recv(len(words))

    for k, (raw, w) in enumerate(zip(got, want)):
        f = unpack(out_layout, raw)
        g = (f["data"], f["first"], f["last"], f["ymax"])
        assert g == w, f"{config}: element {k}: got {g}, expected {w}"
    assert len(got) == len(want) == len(words) >= minimum
    if full:
        assert len(in_cycles) == len(out_cycles) == len(words)
        latency, period = in_width + 29, in_width + 28
        start = 0
        for vec in vectors:
            n = len(vec)
            first_out = out_cycles[start]
            assert first_out - in_cycles[start + n - 1] == latency, (config, start)
            assert out_cycles[start:start + n] == list(range(first_out, first_out + n)), config
            assert in_cycles[start:start + n] == list(range(in_cycles[start],
                                                            in_cycles[start] + n)), config
            if start + n < len(words):
                assert in_cycles[start + n] - in_cycles[start] == 2 * n + period, (config, n)
            start += n
    dut._log.info("%s: %d vectors, %d elements", config, len(vectors), len(words))
