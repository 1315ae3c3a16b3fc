"""``mmfree generate`` on the simulated board, through the command line: the board's SoC in
Verilator behind a TCP byte stream prints exactly what the golden integer model prints, and
a model that does not fit the chosen board is refused before anything starts."""

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmfree.sim.model import ModelConfig, random_state_dict
from mmfree.tools.checkpoint import save_checkpoint
from mmfree.tools.cli import main

# Not a multiple of the lane count anywhere: d=48, I=80 with the ULX3S's 256 lanes.
CONFIG = ModelConfig(vocab_size=256, hidden_size=48, num_layers=2, intermediate_size=80)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-sim")
    save_checkpoint(CONFIG, random_state_dict(CONFIG, seed=21), root / "ckpt", dtype="bf16")
    path = root / "model.safetensors"
    assert main(["convert", str(root / "ckpt"), str(path)]) == 0
    return path


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("sampling, output", [
    (("--temperature", 0), ()),
    (("--temperature", 0), ("--ids",)),
    (("--temperature", 0.8, "--seed", 5), ()),
    (("--temperature", 1.5, "--seed", 77), ("--ids",)),
], ids=["greedy-text", "greedy-ids", "t0.8-seed5-text", "t1.5-seed77-ids"])
def test_sim_prints_what_golden_prints(model_file, capsys, sampling, output):
    argv = ["generate", "--model", model_file, "--prompt", "ROMEO:\nBut soft",
            "--max-new-tokens", 32, *sampling, *output]
    status, golden_out, err = run_cli(capsys, *argv, "--backend", "golden")
    assert status == 0, err
    status, sim_out, err = run_cli(capsys, *argv, "--backend", "sim")
    assert status == 0, err
    assert sim_out == golden_out
    if output:
        assert len(sim_out.split()) == 32


def test_sim_is_the_default_backend(model_file, capsys):
    argv = ["generate", "--model", model_file, "--prompt", "to be", "--max-new-tokens", 8,
            "--temperature", 0, "--ids"]
    status, default_out, err = run_cli(capsys, *argv)
    assert status == 0, err
    status, golden_out, err = run_cli(capsys, *argv, "--backend", "golden")
    assert status == 0, err
    assert default_out == golden_out
    assert _simulated_boards() == []              # started for the command, shut down after


def _simulated_boards():
    """Running simulated-board processes (their executables are named soc-<board>) that this
    process started. Only this process's children: other pytest workers run simulated boards
    of their own at the same time."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv0 = (proc / "cmdline").read_bytes().split(b"\0")[0]
            status = (proc / "status").read_text()
        except OSError:
            continue
        ppid = int(re.search(r"^PPid:\s*(\d+)", status, re.MULTILINE).group(1))
        if ppid == os.getpid() and \
                Path(argv0.decode(errors="replace")).name.startswith("soc-ulx3s-85f"):
            found.append(int(proc.name))
    return found


def test_weights_through_the_link(model_file, capsys, caplog):
    """--force-load streams the weights over the simulated UART even though the simulated
    board starts with them, verifies them by hash, then generates."""
    argv = ["generate", "--model", model_file, "--prompt", "ab", "--max-new-tokens", 4,
            "--temperature", 0, "--ids"]
    status, golden_out, err = run_cli(capsys, *argv, "--backend", "golden")
    assert status == 0, err
    caplog.set_level(logging.INFO, logger="mmfree.tools.cli")
    status, sim_out, err = run_cli(capsys, *argv, "--backend", "sim", "--force-load")
    assert status == 0, err
    assert sim_out == golden_out
    assert re.search(r"loaded \d+ bytes in [\d.]+ s \(\d+ bytes/s, 0 resends\)", caplog.text)


def assert_one_line_error(err, pattern):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mmfree: error: ") and re.search(pattern, lines[0]), err


def test_model_too_big_for_the_board_is_refused_before_anything_starts(capsys, tmp_path,
                                                                        monkeypatch):
    """The shipped ULX3S model on the iCEBreaker: refused from the memory budget, before the
    simulated board is built or a serial port opened."""
    import mmfree.sim.simboard as simboard
    import mmfree.tools.interface as interface

    def forbidden(*args, **kwargs):
        raise AssertionError("nothing may start for a model that does not fit")

    monkeypatch.setattr(simboard.SimBoard, "__init__", forbidden)
    monkeypatch.setattr(interface.SerialTransport, "__init__", forbidden)
    for backend in (("--backend", "sim"), ("--port", tmp_path / "ttyUSB9")):
        status, out, err = run_cli(capsys, "generate", "--prompt", "ROMEO:", "--board",
                                   "icebreaker", *backend)
        assert status == 1
        assert_one_line_error(err, r"does not fit the icebreaker")
        assert out == ""


def test_missing_serial_port_is_one_line(model_file, capsys, tmp_path):
    status, out, err = run_cli(capsys, "generate", "--model", model_file, "--prompt", "a",
                               "--port", tmp_path / "ttyUSB9")
    assert status != 0
    assert_one_line_error(err, re.escape(str(tmp_path / "ttyUSB9")))


@pytest.mark.parametrize("sampling", [("--temperature", 0), ("--temperature", 0.8, "--seed", 3)],
                         ids=["greedy", "t0.8-seed3"])
def test_shipped_model_on_the_simulated_board(capsys, sampling):
    """The default model (tools/models/ulx3s-85f.safetensors) on the simulated ULX3S-85F,
    256 lanes, as `mmfree generate` runs it with no options."""
    argv = ["generate", "--prompt", "ROMEO:", "--max-new-tokens", 24, *sampling]
    status, golden_out, err = run_cli(capsys, *argv, "--backend", "golden")
    assert status == 0, err
    status, sim_out, err = run_cli(capsys, *argv)
    assert status == 0, err
    assert sim_out == golden_out
    assert sim_out.startswith("ROMEO:") and len(sim_out) > len("ROMEO:") + 12


ICEBREAKER_MODEL = Path(__file__).parents[1] / "tools" / "models" / "icebreaker.safetensors"


@pytest.fixture(scope="module")
def icebreaker_random(tmp_path_factory):
    """A random-weight model of the shipped iCEBreaker model's shape (one simulated board
    build serves both: the serial engine's gateware depends on the shape only)."""
    from mmfree.sim.model import random_model
    from mmfree.sim.modelfile import load_model, save_model
    path = tmp_path_factory.mktemp("icebreaker") / "random.safetensors"
    save_model(random_model(load_model(ICEBREAKER_MODEL).config, seed=31), path)
    return path


@pytest.mark.parametrize("which, sampling", [
    ("shipped", ("--temperature", 0)),
    ("shipped", ("--temperature", 0.8, "--seed", 3)),
    ("random", ("--temperature", 0)),
    ("random", ("--temperature", 1.5, "--seed", 77)),
], ids=["shipped-greedy", "shipped-t0.8-seed3", "random-greedy", "random-t1.5-seed77"])
def test_icebreaker_serial_engine_on_the_simulated_board(icebreaker_random, capsys, caplog,
                                                         which, sampling):
    """The iCEBreaker's SoC (hw/serial.py's serial engine behind the same UART and link) in
    Verilator: its memories start empty, so the host loads the program and the data through
    the simulated UART every time and verifies them; then it prints what golden prints."""
    model = ICEBREAKER_MODEL if which == "shipped" else icebreaker_random
    argv = ["generate", "--model", model, "--board", "icebreaker", "--prompt", "ROMEO:",
            "--max-new-tokens", 12, *sampling]
    status, golden_out, err = run_cli(capsys, *argv, "--backend", "golden")
    assert status == 0, err
    caplog.set_level(logging.INFO, logger="mmfree.tools.cli")
    status, sim_out, err = run_cli(capsys, *argv, "--backend", "sim")
    assert status == 0, err
    assert sim_out == golden_out
    assert len(sim_out) > len("ROMEO:")
    assert re.search(r"loaded \d+ bytes in [\d.]+ s \(\d+ bytes/s, 0 resends\)", caplog.text)


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from Linux's /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _running(pids: set[int]) -> set[int]:
    """Those of ``pids`` that still run (a zombie has ended: only its parent's wait is left)."""
    running = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.add(pid)
    return running


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("sig, status, line", [(signal.SIGTERM, 143, "mmfree: terminated"),
                                               (signal.SIGINT, 130, "mmfree: interrupted")],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_during_generation_stops_the_simulated_board(model_file, sig, status, line):
    """`mmfree generate` on the simulated board, stopped while tokens come out (SIGTERM from
    `timeout` or a CI runner, SIGINT from Ctrl-C): one line, the signal's exit status, and
    the Verilator board it started is gone; the tokens printed before it stand."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmfree.tools.cli", "generate", "--model", str(model_file),
         "--prompt", "ab", "--max-new-tokens", "1000000", "--temperature", "0", "--ids",
         "--backend", "sim"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        tokens = [proc.stdout.readline() for _ in range(3)]
        assert all(re.fullmatch(r"\d+\n", token) for token in tokens), tokens
        board = _descendants(proc.pid)
        assert board, "the simulated board runs below the CLI"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert err.strip().splitlines() == [line], err
    assert re.fullmatch(r"(\d+\n)*", out), out
    deadline = time.monotonic() + 10
    while _running(board) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(board)
