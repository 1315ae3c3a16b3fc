"""The serial engine's compiler (sim/serial_program.py) on the reference simulator
(sim/serial.py): every routine against its golden function at extreme inputs, whole decode
steps of random models and the shipped iCEBreaker model bit-exact with the golden model (every
token and the recurrent state after every step), refusals, and the load port's words."""

import dataclasses
import functools
import sys
from pathlib import Path

import numpy as np
import pytest

from mmfree.sim import golden, serial
from mmfree.sim.model import ModelConfig, random_model
from mmfree.sim.serial import Instr, Op
from mmfree.sim.serial_program import DESC_FIELDS, Assembler, SerialImage

TB_DIR = Path(__file__).parent / "tb"
sys.path.insert(0, str(TB_DIR))
from engine_tb import golden_run  # noqa: E402

MODELS = Path(__file__).parent.parent / "tools" / "models"
TEMPERATURE = 0.8
SEED = 7

# d, L, I, V, act, seed: sizes that are not multiples of 16 (or 4), I < d, odd V.
CONFIGS = [(16, 2, 22, 16, "silu", 1), (24, 1, 60, 75, "gelu", 2), (32, 2, 44, 64, "silu", 3),
           (20, 1, 12, 40, "gelu", 4)]
CONFIG_IDS = [f"d{d}-L{L}-I{i}-V{v}-{act}" for d, L, i, v, act, _ in CONFIGS]


@functools.cache
def _int_model(d, layers, inter, vocab, act, seed):
    cfg = ModelConfig(vocab_size=vocab, hidden_size=d, num_layers=layers,
                      intermediate_size=inter, hidden_act=act)
    return golden.prepare(random_model(cfg, seed=seed))


@functools.cache
def _image(config) -> SerialImage:
    return SerialImage(_int_model(*config))


@functools.cache
def _icebreaker():
    from mmfree.sim.modelfile import load_model
    return SerialImage(golden.prepare(load_model(MODELS / "icebreaker.safetensors")))


def _signed(words) -> np.ndarray:
    w = np.asarray(words, dtype=np.int64) & 0xFFFF_FFFF
    return np.where(w >= (1 << 31), w - (1 << 32), w)


def _read(m, addr, n) -> np.ndarray:
    return _signed(m.M[addr:addr + n])


def _write(m, addr, values):
    for i, v in enumerate(values):
        m.M[addr + i] = int(v) & 0xFFFF_FFFF


def _state(m, image) -> np.ndarray:
    cfg = image.im.config
    return _read(m, image.regions["H"], cfg.num_layers * cfg.hidden_size).reshape(
        cfg.num_layers, cfg.hidden_size)


def _check_run(image, m, prompt, count, x0, what):
    """Step the machine through golden_run's sequence; compare every token and state."""
    steps = golden_run(image.im, prompt, count, x0, SEED)
    m.seed(SEED)
    for index, (token, emit, expected, state) in enumerate(steps):
        out = m.step(token, emit, x0 if emit else 0)
        assert out == expected, f"{what}: step {index} token {out}, golden {expected}"
        np.testing.assert_array_equal(_state(m, image), state,
                                      err_msg=f"{what}: state after step {index}")
    return len(steps)


def _driver(image, build) -> serial.Machine:
    """A machine whose step runs the code ``build(a)`` appends (then HALT) instead of the
    program; the image's subroutines stay where they are (``image.labels``)."""
    m = image.machine()
    a = Assembler()
    build(a)
    a(Op.HALT)
    base = len(image.program)
    for i, ins in enumerate(a.assemble()):
        m.write(serial.PROG_BASE + base + i, ins.encode())
    m.write(serial.PROG_BASE, Instr(Op.JMP, imm=base).encode())
    return m


def _call(image, a, desc, routine):
    a.imm(Op.LD, desc)
    a(Op.SETP)
    a(Op.CALL, imm=image.labels[routine])


def _extreme_vectors(rng, n):
    top = (1 << 31) - 1
    yield np.zeros(n, dtype=np.int64)
    yield np.full(n, top)
    yield np.full(n, -top - 1)
    yield np.where(np.arange(n) % 2, top, -top - 1)
    yield np.eye(1, n, n // 2, dtype=np.int64)[0] * -(1 << 31)
    yield np.eye(1, n, 0, dtype=np.int64)[0]
    yield rng.integers(-3, 4, n)
    for bits in (8, 20, 31, 32):
        yield rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), n)


# --------------------------------------------------------------------------------------------
# Routines against their golden functions.

@pytest.mark.parametrize("name", ["attn_norm", "g_norm", "mlp_norm", "norm"])
def test_rmsnorm(name):
    """NP + NYS: golden.rmsnorm of zero, saturated, tiny and random vectors."""
    image = _image(CONFIGS[2])
    im, d = image.im, image.d
    const = im.norm if name == "norm" else getattr(im.layers[1], name)
    desc = image.descs["norm"] if name == "norm" else image.descs[(1, name)]
    inp = image.mem[desc + DESC_FIELDS["inp"]]

    def build(a):
        _call(image, a, desc, "np")
        _call(image, a, desc, "nys")

    m = _driver(image, build)
    rng = np.random.default_rng(5)
    for index, x in enumerate(_extreme_vectors(rng, d)):
        _write(m, int(inp), x)
        m.step(0, False)
        np.testing.assert_array_equal(_read(m, image.regions["Y"], d), const(x),
                                      err_msg=f"{name}, vector {index}")


@pytest.mark.parametrize("config", [CONFIGS[1], CONFIGS[2]], ids=[CONFIG_IDS[1], CONFIG_IDS[2]])
@pytest.mark.parametrize("name", ["i_proj", "g_proj", "o_proj", "gate_proj", "down_proj",
                                  "lm_head"])
def test_bitlinear(config, name):
    """NP + BLQ + the row loop: golden's BitLinear (norm, quantizer, requantizer)."""
    image = _image(config)
    im = image.im
    bl = im.lm_head if name == "lm_head" else getattr(im.layers[-1], name)
    desc = image.descs["lm_head"] if name == "lm_head" else image.descs[(len(im.layers) - 1,
                                                                          name)]
    rows, n = bl.T.shape
    inp = int(image.mem[desc + DESC_FIELDS["inp"]])
    out = image.regions["GU"]

    def build(a):
        _call(image, a, desc, "np")
        _call(image, a, desc, "blq")
        a.imm(Op.FOR, rows)
        a.imm(Op.DOT, n)
        a(Op.MULS, aux=golden.accumulator_bits(n) - 1)
        a.reg(Op.SHRR, 1)
        image._saturate(a, bl.bits)
        a.mem(Op.ST, out, jx=True)
        a(Op.NEXT)

    m = _driver(image, build)
    rng = np.random.default_rng(6)
    for index, x in enumerate(_extreme_vectors(rng, n)):
        _write(m, inp, x)
        m.step(0, False)
        what = f"{name}, vector {index}"
        q, ymax = golden.activation_quant(bl.norm(x))
        if ymax:
            np.testing.assert_array_equal(np.array(m.qbuf[:n], dtype=np.uint8).view(np.int8),
                                          q, err_msg=what)
        np.testing.assert_array_equal(_read(m, out, rows), bl(x), err_msg=what)


def test_quantize_requantize():
    """BLQ's quantizer and the requantizer on raw norm outputs (w = 1, shift 0): ymax 0, 1,
    2**31, ties of the rounding, random widths."""
    image = _image(CONFIGS[0])
    n, rows = 37, 11
    base = len(image.mem) + 8
    desc, ones, weights = base, base + 16, base + 64
    rng = np.random.default_rng(7)
    T = rng.integers(-1, 2, (rows, n)).astype(np.int8)
    from mmfree.sim.packing import pack_ternary
    t16 = np.zeros((rows, 48), dtype=np.int8)
    t16[:, :n] = T
    packed = pack_ternary(t16, "2bit").view("<u4").reshape(-1)
    out = image.regions["GU"]

    def build(a):
        _call(image, a, desc, "blq")
        a.imm(Op.FOR, rows)
        a.imm(Op.DOT, n)
        a(Op.MULS, aux=golden.accumulator_bits(n) - 1)
        a.reg(Op.SHRR, 1)
        image._saturate(a, 32)
        a.mem(Op.ST, out, jx=True)
        a(Op.NEXT)

    m = _driver(image, build)
    _write(m, ones, np.ones(n, dtype=np.int64))
    _write(m, weights, packed)
    top = 1 << 31
    vectors = [np.zeros(n, np.int64), np.eye(1, n, 3, dtype=np.int64)[0],
               np.eye(1, n, 5, dtype=np.int64)[0] * -top,
               np.where(np.arange(n) % 3 == 0, -top, top - 1),
               np.arange(n) - n // 2,                       # ymax 18: many ties
               np.arange(n) * 2 - n,
               np.full(n, -(top - 1))]
    for bits in (2, 9, 17, 24, 28, 32):
        vectors += [rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), n) for _ in range(3)]
    for index, y in enumerate(vectors):
        m_, k = int(rng.integers(1 << 14, 1 << 15)), int(rng.integers(10, 40))
        _write(m, desc, [0, 0, 0, n, 0, ones, m_, k, weights])
        _write(m, image.regions["T"], y)
        m.step(0, False)
        q, ymax = golden.activation_quant(y)
        what = f"vector {index}, ymax {ymax}"
        if ymax:
            np.testing.assert_array_equal(np.array(m.qbuf[:n], dtype=np.uint8).view(np.int8),
                                          q, err_msg=what)
        acc = golden.ternary_accumulate(T, q)
        np.testing.assert_array_equal(_read(m, out, rows),
                                      golden.requantize(acc, ymax, m_, k, 32), err_msg=what)


def _act_inputs(rng):
    top = (1 << 31) - 1
    edges = [0, 1, -1, 2, -2, top, -top, -top - 1, 1 << 20, -(1 << 20), 12345, -12345]
    return np.array(edges + list(rng.integers(-top - 1, top + 1, 60)) +
                    list(rng.integers(-(1 << 24), 1 << 24, 60)), dtype=np.int64)


@pytest.mark.parametrize("kind", ["sigmoid", "silu", "gelu"])
@pytest.mark.parametrize("frac", [4, 16, 24, 30])
def test_sigmoid_silu_gelu(kind, frac):
    """The SIG/SILU subroutines against golden.sigmoid, silu and gelu over the 32-bit range."""
    image = _image(CONFIGS[0])
    alpha = golden.GELU_LOG2E if kind == "gelu" else golden.LOG2E
    slot = len(image.mem) + 8

    def build(a):
        a.mem(Op.LD, slot + 2)
        a.put(3)
        a.imm(Op.LD, alpha[1] + frac - golden.EXP_FRAC)
        a.put(4)
        a.mem(Op.LD, slot)
        a(Op.CALL, imm=image.labels["sig" if kind == "sigmoid" else "silu"])
        a.mem(Op.ST, slot + 1)

    m = _driver(image, build)
    _write(m, slot + 2, [alpha[0]])
    xs = _act_inputs(np.random.default_rng(frac))
    got = []
    for x in xs:
        _write(m, slot, [x])
        m.step(0, False)
        got.append(_read(m, slot + 1, 1)[0])
    if kind == "sigmoid":
        expected = golden.sigmoid(xs, frac)
    else:
        expected = golden.silu(xs, frac) if kind == "silu" else golden.gelu(xs, frac)
    np.testing.assert_array_equal(np.array(got), expected, err_msg=f"{kind}, frac {frac}")


def test_sampler():
    """The sampler section against golden.sample: extreme logits and temperatures, a sum
    that reaches the 2**31 - 1 clamp, ties."""
    image = _image(CONFIGS[1])
    V = image.vocab
    lg = image.regions["LG"]
    slot = len(image.mem) + 8

    def build(a):
        a.mem(Op.LD, slot)
        a.put(6)
        a.mem(Op.LD, slot + 1)
        a(Op.JMP, imm=image.labels["sample"])

    m = _driver(image, build)
    rng = np.random.default_rng(8)
    lo, hi = -(1 << 23), (1 << 23) - 1
    cases = [np.zeros(V, np.int64), np.full(V, lo), np.where(np.arange(V) == 7, hi, lo),
             np.where(np.arange(V) % 5 == 0, hi, hi - 3)]
    cases += [rng.integers(lo, hi + 1, V) for _ in range(4)]
    cases += [rng.integers(-2000, 2000, V) for _ in range(4)]
    count = 0
    for index, logits in enumerate(cases):
        for x0 in (-4, -5, golden.sampler_x0(TEMPERATURE), golden.sampler_x0(7.3), -65535):
            for seed in (1, 99, 123456789):
                _write(m, lg, logits)
                _write(m, slot, [int(logits.max()), x0])
                m.seed(seed)
                draw = golden.xorshift32(golden.xorshift32_seed(seed))
                out = m.step(0, True)
                assert out == golden.sample(logits, x0, draw), \
                    f"case {index}, x0 {x0}, seed {seed}"
                count += 1
    assert count == len(cases) * 15


# --------------------------------------------------------------------------------------------
# Whole steps.

@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_random_model(config, sampled):
    """A prompt and 8 new tokens, then a state reset and a second run from a zero state."""
    image = _image(config)
    V = image.vocab
    x0 = golden.sampler_x0(TEMPERATURE) if sampled else 0
    m = image.machine()
    what = f"{config}, {'sampled' if sampled else 'greedy'}"
    steps = _check_run(image, m, [ord(c) % V for c in "ROMEO:"], 8, x0, what)
    m.reset_state()
    steps += _check_run(image, m, [3 % V, (V - 1), 0], 8, x0, f"{what}, after reset")
    assert steps == 6 + 7 + 3 + 7


def test_argmax_first_maximum():
    """Greedy picks the first of equal largest logits (lm_head rows repeat with period 3)."""
    im = _int_model(*CONFIGS[0])
    T = im.lm_head.T.copy()
    T[:] = T[np.arange(T.shape[0]) % 3]
    im = dataclasses.replace(im, lm_head=dataclasses.replace(im.lm_head, T=T))
    image = SerialImage(im)
    m = image.machine()
    _check_run(image, m, [1, 2], 6, 0, "repeated lm_head rows")
    assert m.step(3, True) in (0, 1, 2)


def test_icebreaker_steps():
    """The shipped iCEBreaker model, a few greedy and sampled steps."""
    image = _icebreaker()
    assert (image.d, image.layers, image.inter, image.vocab) == (64, 4, 256, 256)
    m = image.machine()
    _check_run(image, m, [ord(c) for c in "RO"], 2, 0, "icebreaker greedy")
    m.reset_state()
    _check_run(image, m, [ord(c) for c in "RO"], 2, golden.sampler_x0(TEMPERATURE),
               "icebreaker sampled")


@pytest.mark.slow
def test_icebreaker_generate():
    """The shipped iCEBreaker model: a prompt and 8 new tokens, greedy and sampled; the
    memory and program sizes and the step's cycles stay where docs state them."""
    image = _icebreaker()
    assert len(image.mem) <= serial.MEM_WORDS - 4096
    assert len(image.program) <= serial.PROG_WORDS // 2
    for x0 in (0, golden.sampler_x0(TEMPERATURE)):
        m = image.machine()
        _check_run(image, m, [ord(c) for c in "ROMEO:"], 8, x0, f"icebreaker x0 {x0}")
        assert m.cycles < 1_200_000             # docs/serial.md: about 1,115,000 greedy


# --------------------------------------------------------------------------------------------
# Image.

def test_image_attributes():
    image = _image(CONFIGS[1])
    d, inter, vocab = 24, 60, 75
    assert (image.lanes, image.width, image.packing) == (serial.DOT_LANES, 1, "2bit") == (4, 1, "2bit")
    assert image.token_bits == 7 and image.n_max == 60
    assert image.ternary_weights() == 4 * d * d + 2 * inter * d + d * inter + vocab * d
    assert image.regions["H"] + d <= len(image.mem)
    assert image.mem.dtype == np.uint32
    assert all(isinstance(ins, Instr) for ins in image.program)
    assert image.program_words() == [ins.encode() for ins in image.program]


def test_load_words():
    """The load words cover exactly M and the program, at their addresses, and rebuild the
    same machine."""
    image = _image(CONFIGS[0])
    words = image.load_words()
    mem, prog = len(image.mem), len(image.program)
    assert [a for a, _ in words] == list(range(mem)) + \
        [serial.PROG_BASE + i for i in range(prog)]
    assert [w for _, w in words[:mem]] == [int(w) for w in image.mem]
    assert [w for _, w in words[mem:]] == image.program_words()
    assert all(0 <= w < (1 << 32) for _, w in words)
    loaded = serial.Machine([], [], token_bits=image.token_bits)
    for address, word in words:
        loaded.write(address, word)
    fresh = image.machine()
    assert loaded.M == fresh.M and loaded.program == fresh.program
    assert loaded.step(5, True) == fresh.step(5, True)


def test_refusals():
    with pytest.raises(ValueError, match=r"^the model needs [\d,]+ words of the serial "
                                         r"engine's 32,768-word memory$"):
        SerialImage(_int_model(256, 4, 512, 256, "silu", 1))
    with pytest.raises(ValueError, match=r"largest BitLinear input has 2100 elements, more "
                                         r"than the serial engine's 2048-byte"):
        SerialImage(_int_model(8, 1, 2100, 16, "silu", 1))
    with pytest.raises(ValueError, match=r"vocab_size = 40,000 exceeds the serial engine's "
                                         r"loop count of 32,767"):
        SerialImage(_int_model(4, 1, 4, 40_000, "silu", 1))
