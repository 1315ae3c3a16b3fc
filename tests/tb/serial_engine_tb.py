"""cocotb testbench of hw/serial.py (SerialEngine): whole decode steps of a model compiled by
:class:`mmfree.sim.serial_program.SerialImage` against :func:`mmfree.sim.golden.decode_step`
and the sampler of :func:`mmfree.sim.decoding.generate`.

The engine is built as the SoC builds it, with empty memories: every test writes its model
through the load port (:meth:`SerialImage.load_words`, random valid gaps), so one Verilator build
serves every model of one token width. A :class:`~mmfree.sim.serial.Machine` gets the same
inputs (load words, seed, reset_state, steps) in lockstep. Every step is checked for exact
equality: the emitted token (golden and Machine), the recurrent state of every layer (region
``H`` of ``M``, read through the debug port) against golden's, and the step's cycle count
against ``Machine.cycles`` plus the cycles the testbench held ``token.ready`` low. After each
load, the whole image in ``M`` is read back; at the end of each test, ``M`` equals Machine's.

Steps run freely in Verilator: the testbench waits on the rising edge of ``token.valid`` and
the falling edge of ``busy`` only (a step of the iCEBreaker model is about 1.1 million cycles).

Run from tests/test_serial_cocotb.py through :func:`mmfree.sim.toolchain.run_cocotb`.
Environment: ``SERIAL_MODEL`` (``random:d,L,I,V,seed[,act]`` or a model file),
``SERIAL_TOKENS`` (new tokens per run), ``SERIAL_LOAD_SEED`` (optional: the seed of a second
random model of the same shape, written over the first by the last test).
"""

import os
import random

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, First, ReadOnly, RisingEdge, Timer
from engine_tb import golden_run, model_from_spec
from streams import StreamSource, pack, reset, start_clock

from mmfree.hw.engine import engine_members
from mmfree.sim import golden
from mmfree.sim.serial import Machine
from mmfree.sim.serial_program import SerialImage

PROMPT = [ord(c) for c in "ROMEO:"]
SECOND_PROMPT = [ord(c) for c in "JULIET"]
TEMPERATURE = 0.8
LOAD_GAP_PROBABILITY = 0.2
# Cycles token.ready stays low after token.valid rises (the first token of a test: the last).
TOKEN_WAITS = (0, 0, 1, 3)
CLOCK_NS = 10                  # streams.start_clock's period


def _signed32(words) -> np.ndarray:
    w = np.asarray(words, dtype=np.int64) & 0xFFFF_FFFF
    return np.where(w >= (1 << 31), w - (1 << 32), w)


class Harness:
    """The engine and a :class:`Machine`, driven with the same inputs."""

    def __init__(self, dut, token_bits: int, what: str):
        self.dut = dut
        self.token_bits = token_bits
        self.what = what                       # the model, for messages
        self.machine = Machine([], [], token_bits=token_bits)
        members = engine_members(token_bits)
        self.step_layout = members["step"].signature.members["payload"].shape
        self.load_layout = members["load"].signature.members["payload"].shape
        self.rng = random.Random(random.getrandbits(32))   # cocotb seeds `random`
        self.waited = 0                        # cycles of back-pressure on token, in all
        self.steps = 0

    async def start(self):
        dut = self.dut
        start_clock(dut)
        dut.step__valid.value = 0
        dut.load__valid.value = 0
        dut.token__ready.value = 0
        dut.reset_state.value = 0
        dut.seed_load.value = 0
        dut.x0.value = 0
        dut.peek_addr.value = 0
        await reset(dut)

    async def pulse(self, name):
        getattr(self.dut, name).value = 1
        await RisingEdge(self.dut.clk)
        getattr(self.dut, name).value = 0

    async def load(self, image: SerialImage):
        """Every word of ``image`` through the load port, then ``M`` read back."""
        words = image.load_words()
        source = StreamSource(self.dut, "load", gap_probability=LOAD_GAP_PROBABILITY,
                              seed=self.rng.getrandbits(32))
        await source.send([pack(self.load_layout, addr=address, data=word)
                           for address, word in words])
        assert source.sent == len(words)
        for address, word in words:
            self.machine.write(address, word)
        got = await self.peek(0, len(image.mem))
        wrong = np.flatnonzero(got != _signed32(image.mem))
        assert not wrong.size, (f"{self.what}: M[{wrong[0]}] is {got[wrong[0]]} after the load, "
                                f"the image's {_signed32(image.mem)[wrong[0]]}")
        self.dut._log.info("loaded %d words (%d program words)", len(words),
                           len(image.program))

    async def peek(self, base: int, count: int) -> np.ndarray:
        """``M[base:base + count]`` (signed) through the debug port, a word a cycle; writes
        and reads at falling edges (the read port's data is registered at the rising edge)."""
        dut = self.dut
        values = np.zeros(count, dtype=np.int64)
        await FallingEdge(dut.clk)
        assert not int(dut.busy.value), "peek while busy"
        dut.peek_addr.value = base
        for index in range(count):
            await FallingEdge(dut.clk)
            values[index] = dut.peek_data.value.to_signed()
            if index + 1 < count:
                dut.peek_addr.value = base + index + 1
        return values

    async def step(self, token: int, emit: bool, context: str, limit: int):
        """One decode step; returns ``(token or None, cycles, cycles token.ready was low)``.
        Python wakes on the edges of ``token.valid`` and ``busy`` only; the step fails when
        it has not ended ``limit`` cycles after the transfer."""
        dut = self.dut
        await FallingEdge(dut.clk)
        assert int(dut.step__ready.value) == 1 and not int(dut.busy.value), \
            f"{context}: engine not idle"
        dut.step__payload.value = pack(self.step_layout, token=token, emit=int(emit))
        dut.step__valid.value = 1
        await RisingEdge(dut.clk)
        dut.step__valid.value = 0
        await ReadOnly()
        assert int(dut.busy.value), f"{context}: busy did not rise after the step transfer"
        token_rise, busy_fall = RisingEdge(dut.token__valid), FallingEdge(dut.busy)
        out, wait = None, 0
        fired = await First(token_rise, busy_fall, Timer(limit * CLOCK_NS, "ns"))
        if fired is token_rise:
            assert emit, f"{context}: a token came out of a step that does not emit"
            await ReadOnly()
            out = int(dut.token__payload.value)
            wait = self.rng.choice(TOKEN_WAITS) if self.waited else TOKEN_WAITS[-1]
            for _ in range(wait):
                await RisingEdge(dut.clk)
                await ReadOnly()
                assert int(dut.token__valid.value), f"{context}: token.valid dropped"
                assert int(dut.token__payload.value) == out, f"{context}: token changed"
            await FallingEdge(dut.clk)
            dut.token__ready.value = 1
            await RisingEdge(dut.clk)
            dut.token__ready.value = 0
            fired = await First(token_rise, busy_fall, Timer(limit * CLOCK_NS, "ns"))
            assert fired is not token_rise, f"{context}: a second token"
        assert fired is busy_fall, f"{context}: the step did not end in {limit} cycles"
        assert emit == (out is not None), f"{context}: the step ended without a token"
        await FallingEdge(dut.clk)
        self.waited += wait
        self.steps += 1
        return out, int(dut.cycles.value), wait

    async def run(self, image: SerialImage, prompt, count, *, temperature=0.0, seed=0):
        """A state reset, ``prompt`` and ``count`` new tokens; every step checked."""
        dut, im, cfg = self.dut, image.im, image.im.config
        x0 = golden.sampler_x0(temperature) if temperature else 0
        prompt = [token % cfg.vocab_size for token in prompt]
        dut.x0.value = x0
        dut.seed.value = seed
        await self.pulse("seed_load")
        self.machine.seed(seed)
        await self.pulse("reset_state")
        self.machine.reset_state()
        tokens = []
        for index, (token_in, emit, expected, state) in enumerate(golden_run(
                im, prompt, count, x0, seed)):
            context = f"{self.what}, x0 {x0} seed {seed}, step {index}"
            want = self.machine.step(token_in, emit, x0)
            assert want == expected, f"{context}: Machine's token {want}, golden {expected}"
            got, cycles, wait = await self.step(token_in, emit, context,
                                                limit=self.machine.cycles + 100)
            assert got == expected, f"{context}: token {got}, golden {expected}"
            hw_state = (await self.peek(image.regions["H"], cfg.num_layers * cfg.hidden_size)
                        ).reshape(state.shape)
            if not np.array_equal(hw_state, state):
                layer, element = np.argwhere(hw_state != state)[0]
                raise AssertionError(
                    f"{context}: state of layer {layer} element {element} is "
                    f"{hw_state[layer, element]}, golden {state[layer, element]}")
            assert cycles == self.machine.cycles + wait, (
                f"{context}: {cycles} cycles, Machine's {self.machine.cycles} + {wait} waited")
            if got is not None:
                tokens.append(got)
        dut._log.info("%s: %d tokens equal to the golden model's: %s (last step %d cycles)",
                      self.what, len(tokens), tokens, self.machine.cycles)
        return tokens

    async def finish(self, image: SerialImage):
        """Nothing left unchecked: every word of the image's span of ``M`` equals Machine's,
        and the token stream was back-pressured at least once."""
        got = await self.peek(0, len(image.mem))
        want = _signed32(self.machine.M[:len(image.mem)])
        wrong = np.flatnonzero(got != want)
        assert not wrong.size, (f"{self.what}: M[{wrong[0]}] is {got[wrong[0]]} at the end, "
                                f"Machine's {want[wrong[0]]}")
        assert self.steps and self.waited, f"{self.what}: no step, or no back-pressure"


def _image(spec: str) -> SerialImage:
    return SerialImage(golden.prepare(model_from_spec(spec)))


def _setup(dut):
    spec = os.environ["SERIAL_MODEL"]
    image = _image(spec)
    return image, Harness(dut, image.token_bits, spec), int(os.environ["SERIAL_TOKENS"])


@cocotb.test()
async def greedy_and_reset(dut):
    """Greedy decoding; then a state reset and a second prompt, equal to a fresh golden run."""
    image, h, count = _setup(dut)
    await h.start()
    await h.load(image)
    await h.run(image, PROMPT, count)
    await h.run(image, SECOND_PROMPT, max(2, count // 4))
    await h.finish(image)


@cocotb.test()
async def sampled(dut):
    """Temperature sampling with the xorshift32 PRNG, two seeds and temperatures."""
    image, h, count = _setup(dut)
    await h.start()
    await h.load(image)
    await h.run(image, PROMPT, count, temperature=TEMPERATURE, seed=1234)
    await h.run(image, PROMPT[:2], max(2, count // 4), temperature=2.0, seed=0)
    await h.finish(image)


@cocotb.test(skip="SERIAL_LOAD_SEED" not in os.environ)
async def load_port(dut):
    """A second random model of the same shape written over the first (program words
    included) after decoding with the first, then greedy decoding equal to its golden run."""
    image, h, count = _setup(dut)
    await h.start()
    await h.load(image)
    await h.run(image, PROMPT[:3], 2)
    fields = os.environ["SERIAL_MODEL"][len("random:"):].split(",")
    fields[4] = os.environ["SERIAL_LOAD_SEED"]
    other = _image("random:" + ",".join(fields))
    assert len(other.mem) == len(image.mem) and not np.array_equal(other.mem, image.mem), \
        "the second model must be of the same shape and differ"
    h.what = f"{h.what}, then seed {fields[4]} through the load port"
    await h.load(other)
    await h.run(other, PROMPT, max(4, count // 2))
    await h.finish(other)
