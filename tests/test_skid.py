"""hw/skid.py: the skid buffer keeps the stream (order, payload held until transfer), adds no
latency, its ``inp.ready`` does not follow ``out.ready`` within a cycle, and behind a pipeline
that stalls as a whole it gives the same output timing as a direct connection."""

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from mmfree.hw.skid import SkidBuffer

from stream_sim import run_stream


class _Stage(wiring.Component):
    """``depth`` registers that stall as a whole, as the engine's units do."""

    inp: In(stream.Signature(8))
    out: Out(stream.Signature(8))

    def __init__(self, depth):
        self._depth = depth
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        valid = [Signal(name=f"v{i}") for i in range(self._depth)]
        data = [Signal(8, name=f"d{i}") for i in range(self._depth)]
        m.d.comb += [en.eq(~self.out.valid | self.out.ready), self.inp.ready.eq(en),
                     self.out.valid.eq(valid[-1]), self.out.payload.eq(data[-1])]
        with m.If(en):
            m.d.sync += [valid[0].eq(self.inp.valid), data[0].eq(self.inp.payload)]
            for i in range(1, self._depth):
                m.d.sync += [valid[i].eq(valid[i - 1]), data[i].eq(data[i - 1])]
        return m


class _Chain(wiring.Component):
    inp: In(stream.Signature(8))
    out: Out(stream.Signature(8))

    def __init__(self, depth, skid):
        self._depth, self._skid = depth, skid
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.stage = stage = _Stage(self._depth)
        wiring.connect(m, wiring.flipped(self.inp), stage.inp)
        if self._skid:
            m.submodules.skid = skid = SkidBuffer(8)
            wiring.connect(m, stage.out, skid.inp)
            wiring.connect(m, skid.out, wiring.flipped(self.out))
        else:
            wiring.connect(m, stage.out, wiring.flipped(self.out))
        return m


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ready_probability,gap_probability", [(1.0, 0.0), (0.5, 0.3),
                                                               (0.2, 0.0), (0.9, 0.7)])
def test_stream_kept(seed, ready_probability, gap_probability):
    rng = random.Random(seed)
    words = [rng.randrange(256) for _ in range(300)]
    outs, _, out_cycles = run_stream(SkidBuffer(8), words, ready_probability=ready_probability,
                                     gap_probability=gap_probability, seed=seed)
    assert outs == words
    if ready_probability == 1.0 and gap_probability == 0.0:
        assert out_cycles == list(range(len(words)))          # no latency, a word a cycle


def test_ready_is_registered():
    dut = SkidBuffer(8)
    seen = []

    async def bench(ctx):
        ctx.set(dut.inp.valid, 1)
        for cycle in range(40):
            ctx.set(dut.inp.payload, cycle)
            readies = []
            for out_ready in (0, 1, 0):
                ctx.set(dut.out.ready, out_ready)
                readies.append(ctx.get(dut.inp.ready))
            assert len(set(readies)) == 1, f"inp.ready follows out.ready in cycle {cycle}"
            seen.append(readies[0])
            ctx.set(dut.out.ready, cycle % 3 == 0)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert 0 in seen and 1 in seen


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("seed", range(3))
def test_same_output_timing_as_direct(depth, seed):
    """An always-valid source through a pipeline that stalls as a whole, a consumer ready by a
    fixed random pattern: the words leave on the same cycles with and without the buffer."""
    rng = random.Random(seed)
    pattern = [rng.random() < 0.6 for _ in range(400)]

    def run(skid):
        dut = _Chain(depth, skid)
        cycles = []

        async def bench(ctx):
            word = 0
            for cycle, ready in enumerate(pattern):
                ctx.set(dut.inp.valid, 1)
                ctx.set(dut.inp.payload, word % 256)
                ctx.set(dut.out.ready, ready)
                if ctx.get(dut.out.valid) and ready:
                    cycles.append((cycle, ctx.get(dut.out.payload)))
                if ctx.get(dut.inp.ready):
                    word += 1
                await ctx.tick()

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(bench)
        sim.run()
        return cycles

    direct, skidded = run(False), run(True)
    assert len(direct) > 100
    assert skidded == direct
