"""Benchmark: decode speed of the golden models (float reference and integer model).

    python -m mmfree.tools.bench_golden [--tokens N] [--out docs/bench-golden.md]

Builds a random ~1.1M-parameter model (vocab 256, d 128, L 4, I 512), decodes N tokens with each
backend and writes tokens/s, the command and the machine to a Markdown file.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from ..sim.decoding import FloatBackend, GoldenBackend
from ..sim.model import ModelConfig, random_model

CONFIG = ModelConfig(vocab_size=256, hidden_size=128, num_layers=4, intermediate_size=512)


def machine() -> str:
    """CPU model, cores, OS and Python, for benchmark reports."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, numpy {np.__version__}")


def measure(backend, tokens: list[int]) -> float:
    backend.reset()
    backend.step(tokens[0])                     # warm-up (caches, lazy imports)
    backend.reset()
    start = time.perf_counter()
    for token in tokens:
        backend.step(token)
    return len(tokens) / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmfree.tools.bench_golden",
                                     description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200, help="tokens to decode per backend")
    parser.add_argument("--out", default="docs/bench-golden.md", help="Markdown file to write")
    args = parser.parse_args(argv)

    model = random_model(CONFIG, seed=0)
    tokens = [int(t) for t in np.random.default_rng(1).integers(0, CONFIG.vocab_size,
                                                                args.tokens)]
    rates = {"float": measure(FloatBackend(model), tokens),
             "golden": measure(GoldenBackend(model), tokens)}
    cfg = CONFIG
    command = "python -m mmfree.tools.bench_golden " + " ".join(argv or sys.argv[1:])
    lines = [
        "# Golden-model decode speed",
        "",
        f"Model: random weights, vocab {cfg.vocab_size}, d {cfg.hidden_size}, "
        f"L {cfg.num_layers}, I {cfg.intermediate_size}: {cfg.num_parameters:,} parameters, "
        f"{cfg.ternary_weights:,} ternary weights per token. Batch 1, one token per step, "
        f"{args.tokens} tokens per backend.",
        "",
        "| backend | tokens/s | ms/token |",
        "|---|---|---|",
    ]
    for name, rate in rates.items():
        label = {"float": "float reference (float64)", "golden": "integer model (bit-exact)"}
        lines.append(f"| {label[name]} | {rate:,.1f} | {1000 / rate:.2f} |")
    lines += [
        "",
        f"Command: `{command.strip()}`",
        f"Machine: {machine()}",
        f"Date: {datetime.date.today().isoformat()}",
        "",
    ]
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
