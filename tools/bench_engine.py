"""Decode-engine benchmark: cycles per token and lane utilization over lane counts (from the
schedule, :func:`mmfree.sim.engine.step_cycles`, which the simulation tests check cycle for
cycle), where the cycles go, and the engine's simulation speed under Verilator (measured).
Writes ``docs/engine-bench.md``.

    python -m mmfree.tools.bench_engine [--model M] [--lanes 64] [--tokens 16] [--out F]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import shlex
import sys
import tempfile
from pathlib import Path

from ..sim import golden
from ..sim.engine import EngineImage, Op, row_cycles, step_cycles, tree_latency
from ..sim.model import ModelConfig, random_model
from ..sim.modelfile import load_model
from .bench_golden import machine

MODELS = Path(__file__).parent / "models"
LANES = [16, 32, 64, 128, 256, 512, 1024]


#: The parts of :func:`breakdown`, in the order the reports list them.
PARTS = (
    "ternary rows: weights / lanes (every lane busy)",
    "ternary rows: one row a cycle (lanes idle)",
    "ternary adder tree latency",
    "BitLinear quantization passes (2 n / W)",
    "BitLinear barrier (square root, reciprocals, requantizer, GLU tail, sequencer)",
    "RMSNorm passes (n / W)",
    "RMSNorm barrier (square root, reciprocal, sequencer)",
    "MLGRU elementwise (one element a cycle)",
    "MLGRU pipeline latency",
    "embedding, sequencing",
)


def breakdown(image: EngineImage) -> dict[str, int]:
    """Cycles of one greedy step by part (:data:`PARTS`), which sum to :func:`step_cycles`.

    A BITLINEAR's or HEAD's ternary rows (:func:`row_cycles`) are split into the cycles its
    weights need at full lane use, ``ceil(rows * n / lanes)``, and the rest, which the engine
    spends because it sends out one row a cycle (two for paired rows) when a row has
    fewer weights than there are lanes. Its passes over the input are ``2 B`` (``3 B``
    without the image's ``fused_sums``; ``B = ceil(n / W)`` beats), a NORM's ``B`` (``3 B``);
    the adder tree is :func:`tree_latency`; an MLGRU op takes one element a cycle. What is
    left of each instruction's :meth:`~EngineImage.instr_cycles` is its fixed latency: the
    barrier between its input's last element and its first output."""
    out = dict.fromkeys(PARTS, 0)
    passes = 2 if image.fused_sums else 3
    for instr in image.program:
        cycles, n = image.instr_cycles(instr), instr["n_in"]
        beats = -(-n // image.width)
        if instr["op"] in (Op.BITLINEAR, Op.HEAD):
            rows = row_cycles(instr, image.paired_glu, image.paired_rows)
            busy = -(-instr["n_out"] * n // image.lanes)
            tree = tree_latency(image.lanes, image.weight_reg)
            out[PARTS[0]] += busy
            out[PARTS[1]] += rows - busy
            out[PARTS[2]] += tree
            out[PARTS[3]] += passes * beats
            out[PARTS[4]] += cycles - rows - tree - passes * beats
        elif instr["op"] == Op.NORM:
            norm_passes = beats if image.fused_sums else 3 * beats
            out[PARTS[5]] += norm_passes
            out[PARTS[6]] += cycles - norm_passes
        elif instr["op"] in (Op.MLGRU_H, Op.MLGRU_O):
            out[PARTS[7]] += n
            out[PARTS[8]] += cycles - n
        else:
            out[PARTS[9]] += cycles
    out[PARTS[9]] += step_cycles(image) - sum(out.values())
    return out


def tested_configs():
    """``(name, IntModel, lanes)`` of the engine's Verilator tests (tests/test_engine.py)."""
    out = []
    for d, layers, inter, vocab, seed, act, lanes in [(64, 2, 192, 256, 1, "silu", 64),
                                                      (96, 3, 200, 97, 3, "silu", 32),
                                                      (32, 2, 44, 64, 5, "gelu", 16)]:
        cfg = ModelConfig(vocab_size=vocab, hidden_size=d, num_layers=layers,
                          intermediate_size=inter, hidden_act=act)
        out.append((f"random d{d} L{layers} I{inter} V{vocab} {act}",
                    golden.prepare(random_model(cfg, seed=seed)), lanes))
    for path, lanes in ((MODELS / "icebreaker.safetensors", 64),
                        (MODELS / "ulx3s-85f.safetensors", 128)):
        out.append((path.name, golden.prepare(load_model(path)), lanes))
    return out


def simulate(model: Path, lanes: int, tokens: int) -> dict:
    from ..hw.engine import Engine
    from ..sim.toolchain import amaranth_to_verilog, run_cocotb

    im = golden.prepare(load_model(model))
    dut = Engine(EngineImage(im, lanes))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        run_cocotb(toplevel="engine", verilog=amaranth_to_verilog(dut, "engine"),
                   test_module="mmfree.sim.engine_bench_tb", test_dir=Path(tmp) / "run",
                   extra_env={"ENGINE_MODEL": str(model), "ENGINE_LANES": str(lanes),
                              "ENGINE_TOKENS": str(tokens), "ENGINE_BENCH_OUT": str(out)})
        return json.loads(out.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmfree.tools.bench_engine",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=MODELS / "ulx3s-85f.safetensors")
    parser.add_argument("--lanes", type=int, default=64, help="lanes of the Verilator run")
    parser.add_argument("--tokens", type=int, default=16, help="tokens of the Verilator run")
    parser.add_argument("--out", type=Path, default=Path("docs/engine-bench.md"))
    args = parser.parse_args(argv)

    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python -m mmfree.tools.bench_engine"] + ([shlex.join(given)] if given
                                                                   else []))
    models = [args.model] + [p for p in (MODELS / "icebreaker.safetensors",) if p != args.model]
    lines = ["# Decode engine benchmark", "",
             f"Command: `{command}`",
             "", f"Machine: {machine()}", "",
             f"Date: {datetime.date.today().isoformat()}", "",
             "Cycles per token come from the documented schedule (docs/engine.md), which the "
             "simulation tests (tests/test_engine.py) check against the hardware's cycle "
             "counter for every step. Lane utilization = (ternary weights per token / lanes) "
             "/ cycles per token (greedy; a sampled token adds `2 V + 35 + token` cycles).", ""]
    for path in models:
        im = golden.prepare(load_model(path))
        cfg = im.config
        lines += [f"## {path.name}: d {cfg.hidden_size}, L {cfg.num_layers}, "
                  f"I {cfg.intermediate_size}, V {cfg.vocab_size}", "",
                  "| lanes | cycles/token | lower bound (weights/lanes) | utilization | "
                  "tokens/s at 100 MHz |", "|---:|---:|---:|---:|---:|"]
        for lanes in LANES:
            image = EngineImage(im, lanes)
            cycles = step_cycles(image)
            bound = image.ternary_weights() / lanes
            lines.append(f"| {lanes} | {cycles:,} | {bound:,.0f} | {100 * bound / cycles:.1f}% "
                         f"| {100e6 / cycles:,.0f} |")
        image = EngineImage(im, args.lanes)
        lines += ["", f"Where the cycles of a greedy step go at {args.lanes} lanes:", "",
                  "| part | cycles | share |", "|---|---:|---:|"]
        total = step_cycles(image)
        for name, cycles in breakdown(image).items():
            lines.append(f"| {name} | {cycles:,} | {100 * cycles / total:.1f}% |")
        lines.append("")

    lines += ["## The configurations tests/test_engine.py runs on Verilator", "",
              "| model | lanes | cycles/token (greedy) | lower bound | utilization |",
              "|---|---:|---:|---:|---:|"]
    for name, im, lanes in tested_configs():
        image = EngineImage(im, lanes)
        cycles, bound = step_cycles(image), image.ternary_weights() / lanes
        lines.append(f"| {name} | {lanes} | {cycles:,} | {bound:,.0f} | "
                     f"{100 * bound / cycles:.1f}% |")
    lines.append("")

    result = simulate(args.model, args.lanes, args.tokens)
    lines += ["## Simulation speed (Verilator, cocotb driving the step/token streams)", "",
              f"{args.model.name} at {args.lanes} lanes: {result['steps']} steps (prompt "
              f"`ROMEO:` and {result['tokens']} greedy tokens, every token equal to the golden "
              f"model) in {result['seconds']:.2f} s: **{result['cycles_per_second']:,.0f} "
              f"simulated cycles/s**, **{result['steps_per_second']:.2f} tokens/s** "
              f"({result['cycles']:,} cycles).", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
