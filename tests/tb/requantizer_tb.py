# amaranth: UnusedElaboratable=no
"""cocotb testbench of hw/requantizer.py (Requantizer) against golden.requantize.

Run from tests/test_requantizer.py through :func:`mmfree.sim.toolchain.run_cocotb`, which puts
tests/ on the path (the element generator and the golden wrapper are shared with the Amaranth
simulator test). Environment: ``REQ_ACC_WIDTH``, ``REQ_OUT_BITS``, ``REQ_SEED``,
``REQ_ELEMENTS``.
"""

import os
import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge
from streams import StreamSink, StreamSource, pack, reset, start_clock, unpack
from test_requantizer import golden, make_words

from mmfree.hw.requantizer import Requantizer

LATENCY = Requantizer.LATENCY


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


@cocotb.test()
@cocotb.parametrize(traffic=["full_rate", "random"])
async def elements_match(dut, traffic):
    """REQ_ELEMENTS random elements equal the golden (saturation both ways, k small and
    large); at full rate latency LATENCY and one element per cycle."""
    acc_width, out_bits = int(os.environ["REQ_ACC_WIDTH"]), int(os.environ["REQ_OUT_BITS"])
    seed, count = int(os.environ["REQ_SEED"]), int(os.environ["REQ_ELEMENTS"])
    full = traffic == "full_rate"
    config = f"acc_width {acc_width} out_bits {out_bits} seed {seed} {traffic}"
    block = Requantizer(acc_width=acc_width, out_bits=out_bits)
    in_layout, out_layout = block.inp.payload.shape(), block.out.payload.shape()
    words = make_words(acc_width, count, random.Random(seed))
    count = len(words)              # whole vectors: a few more than REQ_ELEMENTS

    start_clock(dut)
    await reset(dut)
    source = StreamSource(dut, "inp", gap_probability=0.0 if full else 0.3, seed=seed + 1)
    sink = StreamSink(dut, "out", ready_probability=1.0 if full else 0.5, seed=seed + 2)
    in_cycles, out_cycles = [], []
    cocotb.start_soon(_monitor(dut, "inp", in_cycles))
    cocotb.start_soon(_monitor(dut, "out", out_cycles))
    cocotb.start_soon(source.send([pack(in_layout, **w) for w in words]))
    got = await sink.recv(len(words))

    saturated = [0, 0]
    for k, (word, raw) in enumerate(zip(words, got)):
        fields = unpack(out_layout, raw)
        want = golden(word, out_bits)
        saturated[0] += want == (1 << (out_bits - 1)) - 1
        saturated[1] += want == -(1 << (out_bits - 1))
        assert (fields["data"], fields["first"], fields["last"]) == (
            want, word["first"], word["last"]), (
            f"{config}: element {k} {word}: got {fields}, expected {want}")
    assert len(got) == count >= int(os.environ["REQ_ELEMENTS"])
    assert min(saturated) > 10, (config, saturated)
    if full:
        assert in_cycles == list(range(in_cycles[0], in_cycles[0] + count)), (
            config, len(in_cycles), in_cycles[:3], in_cycles[-3:], len(out_cycles))
        assert [o - i for i, o in zip(in_cycles, out_cycles)] == [LATENCY] * count, config
    dut._log.info("%s: %d elements, saturated %s", config, count, saturated)
