"""hw/arith.py: the logarithmic bit length and the two-stage split multiplication, exhaustively
at small widths and at random at the widths the units use, in Amaranth's simulator."""

import itertools
import random

import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from mmfree.hw.arith import bit_length, split_mul


def _run(m, bench, clock=True):
    sim = Simulator(m)
    if clock:
        sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 32, 74])
def test_bit_length(width):
    m = Module()
    value = Signal(width)
    length = bit_length(m, value, "len")
    assert len(length) >= width.bit_length()
    rng = random.Random(width)
    if width <= 8:
        values = range(1 << width)
    else:
        values = [0, 1, (1 << width) - 1, *(1 << k for k in range(width)),
                  *(rng.getrandbits(rng.randint(1, width)) for _ in range(300))]

    async def bench(ctx):
        for v in values:
            ctx.set(value, v)
            assert ctx.get(length) == v.bit_length(), v

    _run(m, bench, clock=False)


@pytest.mark.parametrize("a_shape,b_shape", [
    (signed(5), signed(4)), (unsigned(5), signed(3)), (signed(4), unsigned(4)),
    (unsigned(4), unsigned(3)),                                   # exhaustive
    (signed(32), signed(32)), (signed(32), signed(24)), (unsigned(32), unsigned(23)),
    (signed(32), unsigned(21)), (unsigned(21), unsigned(21)), (unsigned(32), unsigned(24)),
])
def test_split_mul(a_shape, b_shape):
    """The product appears two cycles after its operands, every cycle, and equals ``a * b``."""
    m = Module()
    a, b = Signal(a_shape), Signal(b_shape)
    product, first, second = split_mul(a, b, "p")
    m.d.sync += [*first, *second]
    assert product.shape() == (a * b).shape()

    def values(shape):
        lo = -(1 << (shape.width - 1)) if shape.signed else 0
        hi = (1 << (shape.width - 1)) - 1 if shape.signed else (1 << shape.width) - 1
        return lo, hi

    (alo, ahi), (blo, bhi) = values(a_shape), values(b_shape)
    if a_shape.width + b_shape.width <= 10:
        pairs = list(itertools.product(range(alo, ahi + 1), range(blo, bhi + 1)))
    else:
        rng = random.Random(a_shape.width * 100 + b_shape.width)
        corners = list(itertools.product((alo, alo + 1, -1 if alo else 0, 0, 1, ahi),
                                         (blo, -1 if blo else 0, 0, 1, bhi)))
        pairs = corners + [(rng.randint(alo, ahi), rng.randint(blo, bhi)) for _ in range(500)]

    async def bench(ctx):
        history = []
        for x, y in pairs + [(0, 0)]:
            ctx.set(a, x)
            ctx.set(b, y)
            history.append((x, y))
            await ctx.tick()
            if len(history) >= 2:                   # the product of the operands 2 ticks ago
                x2, y2 = history[-2]
                assert ctx.get(product) == x2 * y2, (x2, y2)

    _run(m, bench)


@pytest.mark.parametrize("shape", [signed(32), unsigned(24), signed(19), signed(6)])
def test_split_mul_square(shape):
    """A square (``a`` twice, as the sums of squares use it): two cycles, equal to ``a * a``."""
    m = Module()
    a = Signal(shape)
    product, first, second = split_mul(a, a, "p")
    m.d.sync += [*first, *second]
    assert product.shape() == (a * a).shape()
    lo = -(1 << (shape.width - 1)) if shape.signed else 0
    hi = (1 << (shape.width - 1)) - 1 if shape.signed else (1 << shape.width) - 1
    rng = random.Random(shape.width)
    values = [lo, lo + 1, -1 if lo else 0, 0, 1, hi] + [rng.randint(lo, hi) for _ in range(300)]

    async def bench(ctx):
        feed = values + [0]
        for i, x in enumerate(feed):
            ctx.set(a, x)
            await ctx.tick()
            if i >= 1:                      # the square of the value set 2 ticks ago
                assert ctx.get(product) == feed[i - 1] ** 2, feed[i - 1]

    _run(m, bench)
