"""cocotb module that times the decode engine under Verilator (used by
:mod:`mmfree.tools.bench_engine`): a prompt and ``ENGINE_TOKENS`` greedy tokens, every token
compared with the golden model after the timed run. Writes a JSON result to
``ENGINE_BENCH_OUT``.

Environment: ``ENGINE_MODEL`` (a model file), ``ENGINE_LANES``, ``ENGINE_TOKENS``,
``ENGINE_BENCH_OUT``.
"""

import json
import os
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from mmfree.sim import golden
from mmfree.sim.engine import EngineImage
from mmfree.sim.modelfile import load_model

PROMPT = [ord(c) for c in "ROMEO:"]


@cocotb.test()
async def throughput(dut):
    im = golden.prepare(load_model(os.environ["ENGINE_MODEL"]))
    image = EngineImage(im, int(os.environ["ENGINE_LANES"]))
    count = int(os.environ["ENGINE_TOKENS"])
    token_bits = max(1, (im.config.vocab_size - 1).bit_length())
    Clock(dut.clk, 10, unit="ns").start()
    dut.step__valid.value = 0
    dut.load__valid.value = 0
    dut.token__ready.value = 1
    dut.seed_load.value = 0
    dut.x0.value = 0
    dut.rst.value = 1
    dut.reset_state.value = 0
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0

    inputs = list(PROMPT)
    tokens, cycles = [], 0
    start = time.perf_counter()
    for index in range(len(PROMPT) + count - 1):
        emit = index >= len(PROMPT) - 1
        token_in = inputs[index] if index < len(PROMPT) else tokens[-1]
        dut.step__payload.value = token_in | (int(emit) << token_bits)
        dut.step__valid.value = 1
        await RisingEdge(dut.clk)
        dut.step__valid.value = 0
        if emit:
            await RisingEdge(dut.token__valid)
            await ReadOnly()
            tokens.append(int(dut.token__payload.value))
        await FallingEdge(dut.busy)
        await FallingEdge(dut.clk)
        cycles += int(dut.cycles.value)
    seconds = time.perf_counter() - start

    state = golden.init_state(im)
    expected = []
    for index in range(len(PROMPT) + count - 1):
        token_in = PROMPT[index] if index < len(PROMPT) else expected[-1]
        logits, state = golden.decode_step(im, token_in, state)
        if index >= len(PROMPT) - 1:
            expected.append(golden.argmax(logits))
    assert tokens == expected, f"engine tokens {tokens}, golden {expected}"
    steps = len(PROMPT) + count - 1
    with open(os.environ["ENGINE_BENCH_OUT"], "w") as f:
        json.dump({"steps": steps, "tokens": count, "cycles": cycles, "seconds": seconds,
                   "cycles_per_second": cycles / seconds, "steps_per_second": steps / seconds,
                   "lanes": image.lanes}, f)
