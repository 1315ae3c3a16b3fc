"""The worst register-to-register paths of a routed design, from the SDF file nextpnr writes
(``--sdf``; ``mmfree build`` writes ``top.sdf``): every endpoint's arrival with nextpnr's own
cell and routed net delays, the endpoints grouped by the registers their worst path starts
and ends at.

nextpnr reports one critical path a clock; a design held back by a dozen unrelated paths
needs a dozen place-and-route runs to learn them that way. This reads them all from one run.
The worst path's delay equals nextpnr's (the same delays, summed the same way: the worst of
the minimum/typical/maximum triples, setup included); clock skew is not modelled (nextpnr's
ECP5 global clock has none). A placed-only build (``--place-only``) writes the SDF too, with
nextpnr's estimates for the unrouted nets in place of their delays.

    python -m mmfree.tools.routed_paths build/ulx3s-85f [--groups 30] [--clock-mhz 45] [-v]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PathGroup", "parse_sdf", "worst_paths", "main"]

SDF_NAME = "top.sdf"

_INSTANCE = re.compile(r"\(INSTANCE ?([^)]*)\)")
_INTERCONNECT = re.compile(r"\(INTERCONNECT (\S+) (\S+) \(([-\d.:]+)\)")
_IOPATH = re.compile(r"\(IOPATH \(?(?:posedge |negedge )?([^\s)]+)\)? (\S+) \(([-\d.:]+)\)")
_CHECK = re.compile(r"\((?:SETUPHOLD|SETUP) \((?:posedge|negedge) (\S+)\) "
                    r"\((?:posedge|negedge) (\S+)\) \(([-\d.:]+)\)")
# What nextpnr appends to a signal's name when it names cells and nets after it.
_SUFFIX = re.compile(r"(_TRELLIS_FF|_TRELLIS_IO|_LUT4|_CCU2C|_PFUMX|_L6MUX21|_MULT18X18D|"
                     r"_DP16KD|_D[IO][AB]\d|\$).*")


def _unescape(name: str) -> str:
    return name.replace("\\", "")


def _worst(triple: str) -> float:
    return max(float(x) for x in triple.split(":"))


@dataclass
class Timing:
    """The timing graph of an SDF file: ``arcs[pin] = [(pin, ps)]``, ``setup[pin] = ps`` at
    every constrained data pin, and the clock pins."""
    arcs: dict
    setup: dict
    clocks: set


def parse_sdf(text: str) -> Timing:
    """Pins are ``instance/port``: nets (INTERCONNECT), cell arcs (IOPATH) and setup checks."""
    arcs = collections.defaultdict(list)
    setup: dict[str, float] = {}
    clocks: set[str] = set()
    if "(DELAYFILE" not in text[:200]:
        raise ValueError("not an SDF file (no DELAYFILE)")
    for cell in text.split("(CELL")[1:]:
        found = _INSTANCE.search(cell)
        instance = _unescape(found.group(1).strip()) if found else ""
        for src, dst, delay in _INTERCONNECT.findall(cell):
            arcs[_unescape(src)].append((_unescape(dst), _worst(delay)))
        for data_pin, clock_pin, delay in _CHECK.findall(cell):
            pin = f"{instance}/{data_pin}"
            setup[pin] = max(setup.get(pin, 0.0), _worst(delay))
            clocks.add(f"{instance}/{clock_pin}")
        for src, dst, delay in _IOPATH.findall(cell):
            arcs[f"{instance}/{src}"].append((f"{instance}/{dst}", _worst(delay)))
    return Timing(dict(arcs), setup, clocks)


@dataclass
class PathGroup:
    """The paths from one register group to another: the worst one's delay (ns, setup
    included), how many endpoints of the end group such paths reach, and the worst path's
    pins with their arrival (ns), from the clock pin's output on."""
    start: str
    end: str
    delay: float
    endpoints: int
    pins: list[tuple[float, str]]

    @property
    def mhz(self) -> float:
        return 1e3 / self.delay


def group(pin: str) -> str:
    """A pin's register group: the signal a cell is named after, without its bit index."""
    name = _SUFFIX.sub("", pin.split("/")[0]).rstrip(".")
    return re.sub(r"(_\d+|(\.\d+)+)$", "", name)     # a bit's or a memory block's index


def worst_paths(timing: Timing) -> list[PathGroup]:
    """The endpoints grouped by their worst path's (start group, end group); an endpoint
    counts in one group only, its worst path's. Unsorted."""
    arcs, clocks = timing.arcs, timing.clocks
    arrival: dict[str, float] = {}
    pred: dict[str, str | None] = {}
    for clock in clocks:                        # clock-to-output arcs launch the paths
        for pin, delay in arcs.get(clock, ()):
            if delay > arrival.get(pin, -1.0):
                arrival[pin], pred[pin] = delay, None
    # Longest paths over the DAG reachable from the launch pins (Kahn's order); a path does
    # not go on through a clock pin.
    indegree: collections.Counter = collections.Counter()
    reached, stack = set(arrival), list(arrival)
    while stack:
        pin = stack.pop()
        for nxt, _ in arcs.get(pin, ()):
            if nxt in clocks:
                continue
            indegree[nxt] += 1
            if nxt not in reached:
                reached.add(nxt)
                stack.append(nxt)
    ready = [pin for pin in reached if indegree[pin] == 0]
    while ready:
        pin = ready.pop()
        at = arrival.get(pin, 0.0)
        for nxt, delay in arcs.get(pin, ()):
            if nxt in clocks:
                continue
            if at + delay > arrival.get(nxt, -1.0):
                arrival[nxt], pred[nxt] = at + delay, pin
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    if any(indegree[pin] > 0 for pin in reached):
        raise ValueError("the timing graph has a combinational loop")

    def trace(pin):
        pins = []
        while pin is not None:
            pins.append((arrival[pin] / 1e3, pin))
            pin = pred.get(pin)
        return pins[::-1]

    ends = sorted(((arrival[pin] + s, pin) for pin, s in timing.setup.items()
                   if pin in arrival), reverse=True)
    groups: dict[tuple[str, str], PathGroup] = {}
    for delay, pin in ends:
        pins = trace(pin)
        key = (group(pins[0][1]), group(pin))
        if key in groups:
            groups[key].endpoints += 1
        else:
            groups[key] = PathGroup(key[0], key[1], delay / 1e3, 1, pins)
    return list(groups.values())


def _positive(kind, what: str):
    """An argparse type: a ``kind`` (int or float) above 0."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what} above 0")
        return value
    return parse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmfree.tools.routed_paths",
        description="List the worst register-to-register path groups of a routed design from "
                    "nextpnr's SDF (mmfree build writes top.sdf).")
    parser.add_argument("build", type=Path, help=f"a build directory (or its {SDF_NAME})")
    parser.add_argument("--groups", type=_positive(int, "number of groups"), default=30,
                        help="path groups to print, worst first (default 30)")
    parser.add_argument("--clock-mhz", type=_positive(float, "clock in MHz"), default=None,
                        help="also print the slack of each group at this clock")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print each group's worst path, one line a register group")
    args = parser.parse_args(argv)
    path = args.build / SDF_NAME if args.build.is_dir() else args.build
    try:
        groups = worst_paths(parse_sdf(path.read_text()))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        print(f"error: {path}: {error}", file=sys.stderr)
        return 1
    if not groups:
        print(f"error: {path}: no register-to-register paths", file=sys.stderr)
        return 1
    groups.sort(key=lambda g: -g.delay)
    print(f"{path}: worst path {groups[0].delay:.2f} ns ({groups[0].mhz:.2f} MHz), "
          f"{len(groups)} register groups")
    for g in groups[:args.groups]:
        slack = "" if args.clock_mhz is None else f" slack {1e3 / args.clock_mhz - g.delay:6.2f}"
        print(f"{g.delay:6.2f} ns {g.mhz:7.2f} MHz{slack} x{g.endpoints:<5d} "
              f"{g.start} -> {g.end}")
        if args.verbose:
            last = None
            for at, pin in g.pins:
                if group(pin) != last:
                    print(f"        {at:6.2f}  {pin}")
                    last = group(pin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
