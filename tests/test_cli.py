"""The ``mmfree`` command line: convert, info, eval, generate, and its handling of bad input."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmfree.boards.capacity import soc_blocks
from mmfree.sim import golden, reference
from mmfree.sim.decoding import FloatBackend, GoldenBackend, generate
from mmfree.sim.model import ModelConfig, random_state_dict
from mmfree.sim.modelfile import load_model
from mmfree.tools.checkpoint import save_checkpoint
from mmfree.tools.cli import main
from mmfree.tools.device import BOARD_CONFIGS, engine_image

CONFIG = ModelConfig(vocab_size=256, hidden_size=32, num_layers=2, intermediate_size=64)
TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\n"
        "It is the east, and Juliet is the sun.\n") * 3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ckpt = root / "ckpt"
    save_checkpoint(CONFIG, random_state_dict(CONFIG, seed=3), ckpt, dtype="bf16")
    model = root / "model.safetensors"
    assert main(["convert", str(ckpt), str(model)]) == 0
    text = root / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    return {"root": root, "ckpt": ckpt, "model": model, "text": text}


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(err: str, pattern: str):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mmfree: error: "), err
    assert re.search(pattern, lines[0]), (pattern, err)
    assert "Traceback" not in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", "m"])          # --prompt is required
    assert exc.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "m", "--text", "t", "--start", "-5"],
     "argument --start: '-5' is not a number of characters (0 or more)"),
    (["eval", "--model", "m", "--text", "t", "--max-chars", "-3"],
     "argument --max-chars: '-3' is not a number of characters (0 or more)"),
    (["generate", "--prompt", "a", "--port", "p", "--baud", "0"],
     "argument --baud: '0' is not a number of bits a second (1 or more)"),
    (["generate", "--prompt", "a", "--port", "p", "--baud", "fast"],
     "argument --baud: 'fast' is not a number of bits a second (1 or more)"),
])
def test_counts_below_their_least_are_usage_errors(capsys, argv, message):
    """A negative --start or --max-chars would slice the text from its end, and a baud rate
    of 0 would reach the serial port: each is refused by the parser, before anything runs."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


@pytest.mark.parametrize("command", ["convert", "info", "eval", "generate", "verilog"])
def test_help_shows_defaults(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mmfree " + command)
    if command in ("generate", "eval", "convert", "verilog"):
        assert "(default:" in out


def test_convert_refuses_to_overwrite(files, capsys):
    before = files["model"].read_bytes()
    status, out, err = run_cli(capsys, "convert", files["ckpt"], files["model"])
    assert status == 1
    assert_one_line_error(err, r"already exists \(use --force")
    assert files["model"].read_bytes() == before
    status, out, err = run_cli(capsys, "convert", files["ckpt"], files["model"], "--force")
    assert status == 0, err
    assert "wrote" in out
    assert files["model"].read_bytes() == before        # deterministic conversion


def test_convert_1p6bit_gives_same_numerics(files, capsys, tmp_path):
    out_file = tmp_path / "m16.safetensors"
    status, _, err = run_cli(capsys, "convert", files["ckpt"], out_file, "--packing", "1.6bit")
    assert status == 0, err
    a, b = load_model(files["model"]), load_model(out_file)
    assert b.config.packing == "1.6bit"
    assert out_file.stat().st_size < files["model"].stat().st_size
    ia, ib = golden.prepare(a), golden.prepare(b)
    la, _ = golden.decode_step(ia, 7, golden.init_state(ia))
    lb, _ = golden.decode_step(ib, 7, golden.init_state(ib))
    assert np.array_equal(la, lb)


def test_info(files, capsys):
    status, out, err = run_cli(capsys, "info", files["model"])
    assert status == 0, err
    assert re.search(r"hidden size\s+32", out)
    assert re.search(rf"parameters\s+{CONFIG.num_parameters:,}", out)
    assert re.search(r"size 2bit\s+weights", out) and re.search(r"size 1.6bit\s+weights", out)
    assert re.search(r"ulx3s-85f\s+2bit\s+fits", out)
    assert re.search(r"icebreaker\s+2bit\s+fits", out)
    # A checkpoint directory works too.
    status, out2, err = run_cli(capsys, "info", files["ckpt"])
    assert status == 0, err
    assert re.search(r"hidden size\s+32", out2)


def test_info_counts_the_boards_own_engine(capsys):
    """`mmfree info` counts a board's block RAMs with the board's whole engine layout (its
    BOARD_CONFIGS entry, the packing replaced), the count `mmfree build` checks."""
    path = Path(__file__).resolve().parent.parent / "tools" / "models" / "ulx3s-85f.safetensors"
    status, out, err = run_cli(capsys, "info", str(path))
    assert status == 0, err
    blocks = sum(soc_blocks(engine_image(load_model(path), BOARD_CONFIGS["ulx3s-85f"])).values())
    assert re.search(rf"ulx3s-85f\s+1.6bit\s+fits\s+\({blocks} of 208 block RAMs", out), out


def test_info_reports_a_model_that_does_not_fit(tmp_path, capsys):
    big = ModelConfig(vocab_size=256, hidden_size=512, num_layers=2, intermediate_size=1536)
    ckpt = tmp_path / "big"
    save_checkpoint(big, random_state_dict(big, seed=0), ckpt, dtype="bf16")
    status, out, err = run_cli(capsys, "info", ckpt)
    assert status == 0, err
    assert re.search(r"icebreaker\s+2bit\s+does not fit", out)


def test_eval_prints_both_perplexities(files, capsys):
    status, out, err = run_cli(capsys, "eval", "--model", files["model"], "--text", files["text"],
                               "--max-chars", 60)
    assert status == 0, err
    ppl_f = float(re.search(r"float perplexity\s+([\d.]+)", out).group(1))
    ppl_i = float(re.search(r"integer perplexity\s+([\d.]+)", out).group(1))
    agree = float(re.search(r"greedy agreement\s+([\d.]+)%", out).group(1))
    assert re.search(r"tokens scored\s+59", out)
    # A random byte-level model is close to uniform: perplexity near 256.
    assert 150 < ppl_f < 400 and abs(ppl_i / ppl_f - 1) < 0.02
    assert 0 <= agree <= 100


def _generate(capsys, files, *extra):
    """Greedy unless ``extra`` sets a temperature (the CLI's default is 0.8)."""
    extra = extra if "--temperature" in extra else ("--temperature", 0, *extra)
    extra = extra if "--backend" in extra else ("--backend", "golden", *extra)
    status, out, err = run_cli(capsys, "generate", "--model", files["model"], "--prompt", "ROMEO:",
                               "--max-new-tokens", 12, "--ids", *extra)
    assert status == 0, err
    return [int(line) for line in out.split()]


def test_generate_greedy_is_deterministic_and_matches_the_golden_model(files, capsys):
    first = _generate(capsys, files)
    assert first == _generate(capsys, files)
    model = load_model(files["model"])
    expected = list(generate(GoldenBackend(model), list(b"ROMEO:"), 12))
    assert first == expected
    # Independently: greedy decoding with the integer model, written out here.
    im = golden.prepare(model)
    state = golden.init_state(im)
    for token in b"ROMEO:":
        logits, state = golden.decode_step(im, token, state)
    manual = []
    for _ in range(12):
        manual.append(int(np.argmax(logits)))
        logits, state = golden.decode_step(im, manual[-1], state)
    assert first == manual


def test_generate_sampling_is_deterministic_per_seed(files, capsys):
    a = _generate(capsys, files, "--temperature", 0.8, "--seed", 5)
    assert a == _generate(capsys, files, "--temperature", 0.8, "--seed", 5)
    others = [_generate(capsys, files, "--temperature", 0.8, "--seed", s) for s in (6, 7)]
    assert any(o != a for o in others)


def test_generate_float_backend(files, capsys):
    tokens = _generate(capsys, files, "--backend", "float")
    model = load_model(files["model"])
    assert tokens == list(generate(FloatBackend(model), list(b"ROMEO:"), 12))
    state = reference.init_state(model)
    for token in b"ROMEO:":
        logits, state = reference.decode_step(model, token, state)
    assert tokens[0] == int(np.argmax(logits))


def test_generate_prints_text(files, capsys):
    status, out, err = run_cli(capsys, "generate", "--model", files["model"], "--prompt", "ROMEO:",
                               "--max-new-tokens", 5, "--backend", "golden")
    assert status == 0, err
    assert out.startswith("ROMEO:")


@pytest.mark.parametrize("temperature", ["-1", "0.001", "100", "nan"])
def test_generate_rejects_bad_temperature(files, capsys, temperature):
    status, out, err = run_cli(capsys, "generate", "--model", files["model"], "--prompt", "a",
                               "--temperature", temperature)
    assert status == 2
    assert_one_line_error(err, "temperature")


def test_generate_rejects_empty_prompt(files, capsys):
    status, out, err = run_cli(capsys, "generate", "--model", files["model"], "--prompt", "")
    assert status == 2
    assert_one_line_error(err, "prompt is empty")


def test_bad_model_files(files, capsys, tmp_path):
    good = files["model"].read_bytes()
    cases = {
        "missing.safetensors": None,
        "garbage.safetensors": b"this is not a model file at all",
        "truncated.safetensors": good[: len(good) // 2],
        "empty.safetensors": b"",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        for argv in (["info", path], ["generate", "--model", path, "--prompt", "a"],
                     ["eval", "--model", path, "--text", files["text"]]):
            status, out, err = run_cli(capsys, *argv)
            assert status == 1, (name, argv, err)
            assert_one_line_error(err, re.escape(str(path)))


def test_bad_text_file(files, capsys, tmp_path):
    status, out, err = run_cli(capsys, "eval", "--model", files["model"],
                               "--text", tmp_path / "nope.txt")
    assert status == 1
    assert_one_line_error(err, "nope.txt")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    status, out, err = run_cli(capsys, "eval", "--model", files["model"], "--text", binary)
    assert status == 1
    assert_one_line_error(err, "not UTF-8")


def test_console_script_end_to_end(files):
    """The installed ``mmfree`` entry point, as a user runs it."""
    exe = shutil.which("mmfree")
    cmd = [exe] if exe else [sys.executable, "-m", "mmfree.tools.cli"]
    result = subprocess.run(cmd + ["generate", "--model", str(files["model"]), "--prompt", "ab",
                                   "--max-new-tokens", "3", "--ids", "--backend", "golden"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONWARNINGS": "error"})
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 3
    result = subprocess.run(cmd + ["info", str(files["root"] / "nothing")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("mmfree: error: ") and "Traceback" not in result.stderr


# --- Hugging Face tokenizers (vocabulary > 256) ----------------------------------------------

def _word_tokenizer_json(vocab_size: int) -> str:
    """A real tokenizer.json (WordLevel, whitespace pre-tokenizer): ids 0..2 are <unk>/<s>/</s>,
    then words; padded with filler words up to vocab_size."""
    tokenizers = pytest.importorskip("tokenizers")
    words = ["<unk>", "<s>", "</s>", "to", "be", "or", "not", "that", "is", "the", "question"]
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##")   # joins words with spaces
    return tok.to_str()


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    config = ModelConfig(vocab_size=300, hidden_size=32, num_layers=1, intermediate_size=64)
    tokenizer = {"type": "hf", "tokenizer_json": _word_tokenizer_json(300),
                 "bos_token_id": 1, "eos_token_id": 2}
    root = tmp_path_factory.mktemp("hf")
    save_checkpoint(config, random_state_dict(config, seed=1), root / "ckpt", dtype="fp32",
                    tokenizer=tokenizer)
    assert main(["convert", str(root / "ckpt"), str(root / "m.safetensors")]) == 0
    return root / "m.safetensors"


def test_generate_with_hf_tokenizer(hf_model, capsys):
    status, out, err = run_cli(capsys, "generate", "--model", hf_model, "--prompt",
                               "to be or not", "--max-new-tokens", 4, "--ids", "--temperature", 0,
                               "--backend", "golden")
    assert status == 0, err
    tokens = [int(t) for t in out.split()]
    model = load_model(hf_model)
    # The prompt is encoded with a leading BOS: <s> to be or not.
    assert tokens == list(generate(GoldenBackend(model), [1, 3, 4, 5, 6], 4))
    status, out, err = run_cli(capsys, "generate", "--model", hf_model, "--prompt",
                               "to be", "--max-new-tokens", 3, "--backend", "golden")
    assert status == 0 and out.startswith("to be"), err


def test_hf_tokenizer_needs_the_package(hf_model, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)      # import fails as if not installed
    status, out, err = run_cli(capsys, "generate", "--model", hf_model, "--prompt", "to be")
    assert status == 3
    assert_one_line_error(err, r"needs the 'tokenizers' package")


def test_verilog_writes_engine_and_summary(files, capsys, tmp_path):
    """`mmfree verilog`: plain Verilog that Yosys elaborates, and a summary whose cycles per
    token is the documented schedule's."""
    import json

    from mmfree.boards.toolchain import _yowasp_command
    from mmfree.sim.engine import EngineImage, step_cycles

    out = tmp_path / "engine"
    status, stdout, err = run_cli(capsys, "verilog", "--model", files["model"], "--lanes", 16,
                                  "--out", out)
    assert status == 0, err
    verilog, summary = out / "mmfree_engine.v", out / "mmfree_engine.json"
    assert "module mmfree_engine(" in verilog.read_text()
    image = EngineImage(golden.prepare(load_model(files["model"])), 16)
    info = json.loads(summary.read_text())
    assert (info["lanes"], info["vector_width"]) == (16, 8)
    assert info["cycles_per_token_greedy"] == step_cycles(image)
    assert info["ternary_weights_per_token"] == image.ternary_weights()
    assert f"{step_cycles(image):,} cycles per token" in stdout
    result = subprocess.run(
        [_yowasp_command("yosys"), "-q", "-p",
         "read_verilog mmfree_engine.v; hierarchy -check -top mmfree_engine; proc; "
         "check -assert"],
        capture_output=True, text=True, cwd=out)    # YoWASP tools see the working directory
    assert result.returncode == 0, result.stderr[-2000:]

    # Never overwrites without --force; with it, it does.
    before = verilog.read_text()
    verilog.write_text("// mine\n")
    status, _, err = run_cli(capsys, "verilog", "--model", files["model"], "--lanes", 16,
                             "--out", out)
    assert status == 2
    assert_one_line_error(err, r"mmfree_engine\.v exists; give --force to overwrite it")
    assert verilog.read_text() == "// mine\n"
    status, _, err = run_cli(capsys, "verilog", "--model", files["model"], "--lanes", 16,
                             "--out", out, "--force")
    assert status == 0, err
    assert verilog.read_text() == before


@pytest.mark.parametrize("argv, status, pattern", [
    (["--lanes", "12"], 2, r"--lanes must be a positive power of two, not 12"),
    (["--lanes", "0"], 2, r"--lanes must be a positive power of two, not 0"),
    (["--vector-width", "6"], 2, r"--vector-width must be a power of two from 1 to 64, not 6"),
], ids=["lanes-12", "lanes-0", "vector-width-6"])
def test_verilog_bad_arguments(files, capsys, tmp_path, argv, status, pattern):
    code, _, err = run_cli(capsys, "verilog", "--model", files["model"], "--out", tmp_path / "o",
                           *argv)
    assert code == status
    assert_one_line_error(err, pattern)
    assert not (tmp_path / "o").exists()


def test_verilog_missing_model(capsys, tmp_path):
    code, _, err = run_cli(capsys, "verilog", "--model", tmp_path / "none.safetensors",
                           "--out", tmp_path / "o")
    assert code == 1
    assert_one_line_error(err, r"none\.safetensors: no such file or directory")
