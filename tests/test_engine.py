# amaranth: UnusedElaboratable=no
"""The decode engine (hw/engine.py): bit-exact whole decode steps against the golden model,
in the Amaranth simulator (a tiny model) and on Verilator through cocotb (random models and
the shipped ones), with the cycle count of every step checked against the schedule."""

import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Fragment, Shape
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from mmfree.hw.engine import Engine
from mmfree.hw.normquant import NormQuant
from mmfree.hw.sigmoid import Sigmoid
from mmfree.sim import golden
from mmfree.sim.engine import (PAIR_TAIL, REUSE_SAVES, EngineImage, Op, act_saves,
                               step_cycles)
from mmfree.sim.model import ModelConfig, random_model
from mmfree.sim.packing import unpack_ternary
from mmfree.sim.toolchain import amaranth_to_verilog, run_cocotb
from mmfree.tools.device import BOARD_CONFIGS

TB_DIR = Path(__file__).parent / "tb"
sys.path.insert(0, str(TB_DIR))
from engine_tb import golden_run, model_from_spec  # noqa: E402

MODELS = Path(__file__).parent.parent / "tools" / "models"


def _tiny(act="silu", seed=1, **overrides):
    fields = dict(vocab_size=16, hidden_size=16, num_layers=2, intermediate_size=22,
                  hidden_act=act)
    fields.update(overrides)
    return golden.prepare(random_model(ModelConfig(**fields), seed=seed))


def test_image_parameters():
    im = _tiny()
    with pytest.raises(ValueError, match="lanes must be a positive power of two, not 12"):
        EngineImage(im, 12)
    with pytest.raises(ValueError, match="lanes must be at least 4 for 2bit packing, not 2"):
        EngineImage(im, 2)
    with pytest.raises(ValueError, match="hidden_size must be a multiple of 4 for the engine, "
                                         "not 18"):
        EngineImage(_tiny(hidden_size=18), 4)
    with pytest.raises(TypeError, match="image must be an EngineImage, not 3"):
        Engine(3)


def test_image_program():
    im = _tiny()
    image = EngineImage(im, 8)
    ops = [instr["op"] for instr in image.program]
    layer = [Op.NORM, Op.BITLINEAR, Op.BITLINEAR, Op.BITLINEAR, Op.NORM, Op.MLGRU_H,
             Op.MLGRU_O, Op.BITLINEAR, Op.NORM, Op.BITLINEAR, Op.BITLINEAR]
    assert ops == [Op.EMBED] + layer * 2 + [Op.NORM, Op.HEAD, Op.END]
    assert image.ternary_weights() == 2 * (4 * 16 * 16 + 3 * 22 * 16) + 16 * 16
    # The load words cover every memory row; addresses are unique.
    words = image.load_words()
    assert len({address for address, _ in words}) == len(words)
    # The chunks of layer 0's i_proj decode back to its ternary weights, row by row.
    first = image.program[1 + 1]
    assert (first["chunks"], first["n_out"]) == (2, 16)
    chunks = image.tmem[first["tbase"]:first["tbase"] + 2 * 16]
    packed = np.array([list(c.to_bytes(2, "little")) for c in chunks], dtype=np.uint8)
    np.testing.assert_array_equal(unpack_ternary(packed, 8, "2bit").reshape(16, 16),
                                  im.layers[0].i_proj.T)


@pytest.mark.parametrize("lanes, width, packing", [(8, 4, "1.6bit"), (16, 8, "2bit")])
def test_image_memories_are_the_engines(lanes, width, packing):
    """EngineImage.memories() (what the block RAM estimate counts) describes the memories the
    engine declares: width, depth, read ports and write granularity."""
    image = EngineImage(_tiny(), lanes, width, packing)
    m = Engine(image, debug=False).elaborate(None)
    declared = {}
    for name, (sub, *_) in m._named_submodules.items():
        if isinstance(sub, Memory):
            grains = {port.signature.granularity or Shape.cast(sub.shape).width
                      for port in sub.write_ports}
            declared[name] = (Shape.cast(sub.shape).width, sub.depth, len(sub.read_ports),
                              *grains)
    assert declared == image.memories()
    # Elaborate the rest too: submodules left unelaborated warn (UnusedElaboratable) when the
    # garbage collector finds them, inside whichever test runs then.
    Fragment.get(m, None)


def _run_amaranth(im, lanes, prompt, count, *, temperature=0.0, seed=0, fused=True,
                  pairs=True, weight_reg=False, shared_r=True, sigmoid_steps=2):
    """``pairs``: rows in pairs, the GLU's and the other BitLinears' (True), the GLU's only
    ("glu") or none (False)."""
    image = EngineImage(im, lanes, fused_sums=fused, glu_pairs=bool(pairs),
                        row_pairs=pairs is True, weight_reg=weight_reg, shared_r=shared_r,
                        sigmoid_steps=sigmoid_steps)
    assert image.reuses_r == (shared_r and fused)
    assert image.paired_glu == (bool(pairs) and lanes >= 64)
    assert image.paired_rows == (pairs is True and lanes >= 64)
    dut = Engine(image)
    x0 = golden.sampler_x0(temperature) if temperature else 0
    steps = golden_run(im, prompt, count, x0, seed)
    cfg = im.config
    seen = []

    async def bench(ctx):
        ctx.set(dut.token.ready, 1)
        ctx.set(dut.x0, x0)
        ctx.set(dut.seed, seed)
        ctx.set(dut.seed_load, 1)
        await ctx.tick()
        ctx.set(dut.seed_load, 0)
        for token_in, emit, expected, state in steps:
            ctx.set(dut.step.payload, {"token": token_in, "emit": int(emit)})
            ctx.set(dut.step.valid, 1)
            await ctx.tick().until(dut.step.ready)
            ctx.set(dut.step.valid, 0)
            got = None
            for _ in range(step_cycles(image, token=cfg.vocab_size, sampled=True) + 10):
                await ctx.tick()
                if ctx.get(dut.token.valid):
                    got = ctx.get(dut.token.payload)
                if not ctx.get(dut.busy):
                    break
            hw_state = np.zeros(cfg.num_layers * cfg.hidden_size, dtype=np.int64)
            for index in range(len(hw_state)):
                ctx.set(dut.peek_addr, image.regions["H"] + index)
                await ctx.tick()
                hw_state[index] = ctx.get(dut.peek_data)
            seen.append((got, hw_state.reshape(state.shape), ctx.get(dut.cycles)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(seen) == len(steps)
    for index, ((got, hw_state, cycles), (_, emit, expected, state)) in enumerate(
            zip(seen, steps)):
        assert got == expected, f"step {index}"
        np.testing.assert_array_equal(hw_state, state, err_msg=f"state after step {index}")
        assert cycles == step_cycles(image, emit=emit, token=got or 0, sampled=bool(x0))


@pytest.mark.parametrize(
    "act, lanes, temperature, fused, pairs, weight_reg, shared_r, sigmoid_steps", [
        ("silu", 4, 0.0, True, True, False, True, 2),
        ("gelu", 8, 0.8, True, True, False, True, 2),
        ("silu", 64, 0.8, True, True, False, True, 2),
        ("gelu", 64, 0.0, True, True, False, True, 2),
        ("silu", 64, 0.0, True, False, False, True, 2),
        ("silu", 8, 0.8, False, True, False, True, 2),
        ("gelu", 64, 0.8, True, True, True, True, 2),
        ("gelu", 64, 0.8, True, "glu", False, True, 2),
        ("silu", 64, 0.8, True, True, True, False, 2),
        ("gelu", 8, 0.8, True, True, False, True, 1),
        ("silu", 64, 0.0, True, False, False, True, 1),
    ], ids=["silu-l4-greedy", "gelu-l8-sampled", "silu-l64-grouped-sampled",
            "gelu-l64-grouped-greedy", "silu-l64-grouped-unpaired", "silu-l8-sampled-unfused",
            "gelu-l64-grouped-sampled-weight-reg", "gelu-l64-grouped-sampled-glu-pairs-only",
            "silu-l64-grouped-sampled-own-r", "gelu-l8-sampled-sigmoid-1-bit",
            "silu-l64-grouped-unpaired-sigmoid-1-bit"])
def test_engine_amaranth(act, lanes, temperature, fused, pairs, weight_reg, shared_r,
                         sigmoid_steps):
    """A tiny model (d 16, L 2, I 22, V 16) in the Amaranth simulator: tokens, every layer's
    state after every step, and the cycle count of every step. At 64 lanes the rows are
    grouped: four rows of d a chunk, two of I (down_proj), and the GLU's gate and up rows and
    the other BitLinears' rows (the residual adds too) go through in pairs unless ``pairs``
    is off (``glu_pairs=False``, ``row_pairs=False``: one row a cycle) or ``"glu"`` (the
    GLU's only).
    ``unfused``: NormQuant makes its own sums of squares (``fused_sums=False``, three
    passes); ``weight-reg``: a register between the weight memory and the ternary unit
    (``weight_reg=True``, one more cycle a BitLinear); ``own-r``: every BitLinear computes
    its R (``shared_r=False``; the others let f and g take i's); ``sigmoid-1-bit``: the
    sigmoid units' dividers one quotient bit a stage (``sigmoid_steps=1``, 10 cycles longer
    an MLGRU op or GLU; the others two)."""
    if lanes == 64:
        image = EngineImage(_tiny(act), lanes)
        assert {i["n_in"]: i["group"] for i in image.program if i["op"] in
                (Op.BITLINEAR, Op.HEAD)} == {16: 2, 22: 1}
    _run_amaranth(_tiny(act), lanes, [1, 2, 3], 3, temperature=temperature, seed=7,
                  fused=fused, pairs=pairs, weight_reg=weight_reg, shared_r=shared_r,
                  sigmoid_steps=sigmoid_steps)


def test_image_pairs():
    """The GLU's rows go in pairs where its gate/up rows are grouped (``lanes >= 2 d``) and
    the image asks for it; its schedule halves their cycles."""
    im = golden.prepare(model_from_spec("random:24,2,60,75,9"))
    paired, unpaired = (EngineImage(im, 128, 4, glu_pairs=p) for p in (True, False))
    assert paired.paired_glu and not unpaired.paired_glu
    assert not EngineImage(im, 16).paired_glu          # rows of d in chunks: one a cycle
    (glu,) = {i["n_out"] for i in paired.program if i["glu"]}
    assert step_cycles(unpaired) - step_cycles(paired) == \
        im.config.num_layers * (glu // 2 + max(41 - 1, 8) - PAIR_TAIL)


def test_image_row_pairs():
    """The rows of the BitLinears without a GLU go in pairs where they are grouped, the vector
    width is at least 2 and the image asks for it; its schedule halves their cycles (nothing
    else)."""
    im = golden.prepare(model_from_spec("random:24,2,60,75,9"))
    paired, unpaired = (EngineImage(im, 128, 4, row_pairs=p) for p in (True, False))
    assert paired.paired_rows and not unpaired.paired_rows
    assert paired.paired_glu and unpaired.paired_glu
    assert not EngineImage(im, 16).paired_rows         # rows of d in chunks: one a cycle
    assert not EngineImage(im, 128, 1).paired_rows     # the writer stores a pair in a row
    # i, f, g, o_proj (rows of d = 24, four a chunk), down_proj (rows of I = 60, two).
    rows = [i for i in paired.program if i["op"] == Op.BITLINEAR and not i["glu"]]
    assert len(rows) == 5 * im.config.num_layers and all(i["group"] for i in rows)
    assert sum(i["add"] for i in rows) == 2 * im.config.num_layers
    assert step_cycles(unpaired) - step_cycles(paired) == sum(i["n_out"] // 2 for i in rows)


def test_image_weight_reg():
    """A register after the weight memory's read costs one cycle per BITLINEAR and HEAD
    that a step runs."""
    im = golden.prepare(model_from_spec("random:24,2,60,75,9"))
    plain, registered = (EngineImage(im, 128, 4, weight_reg=r) for r in (False, True))
    ternary = sum(i["op"] in (Op.BITLINEAR, Op.HEAD) for i in plain.program)
    silent = sum(i["op"] in (Op.BITLINEAR, Op.HEAD) and not i["emit_only"]
                 for i in plain.program)
    assert step_cycles(registered) - step_cycles(plain) == ternary
    assert step_cycles(registered, emit=False) - step_cycles(plain, emit=False) == silent
    assert ternary == im.config.num_layers * 6 + 1      # i, f, g, o, gate/up, down; lm_head


def test_image_shared_r():
    """With ``shared_r`` (the default) the f and g BitLinears of every layer take i's R: the
    same input, nothing else; each saves NormQuant's square root and reciprocal. Without the
    writer's sums (``fused_sums=False``) NormQuant makes its own sum: no sharing."""
    im = golden.prepare(model_from_spec("random:24,2,60,75,9"))
    shared, own = (EngineImage(im, 128, 4, shared_r=s) for s in (True, False))
    assert shared.reuses_r and not own.reuses_r
    for layer in range(im.config.num_layers):
        # EMBED; a layer's 11: NORM, i, f, g, NORM, MLGRU_H, MLGRU_O, o_proj, NORM, GLU, down
        start = 2 + layer * 11
        block = shared.program[start:start + 3]
        assert [i["op"] for i in block] == [Op.BITLINEAR] * 3
        assert [i["reuse"] for i in block] == [0, 1, 1]
        assert len({i["src"] for i in block}) == 1
    assert sum(i["reuse"] for i in shared.program) == 2 * im.config.num_layers
    assert REUSE_SAVES == NormQuant.LATENCY_SUM_IN - NormQuant.LATENCY_REUSE
    assert step_cycles(own) - step_cycles(shared) == 2 * im.config.num_layers * REUSE_SAVES
    assert not EngineImage(im, 128, 4, fused_sums=False).reuses_r
    # The program is all that differs.
    assert (shared.cmem, shared.tmem, shared.emb) == (own.cmem, own.tmem, own.emb)


def test_image_sigmoid_steps():
    """The sigmoid units' dividers two bits a stage (the default) take 10 cycles off every
    MLGRU op and GLU: the activation's latency, 35 -> 25 (``Sigmoid.latency``)."""
    im = golden.prepare(model_from_spec("random:24,2,60,75,9"))
    fast, slow = (EngineImage(im, 128, 4, sigmoid_steps=s) for s in (2, 1))
    assert act_saves(2) == Sigmoid(mode="silu").latency - Sigmoid(mode="silu", steps=2).latency
    assert act_saves(1) == 0 and act_saves(2) == 10
    # MLGRU_H, MLGRU_O and the GLU of each layer.
    assert step_cycles(slow) - step_cycles(fast) == 3 * im.config.num_layers * act_saves(2)
    assert fast.program == slow.program
    for steps in (0, 22, True):
        with pytest.raises(ValueError, match="sigmoid_steps must be an integer from 1 to 21"):
            EngineImage(im, 128, 4, sigmoid_steps=steps)


_ULX3S = BOARD_CONFIGS["ulx3s-85f"]
assert (_ULX3S.lanes, _ULX3S.vector_width, _ULX3S.packing) == (256, 4, "1.6bit"), _ULX3S

# Verilator runs: (id, model spec, lanes, new tokens per run, load-port seed, marks).
COCOTB = [
    ("d64-L2-I192-V256-l64", "random:64,2,192,256,1", 64, 32, 2, ()),
    ("d96-L3-I200-V97-l32", "random:96,3,200,97,3", 32, 32, None, ()),
    ("d32-L2-I44-V64-gelu-l16", "random:32,2,44,64,5,gelu", 16, 32, None, ()),
    # The ULX3S's engine layout: vector width 4, weights stored 1.6-bit (rows of 26 bytes
    # written whole by the load port), the board's fused_sums, glu_pairs, row_pairs,
    # weight_reg, shared_r and sigmoid_steps (the Amaranth runs above cover the others).
    ("d48-L2-I80-V96-l128-w4-1.6bit", "random:48,2,80,96,7", 128, 32, 8, (), 4, "1.6bit",
     _ULX3S.fused_sums, _ULX3S.glu_pairs, _ULX3S.row_pairs, _ULX3S.weight_reg,
     _ULX3S.shared_r, _ULX3S.sigmoid_steps),
    # Grouped rows: four rows of d = 24 a chunk of 128 lanes, two of I = 60; the lm_head's
    # 75 rows end in a chunk of three; the rows of every BitLinear in pairs.
    ("d24-L2-I60-V75-l128-grouped", "random:24,2,60,75,9", 128, 32, 4, ()),
    ("icebreaker-l64", str(MODELS / "icebreaker.safetensors"), 64, 32, None,
     (pytest.mark.slow,)),
    # The shipped ULX3S-85F model in the board's engine: 256 lanes, vector width 4, 1.6-bit,
    # the board's fused_sums, glu_pairs, row_pairs, weight_reg, shared_r and sigmoid_steps.
    ("ulx3s-85f-l256-w4-1.6bit", str(MODELS / "ulx3s-85f.safetensors"), 256, 32, None,
     (pytest.mark.slow,), 4, "1.6bit", _ULX3S.fused_sums, _ULX3S.glu_pairs, _ULX3S.row_pairs,
     _ULX3S.weight_reg, _ULX3S.shared_r, _ULX3S.sigmoid_steps),
]


@pytest.mark.parametrize(
    "spec, lanes, tokens, load_seed, width, packing, fused, pairs, rows, reg, shared_r, "
    "sigmoid_steps", [
        pytest.param(*c[1:5],
                     *(c[6:] + (8, "", True, True, True, False, True, 2)[len(c[6:]):]),
                     id=c[0], marks=c[5])
        for c in COCOTB])
def test_engine_cocotb(spec, lanes, tokens, load_seed, width, packing, fused, pairs, rows,
                       reg, shared_r, sigmoid_steps):
    """Greedy and sampled generation (prompt + 32 tokens each), a state reset between runs,
    and (where given) a second model written through the load port: every token, every
    layer's state after every step, and every step's cycle count equal the golden model and
    the documented schedule."""
    im = golden.prepare(model_from_spec(spec))
    image = EngineImage(im, lanes, width, packing, fused_sums=fused, glu_pairs=pairs,
                        row_pairs=rows, weight_reg=reg, shared_r=shared_r,
                        sigmoid_steps=sigmoid_steps)
    dut = Engine(image)
    env = {"ENGINE_MODEL": spec, "ENGINE_LANES": str(lanes), "ENGINE_TOKENS": str(tokens),
           "ENGINE_WIDTH": str(width), "ENGINE_PACKING": packing,
           "ENGINE_FUSED": str(int(fused)), "ENGINE_PAIRS": str(int(pairs)),
           "ENGINE_ROW_PAIRS": str(int(rows)),
           "ENGINE_WEIGHT_REG": str(int(reg)), "ENGINE_SHARED_R": str(int(shared_r)),
           "ENGINE_SIGMOID_STEPS": str(sigmoid_steps)}
    if load_seed is not None:
        env["ENGINE_LOAD_SEED"] = str(load_seed)
    result = run_cocotb(toplevel="engine", verilog=amaranth_to_verilog(dut, "engine"),
                        test_module="engine_tb", python_path=[TB_DIR], seed=1, extra_env=env)
    expected = ["greedy_and_reset", "sampled"] + (["load_port"] if load_seed else [])
    assert sorted(result.passed) == sorted(expected)
