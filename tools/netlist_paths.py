"""The longest register-to-register paths of a synthesized ECP5 netlist (Yosys ``synth_ecp5``
JSON), estimated with a fixed delay per cell and per net, and named by the source lines
Amaranth put on the cells.

nextpnr names a critical path only after routing, and the default-model ULX3S SoC does not
route in an afternoon on two cores; this names the paths that hold the clock back in the
minutes Yosys takes. The delays are read off nextpnr's routed reports for the LFE5U-85F at
speed 6 (block RAM clock-to-out 5.6 ns, a LUT 0.35 ns, a net 1.0 ns, a carry 0.07 ns per
cell, a multiplier 3.9 ns with 2.5 ns nets in and out). It is an estimate: on the tiny ULX3S
SoC it gives 27.3 ns for the path nextpnr routes at 28.4 ns; on the default-model SoC, whose
nets are longer, nextpnr's placement estimate was about 1.2 times this.

    python -m mmfree.tools.netlist_paths build/top.json [--paths 10] [--over 15]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TimingPath", "longest_paths", "main"]

#: Clock-to-output of the cells paths start from (ns).
START = {"TRELLIS_FF": 0.52, "DP16KD": 5.61, "TRELLIS_IO": 0.0, "EHXPLLL": 0.0,
         "DCCA": 0.0}
#: Cells paths end at: every input but the clock is a path's end.
END = {"TRELLIS_FF", "DP16KD", "TRELLIS_DPR16X4", "TRELLIS_IO"}
CLOCKS = {"CLK", "CLKA", "CLKB", "WCK"}
NET = 1.0          # a net through the general routing
SLICE_NET = 0.05   # LUT -> PFUMX -> L6MUX21 inside a slice
DSP_NET = 2.5      # into or out of a MULT18X18D
SETUP = 0.1


def cell_delay(kind: str, inp: str, out: str) -> float:
    if kind == "LUT4":
        return 0.35
    if kind in ("PFUMX", "L6MUX21"):
        return 0.25
    if kind == "CCU2C":
        if inp == "CIN":
            return 0.07 if out == "COUT" else 0.44
        return 0.45
    if kind == "MULT18X18D":
        return 3.93
    if kind == "TRELLIS_DPR16X4":
        return 1.0
    return 0.5


@dataclass
class TimingPath:
    """One path: its estimated delay (ns, setup included), its end (``cell.port``) and its
    cells from the start, each ``(arrival ns, cell type, net name, source)``."""
    delay: float
    end: str
    steps: list[tuple[float, str, str, str]]

    @property
    def start(self) -> str:
        return self.steps[0][2]


def _source(cell: dict) -> str:
    """The Amaranth source lines of a cell (``file:line``), not Yosys's techmap files."""
    lines = []
    for item in cell.get("attributes", {}).get("src", "").split("|"):
        path, _, where = item.rpartition(":")
        if not path or "/techlibs/" in path or path.endswith(("_map.v", "_sim.v")) \
                or "share/" in path:
            continue
        lines.append(f"{Path(path).name}:{where.split('.')[0]}")
    return ",".join(sorted(set(lines)))


def longest_paths(netlist: dict, *, top: str | None = None, count: int = 10,
                  over: float = 0.0) -> tuple[list[TimingPath], dict[tuple[str, str], tuple]]:
    """The ``count`` longest paths to distinct registers, and every (start, end) pair of
    register groups with a path over ``over`` ns: ``{(start, end): (worst ns, endpoints)}``."""
    modules = netlist["modules"]
    if top is None:
        tops = [n for n, mod in modules.items() if int(mod.get("attributes", {}).get("top", 0)
                                                        or 0)]
        if len(tops) != 1:
            raise ValueError(f"the netlist has {len(tops)} top modules; name one")
        top = tops[0]
    module = modules[top]
    cells = module["cells"]
    names: dict[int, tuple] = {}
    for name, net in module["netnames"].items():
        for i, bit in enumerate(net["bits"]):
            if isinstance(bit, int):
                key = (net.get("hide_name", 0), len(name),
                       f"{name}[{i}]" if len(net["bits"]) > 1 else name)
                if bit not in names or key < names[bit]:
                    names[bit] = key
    driver: dict[int, tuple[str, str]] = {}
    for cname, cell in cells.items():
        for port, direction in cell.get("port_directions", {}).items():
            if direction == "output":
                for bit in cell["connections"][port]:
                    if isinstance(bit, int):
                        driver[bit] = (cname, port)

    arrival: dict[int, tuple[float, int | None, str | None]] = {}

    def visit(root: int) -> tuple:
        # Iterative depth-first search: carry chains and mux trees are deep.
        stack = [root]
        while stack:
            bit = stack[-1]
            if bit in arrival:
                stack.pop()
                continue
            if bit not in driver:
                arrival[bit] = (0.0, None, None)
                stack.pop()
                continue
            cname, oport = driver[bit]
            cell = cells[cname]
            kind = cell["type"]
            if kind in START:
                arrival[bit] = (START[kind], None, cname)
                stack.pop()
                continue
            inputs = []
            for port, direction in cell["port_directions"].items():
                if direction != "input":
                    continue
                if kind == "TRELLIS_DPR16X4" and not port.startswith("RAD"):
                    continue
                inputs += [(port, b) for b in cell["connections"][port] if isinstance(b, int)]
            pending = [b for _, b in inputs if b not in arrival]
            if pending:
                arrival.setdefault(-bit - 1, None)       # mark: on the stack
                for b in pending:
                    if -b - 1 in arrival:                # a combinational loop: cut it
                        arrival[b] = (0.0, None, None)
                    else:
                        stack.append(b)
                continue
            best = (0.0, None, cname)
            for port, b in inputs:
                net = NET
                if kind == "CCU2C" and port == "CIN":
                    net = 0.0
                elif kind in ("PFUMX", "L6MUX21") and port not in ("C0", "SD"):
                    net = SLICE_NET
                if kind == "MULT18X18D" or (b in driver and
                                            cells[driver[b][0]]["type"] == "MULT18X18D"):
                    net = DSP_NET
                t = arrival[b][0] + net + cell_delay(kind, port, oport)
                if t > best[0]:
                    best = (t, b, cname)
            arrival[bit] = best
            stack.pop()
        return arrival[root]

    ends = []
    for cname, cell in cells.items():
        if cell["type"] not in END:
            continue
        for port, direction in cell.get("port_directions", {}).items():
            if direction != "input" or port in CLOCKS:
                continue
            if cell["type"] == "TRELLIS_DPR16X4" and port.startswith("RAD"):
                continue
            for bit in cell["connections"][port]:
                if isinstance(bit, int):
                    ends.append((visit(bit)[0] + NET + SETUP, cname, port, bit))
    ends.sort(key=lambda e: -e[0])

    def trace(bit):
        steps = []
        while bit is not None:
            t, prev, cname = arrival[bit]
            cell = cells[cname] if cname else {}
            steps.append((t, cell.get("type", "?"), names.get(bit, (0, 0, str(bit)))[2],
                          _source(cell)))
            bit = prev
        return steps[::-1]

    def group(name: str) -> str:
        keep = []
        for part in name.split("."):
            for cut in ("_TRELLIS", "_LUT4", "_CCU2C", "_DP16KD", "_MULT18X18D", "_PFUMX",
                        "_DO"):
                part = part.split(cut)[0]
            keep.append(part)
        return ".".join(keep)

    paths, seen = [], set()
    groups: dict[tuple[str, str], list] = collections.defaultdict(lambda: [0.0, 0])
    for delay, cname, port, bit in ends:
        if delay < over and len(paths) >= count:
            break
        if delay >= over:
            steps = trace(bit)
            key = (group(steps[0][2].split("[")[0]), group(cname))
            groups[key][0] = max(groups[key][0], delay)
            groups[key][1] += 1
        if len(paths) < count and group(cname) not in seen:
            seen.add(group(cname))
            paths.append(TimingPath(delay, f"{cname}.{port}", trace(bit)))
    return paths, {k: tuple(v) for k, v in groups.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmfree.tools.netlist_paths",
        description="Estimate the longest register-to-register paths of a synth_ecp5 JSON "
                    "netlist and name them by source line.")
    parser.add_argument("netlist", type=Path, help="Yosys JSON netlist (top.json of a build)")
    parser.add_argument("--paths", type=int, default=10, help="paths to print (default 10)")
    parser.add_argument("--over", type=float, default=15.0,
                        help="list register groups with paths over this many ns (default 15)")
    args = parser.parse_args(argv)
    try:
        netlist = json.loads(args.netlist.read_text())
        paths, groups = longest_paths(netlist, count=args.paths, over=args.over)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"error: {args.netlist}: not a readable Yosys JSON netlist ({error})",
              file=sys.stderr)
        return 1
    for path in paths:
        print(f"{path.delay:6.2f} ns  {path.start} -> {path.end}")
        last = None
        for t, kind, net, source in path.steps:
            if (kind, source) != last:
                print(f"    {t:6.2f}  {kind:11s} {source or '-':28s} {net[:70]}")
            last = (kind, source)
    print(f"\nregister groups with paths over {args.over:g} ns (worst, endpoints):")
    for (start, end), (worst, n) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        print(f"{worst:6.2f}  {n:5d}  {start} -> {end}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
