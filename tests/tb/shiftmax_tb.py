"""cocotb testbench of hw/shiftmax.py (Shiftmax) against :func:`mmfree.sim.golden._shiftmax_x0`.

Run from tests/test_shiftmax.py through :func:`mmfree.sim.toolchain.run_cocotb`. Environment:
``SHIFTMAX_BLOCK`` (``shiftmax`` or ``shiftgelu``: which block the toplevel is; the other's
tests are skipped), ``SHIFTMAX_CONFIG`` (``n_max,in_width,out_bits,n``; ``n`` is ignored for
ShiftGELU), ``SHIFTMAX_ROWS`` (random rows per traffic pattern), ``SHIFTMAX_SEED``.

Also the testbench of hw/shiftgelu.py (ShiftGELU) against :func:`mmfree.sim.golden.shiftgelu`.
"""

import math
import os
import random

import cocotb
import numpy as np
from amaranth.hdl import signed, unsigned
from amaranth.lib import data
from cocotb.triggers import ReadOnly, RisingEdge
from streams import StreamSink, StreamSource, pack, reset, start_clock, unpack

from mmfree.sim.golden import GELU_ALPHA, _shiftmax_x0, shiftgelu

X0_FIXED = [-1, -12, -256, -1000]
BLOCK = os.environ.get("SHIFTMAX_BLOCK", "shiftmax")
GELU_SCALES = [0.05, 0.05, 0.1, 0.02]


def _config():
    n_max, in_width, out_bits, n = (int(v) for v in os.environ["SHIFTMAX_CONFIG"].split(","))
    return n_max, in_width, out_bits, n


def _rows(rng, count, n_max, in_width, n):
    """Random rows (lengths 1..n_max, full-range or narrow values) and their x0."""
    lo, hi = -(1 << (in_width - 1)), (1 << (in_width - 1)) - 1
    rows = []
    for index in range(count):
        length = rng.randint(1, n_max)
        if index % 3 == 0:                       # narrow spread: many elements near the max
            base = rng.randint(lo + 64, hi)
            row = [rng.randint(base - 64, base) for _ in range(length)]
        else:
            row = [rng.randint(lo, hi) for _ in range(length)]
        x0 = X0_FIXED[index % 4] if index % 5 else -rng.randint(1, (1 << (31 - n)) - 1)
        rows.append((row, x0))
    return rows


class _Monitor:
    """Records the cycles of input transfers and output valid/transfer, for latency checks."""

    def __init__(self, dut):
        self.dut = dut
        self.in_last = []          # cycles of the transfers of `last` input elements
        self.in_first = []         # cycles of the transfers of first input elements
        self.out_first = []        # first cycle each vector's first output is valid
        self.out_last = []         # cycles of the transfers of `last` output elements

    async def run(self, in_layout, out_layout):
        dut = self.dut
        cycle = 0
        new_in, new_out, out_waiting = True, True, False
        while True:
            await ReadOnly()
            if int(dut.inp__valid.value) and int(dut.inp__ready.value):
                word = unpack(in_layout, int(dut.inp__payload.value))
                if new_in:
                    self.in_first.append(cycle)
                new_in = bool(word["last"])
                if word["last"]:
                    self.in_last.append(cycle)
            if int(dut.out__valid.value):
                word = unpack(out_layout, int(dut.out__payload.value))
                if new_out and not out_waiting:
                    self.out_first.append(cycle)
                    out_waiting = True
                if int(dut.out__ready.value):
                    out_waiting = False
                    new_out = bool(word["last"])
                    if word["last"]:
                        self.out_last.append(cycle)
            await RisingEdge(dut.clk)
            cycle += 1


@cocotb.test(skip=BLOCK != "shiftmax")
@cocotb.parametrize(traffic=["random", "full"])
async def rows_match_golden(dut, traffic):
    """Random rows against the golden Shiftmax, with random input gaps and output back-pressure
    (``random``) or at full rate (``full``), where latency and throughput are checked against
    the docstring of Shiftmax."""
    n_max, in_width, out_bits, n = _config()
    seed = int(os.environ["SHIFTMAX_SEED"])
    count = int(os.environ["SHIFTMAX_ROWS"])
    config = f"n_max={n_max} in_width={in_width} out_bits={out_bits} n={n} seed={seed}"
    in_layout = data.StructLayout({"data": signed(in_width), "first": 1, "last": 1})
    out_layout = data.StructLayout({"data": unsigned(out_bits), "first": 1, "last": 1})
    rng = random.Random(f"{seed}-{traffic}")
    rows = _rows(rng, count, n_max, in_width, n)

    start_clock(dut)
    dut.x0.value = 0
    gap, ready = (0.3, 0.6) if traffic == "random" else (0.0, 1.0)
    source = StreamSource(dut, "inp", gap_probability=gap, seed=seed)
    sink = StreamSink(dut, "out", ready_probability=ready, seed=seed + 1)
    await reset(dut)
    monitor = _Monitor(dut)
    cocotb.start_soon(monitor.run(in_layout, out_layout))

    async def drive():
        for row, x0 in rows:
            dut.x0.value = x0      # held for the whole vector; sampled at its first element
            await source.send([pack(in_layout, data=x, first=i == 0, last=i == len(row) - 1)
                               for i, x in enumerate(row)])

    cocotb.start_soon(drive())
    words = await sink.recv(sum(len(row) for row, _ in rows))
    position = 0
    for index, (row, x0) in enumerate(rows):
        expected = _shiftmax_x0(np.array(row), x0, n, out_bits).tolist()
        got = [unpack(out_layout, w) for w in words[position:position + len(row)]]
        position += len(row)
        assert [g["data"] for g in got] == expected, (
            f"{config} traffic={traffic} row {index} x0={x0} {row}: "
            f"got {[g['data'] for g in got]}, expected {expected}")
        firsts = [g["first"] for g in got]
        lasts = [g["last"] for g in got]
        assert firsts == [1] + [0] * (len(row) - 1), (config, index, firsts)
        assert lasts == [0] * (len(row) - 1) + [1], (config, index, lasts)
    assert position == len(words) == sum(len(row) for row, _ in rows)

    if traffic == "full":
        for index, (row, _) in enumerate(rows):
            length = len(row)
            latency = monitor.out_first[index] - monitor.in_last[index]
            assert latency == length + 47 - n, (
                f"{config} row {index} (L={length}): latency {latency} cycles, "
                f"documented L + 47 - n = {length + 47 - n}")
            in_cycles = monitor.in_last[index] - monitor.in_first[index] + 1
            assert in_cycles == length, (config, index, in_cycles, length)
            out_cycles = monitor.out_last[index] - monitor.out_first[index] + 1
            assert out_cycles == length, (config, index, out_cycles, length)
            if index + 1 < len(rows):
                period = monitor.in_first[index + 1] - monitor.in_first[index]
                assert period == 3 * length + 46 - n, (
                    f"{config} row {index} (L={length}): {period} cycles per vector, "
                    f"documented 3 L + 46 - n = {3 * length + 46 - n}")
    dut._log.info("%s traffic=%s: %d rows, %d elements", config, traffic, len(rows), len(words))


@cocotb.test(skip=BLOCK != "shiftgelu")
@cocotb.parametrize(traffic=["random", "full"])
async def gelu_rows_match_golden(dut, traffic):
    """Random int8 rows at scales 0.05 (x0 = -12), 0.1 and 0.02 against golden.shiftgelu, with
    random gaps/back-pressure or at full rate (latency 36 cycles, 35 cycles per element and
    36 L + 1 cycles per vector checked there, as documented in ShiftGELU)."""
    n_max, in_width, out_bits, _ = _config()
    seed = int(os.environ["SHIFTMAX_SEED"])
    count = int(os.environ["SHIFTMAX_ROWS"])
    config = f"ShiftGELU n_max={n_max} in_width={in_width} out_bits={out_bits} seed={seed}"
    in_layout = data.StructLayout({"data": signed(in_width), "first": 1, "last": 1})
    out_layout = data.StructLayout({"data": signed(in_width + out_bits), "first": 1, "last": 1})
    rng = random.Random(f"{seed}-{traffic}")
    lo, hi = -(1 << (in_width - 1)), (1 << (in_width - 1)) - 1
    rows = [([rng.randint(lo, hi) for _ in range(rng.randint(1, n_max))],
             GELU_SCALES[index % len(GELU_SCALES)]) for index in range(count)]

    start_clock(dut)
    dut.x0.value = 0
    gap, ready = (0.3, 0.6) if traffic == "random" else (0.0, 1.0)
    source = StreamSource(dut, "inp", gap_probability=gap, seed=seed)
    sink = StreamSink(dut, "out", ready_probability=ready, seed=seed + 1)
    await reset(dut)
    monitor = _Monitor(dut)
    cocotb.start_soon(monitor.run(in_layout, out_layout))

    async def drive():
        for row, scale in rows:
            dut.x0.value = math.floor(-1.0 / (GELU_ALPHA * scale))
            await source.send([pack(in_layout, data=x, first=i == 0, last=i == len(row) - 1)
                               for i, x in enumerate(row)])

    cocotb.start_soon(drive())
    words = await sink.recv(sum(len(row) for row, _ in rows))
    position = 0
    for index, (row, scale) in enumerate(rows):
        expected = shiftgelu(np.array(row), scale, out_bits)[0].tolist()
        got = [unpack(out_layout, w) for w in words[position:position + len(row)]]
        position += len(row)
        assert [g["data"] for g in got] == expected, (
            f"{config} traffic={traffic} row {index} scale={scale} {row}: "
            f"got {[g['data'] for g in got]}, expected {expected}")
        assert [g["first"] for g in got] == [1] + [0] * (len(row) - 1), (config, index)
        assert [g["last"] for g in got] == [0] * (len(row) - 1) + [1], (config, index)
    assert position == len(words)

    if traffic == "full":
        for index, (row, _) in enumerate(rows):
            length = len(row)
            latency = monitor.out_first[index] - monitor.in_last[index]
            assert latency == 36, f"{config} row {index}: latency {latency}, documented 36"
            out_cycles = monitor.out_last[index] - monitor.out_first[index]
            assert out_cycles == 35 * (length - 1), (config, index, out_cycles, length)
            if index + 1 < len(rows):
                period = monitor.in_first[index + 1] - monitor.in_first[index]
                assert period == 36 * length + 1, (
                    f"{config} row {index} (L={length}): {period} cycles per vector, "
                    f"documented 36 L + 1 = {36 * length + 1}")
    dut._log.info("%s traffic=%s: %d rows, %d elements", config, traffic, len(rows), len(words))
