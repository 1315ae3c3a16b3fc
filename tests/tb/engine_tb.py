"""cocotb testbench of hw/engine.py (Engine): whole decode steps against
:func:`mmfree.sim.golden.decode_step` and the sampler of :func:`mmfree.sim.decoding.generate`.

Every step is checked for exact equality: the emitted token, the recurrent state of every
layer (read through the debug port), and the step's cycle count against
:func:`mmfree.sim.engine.step_cycles`.

Run from tests/test_engine.py through :func:`mmfree.sim.toolchain.run_cocotb`. Environment:
``ENGINE_MODEL`` (``random:d,L,I,V,seed[,act]`` or a model file), ``ENGINE_LANES``,
``ENGINE_TOKENS`` (new tokens per run), ``ENGINE_WIDTH`` and ``ENGINE_PACKING`` (optional: the
image's vector width and weight packing), ``ENGINE_FUSED``, ``ENGINE_PAIRS`` and
``ENGINE_ROW_PAIRS`` (optional, ``1`` by default: the image's ``fused_sums``, ``glu_pairs``
and ``row_pairs``), ``ENGINE_WEIGHT_REG``
(optional, ``0`` by default: the image's ``weight_reg``), ``ENGINE_SHARED_R`` (optional, ``1``
by default: the image's ``shared_r``), ``ENGINE_SIGMOID_STEPS`` (optional, ``2`` by default: the
image's ``sigmoid_steps``), ``ENGINE_LOAD_SEED``
(optional: the seed of a second random model of the same shape, written through the load port
by the last test).
"""

import os

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge
from streams import reset, start_clock

from mmfree.sim import golden
from mmfree.sim.engine import EngineImage, step_cycles
from mmfree.sim.model import ModelConfig, random_model

PROMPT = [ord(c) for c in "ROMEO:"]
TEMPERATURE = 0.8


def model_from_spec(spec: str):
    """A :class:`~mmfree.sim.model.Model` from ``random:d,L,I,V,seed[,act]`` or a file."""
    if spec.startswith("random:"):
        fields = spec[len("random:"):].split(",")
        d, layers, inter, vocab, seed = map(int, fields[:5])
        act = fields[5] if len(fields) > 5 else "silu"
        cfg = ModelConfig(vocab_size=vocab, hidden_size=d, num_layers=layers,
                          intermediate_size=inter, hidden_act=act)
        return random_model(cfg, seed=seed)
    from mmfree.sim.modelfile import load_model
    return load_model(spec)


def golden_run(im, prompt, count, x0, seed):
    """``[(token_in, emit, expected_token or None, state_after), ...]`` for a prompt and
    ``count`` new tokens, as :func:`mmfree.sim.decoding.generate` produces them."""
    state = golden.init_state(im)
    prng = golden.xorshift32_seed(seed)
    steps = []
    logits = None
    for index, token in enumerate(prompt):
        logits, state = golden.decode_step(im, token, state)
        steps.append([token, index == len(prompt) - 1, None, state.copy()])
    for index in range(count):
        if x0:
            prng = golden.xorshift32(prng)
            token = golden.sample(logits, x0, prng)
        else:
            token = golden.argmax(logits)
        steps[-1][2] = token
        if index + 1 < count:
            logits, state = golden.decode_step(im, token, state)
            steps.append([token, True, None, state.copy()])
    return steps


class Harness:
    def __init__(self, dut, image):
        self.dut = dut
        self.image = image
        cfg = image.im.config
        self.token_bits = max(1, (cfg.vocab_size - 1).bit_length())

    async def start(self):
        dut = self.dut
        start_clock(dut)
        dut.step__valid.value = 0
        dut.load__valid.value = 0
        dut.token__ready.value = 1
        dut.reset_state.value = 0
        dut.seed_load.value = 0
        dut.x0.value = 0
        await reset(dut)

    async def pulse(self, name):
        getattr(self.dut, name).value = 1
        await RisingEdge(self.dut.clk)
        getattr(self.dut, name).value = 0

    async def step(self, token, emit):
        """One decode step; returns (token or None, cycles)."""
        dut = self.dut
        assert int(dut.step__ready.value) == 1, "engine not idle"
        dut.step__payload.value = token | (int(emit) << self.token_bits)
        dut.step__valid.value = 1
        await RisingEdge(dut.clk)
        dut.step__valid.value = 0
        out = None
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            if int(dut.token__valid.value):
                assert emit, "a token came out of a step that does not emit"
                out = int(dut.token__payload.value)
            if out is not None or not emit:
                break
            if not int(dut.busy.value):
                raise AssertionError("the step ended without a token")
        if int(dut.busy.value):
            await FallingEdge(dut.busy)
        await FallingEdge(dut.clk)
        return out, int(dut.cycles.value)

    async def state(self):
        dut, cfg = self.dut, self.image.im.config
        base = self.image.regions["H"]
        values = np.zeros(cfg.num_layers * cfg.hidden_size, dtype=np.int64)
        for index in range(len(values)):
            await FallingEdge(dut.clk)
            dut.peek_addr.value = base + index
            await RisingEdge(dut.clk)
            await ReadOnly()
            values[index] = dut.peek_data.value.to_signed()
        await FallingEdge(dut.clk)
        return values.reshape(cfg.num_layers, cfg.hidden_size)

    async def run(self, im, prompt, count, *, temperature=0.0, seed=0, check_cycles=True):
        x0 = golden.sampler_x0(temperature) if temperature else 0
        prompt = [token % im.config.vocab_size for token in prompt]
        self.dut.x0.value = x0
        self.dut.seed.value = seed
        await self.pulse("seed_load")
        await self.pulse("reset_state")
        tokens = []
        for index, (token_in, emit, expected, state) in enumerate(golden_run(
                im, prompt, count, x0, seed)):
            got, cycles = await self.step(token_in, emit)
            assert got == expected, f"step {index}: token {got}, golden {expected}"
            hw_state = await self.state()
            if not np.array_equal(hw_state, state):
                layer, element = np.argwhere(hw_state != state)[0]
                raise AssertionError(
                    f"step {index}: state of layer {layer} element {element} is "
                    f"{hw_state[layer, element]}, golden {state[layer, element]}")
            if check_cycles:
                want = step_cycles(self.image, emit=emit, token=got or 0, sampled=bool(x0))
                assert cycles == want, f"step {index}: {cycles} cycles, documented {want}"
            if got is not None:
                tokens.append(got)
        self.dut._log.info("%d tokens, all equal to the golden model: %s", len(tokens), tokens)
        return tokens


def _image(im, lanes):
    return EngineImage(im, lanes, int(os.environ.get("ENGINE_WIDTH", "8")),
                       os.environ.get("ENGINE_PACKING", ""),
                       fused_sums=os.environ.get("ENGINE_FUSED", "1") == "1",
                       glu_pairs=os.environ.get("ENGINE_PAIRS", "1") == "1",
                       row_pairs=os.environ.get("ENGINE_ROW_PAIRS", "1") == "1",
                       weight_reg=os.environ.get("ENGINE_WEIGHT_REG", "0") == "1",
                       shared_r=os.environ.get("ENGINE_SHARED_R", "1") == "1",
                       sigmoid_steps=int(os.environ.get("ENGINE_SIGMOID_STEPS", "2")))


def _setup(dut):
    model = model_from_spec(os.environ["ENGINE_MODEL"])
    im = golden.prepare(model)
    image = _image(im, int(os.environ["ENGINE_LANES"]))
    return im, image, Harness(dut, image), int(os.environ.get("ENGINE_TOKENS", "32"))


@cocotb.test()
async def greedy_and_reset(dut):
    """Greedy decoding; then a state reset and a second prompt, equal to a fresh golden run."""
    im, image, h, count = _setup(dut)
    await h.start()
    await h.run(im, PROMPT, count)
    await h.run(im, [ord(c) % im.config.vocab_size for c in "JULIET"], max(4, count // 4))


@cocotb.test()
async def sampled(dut):
    """Temperature sampling with the xorshift32 PRNG, two seeds."""
    im, image, h, count = _setup(dut)
    await h.start()
    await h.run(im, PROMPT, count, temperature=TEMPERATURE, seed=1234)
    await h.run(im, PROMPT[:2], max(4, count // 4), temperature=2.0, seed=0)


@cocotb.test(skip="ENGINE_LOAD_SEED" not in os.environ)
async def load_port(dut):
    """A second model of the same shape, written word by word through the load port, then
    greedy decoding equal to that model's golden run (and the cycle counts of its image)."""
    im, image, h, count = _setup(dut)
    await h.start()
    fields = os.environ["ENGINE_MODEL"][len("random:"):].split(",")
    fields[4] = os.environ["ENGINE_LOAD_SEED"]
    other = golden.prepare(model_from_spec("random:" + ",".join(fields)))
    other_image = _image(other, image.lanes)
    assert other_image.tmem != image.tmem, "the second model must differ"
    words = other_image.load_words()
    dut.load__valid.value = 1
    for address, word in words:
        dut.load__payload.value = address | (word << 32)
        await RisingEdge(dut.clk)
        await ReadOnly()
        assert int(dut.load__ready.value) == 1
        await FallingEdge(dut.clk)
    dut.load__valid.value = 0
    dut._log.info("loaded %d words", len(words))
    h.image = other_image
    await h.run(other, PROMPT, max(8, count // 4))
