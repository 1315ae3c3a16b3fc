"""tools/routed_paths.py: path delays from a hand-made SDF file as nextpnr writes it, the
register groups, and its CLI."""

import pytest

from mmfree.tools import routed_paths
from mmfree.tools.routed_paths import group, parse_sdf, worst_paths


def ff(name, clk_to_q="430:477:525", setup="0:0:0"):
    return f"""  (CELL
    (CELLTYPE "TRELLIS_FF")
    (INSTANCE {name})
    (DELAY
      (ABSOLUTE
        (IOPATH CLK Q ({clk_to_q}) ({clk_to_q}))
      )
    )
    (TIMINGCHECK
      (SETUPHOLD (posedge DI) (posedge CLK) ({setup}) (0:0:0))
      (SETUPHOLD (negedge DI) (posedge CLK) ({setup}) (0:0:0))
    )
    )
"""


def comb(name, arcs):
    lines = "".join(f"        (IOPATH {a} {b} ({d}) ({d}))\n" for a, b, d in arcs)
    return f"""  (CELL
    (CELLTYPE "TRELLIS_COMB")
    (INSTANCE {name})
    (DELAY
      (ABSOLUTE
{lines}      )
    )
    )
"""


def sdf(nets, cells):
    inter = "".join(f"        (INTERCONNECT {a} {b} ({d}) ({d}))\n" for a, b, d in nets)
    return f"""(DELAYFILE
  (SDFVERSION "3.0")
  (DESIGN "top")
  (TIMESCALE 1ps)
  (CELL
    (CELLTYPE "top")
    (INSTANCE )
    (DELAY
      (ABSOLUTE
{inter}      )
    )
    )
{"".join(cells)})
"""


# a[0] -> lut -> b[0]; a[1] -> carry (2 cells) -> b[1]; c -> b[1] and e directly; an input
# pin (no clock) -> d: not a register-to-register path.
DESIGN = sdf(
    nets=[
        ("gbuf/CLKO", "a_TRELLIS_FF_Q/CLK", "0:0:0"),
        ("gbuf/CLKO", "a_TRELLIS_FF_Q_1/CLK", "0:0:0"),
        ("gbuf/CLKO", "b_TRELLIS_FF_Q/CLK", "0:0:0"),
        ("gbuf/CLKO", "b_TRELLIS_FF_Q_1/CLK", "0:0:0"),
        ("gbuf/CLKO", "c_TRELLIS_FF_Q/CLK", "0:0:0"),
        ("gbuf/CLKO", "d_TRELLIS_FF_Q/CLK", "0:0:0"),
        ("a_TRELLIS_FF_Q/Q", "lut_LUT4_Z/A", "100:900:1000"),
        ("lut_LUT4_Z/F", "b_TRELLIS_FF_Q/DI", "200:300:400"),
        ("a_TRELLIS_FF_Q_1/Q", r"cc\$CCU2_COMB0/A", "1500:1600:2000"),
        (r"cc\$CCU2_COMB0/FCO", r"cc\$CCU2_COMB1/FCI", "0:0:0"),
        (r"cc\$CCU2_COMB1/F", "b_TRELLIS_FF_Q_1/DI", "300:300:300"),
        ("c_TRELLIS_FF_Q/Q", "b_TRELLIS_FF_Q_1/DI", "100:100:100"),
        ("c_TRELLIS_FF_Q/Q", "e_TRELLIS_FF_Q/DI", "100:100:100"),
        ("pin/O", "d_TRELLIS_FF_Q/DI", "5000:5000:9000"),
    ],
    cells=[ff("a_TRELLIS_FF_Q"), ff("a_TRELLIS_FF_Q_1"), ff("b_TRELLIS_FF_Q", setup="0:0:50"),
           ff("b_TRELLIS_FF_Q_1", setup="10:20:30"), ff("c_TRELLIS_FF_Q"),
           ff("d_TRELLIS_FF_Q"), ff("e_TRELLIS_FF_Q", setup="30:30:30"),
           comb("lut_LUT4_Z", [("A", "F", "200:218:236"), ("B", "F", "1:1:1")]),
           comb(r"cc\$CCU2_COMB0", [("A", "FCO", "175:311:447"), ("A", "F", "200:218:236")]),
           comb(r"cc\$CCU2_COMB1", [("FCI", "F", "295:349:403")])])


def test_worst_paths_sum_the_worst_delays():
    groups = {(g.start, g.end): g for g in worst_paths(parse_sdf(DESIGN))}
    # An endpoint counts in the group of its worst path: b[1] in a's, not c's.
    assert set(groups) == {("a", "b"), ("c", "e")}, groups
    ab = groups["a", "b"]
    # a[1]: 525 clock-to-Q + 2000 net + 447 carry + 0 + 403 + 300 net + 30 setup
    assert ab.delay == pytest.approx((525 + 2000 + 447 + 403 + 300 + 30) / 1000)
    assert ab.endpoints == 2          # b[1] and b[0] (525 + 1000 + 236 + 400 + 50)
    assert [pin for _, pin in ab.pins] == [
        "a_TRELLIS_FF_Q_1/Q", "cc$CCU2_COMB0/A", "cc$CCU2_COMB0/FCO", "cc$CCU2_COMB1/FCI",
        "cc$CCU2_COMB1/F", "b_TRELLIS_FF_Q_1/DI"]
    assert ab.pins[-1][0] == pytest.approx(3.675)
    assert groups["c", "e"].delay == pytest.approx((525 + 100 + 30) / 1000)
    assert ab.mhz == pytest.approx(1000 / 3.705)


def test_group_names():
    assert group("soc.engine.sq_x2_TRELLIS_FF_Q_26/Q") == "soc.engine.sq_x2"
    assert group("soc.engine.cmem.0.6/DOB17") == "soc.engine.cmem"
    assert group("soc.engine.gate.$signal$35_TRELLIS_FF_Q_5/M") == "soc.engine.gate"
    assert group("soc.engine.tmem.0.62_DIB8_TRELLIS_FF_Q/DI") == "soc.engine.tmem"


def test_a_loop_is_an_error():
    loop = sdf([("gbuf/CLKO", "a_TRELLIS_FF_Q/CLK", "0:0:0"),
                ("a_TRELLIS_FF_Q/Q", "x_LUT4_Z/A", "1:1:1"),
                ("x_LUT4_Z/F", "y_LUT4_Z/A", "1:1:1"), ("y_LUT4_Z/F", "x_LUT4_Z/B", "1:1:1")],
               [ff("a_TRELLIS_FF_Q"), comb("x_LUT4_Z", [("A", "F", "1:1:1"), ("B", "F", "1:1:1")]),
                comb("y_LUT4_Z", [("A", "F", "1:1:1")])])
    with pytest.raises(ValueError, match="combinational loop"):
        worst_paths(parse_sdf(loop))


def test_cli(tmp_path, capsys):
    (tmp_path / "top.sdf").write_text(DESIGN)
    assert routed_paths.main([str(tmp_path), "--clock-mhz", "250", "-v"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{tmp_path / 'top.sdf'}: worst path 3.71 ns (269.91 MHz), 2 register groups"
    assert out[1].split() == ["3.71", "ns", "269.91", "MHz", "slack", "0.29", "x2", "a", "->",
                              "b"]
    assert "a_TRELLIS_FF_Q_1/Q" in out[2] and "cc$CCU2_COMB0/A" in out[3]


@pytest.mark.parametrize("content, message", [
    (None, "No such file"), ("module top; endmodule\n", "not an SDF file"),
    (sdf([], [ff("a_TRELLIS_FF_Q")]), "no register-to-register paths")])
def test_cli_errors(tmp_path, capsys, content, message):
    path = tmp_path / "top.sdf"
    if content is not None:
        path.write_text(content)
    assert routed_paths.main([str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, message", [
    (["--clock-mhz", "0"], "argument --clock-mhz: '0' is not a clock in MHz above 0"),
    (["--clock-mhz", "inf"], "argument --clock-mhz: 'inf' is not a clock in MHz above 0"),
    (["--groups", "-1"], "argument --groups: '-1' is not a number of groups above 0"),
    (["--groups", "x"], "argument --groups: 'x' is not a number of groups above 0"),
])
def test_cli_usage_errors(tmp_path, capsys, argv, message):
    """A clock of 0 MHz divided by zero after the whole SDF was read; --groups -1 left the
    last group out."""
    with pytest.raises(SystemExit) as exc:
        routed_paths.main([str(tmp_path), *argv])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
