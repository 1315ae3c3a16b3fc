# amaranth: UnusedElaboratable=no
"""The serial engine (hw/serial.py) against its specification, :class:`mmfree.sim.serial.Machine`:
every op with every operand mode, random operands (edge cases included) and random instruction
sequences in the Amaranth simulator, comparing the words of ``M`` a program writes (its results
and dumps of A, S, R0..R7 and J), every step's token and every step's cycle count."""

import random
import sys
from pathlib import Path

import pytest
from amaranth.sim import Simulator

from mmfree.hw.serial import SerialEngine
from mmfree.sim.serial import MEM_WORDS, PROG_BASE, PROG_WORDS, Op, Src

sys.path.insert(0, str(Path(__file__).parent))
from serial_harness import (DUMP, Step, enc, machine_run,  # noqa: E402
                            random_program)


def hw_run(steps, mem, *, token_bits=8, seed=None, peek=(), max_cycles=200_000):
    """``([(token or None, cycles), ...], {address: word})`` of the hardware: the steps (each
    with its load-port writes), then ``M`` at ``peek`` through the debug port."""
    dut = SerialEngine(token_bits=token_bits, program=steps[0].program, mem=mem)
    results, peeked = [], {}

    async def bench(ctx):
        ctx.set(dut.token.ready, 1)
        if seed is not None:
            ctx.set(dut.seed, seed)
            ctx.set(dut.seed_load, 1)
            await ctx.tick()
            ctx.set(dut.seed_load, 0)
        for index, st in enumerate(steps):
            writes = list(st.writes)
            if index and st.program is not None:
                writes += [(PROG_BASE + i, w) for i, w in enumerate(st.program)]
            for address, word in writes:
                ctx.set(dut.load.payload, {"addr": address, "data": word})
                ctx.set(dut.load.valid, 1)
                assert ctx.get(dut.load.ready)
                await ctx.tick()
            ctx.set(dut.load.valid, 0)
            if st.reset_state:
                ctx.set(dut.reset_state, 1)
                await ctx.tick()
                ctx.set(dut.reset_state, 0)
            ctx.set(dut.x0, st.x0)
            ctx.set(dut.step.payload, {"token": st.token, "emit": st.emit})
            ctx.set(dut.step.valid, 1)
            assert ctx.get(dut.step.ready) and not ctx.get(dut.busy)
            await ctx.tick()
            ctx.set(dut.step.valid, 0)
            got, waited, count = None, 0, 0
            while ctx.get(dut.busy):
                ready = 1
                if ctx.get(dut.token.valid):
                    assert got is None, f"step {index}: a second token"
                    if waited < st.tok_wait:
                        ready, waited = 0, waited + 1
                    else:
                        got = ctx.get(dut.token.payload)
                ctx.set(dut.token.ready, ready)
                await ctx.tick()
                count += 1
                assert count < max_cycles, f"step {index} did not end"
            ctx.set(dut.token.ready, 1)
            results.append((got, ctx.get(dut.cycles)))
        for address in peek:
            ctx.set(dut.peek_addr, address)
            await ctx.tick()
            peeked[address] = ctx.get(dut.peek_data)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results, peeked


def check(steps, mem, *, token_bits=8, seed=None, context=""):
    """Runs both; compares tokens, cycles and every M word that either may have written."""
    expected, m_after = machine_run(steps, mem, token_bits=token_bits, seed=seed)
    initial = list(mem) + [0] * (MEM_WORDS - len(mem))
    changed = [a for a in range(MEM_WORDS) if m_after[a] != initial[a]]
    for st in steps:
        changed += [a for a, _ in st.writes if a < MEM_WORDS]
    peek = sorted(set(changed) | set(range(DUMP, DUMP + 512)) | set(range(0, 1024, 7)))
    got, peeked = hw_run(steps, mem, token_bits=token_bits, seed=seed, peek=peek)
    for index, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"{context}: step {index}: (token, cycles) {g} != Machine's {e}"
    wrong = {a: (peeked[a], m_after[a]) for a in peek if peeked[a] != m_after[a]}
    assert not wrong, f"{context}: M words differ (hw, Machine): " + ", ".join(
        f"{a}: {hex(h)} != {hex(e)}" for a, (h, e) in list(wrong.items())[:8])
    assert len(got) == len(expected)
    return expected


def test_parameters():
    with pytest.raises(ValueError, match="token_bits must be an integer from 1 to 32, not 0"):
        SerialEngine(token_bits=0)
    with pytest.raises(ValueError, match=f"program must have at most {PROG_WORDS} words"):
        SerialEngine(token_bits=8, program=[0] * (PROG_WORDS + 1))
    with pytest.raises(ValueError, match="mem .* is not possible with spram=True"):
        SerialEngine(token_bits=8, mem=[1], spram=True)
    with pytest.raises(ValueError, match=f"mem must have at most {MEM_WORDS} words"):
        SerialEngine(token_bits=8, mem=[0] * (MEM_WORDS + 1))
    dut = SerialEngine(token_bits=5, debug=False)
    assert dut.token_bits == 5 and not dut.debug and not dut.spram
    assert "peek_addr" not in dut.signature.members


OPS = [op for op in Op if op not in (Op.HALT, Op.TOK)]


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_op(op):
    """Each op with each operand mode: 12 random blocks (setup, the op, a register dump)."""
    rng = random.Random(1000 + int(op))
    words, mem = random_program(rng, [op], list(Src), 12)
    check([Step(program=words)], mem, seed=rng.randrange(1 << 32) if op is Op.RAND else None,
          context=f"{op.name} seed {1000 + int(op)}")


def test_halt_tok_steps():
    """HALT and TOK with every operand mode (TOK with token.ready held low), programs and M
    words written through the load port between steps, the step inputs in R4..R7 (fresh
    after reset and reset_state), the PRNG from its reset seed."""
    rng = random.Random(5)
    steps = []
    for index, src in enumerate(list(Src) * 2):
        program = [
            enc(Op.LD, Src.REG, 7), enc(Op.ST, imm=DUMP + 8 * index),
            enc(Op.LD, Src.REG, 6), enc(Op.ST, imm=DUMP + 8 * index + 1),
            enc(Op.LD, Src.REG, 5), enc(Op.ST, imm=DUMP + 8 * index + 2),
            enc(Op.LD, Src.REG, 4), enc(Op.ST, imm=DUMP + 8 * index + 3),
            enc(Op.RAND), enc(Op.ST, imm=DUMP + 8 * index + 4),
            enc(Op.LD, Src.MEM, 100 + index), enc(Op.AND, imm=0xFF),
        ]
        if index % 2:
            program.append(enc(Op.TOK, src, rng.randrange(1 << 16)))
        program.append(enc(Op.HALT, src, rng.randrange(1 << 16)))
        steps.append(Step(token=rng.randrange(256), emit=rng.randrange(2),
                          x0=rng.randrange(-(1 << 16), 1 << 16), program=program,
                          writes=[(100 + index, rng.randrange(1 << 32)),
                                  (0x7_0000, 1), (PROG_BASE + PROG_WORDS, 5)],
                          reset_state=index == 5, tok_wait=rng.choice([0, 1, 5])))
    check(steps, [0] * 1024, context="HALT/TOK")


def test_random_sequence():
    """A few hundred random instructions of every kind, state carried between them."""
    rng = random.Random(77)
    ops = [op for op in Op if op is not Op.HALT]
    words, mem = random_program(rng, ops, list(Src), 45, dump_every=5)
    assert len(words) > 300
    check([Step(program=words, tok_wait=3)], mem, seed=rng.randrange(1 << 32),
          context="random sequence seed 77")


@pytest.mark.slow
def test_decode_steps():
    """Whole decode steps of a tiny random model compiled by mmfree.sim.serial_program (about
    80,000 cycles a step): tokens, every M word written (the recurrent state included) and
    cycles equal Machine's."""
    serial_program = pytest.importorskip("mmfree.sim.serial_program")
    from mmfree.sim import golden
    from mmfree.sim.model import ModelConfig, random_model
    im = golden.prepare(random_model(ModelConfig(vocab_size=16, hidden_size=16, num_layers=2,
                                                 intermediate_size=22), seed=1))
    image = serial_program.SerialImage(im)
    words = image.program_words()
    steps = [Step(token=3, emit=0, program=words), Step(token=5, emit=1, tok_wait=2)]
    expected = check(steps, list(image.mem), token_bits=image.token_bits,
                     context="tiny model decode steps")
    assert expected[1][0] is not None
