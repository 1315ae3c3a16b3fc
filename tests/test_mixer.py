"""hw/mixer.py: the MLGRU state update, the saturating product, the residual add and the
embedding scale, element by element against the golden model's expressions, with random input gaps and output back-pressure, and their
documented latencies."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from mmfree.hw.mixer import EmbedUnit, GateUnit, ProductUnit, ResidualAdd
from mmfree.sim.golden import ACT_BITS, F_GATE, saturate, shift_round

ONE = 1 << F_GATE
LO, HI = -(1 << (ACT_BITS - 1)), (1 << (ACT_BITS - 1)) - 1


def run_joined(dut, inputs, held, *, gap=0.0, ready=1.0, seed=0):
    """Feed the element dicts ``inputs`` (one value per input stream, each stream with its own
    random gaps) and set the ``held`` signals; returns (outputs, cycle of each input's
    transfer, cycle of each output's transfer)."""
    rng = random.Random(seed)
    names = list(inputs[0])
    outs, in_cycles, out_cycles = [], [], []

    async def testbench(ctx):
        for signal, value in held.items():
            ctx.set(getattr(dut, signal), value)
        index = {name: 0 for name in names}
        presenting = {name: False for name in names}
        cycle, last_payload = 0, None
        while len(outs) < len(inputs):
            for name in names:
                port = getattr(dut, name)
                if not presenting[name] and index[name] < len(inputs) and rng.random() >= gap:
                    presenting[name] = True
                    ctx.set(port.payload, inputs[index[name]][name])
                ctx.set(port.valid, presenting[name])
            take = rng.random() < ready
            ctx.set(dut.out.ready, take)
            valid, payload = ctx.get(dut.out.valid), ctx.get(dut.out.payload)
            if last_payload is not None:
                assert valid and payload == last_payload, f"out changed, cycle {cycle}"
            last_payload = None
            if valid:
                if take:
                    outs.append(payload)
                    out_cycles.append(cycle)
                else:
                    last_payload = payload
            transferred = [name for name in names
                           if presenting[name] and ctx.get(getattr(dut, name).ready)]
            assert transferred in ([], names), "the inputs are not taken together"
            if transferred:
                in_cycles.append(cycle)
            for name in transferred:
                presenting[name] = False
                index[name] += 1
            await ctx.tick()
            cycle += 1
            assert cycle < 100_000, "timeout"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return outs, in_cycles, out_cycles


def gate_golden(e, has_lb):
    f = e["sig"]
    if has_lb:
        f = e["lb"] + int(shift_round(np.int64((ONE - e["lb"]) * f), F_GATE))
    c = int(shift_round(np.int64(e["silu"] * (ONE - f)), F_GATE))
    return int(saturate(np.int64(int(shift_round(np.int64(f * e["h"]), F_GATE)) + c),
                        ACT_BITS))


def gate_inputs(rng, count):
    words = []
    for _ in range(count):
        words.append({
            "sig": rng.choice([0, ONE, rng.randint(0, ONE), rng.randint(ONE - 8, ONE)]),
            "lb": rng.choice([0, ONE, rng.randint(0, ONE), rng.randint(0, 64)]),
            "silu": rng.choice([LO, HI, rng.randint(LO, HI), rng.randint(-1000, 1000)]),
            "h": rng.choice([LO, HI, rng.randint(LO, HI), rng.randint(-1000, 1000)]),
        })
    return words


@pytest.mark.parametrize("has_lb", [0, 1])
def test_gate_unit(has_lb):
    rng = random.Random(has_lb)
    words = gate_inputs(rng, 300)
    outs, _, _ = run_joined(GateUnit(), words, {"has_lb": has_lb}, gap=0.3, ready=0.7,
                            seed=has_lb)
    assert outs == [gate_golden(e, has_lb) for e in words]


def product_golden(e, shift):
    return int(saturate(shift_round(np.array([e["a"] * e["b"]], dtype=object), shift),
                        ACT_BITS)[0])


@pytest.mark.parametrize("shift", [1, 7, 20, 33, 63])
def test_product_unit(shift):
    rng = random.Random(shift)
    words = [{"a": rng.choice([LO, HI, rng.randint(LO, HI), rng.randint(-70000, 70000)]),
              "b": rng.choice([LO, HI, rng.randint(LO, HI), rng.randint(-70000, 70000)])}
             for _ in range(200)]
    outs, _, _ = run_joined(ProductUnit(), words, {"shift": shift}, gap=0.3, ready=0.7,
                            seed=shift)
    assert outs == [product_golden(e, shift) for e in words]


def test_residual_add():
    rng = random.Random(3)
    words = [{"a": rng.choice([LO, HI, rng.randint(LO, HI), rng.randint(-9, 9)]),
              "b": rng.choice([LO, HI, rng.randint(LO, HI), rng.randint(-9, 9)])}
             for _ in range(300)]
    outs, _, _ = run_joined(ResidualAdd(), words, {}, gap=0.3, ready=0.7, seed=3)
    assert outs == [int(saturate(np.int64(e["a"] + e["b"]), ACT_BITS)) for e in words]


def test_residual_add_pairs():
    """Two elements a transfer (the engine's rows in pairs), each added on its own."""
    rng = random.Random(4)

    def value():
        return rng.choice([LO, HI, rng.randint(LO, HI), rng.randint(-9, 9)])
    words = [{"a": [value(), value()], "b": [value(), value()]} for _ in range(300)]
    outs, _, _ = run_joined(ResidualAdd(pairs=True), words, {}, gap=0.3, ready=0.7, seed=4)
    assert [[o[0], o[1]] for o in outs] == [
        [int(saturate(np.int64(e["a"][k] + e["b"][k]), ACT_BITS)) for k in range(2)]
        for e in words]


@pytest.mark.parametrize("shift", [-15, -1, 0, 1, 9, 22, 23, 24, 25, 63])
def test_embed_unit(shift):
    rng = random.Random(shift + 100)
    mult = rng.choice([1, (1 << 15) - 1, rng.randrange(1 << 15)])
    words = [{"q": rng.choice([-128, 127, 0, rng.randint(-128, 127)])} for _ in range(200)]
    outs, _, _ = run_joined(EmbedUnit(), words, {"mult": mult, "shift": shift}, gap=0.3,
                            ready=0.7, seed=shift)
    want = [int(shift_round(e["q"] * mult, shift)) for e in words]
    want = [(v + (1 << 31)) % (1 << 32) - (1 << 31) for v in want]      # 32 bits
    assert outs == want


@pytest.mark.parametrize("unit", [GateUnit, ProductUnit, ResidualAdd, EmbedUnit, "pairs"])
def test_latency_and_rate(unit):
    """With inputs every cycle and out.ready high: one result a cycle (a pair, with
    ``pairs``), ``STAGES`` cycles after its inputs."""
    rng = random.Random(5)
    dut = ResidualAdd(pairs=True) if unit == "pairs" else unit()
    if unit == "pairs":
        words, held = [{"a": [rng.randint(LO, HI)] * 2, "b": [rng.randint(LO, HI)] * 2}
                       for _ in range(40)], {}
    elif unit is GateUnit:
        words, held = gate_inputs(rng, 40), {"has_lb": 1}
    elif unit is ResidualAdd:
        words, held = [{"a": rng.randint(LO, HI), "b": rng.randint(LO, HI)}
                       for _ in range(40)], {}
    elif unit is EmbedUnit:
        words, held = [{"q": rng.randint(-128, 127)} for _ in range(40)], {"mult": 77,
                                                                         "shift": 3}
    else:
        words, held = [{"a": rng.randint(LO, HI), "b": rng.randint(LO, HI)}
                       for _ in range(40)], {"shift": 9}
    _, in_cycles, out_cycles = run_joined(dut, words, held)
    assert in_cycles == list(range(len(words)))
    assert [o - i for i, o in zip(in_cycles, out_cycles)] == [dut.STAGES] * len(words)
