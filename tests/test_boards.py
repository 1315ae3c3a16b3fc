# amaranth: UnusedElaboratable=no
"""Board top levels, PLL settings, ``mmfree build`` and ``mmfree program``.

The fast tests elaborate both tops and check Amaranth's build plan (PLL instance, pins,
clock constraint) without running a tool; ``test_build_places_and_routes`` runs Yosys and
nextpnr-ecp5 on a tiny model (``synth``)."""

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest

from mmfree.boards import build as board_build
from mmfree.boards.capacity import ram_blocks, soc_blocks
from mmfree.boards.pll import ecp5_pll, ice40_pll
from mmfree.sim.model import ModelConfig, random_model
from mmfree.sim import serial
from mmfree.sim.modelfile import load_model
from mmfree.tools import cli, routed_paths
from mmfree.tools.device import BOARD_CONFIGS, engine_image

TINY = ModelConfig(vocab_size=32, hidden_size=16, num_layers=1, intermediate_size=16)


@pytest.fixture(scope="module")
def tiny_model():
    return random_model(TINY, seed=1)


# --- PLL settings ---------------------------------------------------------------------------

@pytest.mark.parametrize("f_in, f_out", [(25_000_000, 48_000_000), (25_000_000, 100_000_000),
                                         (25_000_000, 75_000_000), (25_000_000, 45_000_000)])
def test_ecp5_pll_is_exact_and_in_range(f_in, f_out):
    pll = ecp5_pll(f_in, f_out)
    assert Fraction(f_in, pll.clki_div) * pll.clkfb_div * pll.clkop_div / pll.clkos_div == f_out
    assert 3_125_000 <= pll.f_pfd <= 400_000_000, pll
    assert 400_000_000 <= pll.f_vco <= 800_000_000, pll
    assert 1 <= pll.clki_div <= 128 and 1 <= pll.clkfb_div <= 80, pll
    assert 1 <= pll.clkop_div <= 128 and 1 <= pll.clkos_div <= 128, pll
    params = pll.parameters()
    assert params["p_CLKOS_CPHASE"] == pll.clkos_div - 1 and params["p_FEEDBK_PATH"] == "CLKOP"


def test_ice40_pll_12_to_24_mhz():
    pll = ice40_pll(12_000_000, 24_000_000)
    assert (pll.divr, pll.divf, pll.divq, pll.filter_range) == (0, 63, 5, 1)
    assert pll.f_vco == 768_000_000


def test_pll_refuses_what_it_cannot_make():
    with pytest.raises(ValueError, match=r"exactly 25 MHz from 12 MHz .* nearest: 24\.75"):
        ice40_pll(12_000_000, 25_000_000)
    with pytest.raises(ValueError, match="input must be 8..400 MHz"):
        ecp5_pll(1_000_000, 48_000_000)
    with pytest.raises(ValueError, match="positive integer"):
        ecp5_pll(25_000_000, 48e6)


# --- top levels: Amaranth's build plan, no tools --------------------------------------------

PINS = {
    # board: (PLL primitive or None, the oscillator's constraint, {port: pin}). The engine
    # clock has none of its own: nextpnr derives it from the PLL (or it is the oscillator).
    "ulx3s-85f": ("EHXPLLL", 'FREQUENCY PORT "clk25_0__io" 25000000.0 HZ;',
                  {"clk25_0__io": "G2", "uart_0__rx__io": "M1", "uart_0__tx__io": "L4",
                   "led_0__io": "B2", "led_1__io": "C2", "led_2__io": "C1", "led_3__io": "D2"}),
    "icebreaker": (None, "set_frequency clk12_0__io 12.0",     # the oscillator
                   {"clk12_0__io": "35", "uart_0__rx__io": "6", "uart_0__tx__io": "9",
                    "led_g_0__io": "37", "led_2__io": "26", "led_3__io": "27",
                    "led_r_0__io": "11"}),
}


def _text(content):
    return content if isinstance(content, str) else content.decode()


@pytest.mark.parametrize("board", list(PINS))
def test_top_prepares_with_clock_and_pins(board, tiny_model):
    lanes = None if BOARD_CONFIGS[board].engine == "serial" else 8
    platform, top, config, image = board_build.make_top(board, tiny_model, lanes=lanes)
    plan = platform.prepare(top, name="top", debug_verilog=False)
    files = {name: _text(content) for name, content in plan.files.items()}
    primitive, constraint, pins = PINS[board]
    if primitive is None:                   # the engine runs from the oscillator
        assert "PLL" not in files["top.il"], f"{board}: a PLL"
    else:
        assert f"cell \\{primitive} " in files["top.il"], f"{board}: no {primitive} instance"
    constraints = files["top.lpf"] if board == "ulx3s-85f" else files["top.pcf"]
    for port, pin in pins.items():
        line = f'LOCATE COMP "{port}" SITE "{pin}";' if board == "ulx3s-85f" \
            else f"set_io {port} {pin}"
        assert line in constraints, f"{board}: {port} not on {pin}:\n{constraints}"
    assert constraint in constraints, constraints
    # One clock constraint, the oscillator's: one on the engine clock named a net that
    # synthesis merged away, and nextpnr ignored it with a warning.
    frequency = "FREQUENCY " if board == "ulx3s-85f" else "set_frequency "
    assert constraints.count(frequency) == 1, constraints
    assert constraints.count("LOCATE COMP" if board == "ulx3s-85f" else "set_io") == len(pins)
    assert top.soc.identity.clock_hz == config.clock_hz
    assert image.lanes == (serial.DOT_LANES if config.engine == "serial" else 8)


def test_make_top_refuses_bad_lanes(tiny_model):
    with pytest.raises(ValueError, match="power of two, not 12"):
        board_build.make_top("ulx3s-85f", tiny_model, lanes=12)


def test_serial_engine_board_refuses_other_sizes(tiny_model, capsys, tmp_path):
    """The iCEBreaker's serial engine has its DOT unit's 4 lanes and no vector path: asking
    for other sizes is one line and exit 2 (not a build whose report names sizes it lacks);
    its own sizes are accepted."""
    with pytest.raises(board_build.BuildError, match="serial engine, whose --lanes is 4; 64"):
        board_build.make_top("icebreaker", tiny_model, lanes=64)
    with pytest.raises(board_build.BuildError, match="--vector-width is 1; 8 cannot"):
        board_build.make_top("icebreaker", tiny_model, vector_width=8)
    platform, top, config, image = board_build.make_top("icebreaker", tiny_model, lanes=4,
                                                        vector_width=1)
    assert (config.lanes, image.lanes) == (4, serial.DOT_LANES)
    platform.prepare(top, name="top", debug_verilog=False)     # elaborated: used
    out_dir = tmp_path / "ice"
    assert cli.main(["build", "--board", "icebreaker", "--lanes", "64",
                     "--out", str(out_dir)]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "serial engine, whose --lanes is 4" in err, err
    assert not out_dir.exists()


# --- the CLI, no tools ----------------------------------------------------------------------

def _run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mmfree.tools.cli", *args],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("board", list(PINS))
def test_program_without_a_board_is_one_line(board, tmp_path):
    bitstream = tmp_path / "top.bit"
    bitstream.write_bytes(b"\xff" * 64)
    result = _run_cli("program", "--board", board, str(bitstream))
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result
    assert len(lines) == 1 and lines[0].startswith("mmfree: error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert ("ULX3S" if board == "ulx3s-85f" else "iCEBreaker") in lines[0], lines[0]


def test_program_without_a_build_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MMFREE_BUILD_DIR", str(tmp_path))
    assert cli.main(["program", "--board", "icebreaker"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no earlier build for the icebreaker" in err[0], err


def test_build_refuses_a_model_that_does_not_fit(tmp_path, monkeypatch, capsys):
    """The ULX3S-sized default model on the iCEBreaker: one line, before any tool runs."""
    def no_tools(*args, **kwargs):
        raise AssertionError(f"a tool ran: {args}")
    monkeypatch.setattr(board_build.subprocess, "run", no_tools)
    out = tmp_path / "out"
    status = cli.main(["build", "--board", "icebreaker", "--model",
                       str(cli.default_model_path()), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == cli.EXIT_DATA, err
    assert len(err) == 1 and err[0].startswith("mmfree: error: the model does not fit the "
                                               "icebreaker"), err
    assert not out.exists()


def test_build_refuses_too_many_block_rams(tmp_path, monkeypatch, capsys):
    """The default model at vector width 8 with 2-bit rows needs more DP16KD than the
    LFE5U-85F has: refused by the block count, before any tool runs."""
    def no_tools(*args, **kwargs):
        raise AssertionError(f"a tool ran: {args}")
    monkeypatch.setattr(board_build.subprocess, "run", no_tools)
    monkeypatch.setitem(BOARD_CONFIGS, "ulx3s-85f", dataclasses.replace(
        BOARD_CONFIGS["ulx3s-85f"], packing="2bit"))
    out = tmp_path / "out"
    status = cli.main(["build", "--board", "ulx3s-85f", "--vector-width", "8", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == cli.EXIT_DATA, err
    assert err == ["mmfree: error: the model does not fit the ulx3s-85f: 254 of 208 block "
                   "RAMs: tmem 171, vmem 24, cmem 17, ..."], err
    assert not out.exists()


def test_block_ram_estimate_is_what_yosys_maps():
    """capacity.soc_blocks for the ULX3S SoC with its shipped model, memory by memory at 128
    lanes and in all at the board's 256 (and at 512), equals the DP16KD cells Yosys 0.70
    (synth_ecp5) made (docs/boards.md), and the shapes behind it: a whole-row memory, depth
    slices sharing byte lanes, write granules, distributed RAM."""
    model = load_model(cli.default_model_path())
    assert BOARD_CONFIGS["ulx3s-85f"].lanes == 256
    assert sum(soc_blocks(engine_image(model, BOARD_CONFIGS["ulx3s-85f"])).values()) == 205
    image = engine_image(model, dataclasses.replace(BOARD_CONFIGS["ulx3s-85f"], lanes=512))
    assert sum(soc_blocks(image).values()) == 202
    image = engine_image(model, dataclasses.replace(BOARD_CONFIGS["ulx3s-85f"], lanes=128))
    assert soc_blocks(image) == {
        "tmem": 132, "cmem": 14, "emb": 16, "vmem": 12, "prog": 9, "nq.buf": 4, "link.rx": 2,
        "exp tables": 4, "sampler.probs": 1, "sampler.softmax.buf": 1, "up_fifo": 1,
        "qbuf": 0}
    assert ram_blocks(208, 10496) == 132    # 24 lanes x 11 slices of 1024 x 18 (126 of 512 x 36
                                            # cost more in read multiplexers)
    assert ram_blocks(128, 2336, granularity=32) == 20      # 4 x 4 lanes x 5 slices of 512 x 36
    # The depth slices' rows share blocks in 9-bit byte lanes (memory_libmap's swizzle): each
    # shape checked against Yosys 0.70's synth_ecp5 of one memory (2026-11-26).
    for (width, depth), blocks in {(96, 2048): 11, (96, 2176): 14, (96, 2560): 14,
                                   (96, 4224): 25, (96, 8320): 50, (96, 10496): 61,
                                   (128, 2176): 19, (208, 2176): 30, (208, 2560): 30,
                                   (208, 4224): 54, (208, 8320): 108}.items():
        assert ram_blocks(width, depth) == blocks, (width, depth)
    assert ram_blocks(128, 384, granularity=32, copies=3) == 12
    assert ram_blocks(1024, 4, granularity=8) == 0          # distributed RAM
    assert ram_blocks(16, 256, family="ice40") == 1 and ram_blocks(32, 1024, family="ice40") == 8


def test_build_does_not_write_into_a_foreign_directory(tmp_path, tiny_model):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(board_build.BuildError, match="not an mmfree build directory"):
        board_build.build("ulx3s-85f", tiny_model, lanes=8, out_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_over_capacity_is_read_from_the_nextpnr_log(tmp_path):
    log = tmp_path / "top.tim"
    log.write_text("Info: Device utilisation:\n"
                   "Info: \t              DP16KD:       9/    208     4%\n"
                   "Info: \t          MULT18X18D:     194/    156   124%\n"
                   "ERROR: Unable to place cell 'x', no BELs remaining\n")
    assert board_build._over_capacity(log) == "MULT18X18D 194/156"


def test_tools_are_stopped_when_the_design_is_over_the_device(tmp_path):
    """nextpnr-ecp5 goes on placing a design over 100% of a resource; the build stops it as
    soon as its log says so (here a script that writes such a log, then would sleep a minute)."""
    import time
    log = tmp_path / "top.tim"
    script = tmp_path / "build.sh"
    script.write_text(f"echo 'Info: \t        TRELLIS_COMB:  101050/  83640   120%' > {log}\n"
                      f"echo placing\nsleep 60\n")
    start = time.monotonic()
    result = board_build._run_tools(["sh", str(script)], tmp_path, None, log, poll=0.2)
    assert time.monotonic() - start < 20
    assert result.returncode != 0 and result.stdout == "placing\n"
    assert "stopped: TRELLIS_COMB 101050/83640 is over the device" in result.stderr
    # A script that finishes on its own: its status and output, untouched.
    script.write_text("echo done; exit 3\n")
    result = board_build._run_tools(["sh", str(script)], tmp_path, None, tmp_path / "x.tim",
                                    poll=0.2)
    assert (result.returncode, result.stdout) == (3, "done\n")


# router2's overused wires, iteration by iteration, from two builds of the default-model
# ULX3S SoC (docs/boards.md): seed 4 of the fused_sums netlist with --no-tmdriv, which
# stalled (best 361 at iteration 36, then rising; stopped by hand at 69), and seed 4 of the
# reset-less netlist with --no-tmdriv, which routed at iteration 89 after 16 iterations
# without a new best.
STALLED = [71311, 39665, 23628, 14755, 10150, 7169, 5199, 4009, 3134, 2431, 1929, 1567, 1262,
           1102, 902, 741, 650, 604, 550, 519, 451, 455, 441, 401, 395, 370, 373, 372, 362, 380,
           397, 376, 390, 401, 362, 361, 367, 398, 424, 465, 475, 485, 511, 541, 558, 579, 610,
           640, 685, 700, 738, 771, 896, 869, 940, 968, 1069, 1101, 1198, 1273, 1388, 1478,
           1700, 1806, 1980, 2151, 2394, 2608, 2764]
ROUTED = [74287, 40909, 24564, 15538, 10528, 7505, 5425, 4027, 2890, 2104, 1560, 1229, 863,
          699, 614, 502, 393, 335, 274, 236, 210, 182, 175, 143, 144, 125, 121, 118, 125, 101,
          84, 72, 40, 41, 33, 29, 28, 31, 28, 29, 22, 19, 13, 13, 22, 22, 20, 23, 28, 16, 8, 10,
          14, 15, 13, 13, 10, 8, 4, 3, 5, 3, 4, 5, 2, 3, 3, 3, 7, 4, 4, 3, 3, 4, 4, 3, 3, 5, 3,
          2, 1, 1, 1, 1, 1, 1, 1, 1, 0]


def _router2_log(overused: list[int]) -> str:
    return "Info: Running router2...\n" + "".join(
        f"Info:     iter={i} wires={990000 + i} overused={n} overuse={n} "
        f"archfail={'0' if n == 0 else 'NA'}\n" for i, n in enumerate(overused, 1))


def test_router_stall_is_read_from_the_nextpnr_log(tmp_path):
    """The stalled route is stopped 30 iterations after its best, at iteration 66 (2,151
    overused wires); the route that converged is never stopped, at any iteration."""
    log = tmp_path / "top.tim"
    stops = {}
    for name, overused in (("stalled", STALLED), ("routed", ROUTED)):
        for n in range(1, len(overused) + 1):
            log.write_text(_router2_log(overused[:n]))
            if board_build._router_stall(log, board_build.ROUTER_PATIENCE):
                stops[name] = (n, board_build._router_stall(log, board_build.ROUTER_PATIENCE))
                break
    assert stops == {"stalled": (66, "best 361 overused wires at iteration 36, 2,151 at "
                                     "iteration 66")}, stops
    # Lingering on a few wires is not a stall; nor is a log without router2's iterations.
    log.write_text(_router2_log([900, 40] + [41, 60, 75] * 20))
    assert board_build._router_stall(log, 30) == ""
    log.write_text("Info: Placed 1000 cells\n")
    assert board_build._router_stall(log, 30) == ""
    assert board_build._router_stall(tmp_path / "missing.tim", 30) == ""


def test_tools_are_stopped_when_router2_stalls(tmp_path):
    """A script that writes the stalled route's log, then would sleep a minute: stopped with
    the best and the last count; with patience 0 only the script's own end stops it."""
    import time
    log = tmp_path / "top.tim"
    (tmp_path / "router2.log").write_text(_router2_log(STALLED))
    script = tmp_path / "build.sh"
    script.write_text(f"cp router2.log {log}\necho routing\nsleep 60\n")
    start = time.monotonic()
    result = board_build._run_tools(["sh", str(script)], tmp_path, None, log, poll=0.2,
                                    patience=30)
    assert time.monotonic() - start < 20
    assert result.returncode != 0 and result.stdout == "routing\n"
    assert (f"stopped: {board_build.STALL_MARK} best 361 overused wires at iteration 36, "
            f"2,764 at iteration 69") in result.stderr
    script.write_text(f"cp router2.log {log}\nsleep 1\necho routed\n")
    result = board_build._run_tools(["sh", str(script)], tmp_path, None, log, poll=0.2)
    assert (result.returncode, result.stdout, result.stderr) == (0, "routed\n", "")


@pytest.mark.parametrize("router, patience", [("router2", None), ("router2", 12),
                                              ("router1", None)])
def test_build_reports_a_stalled_route(router, patience, tmp_path, tiny_model, monkeypatch,
                                       capsys):
    """``mmfree build`` gives router2 the patience asked for (30 by default; router1 none) and
    turns a stopped route into one line naming the best and the last count, the seed to
    change and the log, with the tool-failure exit status."""
    from mmfree.sim.modelfile import save_model
    given = []

    def run_tools(cmd, cwd, env, log, patience=0, **kwargs):
        given.append(patience)
        return subprocess.CompletedProcess(
            cmd, -15, "", f"\nstopped: {board_build.STALL_MARK} best 361 overused wires at "
                          f"iteration 36, 2,151 at iteration 66\n")

    monkeypatch.setattr(board_build, "_run_tools", run_tools)
    save_model(tiny_model, tmp_path / "tiny.safetensors")
    out = tmp_path / "b"
    status = cli.main(["build", "--board", "ulx3s-85f", "--model", str(tmp_path / "tiny.safetensors"),
                       "--lanes", "8", "--vector-width", "1", "--out", str(out),
                       "--router", router]
                      + ([] if patience is None else ["--router-patience", str(patience)]))
    err = capsys.readouterr().err.strip().splitlines()
    expected = {"router1": 0, "router2": patience or board_build.ROUTER_PATIENCE}[router]
    assert given == [expected]
    assert status == 1 and len(err) == 1, err
    if router == "router1":
        return
    assert err[0] == (
        f"mmfree: error: routing did not converge on the ulx3s-85f: router2 went {expected} "
        f"iterations without progress (best 361 overused wires at iteration 36, 2,151 at "
        f"iteration 66) and was stopped; another --seed may route it (docs/boards.md), "
        f"--router-patience 0 lets it go on (log: {out / 'top.tim'})"), err


# The end of nextpnr's log of the 1024-lane ULX3S SoC with the weight register, whose strict
# legaliser printed nothing more for 70 minutes (docs/boards.md).
LEGALISING = """Info: iter=622 steplen=2.468810 a=313.433167 penalty=[41.03, 41.03, 41.03, 41.03]
Info:    update_chains distance 5939.03
Info:    system potential: 7458.999512 hpwl: 740201.500000
Info: overlap: COMB=10.0%, FF=5.1%, RAM=0.0%, MUL=0.0%
Info: Strict legalising 87868 cells...
"""


def test_legaliser_stall_is_read_from_the_nextpnr_log(tmp_path):
    """The legaliser's line, last in a log unchanged for the patience: a stall, with the cells
    and the minutes; before the patience, after a later line, or without the line: none."""
    import os
    import time
    log = tmp_path / "top.tim"
    log.write_text(LEGALISING)
    now = time.time()
    os.utime(log, (now - 22 * 60, now - 22 * 60))
    assert board_build._legaliser_stall(log, 20 * 60, now) == "87,868 cells, 22 minutes"
    assert board_build._legaliser_stall(log, 30 * 60, now) == ""
    os.utime(log, (now, now))
    assert board_build._legaliser_stall(log, 20 * 60, now) == ""
    assert board_build._legaliser_stall(log, 20 * 60, now + 20 * 60) == \
        "87,868 cells, 20 minutes"
    log.write_text(LEGALISING + "Info: HPWL after legalise: 522627.000000 (delta: 31921.9)\n")
    os.utime(log, (now - 22 * 60, now - 22 * 60))
    assert board_build._legaliser_stall(log, 20 * 60, now) == ""
    log.write_text("")
    assert board_build._legaliser_stall(log, 0, now) == ""
    assert board_build._legaliser_stall(tmp_path / "missing.tim", 0, now) == ""


def _spreading_log(ram: list[float]) -> str:
    """A static placer's log whose block RAM overlap goes through ``ram``, an iteration each."""
    return "Info: Running Static placer...\n" + "".join(
        f"Info: overlap: COMB=2.2%, FF=0.8%, RAM={value}%, MUL=0.0%\n"
        f"Info: iter={i} steplen=1.35 a=1198.27 penalty=[1829.17, 1829.17, 1829.17, 1829.17]\n"
        for i, value in enumerate(ram))


def test_spreading_stall_is_read_from_the_nextpnr_log(tmp_path):
    """The largest overlap not falling by 0.05 points for the patience: a stall, naming it; a
    log still spreading, one that has legalised and moved on, or none: not. Taken from the
    512-lane SoC whose block RAMs stayed at 22.8% (docs/boards.md)."""
    log = tmp_path / "top.tim"
    stuck = [97.6, 80.0, 50.0, 30.0, 23.0] + [22.8, 22.81, 22.79] * 400
    log.write_text(_spreading_log(stuck))
    assert board_build._spreading_stall(log, 1000) == "RAM overlap 22.8% for 1,199 iterations"
    assert board_build._spreading_stall(log, 1200) == ""
    falling = [97.6 - 0.06 * i for i in range(1300)]
    log.write_text(_spreading_log(falling))
    assert board_build._spreading_stall(log, 1000) == ""
    log.write_text(_spreading_log(stuck) + "Info: Strict legalising 338 cells...\n")
    assert board_build._spreading_stall(log, 1000) == ""     # a new spreading, not stuck yet
    log.write_text(_spreading_log(stuck) + "Info: Strict legalising 338 cells...\n"
                   + _spreading_log([10.0] * 1200))
    assert board_build._spreading_stall(log, 1000) == "RAM overlap 10.0% for 1,199 iterations"
    log.write_text(_spreading_log(stuck) + "Info: Running simulated annealing placer for "
                   "refinement.\n")
    assert board_build._spreading_stall(log, 1000) == ""
    assert board_build._spreading_stall(tmp_path / "missing.tim", 1000) == ""


def test_build_takes_a_list_of_seeds(tmp_path, tiny_model, monkeypatch, capsys):
    """``--seed 3,4,5`` goes to the build as a list with a job a core (at most one a seed, or
    ``--jobs``); each seed that stalls or misses timing is one line, and the build's own
    failure is the error."""
    from mmfree.sim.modelfile import save_model
    save_model(tiny_model, tmp_path / "tiny.safetensors")
    out = tmp_path / "b"
    argv = ["build", "--board", "ulx3s-85f", "--model", str(tmp_path / "tiny.safetensors"),
            "--lanes", "8", "--vector-width", "1", "--out", str(out)]
    result = board_build.BuildResult("ulx3s-85f", out / "top.bit", out / "build-report.json",
                                     42_000_000, 8, {"clk": 44.0}, {}, 1.0, True)
    stall = board_build.SeedError("routing did not converge on the ulx3s-85f: router2 ...")
    slow = board_build.BuildError("timing not met on the ulx3s-85f: Fmax 40.00 MHz ...")
    calls, outcome = [], [result]

    def build(board, model, *, seed, jobs, on_seed, force, **kwargs):
        calls.append((seed, jobs, force))
        if seed:
            on_seed(seed[0], stall)
            on_seed(seed[1], slow)
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return outcome[0]

    monkeypatch.setattr(board_build, "build", build)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert cli.main(argv + ["--seed", "3,4,5"]) == cli.EXIT_OK
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mmfree: seed 3: {stall}", f"mmfree: seed 4: {slow}"], err
    assert cli.main(argv + ["--seed", "3,4,5", "--jobs", "3", "--force"]) == cli.EXIT_OK
    assert cli.main(argv + ["--force"]) == cli.EXIT_OK
    assert calls == [([3, 4, 5], 2, False), ([3, 4, 5], 3, True), (None, 1, True)]
    capsys.readouterr()
    outcome[0] = stall
    assert cli.main(argv + ["--seed", "3,4", "--force"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mmfree: seed 3: {stall}", f"mmfree: seed 4: {slow}",
                   f"mmfree: error: {stall}"], err
    for bad in ("3,3", "x", "3,", ""):
        with pytest.raises(SystemExit):
            cli.main(argv + ["--seed", bad])
        assert "is not a seed or a list of different seeds" in capsys.readouterr().err
    for bad in ("0", "x"):
        with pytest.raises(SystemExit):
            cli.main(argv + ["--seed", "3,4", "--jobs", bad])
        assert "is not a number of jobs" in capsys.readouterr().err


def test_a_kept_placement_is_routed_without_placing_again(tmp_path, tiny_model, monkeypatch,
                                                          capsys):
    """A --place-only build keeps nextpnr's placement (--write placed.json); --route-placement
    routes it (--no-place --json placed.json, no Yosys) at its seed, with the router and
    timing-driven switch given, as often as asked; a failed route keeps it. A placement of
    another model or layout, or none, is one line. The tools are stand-ins that check their
    command lines."""
    from mmfree.sim.modelfile import save_model
    scripts = []

    def run_tools(cmd, cwd, env, log, **kwargs):
        text = (Path(cwd) / cmd[1]).read_text()
        scripts.append((cmd[1], text))
        work = Path(cwd)
        if "--no-route" in text:
            assert "--write placed.json" in text and '"$YOSYS"' in text, text
            (work / "placed.json").write_text(json.dumps({"modules": {"top": {
                "settings": {"pack": "1", "target_freq": "12000000.000000",
                             "router": "router2", "placerHeap/alpha": "0.1"},
                "cells": {"c": {"attributes": {"NEXTPNR_BEL": "X1/Y1/A"}}}}}}, indent=1))
            (work / "report.json").write_text(json.dumps({"utilization": {}}))
            (work / "top.tim").write_text("Info: Max frequency for clock 'clk': 50.00 MHz\n")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        assert "--no-place" in text and "--json placed.json" in text, text
        assert '"$YOSYS"' not in text and "--json top.json" not in text, text
        # The placement's own run settings (which override the command line) are gone.
        placement = json.loads((work / "placed.json").read_text())["modules"]["top"]
        assert placement["settings"] == {"pack": "1"}, placement
        assert placement["cells"] == {"c": {"attributes": {"NEXTPNR_BEL": "X1/Y1/A"}}}
        if len(scripts) == 4:
            (work / "top.tim").write_text("ERROR: no route\n")
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: no route\n")
        (work / "report.json").write_text(json.dumps({"fmax": {"clk": {"achieved": 55.5}}}))
        (work / "top.tim").write_text("Info: routed\n")
        (work / "top.bit").write_bytes(b"bits")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(board_build, "_run_tools", run_tools)
    monkeypatch.setattr(board_build, "tool_versions", lambda family, env=None: {})
    out = tmp_path / "b"
    layout = dict(lanes=8, vector_width=1, out_dir=out)
    placed = board_build.build("ulx3s-85f", tiny_model, seed=9, placer="heap", place_only=True,
                               **layout)
    assert not placed.routed and (out / "placed.json").is_file()
    routed = board_build.build("ulx3s-85f", tiny_model, route_placement=True, **layout)
    report = json.loads(routed.report.read_text())
    assert routed.routed and routed.timing_met and routed.bitstream == out / "top.bit"
    assert (report["seed"], report["placer"], report["placement"]) == (9, "heap", "placed.json")
    assert scripts[1][0] == "route_top.sh" and "--seed 9 --placer heap" in scripts[1][1]
    clock_mhz = BOARD_CONFIGS["ulx3s-85f"].clock_hz / 1e6
    assert f"--no-place --freq {clock_mhz:g} " in scripts[1][1], scripts[1][1]
    assert "--no-pack" not in scripts[1][1]      # nextpnr-ecp5 packs it again (iCE40: no)
    # Again, with other router options: the placement is still there.
    board_build.build("ulx3s-85f", tiny_model, route_placement=True, router="router1",
                      timing_driven=False, **layout)
    assert "--router router1 --no-tmdriv" in scripts[2][1] and "--seed 9" in scripts[2][1]
    # A failed route leaves the placement and its report: the next route finds them.
    with pytest.raises(board_build.BuildError, match="no route"):
        board_build.build("ulx3s-85f", tiny_model, route_placement=True, **layout)
    board_build.build("ulx3s-85f", tiny_model, route_placement=True, **layout)
    assert len(scripts) == 5

    # Another model, another layout, no placement, a seed given: one line each, nothing run.
    with pytest.raises(board_build.BuildError, match=r"the placement kept there is of another "
                                                     r"model; place this build again"):
        board_build.build("ulx3s-85f", random_model(TINY, seed=2), route_placement=True,
                          **layout)
    with pytest.raises(board_build.BuildError, match=r"of another model, gateware, lanes;"):
        board_build.build("ulx3s-85f", tiny_model, route_placement=True,
                          **(layout | dict(lanes=16)))
    with pytest.raises(board_build.BuildError, match=r"no placement to route; place it first "
                                                     r"with --place-only"):
        board_build.build("ulx3s-85f", tiny_model, route_placement=True,
                          **(layout | dict(out_dir=tmp_path / "empty")))
    with pytest.raises(board_build.BuildError, match="its own seed and placer") as error:
        board_build.build("ulx3s-85f", tiny_model, route_placement=True, seed=3, **layout)
    assert error.value.status == 2 and len(scripts) == 5
    kept = (out / "placed.json").read_bytes()
    (out / "placed.json").write_bytes(kept[:40])
    with pytest.raises(board_build.BuildError, match=r"placed.json: not a placement written by "
                                                     r"nextpnr \("):
        board_build.build("ulx3s-85f", tiny_model, route_placement=True, **layout)
    (out / "placed.json").write_bytes(kept)

    # The command line: --route-placement with --seed, --placer or --place-only is usage.
    save_model(tiny_model, tmp_path / "tiny.safetensors")
    argv = ["build", "--board", "ulx3s-85f", "--model", str(tmp_path / "tiny.safetensors"),
            "--lanes", "8", "--vector-width", "1", "--out", str(out), "--route-placement"]
    for extra in (["--seed", "3"], ["--placer", "static"], ["--place-only"]):
        assert cli.main(argv + extra) == cli.EXIT_USAGE
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"mmfree: error: --route-placement routes the placement kept in --out "
                       f"at its own seed and placer; not with {extra[0]}"], err
    assert cli.main(argv) == cli.EXIT_OK
    assert len(scripts) == 6 and scripts[5][0] == "route_top.sh"
    # A new build in the directory replaces the placement with its own (or none).
    def stop(*args, **kwargs):
        raise board_build.BuildError("stopped")

    monkeypatch.setattr(board_build, "_run_tools", stop)
    with pytest.raises(board_build.BuildError, match="stopped"):
        board_build.build("ulx3s-85f", tiny_model, force=True, **layout)
    assert not (out / "placed.json").exists()


# Stand-ins for the tools of a build script, for the seed search: "yosys" writes the netlist;
# "nextpnr" behaves by its --seed (a router2 stall it is stopped in, a route below or at the
# clock after a delay, an error), "ecppack" packs what nextpnr wrote.
FAKE_PNR = """\
import json, sys, time
args = sys.argv[1:]
seed = int(args[args.index("--seed") + 1])
assert open("top.json").read() == "netlist\\n"
fmax, delay = {FMAX}.get(seed, (None, 60))
if fmax is None:
    open("top.tim", "w").write({STALL!r})
    time.sleep(delay)
    sys.exit(1)
if fmax == 0:
    print("ERROR: no such cell", file=sys.stderr)
    open("top.tim", "w").write("ERROR: no such cell\\n")
    sys.exit(1)
time.sleep(delay)
open("top.tim", "w").write("Info: routed\\n")
open("report.json", "w").write(json.dumps({{"fmax": {{"clk": {{"achieved": fmax}}}}}}))
open("top.config", "w").write(f"seed {{seed}}\\n")
"""


def _fake_build_dir(tmp_path, fmax: dict) -> tuple[Path, dict]:
    out = tmp_path / "b"
    out.mkdir()
    tools = {}
    for name, text in (("YOSYS", "import sys; open('top.json', 'w').write('netlist\\n')"),
                       ("NEXTPNR_ECP5", FAKE_PNR.format(FMAX=fmax, STALL=_router2_log(STALLED))),
                       ("ECPPACK", "import shutil; shutil.copy('top.config', 'top.bit')")):
        tool = tmp_path / name.lower()
        tool.write_text(f"#!{sys.executable}\n{text}\n")
        tool.chmod(0o755)
        tools[name] = str(tool)
    (out / "top.lpf").write_text("LOCATE\n")
    (out / "build_top.sh").write_text(
        '#!/bin/sh\nset -e\n: ${YOSYS:=yosys}\n"$YOSYS" -q -l top.rpt top.ys\n'
        '"$NEXTPNR_ECP5" --quiet --seed 8 --log top.tim --json top.json --lpf top.lpf '
        '--textcfg top.config\n"$ECPPACK" --input top.config --bit top.bit\n')
    return out, {**os.environ, **tools}


def _search(out, env, seeds, jobs, target=42.0):
    told = []
    seed, searched = board_build._search_seeds(
        out, "build_top.sh", seeds, jobs, env, "ulx3s-85f", {"patience": 30},
        router_patience=30, target_mhz=target, place_only=False,
        on_seed=lambda s, e: told.append((s, str(e))), poll=0.1)
    return seed, searched, told


def test_sigterm_stops_the_tools(tmp_path):
    """SIGTERM during a build (the CLI's handler: an interrupt in the main thread) stops the
    tools' process group before the build unwinds: nothing is left running."""
    import signal
    import threading
    previous = signal.signal(signal.SIGTERM, cli._terminate)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        with pytest.raises(cli.Terminated):
            board_build._run_tools(["sh", "-c", "sleep 60 & echo $! > pid; wait"], tmp_path,
                                   None, tmp_path / "top.tim", poll=0.1)
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)
    child = Path(f"/proc/{int((tmp_path / 'pid').read_text())}/stat")   # the script's child

    def running():
        try:
            return child.read_text().rsplit(")", 1)[1].split()[0] != "Z"     # not a zombie
        except FileNotFoundError:
            return False
    deadline = time.monotonic() + 5
    while running():
        assert time.monotonic() < deadline, "the script's child is still running"
        time.sleep(0.05)


def test_seed_search_runs_nextpnr_once_a_seed(tmp_path):
    """Two runs at a time: seed 1 stalls (stopped by the router2 watch) and seed 2 misses
    42 MHz, each told once and its directory kept; seed 3 routes at 45 MHz and is the build
    (its files moved in, its directory gone); seed 4, still running then, is stopped and
    removed; seed 5 never starts. Yosys ran once."""
    out, env = _fake_build_dir(tmp_path, {1: (None, 60), 2: (40.0, 0), 3: (45.0, 2),
                                          4: (50.0, 60), 5: (50.0, 0)})
    start = time.monotonic()
    seed, searched, told = _search(out, env, [1, 2, 3, 4, 5], 2)
    assert time.monotonic() - start < 30
    assert seed == 3
    assert sorted(s for s, _ in told) == [1, 2], told
    outcome = dict(told)
    assert outcome[1].startswith("routing did not converge on the ulx3s-85f: router2 went 30 "
                                 "iterations without progress (best 361"), outcome
    assert outcome[2] == (f"timing not met on the ulx3s-85f: Fmax 40.00 MHz < 42 MHz (log: "
                          f"{out / 'seed-2' / 'top.tim'})"), outcome
    assert [s["seed"] for s in searched][-1] == 3 and searched[-1]["outcome"] == "built"
    assert (out / "top.bit").read_text() == "seed 3\n"
    assert json.loads((out / "report.json").read_text())["fmax"]["clk"]["achieved"] == 45.0
    assert (out / "top.json").read_text() == "netlist\n" and not (out / "top.json").is_symlink()
    assert sorted(p.name for p in out.glob("seed-*")) == ["seed-1", "seed-2"]
    assert (out / "seed-1" / "top.tim").is_file() and (out / "seed-2" / "build.log").is_file()
    assert (out / "build_top.sh").read_text().count("--seed 8") == 1     # the plan untouched


def test_seed_search_places_every_seed_and_keeps_the_best(tmp_path):
    """A placement-only search is a screen: every seed is placed (none stopped for an earlier
    one), each estimate told, and the best is the build; the others keep their logs alone, a
    stalled one its directory."""
    out, env = _fake_build_dir(tmp_path, {1: (40.0, 0), 2: (None, 60), 3: (45.0, 1),
                                          4: (43.0, 0)})
    told = []
    seed, searched = board_build._search_seeds(
        out, "build_top.sh", [1, 2, 3, 4], 2, env, "ulx3s-85f", {"patience": 30},
        router_patience=30, target_mhz=None, place_only=True,
        on_seed=lambda s, outcome: told.append((s, outcome)), poll=0.1)
    assert seed == 3
    assert sorted(t for t in told if isinstance(t[1], float)) == [(1, 40.0), (3, 45.0),
                                                                  (4, 43.0)]
    assert [s for s, outcome in told if isinstance(outcome, board_build.SeedError)] == [2]
    outcome = {s["seed"]: s for s in searched}
    assert outcome[3] == {"seed": 3, "outcome": "built", "fmax_mhz": 45.0}
    assert outcome[1] == {"seed": 1, "outcome": "placed", "fmax_mhz": 40.0}
    assert outcome[2]["outcome"].startswith("routing did not converge")
    assert (out / "top.config").read_text() == "seed 3\n"
    assert sorted(p.name for p in out.glob("seed-*")) == ["seed-1", "seed-2", "seed-4"]
    for kept in ("seed-1", "seed-4"):
        assert sorted(p.name for p in (out / kept).iterdir()) == ["build.log", "top.tim"]
    assert (out / "seed-2" / "top.json").is_file()


def test_seed_search_without_a_build(tmp_path):
    """No seed at the clock: the fastest routed one is moved in (the caller reports its
    timing); none routed: the last stall is the error; a tool error ends the search at once."""
    out, env = _fake_build_dir(tmp_path, {1: (40.0, 0), 2: (None, 60), 3: (41.5, 0)})
    seed, searched, told = _search(out, env, [1, 2, 3], 3)
    assert seed == 3 and sorted(s for s, _ in told) == [1, 2, 3]
    assert (out / "top.bit").read_text() == "seed 3\n" and not (out / "seed-3").exists()
    # An earlier search's directories go before a new one starts.
    with pytest.raises(board_build.SeedError, match="routing did not converge"):
        _search(out, env, [2], 1)
    assert sorted(p.name for p in out.glob("seed-*")) == ["seed-2"]
    (tmp_path / "x").mkdir()
    out2, env = _fake_build_dir(tmp_path / "x", {1: (0, 0), 2: (50.0, 60)})
    start = time.monotonic()
    with pytest.raises(board_build.BuildError, match="nextpnr-ecp5 failed: ERROR: no such cell"):
        _search(out2, env, [1, 2], 2)
    assert time.monotonic() - start < 20
    assert not (out2 / "seed-2").exists()                 # stopped, removed


def test_build_reports_a_stalled_spreading(tmp_path, tiny_model, monkeypatch, capsys):
    """The static placer stopped in its spreading is one line: the overlap, what to change,
    the log; its watch goes with the legaliser's (off with --legalise-patience 0)."""
    from mmfree.sim.modelfile import save_model
    given = []

    def run_tools(cmd, cwd, env, log, spread_patience=0, **kwargs):
        given.append(spread_patience)
        return subprocess.CompletedProcess(
            cmd, -15, "", f"\nstopped: {board_build.SPREAD_MARK} RAM overlap 22.8% for 1,000 "
                          f"iterations\n")

    monkeypatch.setattr(board_build, "_run_tools", run_tools)
    save_model(tiny_model, tmp_path / "tiny.safetensors")
    out = tmp_path / "b"
    argv = ["build", "--board", "ulx3s-85f", "--model", str(tmp_path / "tiny.safetensors"),
            "--lanes", "8", "--vector-width", "1", "--out", str(out)]
    status = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and err == [
        f"mmfree: error: placement did not finish on the ulx3s-85f: nextpnr's static placer "
        f"went on spreading the cells without progress (RAM overlap 22.8% for 1,000 "
        f"iterations) and was stopped; another --seed or fewer --lanes may place, "
        f"--legalise-patience 0 lets it go on (log: {out / 'top.tim'})"], err
    cli.main(argv + ["--legalise-patience", "0", "--force"])
    capsys.readouterr()
    assert given == [board_build.SPREAD_PATIENCE, 0]


def test_tools_are_stopped_when_the_legaliser_stalls(tmp_path):
    """A script that writes the stalled legaliser's log, then would sleep a minute: stopped
    once the log has not changed for the patience (a second here); without it, not."""
    import time
    log = tmp_path / "top.tim"
    (tmp_path / "placer.log").write_text(LEGALISING)
    script = tmp_path / "build.sh"
    script.write_text(f"cp placer.log {log}\necho placing\nsleep 60\n")
    start = time.monotonic()
    result = board_build._run_tools(["sh", str(script)], tmp_path, None, log, poll=0.2,
                                    legalise_patience=1)
    assert time.monotonic() - start < 20
    assert result.returncode != 0 and result.stdout == "placing\n"
    assert re.search(rf"stopped: {board_build.LEGALISE_MARK} 87,868 cells, \d+ minutes",
                     result.stderr), result.stderr
    script.write_text(f"cp placer.log {log}\nsleep 2\necho placed\n")
    result = board_build._run_tools(["sh", str(script)], tmp_path, None, log, poll=0.2)
    assert (result.returncode, result.stdout, result.stderr) == (0, "placed\n", "")


@pytest.mark.parametrize("placer, minutes", [("static", None), ("static", 5),
                                             ("heap", None)])
def test_build_reports_a_stalled_legaliser(placer, minutes, tmp_path, tiny_model, monkeypatch,
                                           capsys):
    """``mmfree build`` gives the static placer's legaliser the patience asked for (20
    minutes by default; none for HeAP) and turns a stopped placement into one line naming
    the cells, the minutes, what to change and the log, with the tool-failure exit status."""
    from mmfree.sim.modelfile import save_model
    given = []

    def run_tools(cmd, cwd, env, log, legalise_patience=0, **kwargs):
        given.append(legalise_patience)
        return subprocess.CompletedProcess(
            cmd, -15, "", f"\nstopped: {board_build.LEGALISE_MARK} 87,868 cells, 21 minutes\n")

    monkeypatch.setattr(board_build, "_run_tools", run_tools)
    save_model(tiny_model, tmp_path / "tiny.safetensors")
    out = tmp_path / "b"
    status = cli.main(["build", "--board", "ulx3s-85f", "--model", str(tmp_path / "tiny.safetensors"),
                       "--lanes", "8", "--vector-width", "1", "--out", str(out),
                       "--placer", placer]
                      + ([] if minutes is None else ["--legalise-patience", str(minutes)]))
    err = capsys.readouterr().err.strip().splitlines()
    expected = {"static": (minutes or 20) * 60, "heap": 0}[placer]
    assert given == [expected]
    assert status == 1 and len(err) == 1, err
    if placer == "heap":
        return
    assert err[0] == (
        f"mmfree: error: placement did not finish on the ulx3s-85f: nextpnr's static placer "
        f"was still legalising 87,868 cells after 21 minutes and was stopped; the design is "
        f"too full for it: fewer --lanes may place, --legalise-patience 0 lets it go on (log: "
        f"{out / 'top.tim'})"), err


@pytest.mark.parametrize("bad", ["-1", "x", "inf", "nan"])
def test_build_refuses_a_bad_legaliser_patience(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["build", "--board", "ulx3s-85f", "--legalise-patience", bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "is not a number of minutes" in err, err


@pytest.mark.parametrize("board, options, expected", [
    ("ulx3s-85f", {}, None),
    ("ulx3s-85f", {"seed": 7, "timing_driven": False, "placer": "heap"},
     "--seed 7 --placer heap --router router2 --no-tmdriv"),
    ("ulx3s-85f", {"timing_driven": True, "router": "router1"}, "--router router1 --log"),
    ("icebreaker", {}, "--seed 1 --placer heap --router router1 --log"),
])
def test_build_passes_nextpnr_options(board, options, expected, tmp_path, tiny_model,
                                      monkeypatch):
    """The placer, router, seed and timing-driven switch reach nextpnr's command line in the
    build script, each the board's (DEFAULT_PNR) unless given. The tools are not run: the
    script is read and a failed run reported."""
    defaults = board_build.DEFAULT_PNR[board]
    if expected is None:
        expected = (f"--seed {defaults.seed} --placer {defaults.placer} --router "
                    f"{defaults.router}{'' if defaults.timing_driven else ' --no-tmdriv'} --log")
    scripts = []

    def run_tools(cmd, cwd, env, log, **kwargs):
        scripts.append((Path(cwd) / f"build_{board_build.TOP_NAME}.sh").read_text())
        return subprocess.CompletedProcess(cmd, 1, "", "nextpnr: stopped here\n")

    monkeypatch.setattr(board_build, "_run_tools", run_tools)
    lanes, width = (8, 1) if board == "ulx3s-85f" else (None, None)
    with pytest.raises(board_build.BuildError, match="stopped here"):
        board_build.build(board, tiny_model, lanes=lanes, vector_width=width,
                          out_dir=tmp_path / "b", **options)
    (script,) = scripts
    assert expected in script, script
    assert ("--no-tmdriv" in script) == ("--no-tmdriv" in expected), script


def test_build_help_shows_defaults(capsys):
    """`mmfree build --help` names the defaults the build uses, read from each board's nextpnr
    settings (`DEFAULT_PNR`) and layout (`BOARD_CONFIGS`): a new default seed shows there."""
    ulx3s, ice = board_build.DEFAULT_PNR["ulx3s-85f"], board_build.DEFAULT_PNR["icebreaker"]
    config = BOARD_CONFIGS["ulx3s-85f"]
    with pytest.raises(SystemExit):
        cli.main(["build", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ["--board {ulx3s-85f,icebreaker}", "(default: build/board-BOARD)",
                     f"nextpnr placement seed (default: the board's, {ulx3s.seed} on the "
                     f"ULX3S-85F, the seed its default SoC routes at; {ice.seed} on the",
                     "--tmdriv, --no-tmdriv",
                     f"{'on' if ulx3s.timing_driven else 'off'} on the ULX3S-85F, on on the "
                     "iCEBreaker",
                     "--allow-timing-fail",
                     "--router {router1,router2}", "--placer {heap,static}",
                     f"the board's, {ulx3s.placer} on the ULX3S-85F",
                     f"the board's, {ulx3s.router} on the ULX3S-85F, {ice.router} on the",
                     f"{config.lanes} on the ULX3S-85F; the iCEBreaker's serial engine has 4, "
                     "fixed", f"the board's, {config.vector_width} on the ULX3S-85F",
                     "tools/models/BOARD"]:
        assert expected in text, f"{expected!r} not in --help"
    with pytest.raises(SystemExit):
        cli.main(["program", "--help"])
    assert "default: the last `mmfree build`" in " ".join(capsys.readouterr().out.split())


def test_critical_paths_summary():
    """nextpnr's critical path JSON, summarized for build-report.json and the timing line."""
    def step(kind, delay, src, dst, net=None):
        item = {"type": kind, "delay": delay, "from": {"cell": src, "port": "Q", "loc": [1, 1]},
                "to": {"cell": dst, "port": "A", "loc": [1, 2]}}
        return item | ({"net": net} if net else {})
    report = {"critical_paths": [{"from": "posedge clk", "to": "posedge clk", "path": [
        step("clk-to-q", 0.5, "a_FF", "a_FF"),
        step("routing", 1.25, "a_FF", "lut", net="soc.engine.a[3]"),
        step("logic", 0.25, "lut", "lut"),
        step("routing", 1.0, "lut", "b_FF", net="soc.engine.b"),
        step("setup", 0.0, "b_FF", "b_FF")]}, {"from": "x", "to": "y", "path": []}]}
    assert board_build.critical_paths(report) == [{
        "from": "posedge clk", "to": "posedge clk", "start": "soc.engine.a[3]", "end": "b_FF",
        "delay_ns": 3.0, "logic_ns": 0.75, "routing_ns": 2.25, "logic_cells": 1}]
    assert board_build.critical_paths({}) == []


# --- a real build ---------------------------------------------------------------------------

@pytest.mark.synth
def test_build_places_and_routes(tmp_path, tiny_model, record_property, monkeypatch):
    """The tiny model's SoC on the ULX3S-85F, 8 lanes and vector width 1 (the board's vector
    width 8 needs more MULT18X18D than the 85F has, docs/boards.md): a bitstream and a
    report with the achieved Fmax. Timing is reported, not asserted."""
    result = board_build.build("ulx3s-85f", tiny_model, lanes=8, vector_width=1,
                               out_dir=tmp_path / "build", allow_timing_fail=True,
                               command=["pytest", "tests/test_boards.py"])
    record_property("fmax_mhz", result.min_fmax_mhz)
    record_property("seconds", result.seconds)
    assert result.bitstream.is_file() and result.bitstream.stat().st_size > 100_000
    report = json.loads(result.report.read_text())
    assert report["board"] == "ulx3s-85f" and report["lanes"] == 8
    assert report["fmax_mhz"] and min(report["fmax_mhz"].values()) > 0, report["fmax_mhz"]
    assert report["utilization"]["TRELLIS_COMB"]["used"] > 0
    clock_mhz = BOARD_CONFIGS["ulx3s-85f"].clock_hz / 1e6
    assert report["timing_met"] == (result.min_fmax_mhz >= clock_mhz), report
    # The slowest clock's period is about its critical path (clock skew aside).
    worst = max(report["critical_paths"], key=lambda p: p["delay_ns"])
    assert worst["start"] and worst["end"] and worst["logic_cells"] > 0, worst
    assert 1000 / worst["delay_ns"] < 1.25 * result.min_fmax_mhz, (worst, result.min_fmax_mhz)
    assert "Yosys" in report["tools"]["yosys"], report["tools"]
    defaults = board_build.DEFAULT_PNR["ulx3s-85f"]
    assert (report["placer"], report["router"], report["seed"], report["timing_driven"]) == \
        tuple(defaults), report
    # nextpnr timed the engine clock at the board's frequency: derived from the PLL, and no
    # constraint of ours named a net it could not find.
    log = (result.report.parent / "top.tim").read_text()
    assert "ignoring clock constraint" not in log, log[:2000]
    assert f"Derived frequency constraint of {clock_mhz:.1f} MHz for net" in log, log[:4000]
    # Every path's delays in the SDF: its worst path is nextpnr's critical path.
    groups = routed_paths.worst_paths(routed_paths.parse_sdf(
        (result.report.parent / board_build.SDF_NAME).read_text()))
    worst = max(groups, key=lambda g: g.delay)
    assert worst.mhz == pytest.approx(result.min_fmax_mhz, rel=1e-3), (worst, result)

    # The performance report's row of this build: the schedule's cycles against the Fmax.
    from mmfree.sim import golden
    from mmfree.sim.engine import EngineImage, step_cycles
    from mmfree.tools import report as perf
    row = perf.row_from_report(tiny_model, report)
    config = BOARD_CONFIGS["ulx3s-85f"]
    image = EngineImage(golden.prepare(tiny_model), 8,
                        **(config.engine_options | dict(vector_width=1)))
    assert (row.status, row.routed, row.lanes) == ("built", True, 8)
    assert row.cycles == step_cycles(image) and row.fmax_mhz == result.min_fmax_mhz
    assert row.tokens_per_s == pytest.approx(result.min_fmax_mhz * 1e6 / row.cycles)
    assert row.used("TRELLIS_COMB") == report["utilization"]["TRELLIS_COMB"]["used"]
    meta = {"command": "pytest", "machine": "test", "date": "today",
            "models": {"ulx3s-85f": {"file": "tiny", "config": "tiny"}},
            "packing": {"ulx3s-85f": "1.6bit"}, "baud": {"ulx3s-85f": 3_000_000}}
    text = perf.render_markdown([row], meta)
    assert f"| 8 | routed | {row.fmax_mhz:.2f} |" in text, text
    perf.render_plot([row], tmp_path / "performance.png", meta)
    assert (tmp_path / "performance.png").stat().st_size > 10_000


@pytest.mark.synth
def test_build_searches_seeds_in_parallel(tmp_path, tiny_model):
    """Two seeds of one netlist (the tiny model's iCEBreaker SoC: a minute where the
    ULX3S-85F's static placer takes ten), placed by two nextpnr runs at once: both estimates
    are told, the better placement is the build, the other keeps its log, and the report
    names the seed and the screen; then the kept placement is routed for the engine clock
    (nextpnr-ice40 reads it without packing it again, which it cannot)."""
    told = {}
    result = board_build.build("icebreaker", tiny_model, out_dir=tmp_path / "b", seed=[8, 9],
                               jobs=2, place_only=True,
                               on_seed=lambda seed, outcome: told.update({seed: outcome}))
    report = json.loads(result.report.read_text())
    assert sorted(told) == [8, 9] and all(isinstance(v, float) for v in told.values()), told
    best = max(told, key=lambda s: (told[s], s))                # ties: the later seed
    other = 17 - best
    assert report["seed"] == best and result.min_fmax_mhz == told[best] > 0, (report, told)
    assert sorted(report["seed_search"], key=lambda s: s["seed"]) == [
        {"seed": s, "outcome": "built" if s == best else "placed", "fmax_mhz": told[s]}
        for s in (8, 9)], report
    assert not result.routed and result.bitstream is None
    assert not (tmp_path / "b" / "top.bin").exists()
    assert [p.name for p in (tmp_path / "b").glob("seed-*")] == [f"seed-{other}"]
    assert "Max frequency" in (tmp_path / "b" / f"seed-{other}" / "top.tim").read_text()
    assert "Max frequency for clock" in (tmp_path / "b" / "top.tim").read_text()
    assert (tmp_path / "b" / "top.json").is_file()              # Yosys's netlist, once
    # The best placement is kept (the other seed's is not), and routed without placing again,
    # for the engine clock.
    assert not (tmp_path / "b" / f"seed-{other}" / board_build.PLACED_NAME).exists()
    routed = board_build.build("icebreaker", tiny_model, out_dir=tmp_path / "b",
                               route_placement=True, allow_timing_fail=True)
    report = json.loads(routed.report.read_text())
    assert routed.routed and routed.bitstream.stat().st_size > 100_000, routed
    assert (report["seed"], report["placement"], report["routed"]) == (best, "placed.json", True)
    assert "--no-pack" in (tmp_path / "b" / "route_top.sh").read_text()
    log = (tmp_path / "b" / "top.tim").read_text()
    clock_mhz = BOARD_CONFIGS["icebreaker"].clock_hz / 1e6
    assert "Placer" not in log and "Packing" not in log and "Router1 time" in log, log[:3000]
    assert f"MHz (PASS at {clock_mhz:.2f} MHz)" in log or \
        f"MHz (FAIL at {clock_mhz:.2f} MHz)" in log, log[-3000:]


@pytest.mark.synth
def test_icebreaker_build_meets_timing(tmp_path, record_property):
    """The shipped iCEBreaker model's SoC (the serial engine) through `mmfree build`: it fits
    the UP5K and its routed Fmax meets the board's engine clock (docs/serial.md: 4,954 of 5,280
    logic cells, 12.51 MHz at 12), so a change that breaks the fit or the timing fails here."""
    out = tmp_path / "ib"
    model = Path(cli.__file__).resolve().parent / "models" / "icebreaker.safetensors"
    proc = subprocess.run([sys.executable, "-m", "mmfree.tools.cli", "build", "--board",
                           "icebreaker", "--model", str(model), "--out", str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "build-report.json").read_text())
    record_property("fmax_mhz", min(report["fmax_mhz"].values()))
    assert report["board"] == "icebreaker" and report["timing_met"], report
    assert min(report["fmax_mhz"].values()) >= BOARD_CONFIGS["icebreaker"].clock_hz / 1e6
    used = report["utilization"]["ICESTORM_LC"]
    assert used["used"] <= used["available"] == 5280, used
    assert report["utilization"]["ICESTORM_SPRAM"]["used"] == 4
    assert (out / "top.bin").stat().st_size > 100_000
    # The engine runs on the 12 MHz oscillator: nextpnr timed it at that, and no constraint
    # of ours named a net it could not find.
    log = (out / "top.tim").read_text()
    assert "ignoring clock constraint" not in log, log[:2000]
    assert "constraining clock net 'clk12_0__io' to 12.00 MHz" in log, log[:2000]
