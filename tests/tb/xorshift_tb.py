"""cocotb testbench of hw/xorshift.py (Xorshift32) against the golden sequence.

Run from tests/test_toolchain.py through :func:`mmfree.sim.toolchain.run_cocotb`. Environment:
``XORSHIFT_SEEDS`` (comma-separated seeds, decimal or 0x-hex) and ``XORSHIFT_WORDS`` (words
compared per seed).
"""

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from mmfree.sim.golden import xorshift32, xorshift32_seed


def _seeds():
    return [int(s, 0) for s in os.environ["XORSHIFT_SEEDS"].split(",")]


async def _reset(dut):
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.load.value = 0
    dut.seed.value = 0
    dut.out__ready.value = 0
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await ReadOnly()
    assert int(dut.out__valid.value) == 0, "out.valid is high before the first load"
    await RisingEdge(dut.clk)


async def _load(dut, seed):
    dut.seed.value = seed
    dut.load.value = 1
    await RisingEdge(dut.clk)
    dut.load.value = 0


@cocotb.test()
@cocotb.parametrize(ready_probability=[1.0, 0.5])
async def sequence_matches_golden(dut, ready_probability):
    """Every seed's first XORSHIFT_WORDS words equal the golden sequence under random
    back-pressure; out.valid is high in every cycle from the one after load (latency 1),
    and a word transfers in every cycle with ready high (throughput 1 word/cycle)."""
    words = int(os.environ["XORSHIFT_WORDS"])
    await _reset(dut)
    checked = 0
    for seed in _seeds():
        await _load(dut, seed)
        state = xorshift32_seed(seed)
        expected = xorshift32(state)
        transfers = 0
        cycles = 0
        while transfers < words:
            ready = random.random() < ready_probability
            dut.out__ready.value = int(ready)
            await ReadOnly()
            assert int(dut.out__valid.value) == 1, (
                f"seed {seed:#x}: out.valid low {cycles} cycles after load")
            got = int(dut.out__payload.value)
            assert got == expected, (
                f"seed {seed:#x}, word {transfers}, ready_probability {ready_probability}: "
                f"got {got:#010x}, expected {expected:#010x}")
            if ready:
                transfers += 1
                checked += 1
                expected = xorshift32(expected)
            cycles += 1
            await RisingEdge(dut.clk)
        dut.out__ready.value = 0
    assert checked == words * len(_seeds()), (checked, words, _seeds())
    dut._log.info("compared %d words for %d seeds", checked, len(_seeds()))


@cocotb.test()
async def load_restarts_pending_word(dut):
    """A load while a word is pending (valid, not ready) drops it and restarts from the seed;
    a load in the same cycle as a transfer wins over the transfer."""
    await _reset(dut)
    seeds = _seeds()
    for first, second in zip(seeds, seeds[1:] + seeds[:1]):
        await _load(dut, first)
        dut.out__ready.value = 0
        await RisingEdge(dut.clk)
        # Pending word of `first`; reload with `second` while ready is high.
        dut.seed.value = second
        dut.load.value = 1
        dut.out__ready.value = 1
        await RisingEdge(dut.clk)
        dut.load.value = 0
        dut.out__ready.value = 0
        await ReadOnly()
        expected = xorshift32(xorshift32_seed(second))
        got = int(dut.out__payload.value)
        assert got == expected, (
            f"reload {first:#x} -> {second:#x}: got {got:#010x}, expected {expected:#010x}")
        await RisingEdge(dut.clk)
