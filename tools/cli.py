"""``mmfree``: the command line.

Exit status: 0 success, 1 data/device/protocol error, 2 usage, 3 toolchain or environment,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM: stopped as an interrupt is, tools and
simulations included). Expected faults print one line, ``mmfree: error: ...``, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

__all__ = ["main"]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_ENV, EXIT_INTERRUPT = 0, 1, 2, 3, 130
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so that it unwinds as Ctrl-C does: the
    synthesis tools, the simulated board and the link are stopped and closed on the way."""


def _terminate(signum, frame):
    raise Terminated


class CliError(Exception):
    """An expected fault: one line, and the exit status."""

    def __init__(self, message: str, status: int = EXIT_DATA):
        super().__init__(message)
        self.status = status


def default_model_path() -> Path:
    """The shipped ULX3S-85F-sized model (docs/model-card.md)."""
    return Path(__file__).parent / "models" / "ulx3s-85f.safetensors"


def load_any(path: str | os.PathLike | None):
    """A model file, or a Hugging Face-layout checkpoint directory (converted in memory);
    ``None`` is the shipped default model."""
    from ..sim.modelfile import ModelFormatError, load_model
    from ..sim.model import from_state_dict
    from .checkpoint import load_checkpoint

    path = default_model_path() if path is None else Path(path)
    if not path.exists():
        raise CliError(f"{path}: no such file or directory")
    try:
        if path.is_dir():
            config, state_dict, tokenizer = load_checkpoint(path)
            return from_state_dict(config, state_dict, tokenizer)
        return load_model(path)
    except ModelFormatError as error:
        raise CliError(f"{path}: {error}") from None
    except ValueError as error:
        raise CliError(f"{path}: {error}") from None
    except OSError as error:
        raise CliError(f"{path}: {error.strerror or error}") from None


def tokenizer_for(model):
    from .tokenizer import Tokenizer, TokenizerError
    try:
        return Tokenizer(model.tokenizer, model.config.vocab_size)
    except TokenizerError as error:
        raise CliError(str(error), EXIT_ENV) from None


# --- subcommands ------------------------------------------------------------------------------

def cmd_convert(args) -> int:
    from ..sim.modelfile import ModelFormatError
    from .convert import convert

    out = Path(args.out)
    if not Path(args.src).exists():
        raise CliError(f"{args.src}: no such file or directory")
    if out.exists() and not args.force:
        raise CliError(f"{out}: already exists (use --force to overwrite)")
    try:
        model = convert(Path(args.src), out, packing=args.packing, force=args.force)
    except FileNotFoundError as error:
        raise CliError(f"{args.src}: {error.strerror or error}") from None
    except FileExistsError:
        raise CliError(f"{out}: already exists (use --force to overwrite)") from None
    except (ModelFormatError, ValueError) as error:
        raise CliError(f"{args.src}: {error}") from None
    cfg = model.config
    print(f"wrote {out}: d={cfg.hidden_size} L={cfg.num_layers} I={cfg.intermediate_size} "
          f"vocab={cfg.vocab_size} packing={cfg.packing} ({out.stat().st_size:,} bytes)")
    return EXIT_OK


def cmd_info(args) -> int:
    from ..boards.capacity import BOARDS, fits, fits_image, memory_budget

    model = load_any(args.model)
    cfg = model.config
    print(f"model           {args.model}")
    print(f"hidden size     {cfg.hidden_size}")
    print(f"layers          {cfg.num_layers}")
    print(f"intermediate    {cfg.intermediate_size}")
    print(f"vocabulary      {cfg.vocab_size} ({model.tokenizer.get('type')} tokenizer)")
    print(f"channel mixer   {cfg.hidden_act}")
    print(f"packing         {cfg.packing}")
    print(f"parameters      {cfg.num_parameters:,}")
    print(f"ternary weights {cfg.ternary_weights:,} per token")
    for packing in ("2bit", "1.6bit"):
        b = memory_budget(cfg, packing)
        print(f"size {packing:<7}    weights {b.weights / 8 / 1024:,.1f} KiB, "
              f"on chip in all {b.total / 8 / 1024:,.1f} KiB")
    from ..sim.engine import EngineImage
    from ..sim import golden
    from .device import BOARD_CONFIGS
    im = None
    for board in BOARDS.values():
        config = BOARD_CONFIGS[board.name]
        for packing in ("2bit", "1.6bit"):
            # Bits first; then the memories of the board's SoC: on a block-RAM board its
            # blocks (its lanes and vector width, this packing), on the iCEBreaker the serial
            # engine's SPRAM words.
            ok, detail = fits(cfg, board, packing)
            if config.engine == "serial":
                if packing != config.packing:
                    continue          # the serial engine stores 2-bit words, whatever the file's
                if ok:
                    from ..sim.serial_program import SerialImage
                    im = im or golden.prepare(model)
                    try:
                        ok, detail = fits_image(SerialImage(im), board)
                    except ValueError as error:
                        ok, detail = False, str(error)
            elif ok:
                im = im or golden.prepare(model)
                try:
                    image = EngineImage(im, config.lanes, **dataclasses.replace(
                        config, packing=packing).engine_options)
                except ValueError as error:
                    ok, detail = False, str(error)
                else:
                    ok, detail = fits_image(image, board)
            print(f"{board.name:<12} {packing:<7} {'fits' if ok else 'does not fit':<13} "
                  f"({detail})")
    return EXIT_OK


def cmd_eval(args) -> int:
    from ..sim.decoding import evaluate

    model = load_any(args.model)
    tokenizer = tokenizer_for(model)
    try:
        text = Path(args.text).read_text(encoding="utf-8")
    except OSError as error:
        raise CliError(f"{args.text}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise CliError(f"{args.text}: not UTF-8 text") from None
    if args.start:
        text = text[args.start:]
    if args.max_chars:
        text = text[:args.max_chars]
    tokens = tokenizer.encode(text)
    if len(tokens) < 2:
        raise CliError(f"{args.text}: needs at least two tokens of text")
    start = time.perf_counter()
    with _progress(len(tokens) - 1, "eval", "tok") as bar:
        result = evaluate(model, tokens, progress=bar.update)
    elapsed = time.perf_counter() - start
    print(f"tokens scored        {result.tokens}")
    print(f"float perplexity     {result.ppl_float:.4f}  ({result.nll_float:.4f} nats/token)")
    print(f"integer perplexity   {result.ppl_golden:.4f}  ({result.nll_golden:.4f} nats/token)")
    print(f"integer vs float     {100 * (result.ppl_golden / result.ppl_float - 1):+.3f}% "
          f"perplexity")
    print(f"greedy agreement     {100 * result.agreement:.2f}%")
    print(f"time                 {elapsed:.1f} s")
    return EXIT_OK


def cmd_generate(args) -> int:
    from ..sim.decoding import BACKENDS, check_temperature, generate

    if args.max_new_tokens < 0:
        raise CliError("--max-new-tokens must be >= 0", EXIT_USAGE)
    try:
        check_temperature(args.temperature)
    except ValueError as error:
        raise CliError(str(error), EXIT_USAGE) from None
    backend_name = args.backend or ("board" if args.port else "sim")
    if args.port and backend_name != "board":
        raise CliError(f"--port is for --backend board, not {backend_name}", EXIT_USAGE)
    model = load_any(getattr(args, "model", None))
    tokenizer = tokenizer_for(model)
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise CliError("the prompt is empty", EXIT_USAGE)
    out = sys.stdout
    feed = tokenizer.decoder()
    if backend_name in BACKENDS:
        tokens = generate(BACKENDS[backend_name](model), prompt, args.max_new_tokens,
                          temperature=args.temperature, seed=args.seed)
        _print_tokens(out, args, feed, tokens)
        return EXIT_OK
    return _generate_on_device(args, backend_name, model, prompt, out, feed)


def _print_tokens(out, args, feed, tokens) -> None:
    if not args.ids:
        out.write(args.prompt)
        out.flush()
    for token in tokens:
        out.write(f"{token}\n" if args.ids else feed(token))
        out.flush()
    if not args.ids:
        out.write("\n")


def _generate_on_device(args, backend_name, model, prompt, out, feed) -> int:
    from ..sim import golden
    from .device import DeviceSetupError, open_device
    from .interface import LinkError

    x0 = golden.sampler_x0(args.temperature) if args.temperature else 0
    bar = None

    def progress(done, total):
        nonlocal bar
        if bar is None:
            from tqdm import tqdm
            bar = tqdm(total=total, desc="loading weights", unit="B", unit_scale=True,
                       disable=not sys.stderr.isatty(), file=sys.stderr)
        bar.update(done - bar.n)

    if backend_name == "sim":
        logger.info("starting the simulated board (built once per model, then reused)")
    try:
        with open_device(model, backend=backend_name, board=args.board, port=args.port,
                         baud=args.baud, progress=progress,
                         force_load=args.force_load) as (iface, info):
            if bar is not None:
                bar.close()
            load = info["load"]
            if load.skipped:
                logger.info("weights already on the device; load skipped")
            else:
                logger.info("loaded %d bytes in %.2f s (%.0f bytes/s, %d resends)", load.bytes,
                            load.seconds, load.bytes / max(load.seconds, 1e-9), load.resends)
            tokens = (token for token, _ in iface.generate(prompt, args.max_new_tokens,
                                                           x0=x0, seed=args.seed))
            _print_tokens(out, args, feed, tokens)
    except DeviceSetupError as error:
        raise CliError(str(error), error.status) from None
    except LinkError as error:
        raise CliError(str(error), EXIT_DATA) from None
    finally:
        if bar is not None:
            bar.close()
    return EXIT_OK


class _progress:
    """tqdm on stderr when it is a terminal; silent otherwise."""

    def __init__(self, total: int, desc: str, unit: str):
        self.total, self.desc, self.unit = total, desc, unit

    def __enter__(self):
        from tqdm import tqdm
        self.bar = tqdm(total=self.total, desc=self.desc, unit=self.unit,
                        disable=not sys.stderr.isatty(), file=sys.stderr)
        return self.bar

    def __exit__(self, *exc):
        self.bar.close()


# --- parser -----------------------------------------------------------------------------------

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, but not for required options and flags, where there is none to show."""

    def _get_help_string(self, action):
        if action.required or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return action.help
        return super()._get_help_string(action)


def _check_engine_args(args) -> None:
    """``--lanes`` and ``--vector-width`` (``None``: the board's default)."""
    lanes, vw = args.lanes, args.vector_width
    if lanes is not None and (lanes <= 0 or lanes & (lanes - 1)):
        raise CliError(f"--lanes must be a positive power of two, not {lanes}", EXIT_USAGE)
    if vw is not None and (vw <= 0 or vw & (vw - 1) or vw > 64):
        raise CliError(f"--vector-width must be a power of two from 1 to 64, not {vw}",
                       EXIT_USAGE)


def cmd_verilog(args) -> int:
    import json

    from ..sim import golden
    from ..sim.engine import EngineImage, step_cycles

    model_path = getattr(args, "model", None)
    model = load_any(model_path)
    model_path = str(model_path or default_model_path())
    _check_engine_args(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"{out}: exists and is not a directory")
    targets = [out / f"{args.name}.v", out / f"{args.name}.json"]
    existing = [str(path) for path in targets if path.exists()]
    if existing and not args.force:
        raise CliError(f"{existing[0]} exists; give --force to overwrite it", EXIT_USAGE)
    try:
        image = EngineImage(golden.prepare(model), args.lanes, args.vector_width)
    except ValueError as error:
        raise CliError(f"{model_path}: {error}") from None
    from ..hw.engine import Engine
    from ..sim.toolchain import amaranth_to_verilog

    engine = Engine(image, debug=args.debug)
    text = amaranth_to_verilog(engine, args.name)
    cfg = model.config
    cycles = step_cycles(image)
    weights = image.ternary_weights()
    summary = {
        "model": model_path, "top": args.name, "lanes": args.lanes,
        "vector_width": image.width,
        "config": {"vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
                   "num_layers": cfg.num_layers, "intermediate_size": cfg.intermediate_size,
                   "hidden_act": cfg.hidden_act, "packing": cfg.packing},
        "memory_bits": image.memory_bits(),
        "ternary_weights_per_token": weights,
        "cycles_per_token_greedy": cycles,
        "lane_utilization": weights / args.lanes / cycles,
        "debug_port": args.debug,
    }
    out.mkdir(parents=True, exist_ok=True)
    for path, content in zip(targets, (text, json.dumps(summary, indent=2) + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content)
        tmp.replace(path)
    print(f"wrote {targets[0]} ({len(text) / 1024:,.0f} KiB) and {targets[1]}")
    print(f"{args.lanes} lanes: {cycles:,} cycles per token (greedy), "
          f"{weights:,} ternary weights per token, lane utilization "
          f"{100 * summary['lane_utilization']:.1f}%")
    return EXIT_OK


def _last_bitstream(board: str) -> Path:
    import json

    from ..boards.build import last_build_file
    record = last_build_file(board)
    try:
        return Path(json.loads(record.read_text())["bitstream"])
    except (OSError, ValueError, KeyError):
        raise CliError(f"no bitstream given and no earlier build for the {board}; run "
                       f"`mmfree build --board {board}` first or name the bitstream",
                       EXIT_USAGE) from None


def cmd_build(args) -> int:
    from ..boards.build import BuildError, ProgramError, TimingError, build
    from ..boards.toolchain import ToolchainError
    from .device import DeviceSetupError

    if args.route_placement:
        given = [flag for flag, value in (("--place-only", args.place_only),
                                          ("--seed", args.seed), ("--placer", args.placer))
                 if value]
        if given:
            raise CliError(f"--route-placement routes the placement kept in --out at its own "
                           f"seed and placer; not with {', '.join(given)}", EXIT_USAGE)
    model_path = getattr(args, "model", None)
    if model_path is None:
        model_path = default_model_path().with_name(f"{args.board}.safetensors")
    model = load_any(model_path)
    model_path = str(model_path)
    _check_engine_args(args)
    vw = args.vector_width
    out = Path(args.out if args.out is not None else Path("build") / f"board-{args.board}")
    logger.info("building for the %s in %s (takes minutes)", args.board, out)
    seeds = args.seed
    jobs = args.jobs or (min(len(seeds), os.cpu_count() or 1) if seeds else 1)

    def seed_done(seed, outcome):
        # A seed's placement estimate (--place-only), or one line a seed that did not make
        # the build, as the final error would be.
        if isinstance(outcome, float):
            print(f"seed {seed}: placement estimate {outcome:.2f} MHz", flush=True)
        else:
            print(f"mmfree: seed {seed}: {outcome}", file=sys.stderr)

    try:
        result = build(args.board, model, lanes=args.lanes, vector_width=vw, out_dir=out,
                       program=args.program, allow_timing_fail=args.allow_timing_fail,
                       seed=seeds, jobs=jobs, on_seed=seed_done, router=args.router,
                       placer=args.placer, timing_driven=args.tmdriv,
                       router_patience=args.router_patience,
                       legalise_patience=args.legalise_patience * 60, force=args.force,
                       model_path=model_path, command=["mmfree", *sys.argv[1:]],
                       place_only=args.place_only, route_placement=args.route_placement)
    except DeviceSetupError as error:
        raise CliError(str(error), error.status) from None
    except ToolchainError as error:
        raise CliError(str(error), EXIT_ENV) from None
    except TimingError as error:
        raise CliError(str(error), EXIT_DATA) from None
    except BuildError as error:
        raise CliError(str(error), error.status) from None
    except ProgramError as error:
        raise CliError(str(error), EXIT_DATA) from None
    fmax = result.min_fmax_mhz
    used = ", ".join(f"{bel} {u}/{a}" for bel, (u, a) in result.utilization.items() if u)
    if result.routed:
        print(f"wrote {result.bitstream} and {result.report}")
    else:
        print(f"wrote {result.report} (placement only, no bitstream)")
    estimate = "" if result.routed else "placement estimate of "
    print(f"{args.board}, {result.lanes} lanes: {estimate}Fmax "
          f"{'unknown' if fmax is None else f'{fmax:.2f} MHz'} (engine clock "
          f"{result.clock_hz / 1e6:g} MHz{'' if result.timing_met else ', NOT MET'}); {used}")
    if args.program:
        print(f"programmed the {args.board}")
    return EXIT_OK


def cmd_program(args) -> int:
    from ..boards.build import ProgramError, program
    from ..boards.toolchain import ToolchainError

    bitstream = Path(args.bitstream) if args.bitstream else _last_bitstream(args.board)
    try:
        program(args.board, bitstream)
    except ToolchainError as error:
        raise CliError(str(error), EXIT_ENV) from None
    except ProgramError as error:
        raise CliError(str(error), EXIT_DATA) from None
    print(f"programmed the {args.board} with {bitstream}")
    return EXIT_OK


def cmd_report(args) -> int:
    from ..boards.toolchain import ToolchainError
    from .report import ReportError, run

    try:
        return run(args)
    except ReportError as error:
        raise CliError(str(error), EXIT_USAGE) from None
    except ToolchainError as error:
        raise CliError(str(error), EXIT_ENV) from None


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes (0 or more)")
    return value


def _seeds(text: str) -> list[int]:
    """``8`` or ``8,9,10``: nextpnr seeds, tried in turn by ``mmfree build``."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed or a list of different seeds "
                                         f"separated by commas")
    return seeds


def _number_of(what: str, least: int):
    """An argparse type: a whole number of ``what``, ``least`` or more."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {what} "
                                             f"({least} or more)")
        return value
    return parse


_iterations = _number_of("iterations", 0)
_jobs = _number_of("jobs", 1)
_characters = _number_of("characters", 0)
_baud = _number_of("bits a second", 1)


def build_parser() -> argparse.ArgumentParser:
    from ..boards.build import DEFAULT_PNR, LEGALISE_PATIENCE, ROUTER_PATIENCE
    from .device import BOARD_CONFIGS
    ulx3s, ice = DEFAULT_PNR["ulx3s-85f"], DEFAULT_PNR["icebreaker"]
    on_off = {True: "on", False: "off"}
    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="mmfree", formatter_class=fmt,
        description="MatMul-free language model on open FPGAs: convert, inspect, evaluate and "
                    "run models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", formatter_class=fmt,
                       help="convert a Hugging Face checkpoint directory to an mmfree model file",
                       description="Convert a Hugging Face-layout MatMul-free checkpoint "
                                   "(config.json + model.safetensors or shards) into one mmfree "
                                   "model file. Ternary weights and scales are computed from the "
                                   "latent weights.")
    p.add_argument("src", help="checkpoint directory (or an mmfree model file to repack)")
    p.add_argument("out", help="model file to write")
    p.add_argument("--packing", choices=("2bit", "1.6bit"), default="2bit",
                   help="ternary weight packing: 4 weights per byte, or 5 per byte")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", formatter_class=fmt,
                       help="print a model's configuration, size and board fit",
                       description="Print a model's configuration, parameter count, size at "
                                   "2-bit and 1.6-bit packing, and whether it fits on chip on "
                                   "each supported board.")
    p.add_argument("model", help="model file or checkpoint directory")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("eval", formatter_class=fmt,
                       help="perplexity of the float reference and the integer model",
                       description="Perplexity of the float reference and of the bit-exact "
                                   "integer model over a text, and their greedy top-1 agreement.")
    p.add_argument("--model", required=True, help="model file or checkpoint directory")
    p.add_argument("--text", required=True, help="UTF-8 text file")
    p.add_argument("--start", type=_characters, default=0,
                   help="skip this many characters first")
    p.add_argument("--max-chars", type=_characters, default=0,
                   help="evaluate at most this many characters (0: all)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", formatter_class=fmt,
                       help="generate text, streaming tokens as they are produced",
                       description="Prefill the prompt, then generate tokens greedily "
                                   "(temperature 0) or by temperature sampling with the "
                                   "integer PRNG (deterministic for a seed).")
    p.add_argument("--model", default=argparse.SUPPRESS,
                   help="model file or checkpoint directory (default: the shipped "
                        "ULX3S-85F-sized model trained on Shakespeare, docs/model-card.md)")
    p.add_argument("--prompt", required=True, help="text to start from")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="0 for greedy; otherwise sampling temperature (1/64 .. 64)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for sampling")
    p.add_argument("--backend", choices=("sim", "board", "golden", "float"), default=None,
                   help="sim: the simulated board (the SoC in Verilator over a byte stream; "
                        "default without --port); board: a board on --port (default with "
                        "--port); golden: the bit-exact integer model; float: the float64 "
                        "reference")
    p.add_argument("--port", default=None, help="serial port of the board, e.g. /dev/ttyUSB0")
    p.add_argument("--board", default="ulx3s-85f", choices=("ulx3s-85f", "icebreaker"),
                   help="the board (sim and board backends): engine size, clock, baud rate")
    p.add_argument("--baud", type=_baud, default=None,
                   help="UART baud rate (default: the board's, 3000000)")
    p.add_argument("--force-load", action="store_true",
                   help="load the weights even if the device reports the same model hash")
    p.add_argument("--ids", action="store_true", help="print token ids, one per line")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("verilog", formatter_class=fmt,
                       help="generate the decode engine's Verilog for a model",
                       description="Generate plain Verilog of the decode engine (hw/engine.py) "
                                   "for a model and a lane count, its memories initialized "
                                   "with the model, plus a JSON summary (memory bits, cycles "
                                   "per token, lane utilization).")
    p.add_argument("--model", default=argparse.SUPPRESS,
                   help="model file or checkpoint directory (default: the shipped "
                        "ULX3S-85F-sized model)")
    p.add_argument("--lanes", type=int, default=64, help="ternary lanes (a power of two)")
    p.add_argument("--vector-width", type=int, default=8,
                   help="elements per cycle of the normalize/quantize path (at most --lanes)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--name", default="mmfree_engine", help="top module and file name")
    p.add_argument("--no-debug", dest="debug", action="store_false",
                   help="leave out the debug read port of the vector memory")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=cmd_verilog)

    boards = ("ulx3s-85f", "icebreaker")
    p = sub.add_parser("build", formatter_class=fmt,
                       help="build a board's bitstream for a model (yosys, nextpnr)",
                       description="Build the bitstream of the board's SoC (UART, link, decode "
                                   "engine with the model in its memories) with the YoWASP "
                                   "tools, report the achieved Fmax and utilization "
                                   "(build-report.json beside the bitstream), and optionally "
                                   "program the board. Fails with the achieved Fmax if it is "
                                   "below the engine clock.")
    p.add_argument("--board", required=True, choices=boards, help="the board to build for")
    p.add_argument("--model", default=argparse.SUPPRESS,
                   help="model file or checkpoint directory (default: the shipped model "
                        "for the board, tools/models/BOARD.safetensors)")
    p.add_argument("--lanes", type=int, default=None,
                   help="ternary lanes, a power of two (default: the board's, "
                        f"{BOARD_CONFIGS['ulx3s-85f'].lanes} on the ULX3S-85F; the iCEBreaker's "
                        f"serial engine has {BOARD_CONFIGS['icebreaker'].lanes}, fixed)")
    p.add_argument("--vector-width", type=int, default=None,
                   help="elements per cycle of the normalize/quantize path, a power of two "
                        f"(default: the board's, {BOARD_CONFIGS['ulx3s-85f'].vector_width} on the "
                        "ULX3S-85F, each element costing about 18 MULT18X18D; the iCEBreaker's "
                        "serial engine has none: 1, fixed)")
    p.add_argument("--out", default=None,
                   help="build directory (default: build/board-BOARD)")
    p.add_argument("--seed", type=_seeds, default=None, metavar="SEED[,SEED...]",
                   help=f"nextpnr placement seed (default: the board's, {ulx3s.seed} on the "
                        f"ULX3S-85F, the seed its default SoC routes at; {ice.seed} on the "
                        "iCEBreaker); several, separated by commas: Yosys runs once and "
                        "nextpnr once a seed, --jobs at a time, and the first to route with "
                        "timing met is the build (another model or option makes another "
                        "netlist, which may not route at the board's seed); with --place-only "
                        "every seed is placed and the best estimate kept, a screen before "
                        "routing")
    p.add_argument("--jobs", type=_jobs, default=None, metavar="N",
                   help="nextpnr runs at a time with several --seed (default: one a core, "
                        "at most one a seed; each takes one core and, for the ULX3S-85F's "
                        "default SoC, about 2 GiB)")
    p.add_argument("--placer", choices=("heap", "static"), default=None,
                   help=f"nextpnr's placer (default: the board's, {ulx3s.placer} on the "
                        "ULX3S-85F, whose default-model SoC does not route when HeAP places it; "
                        f"{ice.placer} on the iCEBreaker)")
    p.add_argument("--router", choices=("router1", "router2"), default=None,
                   help=f"nextpnr's router (default: the board's, {ulx3s.router} on the "
                        f"ULX3S-85F, {ice.router} on the iCEBreaker)")
    p.add_argument("--tmdriv", action=argparse.BooleanOptionalAction, default=None,
                   help="nextpnr's timing-driven placement and routing (default: the board's, "
                        f"{on_off[ulx3s.timing_driven]} on the ULX3S-85F, "
                        f"{on_off[ice.timing_driven]} on the iCEBreaker); --no-tmdriv places "
                        "and routes for wirelength alone, which routes some congested netlists "
                        "that timing-driven routing stalls on")
    p.add_argument("--router-patience", type=_iterations, default=ROUTER_PATIENCE,
                   metavar="N",
                   help="stop router2, and fail the build, after N iterations without fewer "
                        "overused wires than its best (router2 itself gives up only at iteration "
                        "1,000, hours into a stalled route of the ULX3S-85F SoC; 0: leave it to "
                        "router2; default %(default)s)")
    p.add_argument("--legalise-patience", type=_minutes, default=LEGALISE_PATIENCE / 60,
                   metavar="MINUTES",
                   help="stop the static placer, and fail the build, once its strict legaliser "
                        "has run MINUTES (on a nearly full device it can search without end), "
                        "or once its spreading has gone 1,000 iterations without progress "
                        "(0: let it go on; default %(default)g)")
    p.add_argument("--program", action="store_true",
                   help="program the board with openFPGALoader after the build")
    p.add_argument("--allow-timing-fail", action="store_true",
                   help="keep a bitstream whose Fmax is below the engine clock")
    p.add_argument("--place-only", action="store_true",
                   help="stop after placement and report nextpnr's placement estimate of "
                        "Fmax and the utilization; no bitstream (about half the time of a "
                        "routed build of the default-model ULX3S SoC)")
    p.add_argument("--route-placement", action="store_true",
                   help="route the placement that an earlier --place-only build kept in --out "
                        "(its seed and placer; no Yosys, no placing again), with --router and "
                        "--no-tmdriv as given; nextpnr routes it with other timing weights "
                        "than a whole build, sometimes worse (docs/boards.md)")
    p.add_argument("--force", action="store_true", help="replace an earlier build in --out")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("program", formatter_class=fmt,
                       help="program a board with a bitstream (openFPGALoader)",
                       description="Load a bitstream with openFPGALoader: into the ULX3S-85F's "
                                   "SRAM, or into the iCEBreaker's SPI flash.")
    p.add_argument("--board", required=True, choices=boards, help="the board to program")
    p.add_argument("bitstream", nargs="?", default=None,
                   help="bitstream file (default: the last `mmfree build` for the board)")
    p.set_defaults(func=cmd_program)

    p = sub.add_parser("report", formatter_class=fmt,
                       help="sweep lane counts per board and write the performance report",
                       description="Build the board SoC at each lane count (placement only "
                                   "unless --route), refuse those that do not fit the "
                                   "board's block RAM before any tool runs, and write "
                                   "performance.md, performance.png and performance.json to "
                                   "--out: utilization, Fmax, cycles per token from the "
                                   "engine's schedule, projected tokens/s, the device's "
                                   "physical limits and published results to compare with.")
    p.add_argument("--board", action="append", choices=boards, default=None,
                   help="a board to sweep (repeat for several; default: ulx3s-85f)")
    p.add_argument("--lanes", nargs="+", default=None, metavar="[BOARD:]N",
                   help="lane counts, powers of two, for every board, or BOARD:N for one "
                        "(default: 16 32 ... 1024)")
    p.add_argument("--model", default=None,
                   help="model file (default: the shipped model of each board)")
    p.add_argument("--out", default="docs", help="where the report is written")
    p.add_argument("--work", default=str(Path("build") / "report"),
                   help="build directories, one per board and lane count")
    p.add_argument("--route", nargs="*", default=None, metavar="[BOARD:]N",
                   help="route instead of stopping after placement: every row, or the rows "
                        "named (lane counts as in --lanes); 15 to 30 minutes a row for the "
                        "default-model ULX3S SoC on two cores")
    p.add_argument("--reuse", action="store_true",
                   help="read back an earlier build of the same model, lanes, routing, "
                        "gateware, nextpnr seed and timing-driven switch and tool versions in "
                        "--work instead of building again")
    p.add_argument("--jobs", type=_jobs, default=1, help="builds at a time (one core each)")
    p.add_argument("--seed", type=int, default=None,
                   help="nextpnr placement seed (default: each board's, as `mmfree build`)")
    p.add_argument("--render-only", action="store_true",
                   help="redraw performance.md and performance.png from --out's "
                        "performance.json, without building")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return args.func(args)
    except CliError as error:
        print(f"mmfree: error: {error}", file=sys.stderr)
        return error.status
    except Terminated:
        print("mmfree: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("mmfree: interrupted", file=sys.stderr)
        return EXIT_INTERRUPT
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); don't let Python complain at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
