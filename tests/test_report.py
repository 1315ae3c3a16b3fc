"""``mmfree report``: the lane sweep's rows, the device limits, the rendering, its errors, and
reading nextpnr's placement estimate.

A row built by the real tools is rendered in ``tests/test_boards.py``'s place-and-route test
(``synth``); here the lane counts the block-RAM check refuses, which run no tool."""

import json
import os
from dataclasses import replace as dataclasses_replace

import pytest

from mmfree.boards import build as board_build
from mmfree.sim import golden
from mmfree.sim.engine import EngineImage, Op, step_cycles, tree_latency
from mmfree.sim.modelfile import load_model
from mmfree.tools import bench_engine, cli, report
from mmfree.tools.device import BOARD_CONFIGS


def _no_tools(monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError(f"a build ran: {args}")
    monkeypatch.setattr(report, "build", no_build)


def test_lanes_that_do_not_fit_are_refused_before_any_tool(tmp_path, monkeypatch, capsys):
    """The default model at 32 and 2048 lanes needs more block RAM than the LFE5U-85F has:
    rows that say so, with the schedule's cycles, and a report, a plot and its data."""
    _no_tools(monkeypatch)
    monkeypatch.setattr(report, "tool_versions", lambda family: {"yosys": "not run"})
    out = tmp_path / "docs"
    assert cli.main(["report", "--lanes", "32", "2048", "--out", str(out),
                     "--work", str(tmp_path / "work")]) == cli.EXIT_OK
    assert not (tmp_path / "work").exists()
    data = json.loads((out / "performance.json").read_text())
    rows = [report.Row(**row) for row in data["rows"]]
    model = load_model(cli.default_model_path().with_name("ulx3s-85f.safetensors"))
    config = BOARD_CONFIGS["ulx3s-85f"]
    for row, lanes in zip(rows, (32, 2048), strict=True):
        image = EngineImage(golden.prepare(model), lanes, **config.engine_options)
        assert (row.board, row.lanes, row.status) == ("ulx3s-85f", lanes, "does not fit")
        assert "block RAMs" in row.detail and row.fmax_mhz is None, row
        assert row.cycles == step_cycles(image)
        assert row.weights == image.ternary_weights() == 1_343_488
        assert row.tokens_per_s is None
        assert sum(row.overhead.values()) == row.cycles
    text = (out / "performance.md").read_text()
    assert "| 32 | does not fit: 211 of 208 block RAMs" in text, text
    for peer in ("MatMul-free LM paper", "TerEffic", "TeLLMe", "ZyboGPT", "Trinity"):
        assert peer in text
    assert "100 MHz post-route with at least 1024 lanes on the ULX3S-85F: **not met**" in text
    assert (out / "performance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["meta"]["command"] == (f"mmfree report --lanes 32 2048 --out {out} "
                                       f"--work {tmp_path / 'work'}")

    # --render-only redraws the same report from the data.
    (out / "performance.md").unlink()
    assert cli.main(["report", "--render-only", "--out", str(out)]) == cli.EXIT_OK
    assert (out / "performance.md").read_text() == text


@pytest.mark.parametrize("argv, message", [
    (["--lanes", "12"], "lanes must be positive powers of two, not 12"),
    (["--render-only"], "no report data to render"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, argv, message):
    status = cli.main(["report", "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == cli.EXIT_USAGE and len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("jobs", ["0", "-1", "x"])
def test_jobs_must_be_a_positive_number(tmp_path, monkeypatch, capsys, jobs):
    """`--jobs 0` is a usage error, as for `mmfree build`, not one build at a time."""
    monkeypatch.setattr(report, "build_pool", lambda jobs: pytest.fail("nothing may start"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", "--out", str(tmp_path), "--jobs", jobs])
    assert exc.value.code == cli.EXIT_USAGE
    assert f"argument --jobs: {jobs!r} is not a number of jobs (1 or more)" in \
        capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_device_limits():
    """ULX3S-85F: 83,640 LUT4 / 25, 208 blocks x 36 bits at 1.6 bits a weight, 3 Mbaud 8N1
    and 15-byte TOKEN frames; iCEBreaker: the four SPRAMs' 16-bit ports at 2 bits a weight."""
    lim = report.limits("ulx3s-85f", 1_343_488, "1.6bit", 3_000_000)
    assert lim["lut_lanes"] == pytest.approx(3345.6)
    assert lim["bram_weights_per_cycle"] == pytest.approx(4680)
    assert lim["bram_tokens_per_s_100mhz"] == pytest.approx(100e6 * 4680 / 1_343_488)
    assert lim["uart_bytes_per_s"] == 300_000 and lim["uart_tokens_per_s"] == 20_000
    assert lim["uart_load_s"] == pytest.approx(1_343_488 * 0.2 / 300_000)
    lim = report.limits("icebreaker", 1000, "2bit", 3_000_000)
    assert lim["lut_lanes"] == pytest.approx(211.2) and lim["bram_weights_per_cycle"] == 32


def test_projection_of_a_row():
    row = report.Row(board="ulx3s-85f", lanes=128, vector_width=4, status="built", detail="",
                     cycles=20_000, weights=1_000_000, fmax_mhz=50.0, routed=False)
    assert row.tokens_per_s == pytest.approx(2500)
    assert row.weights_per_s == pytest.approx(2.5e9)
    assert row.utilization_pct == pytest.approx(100 * 1_000_000 / 128 / 20_000)


def test_placement_estimate_is_read_from_the_nextpnr_log(tmp_path):
    """After placement nextpnr's JSON report has no ``fmax``: the log's last ``Max frequency``
    line per clock is the estimate."""
    log = tmp_path / "top.tim"
    log.write_text("Info: Max frequency for clock '$glbnet$clk': 31.00 MHz (FAIL at 42.00 MHz)\n"
                   "Info: Placed 5 cells\n"
                   "Info: Max frequency for clock '$glbnet$clk': 42.93 MHz (PASS at 42.00 MHz)\n")
    assert board_build._placement_fmax(log) == {"$glbnet$clk": 42.93}
    assert board_build._placement_fmax(tmp_path / "missing.tim") == {}


def test_place_only_cannot_program(tmp_path):
    model = load_model(cli.default_model_path().with_name("ulx3s-85f.safetensors"))
    with pytest.raises(board_build.BuildError, match="no bitstream to program"):
        board_build.build("ulx3s-85f", model, out_dir=tmp_path / "b", place_only=True,
                          program=True)


def test_a_failed_build_is_kept_for_reuse(tmp_path, monkeypatch):
    """A build that fails (here: refused by nextpnr as too large, raised in place of running
    the tools) leaves its row in the build directory; ``--reuse`` reads it back, a rebuild
    replaces it; another model, gateware, nextpnr seed or tool version is built again."""
    from mmfree.sim.model import ModelConfig, random_model
    model = random_model(ModelConfig(vocab_size=32, hidden_size=16, num_layers=1,
                                     intermediate_size=16), seed=1)
    calls = []

    def too_large(*args, **kwargs):
        calls.append(kwargs["out_dir"])
        kwargs["out_dir"].mkdir(parents=True, exist_ok=True)
        raise board_build.BuildError("the design does not fit the icebreaker: "
                                     "ICESTORM_LC 121845/5280 (log: top.tim)")
    monkeypatch.setattr(report, "build", too_large)
    versions = {"yosys": "Yosys 0.70", "nextpnr-ice40": "nextpnr-0.11.1"}
    monkeypatch.setattr(report, "tool_versions", lambda family: dict(versions))
    first = report.measure(model, "icebreaker", 8, work=tmp_path, command=["mmfree", "report"])
    assert (first.status, first.lanes, first.board) == ("does not fit", 8, "icebreaker")
    assert "ICESTORM_LC 121845/5280" in first.detail and len(calls) == 1
    assert report.measure(model, "icebreaker", 8, work=tmp_path, reuse=True) == first
    assert len(calls) == 1
    report.measure(model, "icebreaker", 8, work=tmp_path)          # no --reuse: built again
    assert len(calls) == 2
    other = random_model(ModelConfig(vocab_size=32, hidden_size=16, num_layers=1,
                                     intermediate_size=16), seed=2)
    report.measure(other, "icebreaker", 8, work=tmp_path, reuse=True)   # another model
    assert len(calls) == 3
    assert report.measure(other, "icebreaker", 8, work=tmp_path, reuse=True).status == \
        "does not fit" and len(calls) == 3
    # Other gateware (a changed source file or board configuration): built again.
    monkeypatch.setattr(report, "gateware_fingerprint", lambda config: "0123456789abcdef")
    report.measure(other, "icebreaker", 8, work=tmp_path, reuse=True)
    assert len(calls) == 4
    # Another nextpnr seed: built again.
    report.measure(other, "icebreaker", 8, work=tmp_path, reuse=True, seed=9)
    assert len(calls) == 5
    # Other tools (another Yosys): built again, and then read back.
    versions["yosys"] = "Yosys 0.71"
    report.measure(other, "icebreaker", 8, work=tmp_path, reuse=True, seed=9)
    report.measure(other, "icebreaker", 8, work=tmp_path, reuse=True, seed=9)
    assert len(calls) == 6


def test_gateware_fingerprint():
    """The digest follows the board's configuration (and the gateware's source, which a test
    cannot change here); it is stable between calls."""
    import dataclasses
    from mmfree.tools.device import BOARD_CONFIGS
    config = BOARD_CONFIGS["ulx3s-85f"]
    first = board_build.gateware_fingerprint(config)
    assert first == board_build.gateware_fingerprint(config) and len(first) == 16
    for change in ({"lanes": 1024}, {"fused_sums": not config.fused_sums},
                   {"clock_hz": config.clock_hz + 3_000_000}):
        assert board_build.gateware_fingerprint(dataclasses.replace(config, **change)) != first


def test_gateware_fingerprint_is_of_the_source_as_loaded(tmp_path, monkeypatch):
    """A source file edited while a build or a report runs does not change the digest that
    process records: the source is read once a process, as its modules were loaded."""
    from mmfree.tools.device import BOARD_CONFIGS
    config = BOARD_CONFIGS["icebreaker"]
    first = board_build.gateware_fingerprint(config)
    package = tmp_path / "mmfree"
    for name in board_build._GATEWARE_PACKAGES:
        (package / name).mkdir(parents=True)
        (package / name / "x.py").write_text("A = 1\n")
    monkeypatch.setattr(board_build, "__file__", str(package / "boards" / "build.py"))
    assert board_build.gateware_fingerprint(config) == first        # read once
    board_build._source_digest.cache_clear()
    try:
        other = board_build.gateware_fingerprint(config)
        (package / "hw" / "x.py").write_text("A = 2\n")
        assert board_build.gateware_fingerprint(config) == other    # an edit after the read
        board_build._source_digest.cache_clear()
        assert board_build.gateware_fingerprint(config) not in (first, other)
    finally:
        board_build._source_digest.cache_clear()


def test_route_names_rows(tmp_path, monkeypatch):
    """``--route`` alone routes every row, ``--route N`` only the rows named; the serial
    engine's row is always routed."""
    monkeypatch.setattr(report, "tool_versions", lambda family: {"yosys": "not run"})
    calls = {}

    def measure(model, board, lanes, *, route, **kwargs):
        calls[board, lanes] = route
        return report.Row(board=board, lanes=lanes, status="does not fit", detail="test",
                          vector_width=4, cycles=1, weights=1, overhead=None)
    monkeypatch.setattr(report, "measure", measure)
    base = ["report", "--out", str(tmp_path), "--board", "ulx3s-85f", "--board", "icebreaker",
            "--lanes", "ulx3s-85f:64", "ulx3s-85f:128"]
    for route, expected in [([], {64: False, 128: False}),
                            (["--route"], {64: True, 128: True}),
                            (["--route", "ulx3s-85f:128"], {64: False, 128: True}),
                            (["--route", "64"], {64: True, 128: False})]:
        calls.clear()
        assert cli.main([*base, *route]) == cli.EXIT_OK
        assert calls == {**{("ulx3s-85f", n): r for n, r in expected.items()},
                         ("icebreaker", 4): True}, route


def test_sigterm_stops_the_report_and_its_builds(tmp_path, monkeypatch, capsys):
    """SIGTERM while two builds run in the report's threads: each build's tools are stopped
    within a poll, nothing is written or reported as failed, one line, exit 143; the next
    build runs as usual."""
    import signal
    import threading
    import time
    monkeypatch.setattr(report, "tool_versions", lambda family: {"yosys": "not run"})
    pids, ended = tmp_path / "pids", []

    def measure(model, board, lanes, **kwargs):
        try:
            board_build._run_tools(["sh", "-c", f"echo $$ >> {pids}; exec sleep 60"], tmp_path,
                                   None, tmp_path / f"{lanes}.tim", poll=0.1)
        except BaseException as error:
            ended.append(type(error))
            raise
        raise AssertionError("the build was not stopped")
    monkeypatch.setattr(report, "measure", measure)
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    start = time.monotonic()
    status = cli.main(["report", "--out", str(tmp_path / "out"), "--board", "ulx3s-85f",
                       "--lanes", "64", "128", "256", "--jobs", "2"])
    assert time.monotonic() - start < 10
    assert status == cli.EXIT_TERMINATED == 143
    assert capsys.readouterr().err.strip().splitlines() == ["mmfree: terminated"]
    assert ended == [board_build.BuildCancelled] * 2            # the third never started
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 2
    for pid in started:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (tmp_path / "out").exists()
    result = board_build._run_tools(["sh", "-c", "echo built"], tmp_path, None,
                                    tmp_path / "x.tim", poll=0.1)
    assert result.returncode == 0 and result.stdout == "built\n"


def test_route_of_a_row_not_in_the_report(tmp_path, capsys):
    status = cli.main(["report", "--out", str(tmp_path), "--lanes", "64", "--route", "128"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == cli.EXIT_USAGE and len(err) == 1, err
    assert "--route 128: not a row of this report" in err[0]


def test_lanes_for_one_board(tmp_path, capsys):
    status = cli.main(["report", "--out", str(tmp_path), "--lanes", "icebreaker:64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == cli.EXIT_USAGE and len(err) == 1, err
    assert "--lanes icebreaker:64: 'icebreaker' is not a --board of this report" in err[0]


def test_an_ice40_row_counts_logic_cells_once(tmp_path):
    """An iCE40 logic cell is a LUT and a flip-flop: the table names it once, and the plot
    draws one LC series (and no series at all for a board without a built row)."""
    meta = {"command": "mmfree report", "machine": "test", "date": "2026-11-24",
            "models": {"icebreaker": {"file": "m.safetensors", "config": "d64 L4 I256 V256"},
                       "ulx3s-85f": {"file": "n.safetensors", "config": "d128 L5 I512 V256"}},
            "packing": {"icebreaker": "2bit", "ulx3s-85f": "1.6bit"},
            "baud": {"icebreaker": 3_000_000, "ulx3s-85f": 3_000_000}}
    rows = [report.Row(board="icebreaker", lanes=4, vector_width=1, status="built", detail="",
                       cycles=50_000, weights=278_528, fmax_mhz=30.0, routed=True,
                       clock_mhz=24.0,
                       utilization={"ICESTORM_LC": [5000, 5280], "ICESTORM_RAM": [20, 30],
                                    "ICESTORM_DSP": [8, 8]}),
            report.Row(board="ulx3s-85f", lanes=256, vector_width=4, status="does not fit",
                       detail="211 of 208 block RAMs", cycles=20_000, weights=1_343_488)]
    text = report.render_markdown(rows, meta)
    assert "| 4 | routed | 30.00 | 5,000 | (in the LCs) | 20 | 8 |" in text, text
    assert "| ICESTORM_LC | FF | ICESTORM_RAM |" in text
    report.render_plot(rows, tmp_path / "p.png", meta)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_the_serial_engine_has_one_lane_count(tmp_path, capsys):
    status = cli.main(["report", "--out", str(tmp_path), "--board", "icebreaker",
                       "--lanes", "icebreaker:64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == cli.EXIT_USAGE and len(err) == 1, err
    assert "the icebreaker's serial engine has 4 lanes" in err[0]


def test_serial_schedule_counts_the_machine_cycles():
    """The iCEBreaker row's cycles per token: the mean of greedy steps of the serial engine's
    reference machine, and where they go adds up to them (DOT at 4 weights a cycle at least
    ``weights / 4``)."""
    import mmfree.sim.serial as serial
    from mmfree.sim.serial_program import SerialImage
    model = load_model("tools/models/icebreaker.safetensors")
    cycles, weights, overhead = report._serial_schedule(model)
    image = SerialImage(golden.prepare(model))
    machine = image.machine()
    token, total = 0, 0
    for _ in range(report.SERIAL_STEPS):
        token = machine.step(token, True)
        total += machine.cycles
    assert cycles == round(total / report.SERIAL_STEPS)
    assert weights == image.ternary_weights() == 278_528
    assert abs(sum(overhead.values()) - cycles) <= len(overhead)
    assert weights // serial.DOT_LANES <= overhead["ternary rows (DOT)"] < cycles / 2
    assert all(count > 0 for count in overhead.values()), overhead


@pytest.mark.parametrize("lanes, options", [
    (64, {}),
    (64, {"fused_sums": False}),
    (256, BOARD_CONFIGS["ulx3s-85f"].engine_options),
    (512, BOARD_CONFIGS["ulx3s-85f"].engine_options),
    (1024, BOARD_CONFIGS["ulx3s-85f"].engine_options),
])
def test_where_the_cycles_go(lanes, options):
    """The parts of a step add up to the schedule's cycles, none is negative, the lanes' own
    work is the weights over the lanes (rounded up per BitLinear), and the lanes sit idle only
    where a row has fewer weights than there are lanes: the default model (d 128) above 128
    lanes. Each part is what its name says: ``2 B`` (``3 B``) beats of passes a BitLinear."""
    model = golden.prepare(load_model("tools/models/ulx3s-85f.safetensors"))
    image = EngineImage(model, lanes, **options)
    parts = bench_engine.breakdown(image)
    assert tuple(parts) == bench_engine.PARTS
    assert sum(parts.values()) == step_cycles(image)
    assert all(cycles >= 0 for cycles in parts.values()), parts
    busy, idle = parts[bench_engine.PARTS[0]], parts[bench_engine.PARTS[1]]
    weights = image.ternary_weights()
    assert weights / lanes <= busy < weights / lanes + 32
    assert (idle > 0) == (lanes > 128), parts
    cfg, beats = model.config, 128 // image.width
    bitlinears = cfg.num_layers * 6 + 1
    passes = sum(2 * -(-instr["n_in"] // image.width) for instr in image.program
                 if instr["op"] in (Op.BITLINEAR, Op.HEAD))
    if not options.get("fused_sums", True):
        passes = passes * 3 // 2
    assert parts[bench_engine.PARTS[3]] == passes
    assert parts[bench_engine.PARTS[2]] == bitlinears * tree_latency(lanes, image.weight_reg)
    assert parts[bench_engine.PARTS[7]] == cfg.num_layers * 2 * cfg.hidden_size
    assert parts[bench_engine.PARTS[5]] == (cfg.num_layers * 3 + 1) * beats * (
        1 if options.get("fused_sums", True) else 3)


def test_the_limit_at_the_largest_row_is_named():
    """The report names the largest part that is not the lanes' own work: at 1024 lanes on the
    default model, the rows sent one a cycle while most lanes hold zeros."""
    model = golden.prepare(load_model("tools/models/ulx3s-85f.safetensors"))
    image = EngineImage(model, 1024, **BOARD_CONFIGS["ulx3s-85f"].engine_options)
    name, cycles = report._limit(bench_engine.breakdown(image))
    # Row cycles a layer: i, f, g and o 128 rows each, down 128 (two rows of 512 weights a
    # chunk), half as many cycles in pairs (the board's row_pairs); gate/up 512 (1,024 rows in
    # pairs); the lm_head 256 (one a cycle); the lanes' own work 1,343,488 / 1024 = 1,312.
    rows = 5 * 128 // (2 if image.paired_rows else 1)
    assert image.paired_glu and image.paired_rows == BOARD_CONFIGS["ulx3s-85f"].row_pairs
    assert name == bench_engine.PARTS[1] and cycles == 5 * (rows + 512) + 256 - 1_312


def test_a_serial_row_is_rendered_with_its_cycles(tmp_path):
    meta = {"command": "mmfree report --board icebreaker", "machine": "test",
            "date": "2026-11-24",
            "models": {"icebreaker": {"file": "m.safetensors", "config": "d64 L4 I256 V256"}},
            "packing": {"icebreaker": "2bit"}, "baud": {"icebreaker": 3_000_000}}
    overhead = {"ternary rows (DOT)": 84_000, "multiplies (MUL, MULS)": 490_000,
                "compares, adds, loops, calls, step start": 540_000}
    rows = [report.Row(board="icebreaker", lanes=4, vector_width=1, status="built", detail="",
                       cycles=1_114_000, weights=278_528, fmax_mhz=12.51, routed=True,
                       clock_mhz=12.0, overhead=overhead,
                       utilization={"ICESTORM_LC": [4954, 5280], "ICESTORM_RAM": [22, 30],
                                    "ICESTORM_DSP": [0, 8]})]
    text = report.render_markdown(rows, meta)
    assert "runs the serial engine" in text
    assert "| 4 | routed | 12.51 | 4,954 | (in the LCs) | 22 | 0 | 1,114,000 | 6.3% | 11 |" \
        in text, text
    assert "| multiplies (MUL, MULS) | 490,000 | 44.0% |" in text
    assert ("At 4 lanes the largest overhead is **compares, adds, loops, calls, step start**: "
            "540,000 cycles a token, 48.5% of them.") in text
    unfit = dataclasses_replace(rows[0], status="does not fit", detail="too big", cycles=0,
                                weights=0, overhead=None)
    text = report.render_markdown([unfit], meta)
    assert "| 4 | does not fit: too big | — |" in text and "Where the cycles" not in text
    report.render_plot([unfit], tmp_path / "p.png", meta)
