"""The serial decode engine (hw/serial.py) on Verilator through cocotb: bit-exact whole decode
steps of random models and the shipped iCEBreaker model against the golden model, with the
cycle count of every step equal to :class:`mmfree.sim.serial.Machine`'s (tests/tb/
serial_engine_tb.py). The engine is built with empty memories, as the SoC builds it, and the
models go in through the load port: one Verilator build serves every model of one token width."""

import functools
import sys
from pathlib import Path

import pytest

from mmfree.hw.serial import SerialEngine
from mmfree.sim import golden
from mmfree.sim.serial_program import SerialImage
from mmfree.sim.toolchain import amaranth_to_verilog, run_cocotb

TB_DIR = Path(__file__).parent / "tb"
sys.path.insert(0, str(TB_DIR))
from engine_tb import model_from_spec  # noqa: E402

MODELS = Path(__file__).parent.parent / "tools" / "models"

# Verilator runs: (id, model spec, new tokens per run, load-port seed, marks). The random
# models have V = 16 (4-bit tokens: one build); d 24 and I 22, 60 are not multiples of a
# weight word (16 trits), I < d in the second.
COCOTB = [
    ("d16-L2-I22-V16-silu", "random:16,2,22,16,1", 12, 2, ()),
    ("d24-L1-I20-V16-gelu", "random:24,1,20,16,3,gelu", 12, None, ()),
    ("icebreaker", str(MODELS / "icebreaker.safetensors"), 2, None, (pytest.mark.slow,)),
]


@functools.cache
def _verilog(token_bits: int) -> str:
    return amaranth_to_verilog(SerialEngine(token_bits=token_bits), "serial_engine")


@pytest.mark.parametrize("spec, tokens, load_seed", [
    pytest.param(*c[1:4], id=c[0], marks=c[4]) for c in COCOTB])
def test_serial_engine_cocotb(spec, tokens, load_seed):
    """Greedy and sampled generation (two prompts each, a state reset between them) and, where
    given, a second model written over the first through the load port: every token, every
    layer's state after every step and every step's cycle count equal the golden model and
    Machine."""
    image = SerialImage(golden.prepare(model_from_spec(spec)))
    env = {"SERIAL_MODEL": spec, "SERIAL_TOKENS": str(tokens)}
    if load_seed is not None:
        env["SERIAL_LOAD_SEED"] = str(load_seed)
    result = run_cocotb(toplevel="serial_engine", verilog=_verilog(image.token_bits),
                        test_module="serial_engine_tb", python_path=[TB_DIR], seed=1,
                        extra_env=env)
    expected = ["greedy_and_reset", "sampled"] + (["load_port"] if load_seed else [])
    assert sorted(result.passed) == sorted(expected)
