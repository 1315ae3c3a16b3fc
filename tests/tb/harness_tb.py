"""cocotb tests that check the harness itself (mmfree.sim.toolchain.run_cocotb): one passes, one
fails on purpose. Any design with a ``clk`` port will do."""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles


@cocotb.test()
async def passes(dut):
    Clock(dut.clk, 10, unit="ns").start()
    await ClockCycles(dut.clk, 2)


@cocotb.test()
async def fails_on_purpose(dut):
    Clock(dut.clk, 10, unit="ns").start()
    await ClockCycles(dut.clk, 2)
    assert False, "this test fails on purpose"
