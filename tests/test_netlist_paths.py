"""tools/netlist_paths.py: path delays and names on hand-made netlists, and its CLI."""

import json

import pytest

from mmfree.tools import netlist_paths
from mmfree.tools.netlist_paths import NET, SETUP, START, cell_delay, longest_paths


def cell(kind, src, **ports):
    """``ports``: name -> (direction, [bits])."""
    return {"type": kind, "attributes": {"src": src},
            "port_directions": {p: d for p, (d, _) in ports.items()},
            "connections": {p: bits for p, (_, bits) in ports.items()}}


def netlist():
    """ff_a -> lut -> lut -> ff_b (two LUT levels); ff_c -> 3-cell carry chain -> ff_d;
    a two-LUT combinational loop feeding ff_e."""
    cells = {
        "ff_a": cell("TRELLIS_FF", "/x/hw/a.py:10", CLK=("input", [1]), DI=("input", [2]),
                     Q=("output", [3])),
        "lut1": cell("LUT4", "/x/hw/a.py:11", A=("input", [3]), Z=("output", [4])),
        "lut2": cell("LUT4", "/x/hw/a.py:12|/share/ecp5/cells_map.v:3", A=("input", [4]),
                     B=("input", [3]), Z=("output", [5])),
        "ff_b": cell("TRELLIS_FF", "/x/hw/a.py:13", CLK=("input", [1]), DI=("input", [5]),
                     Q=("output", [6])),
        "ff_c": cell("TRELLIS_FF", "/x/hw/b.py:20", CLK=("input", [1]), DI=("input", [6]),
                     Q=("output", [7])),
        "cc1": cell("CCU2C", "/x/hw/b.py:21", A0=("input", [7]), CIN=("input", ["0"]),
                    S0=("output", [8]), COUT=("output", [9])),
        "cc2": cell("CCU2C", "/x/hw/b.py:21", A0=("input", [7]), CIN=("input", [9]),
                    S0=("output", [10]), COUT=("output", [11])),
        "cc3": cell("CCU2C", "/x/hw/b.py:21", A0=("input", [7]), CIN=("input", [11]),
                    S0=("output", [12]), COUT=("output", [13])),
        "ff_d": cell("TRELLIS_FF", "/x/hw/b.py:22", CLK=("input", [1]), DI=("input", [12]),
                     Q=("output", [14])),
        "loop1": cell("LUT4", "/x/hw/c.py:1", A=("input", [16]), B=("input", [14]),
                      Z=("output", [15])),
        "loop2": cell("LUT4", "/x/hw/c.py:2", A=("input", [15]), Z=("output", [16])),
        "ff_e": cell("TRELLIS_FF", "/x/hw/c.py:3", CLK=("input", [1]), DI=("input", [16]),
                     Q=("output", [17])),
    }
    names = {"clk": [1], "a": [3], "a_next": [4], "b_next": [5], "c": [7], "sum": [12],
             "d": [14]}
    return {"modules": {"top": {"attributes": {"top": "00000000000000000000000000000001"},
                                "cells": cells,
                                "netnames": {n: {"bits": b, "hide_name": 0}
                                             for n, b in names.items()}}}}


def test_delays_and_names():
    paths, groups = longest_paths(netlist(), count=10, over=0)
    by_end = {p.end: p for p in paths}
    ff = START["TRELLIS_FF"]
    lut = cell_delay("LUT4", "A", "Z")
    two_luts = ff + 2 * (NET + lut) + NET + SETUP
    assert by_end["ff_b.DI"].delay == pytest.approx(two_luts)
    assert [s[1] for s in by_end["ff_b.DI"].steps] == ["TRELLIS_FF", "LUT4", "LUT4"]
    assert by_end["ff_b.DI"].start == "a"
    # Yosys's own files are not sources; Amaranth's lines are.
    assert by_end["ff_b.DI"].steps[2][3] == "a.py:12"
    # The carry chain: into the first cell through the routing, then 0.07 ns a cell, and
    # CIN -> S at the last.
    chain = ff + NET + cell_delay("CCU2C", "A0", "COUT") + cell_delay("CCU2C", "CIN", "COUT") \
        + cell_delay("CCU2C", "CIN", "S0") + NET + SETUP
    assert by_end["ff_d.DI"].delay == pytest.approx(chain)
    assert by_end["ff_d.DI"].start == "c"
    # The combinational loop is cut, not followed for ever.
    assert "ff_e.DI" in by_end
    assert paths == sorted(paths, key=lambda p: -p.delay)
    assert groups[("a", "ff_b")] == (pytest.approx(two_luts), 1)


def test_cli(tmp_path, capsys):
    path = tmp_path / "top.json"
    path.write_text(json.dumps(netlist()))
    assert netlist_paths.main([str(path), "--paths", "2", "--over", "0"]) == 0
    out = capsys.readouterr().out
    assert "c -> ff_d.DI" in out and "register groups with paths over 0 ns" in out
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert netlist_paths.main([str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: not a readable Yosys JSON")
