"""Amaranth-simulator stream driver shared by the block tests (the cocotb counterpart is
tests/tb/streams.py): one input stream ``inp`` and one output stream ``out``."""

import random

from amaranth.sim import Simulator

__all__ = ["run_stream"]


def run_stream(dut, words, *, ready_probability=1.0, gap_probability=0.0, seed=0,
               limit=1_000_000, count=None):
    """Drive ``words`` (payload values) into ``dut.inp`` with random valid gaps and collect
    ``count`` (default: as many) words from ``dut.out`` with random back-pressure, checking that
    the output holds valid and payload until each transfer. Returns (outputs, input transfer
    cycles, output transfer cycles)."""
    rng = random.Random(seed)
    outs, in_cycles, out_cycles = [], [], []

    async def testbench(ctx):
        index, cycle, presenting, held = 0, 0, False, None
        while len(outs) < (len(words) if count is None else count):
            if not presenting and index < len(words) and rng.random() >= gap_probability:
                presenting = True
                ctx.set(dut.inp.payload, words[index])
            ctx.set(dut.inp.valid, presenting)
            ready = rng.random() < ready_probability
            ctx.set(dut.out.ready, ready)
            valid = ctx.get(dut.out.valid)
            payload = ctx.get(dut.out.payload)
            if held is not None:
                assert valid and payload == held, f"out changed before transfer, cycle {cycle}"
            held = None
            if valid:
                if ready:
                    outs.append(payload)
                    out_cycles.append(cycle)
                else:
                    held = payload
            if presenting and ctx.get(dut.inp.ready):
                in_cycles.append(cycle)
                presenting = False
                index += 1
            await ctx.tick()
            cycle += 1
            assert cycle < limit, "timeout"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return outs, in_cycles, out_cycles
