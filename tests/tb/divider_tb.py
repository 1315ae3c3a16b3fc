# amaranth: UnusedElaboratable=no
"""cocotb testbench of hw/divider.py (SerialDivider, PipelinedDivider) against ``//`` and ``%``.

Run from tests/test_divider.py through :func:`mmfree.sim.toolchain.run_cocotb`. Environment:
``DIV_KIND`` (``serial`` or ``pipelined``), ``DIV_PARAMS`` (the constructor's keyword
arguments as a Python dict literal; the pipelined block has a 2-bit tag), ``DIV_COUNT``.
"""

import ast
import os
import random

import cocotb
from amaranth.hdl import unsigned
from cocotb.triggers import ReadOnly, RisingEdge
from streams import StreamSink, StreamSource, pack, reset, start_clock, unpack

from mmfree.hw.divider import PipelinedDivider, SerialDivider


def _block():
    params = ast.literal_eval(os.environ["DIV_PARAMS"])
    if os.environ["DIV_KIND"] == "serial":
        return SerialDivider(**params), params["num_width"] + 1, params["num_width"] + 1
    block = PipelinedDivider(**params, tag_shape=unsigned(2))
    return block, params["quot_width"], 1


def _expected(block, num, den):
    qw = getattr(block, "quot_width", block.num_width)
    if den == 0:
        return (1 << qw) - 1, num % (1 << block.den_width)
    return num // den, num % den


def _cases(block, count, rng):
    nw, dw = block.num_width, block.den_width
    qw = getattr(block, "quot_width", nw)
    cases = [(0, 0), ((1 << nw) - 1, 0), ((1 << nw) - 1, (1 << dw) - 1), (0, 1)]
    while len(cases) < count:
        den = rng.choice([rng.randrange(1 << dw), rng.randrange(4), (1 << dw) - 1])
        limit = min(1 << nw, den << qw) if den else 1 << nw
        num = rng.choice([rng.randrange(limit), limit - 1, rng.randrange(min(limit, 64))])
        cases.append((num, den))
    return cases


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
async def divisions_match(dut, traffic):
    """DIV_COUNT random divisions equal ``//`` and ``%`` (den = 0: all-ones quotient); at full
    rate the latency and the cycles per division are the documented ones."""
    block, latency, interval = _block()
    seed = int(os.environ.get("DIV_SEED", "7"))
    rng = random.Random(seed)
    count = int(os.environ["DIV_COUNT"])
    full = traffic == "full_rate"
    cases = _cases(block, count, rng)
    in_layout = block.inp.payload.shape()
    out_layout = block.out.payload.shape()
    tagged = "tag" in dict(in_layout.members)
    words = [pack(in_layout, num=n, den=d, tag=k % 4) for k, (n, d) in enumerate(cases)]

    start_clock(dut)
    await reset(dut)
    source = StreamSource(dut, "inp", gap_probability=0.0 if full else 0.3, seed=seed + 1)
    sink = StreamSink(dut, "out", ready_probability=1.0 if full else 0.5, seed=seed + 2)
    in_cycles, out_cycles = [], []
    cocotb.start_soon(_monitor(dut, "inp", in_cycles))
    cocotb.start_soon(_monitor(dut, "out", out_cycles))
    cocotb.start_soon(source.send(words))
    got = await sink.recv(len(words))

    for k, ((num, den), word) in enumerate(zip(cases, got)):
        fields = unpack(out_layout, word)
        want = _expected(block, num, den)
        assert (fields["quotient"], fields["remainder"]) == want, (
            f"{os.environ['DIV_KIND']} {os.environ['DIV_PARAMS']} seed {seed} {traffic}: "
            f"{num} / {den}: got ({fields['quotient']}, {fields['remainder']}), expected {want}")
        if tagged:
            assert fields["tag"] == k % 4, (k, fields)
    assert len(got) == len(cases) == count
    if full:
        assert len(in_cycles) == len(out_cycles) == count, (len(in_cycles), len(out_cycles))
        assert [o - i for i, o in zip(in_cycles, out_cycles)] == [latency] * count, "latency"
        assert [b - a for a, b in zip(in_cycles, in_cycles[1:])] == [interval] * (count - 1)
    dut._log.info("%d divisions, %s", count, traffic)
