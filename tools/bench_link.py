"""Host-link benchmark on the simulated board: the weight load's payload rate against the UART
line rate, and end-to-end generation speed. Writes ``docs/link-bench.md``.

The simulated board is the board's own SoC (UART at the board's divisor, 3 Mbaud at 48 MHz
on the ULX3S-85F) in Verilator; rates "on the board" are in simulated time (clock cycles /
clock frequency), which is what the real board would see given a host that keeps up, and the
host here is the real :class:`~mmfree.tools.interface.Interface` working in wall-clock time
against a simulation that runs slower than the board, so it keeps up easily.

    python -m mmfree.tools.bench_link [--board ulx3s-85f] [--tokens 32] [--out F]
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

from ..sim import golden
from ..sim import protocol as proto
from ..sim.decoding import GoldenBackend, generate
from ..sim.model import ModelConfig, random_model
from ..sim.modelfile import load_model
from ..sim.simboard import SimBoard
from .bench_golden import machine
from .device import BOARD_CONFIGS, engine_image, prepare, sim_verilog
from .interface import Interface, SocketTransport

MODELS = Path(__file__).parent / "models"
# Loaded over the link: big enough that the load is many full chunks, small enough to
# simulate in a minute or two at 12 cycles a bit.
LOAD_CONFIG = ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, intermediate_size=128)


def bench_load(board_name: str) -> dict:
    config = BOARD_CONFIGS[board_name]
    built, loaded = (random_model(LOAD_CONFIG, seed=s) for s in (1, 2))
    images = [engine_image(m, config) for m in (built, loaded)]
    words = images[1].load_words()
    with SimBoard(sim_verilog(images[0], config), divisor=config.divisor,
                  name=f"bench-link-{board_name}") as sim:
        with Interface(SocketTransport(sim.address), timeout=30.0, step_timeout=10.0) as iface:
            prepare(iface, images[0])                    # connected, idle, model 0 present
            before = sim.stats()
            wall = time.monotonic()
            _, stats = prepare(iface, images[1])
            wall = time.monotonic() - wall
            after = sim.stats()
            assert not stats.skipped
            ident = iface.identify()
            assert ident.model_valid and ident.model_hash == proto.model_hash(words)
            # A short generation proves the loaded weights are the model's.
            got = [t for t, _ in iface.generate([1, 2, 3], 4)]
            assert got == list(generate(GoldenBackend(loaded), [1, 2, 3], 4))
    cycles = after["cycles"] - before["cycles"]
    seconds = cycles / config.clock_hz
    line_bytes_per_s = config.baud / 10                 # 8N1: 10 bits a byte
    return {
        "model": f"d{LOAD_CONFIG.hidden_size} L{LOAD_CONFIG.num_layers} "
                 f"I{LOAD_CONFIG.intermediate_size} V{LOAD_CONFIG.vocab_size}",
        "words": len(words), "payload": 4 * len(words),
        "to_device": after["to_device"] - before["to_device"],
        "from_device": after["from_device"] - before["from_device"],
        "cycles": cycles, "seconds": seconds, "resends": stats.resends,
        "rate": 4 * len(words) / seconds, "line_rate": line_bytes_per_s,
        "wall": wall, "wall_rate": 4 * len(words) / wall,
    }


def bench_generate(board_name: str, tokens: int) -> dict:
    config = BOARD_CONFIGS[board_name]
    model = load_model(MODELS / f"{board_name}.safetensors")
    image = engine_image(model, config)
    prompt = list(b"ROMEO:")
    build = time.monotonic()
    with SimBoard(sim_verilog(image, config), divisor=config.divisor,
                  name=f"soc-{board_name}") as sim:
        build = time.monotonic() - build
        with Interface(SocketTransport(sim.address), timeout=30.0, step_timeout=10.0) as iface:
            _, stats = prepare(iface, image)
            assert stats.skipped
            before = sim.stats()
            wall = time.monotonic()
            got = list(iface.generate(prompt, tokens))
            wall = time.monotonic() - wall
            after = sim.stats()
    assert [t for t, _ in got] == list(generate(GoldenBackend(model), prompt, tokens))
    cycles = after["cycles"] - before["cycles"]
    step = got[-1][1]
    return {
        "model": f"{board_name}.safetensors", "lanes": config.lanes, "tokens": tokens,
        "prompt": len(prompt), "cycles": cycles, "wall": wall, "build": build,
        "sim_cycles_per_s": cycles / wall, "wall_tokens_per_s": tokens / wall,
        "step_cycles": step,
        "board_tokens_per_s": tokens * config.clock_hz / cycles,
        "engine_tokens_per_s": config.clock_hz / step,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmfree.tools.bench_link",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--board", default="ulx3s-85f", choices=sorted(BOARD_CONFIGS))
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("docs/link-bench.md"))
    args = parser.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python -m mmfree.tools.bench_link"] + ([shlex.join(given)] if given
                                                                 else []))
    config = BOARD_CONFIGS[args.board]
    load = bench_load(args.board)
    gen = bench_generate(args.board, args.tokens)
    frame_payload = 8 + 4 * proto.MAX_CHUNK_WORDS
    framing = 4 * proto.MAX_CHUNK_WORDS / (frame_payload + proto.FRAME_OVERHEAD)
    lines = [
        "# Host link benchmark (simulated board)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Date: {datetime.date.today().isoformat()}",
        "",
        f"The {args.board} SoC (UART included) under Verilator, driven by the host "
        "`Interface` over the simulated board's TCP byte stream. \"On the board\" figures are "
        f"in simulated time at the board's engine clock ({config.clock_hz / 1e6:g} MHz, "
        f"{config.baud / 1e6:g} Mbaud = {config.divisor} cycles a bit).",
        "",
        "## Weight load",
        "",
        "| | |",
        "|---|---|",
        f"| model loaded | random {load['model']}: {load['words']:,} words, "
        f"{load['payload']:,} payload bytes |",
        f"| bytes on the line | {load['to_device']:,} to the device, {load['from_device']:,} "
        "back |",
        f"| simulated time | {load['cycles']:,} cycles = {load['seconds'] * 1e3:.1f} ms |",
        f"| payload rate on the board | **{load['rate']:,.0f} bytes/s** |",
        f"| raw UART payload rate (baud / 10, 8N1) | {load['line_rate']:,.0f} bytes/s |",
        f"| achieved / raw | **{100 * load['rate'] / load['line_rate']:.1f}%** (target 90%) |",
        f"| framing ceiling (full {proto.MAX_CHUNK_WORDS}-word chunks) | {100 * framing:.1f}% |",
        f"| resends | {load['resends']} |",
        f"| wall clock here | {load['wall']:.1f} s ({load['wall_rate']:,.0f} bytes/s: the "
        "simulation's speed, not the board's) |",
        "",
        "The load streams LOAD_CHUNK frames of up to "
        f"{proto.MAX_CHUNK_WORDS} words with up to 4 in flight (go-back-N on the device's "
        "`next_offset`), so the line never waits for an acknowledgement; what is lost to the "
        "raw rate is the frame header, chunk offset/address and CRC, LOAD_BEGIN and VERIFY.",
        "",
        "## Generation",
        "",
        "| | |",
        "|---|---|",
        f"| model | {gen['model']} ({gen['lanes']} lanes), prompt of {gen['prompt']} "
        f"tokens, {gen['tokens']} greedy tokens (equal to the golden model's) |",
        f"| simulated | {gen['cycles']:,} cycles for the prefill and all tokens |",
        f"| tokens/s on the board (end to end, link included) | "
        f"**{gen['board_tokens_per_s']:,.0f}** |",
        f"| engine alone (clock / {gen['step_cycles']:,} cycles a token) | "
        f"{gen['engine_tokens_per_s']:,.0f} tokens/s |",
        f"| tokens/s here, wall clock | **{gen['wall_tokens_per_s']:.2f}** "
        f"({gen['sim_cycles_per_s']:,.0f} simulated cycles/s) |",
        f"| simulated board start (build cached or not) | {gen['build']:.1f} s |",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
