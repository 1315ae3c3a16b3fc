"""Isqrt: the exact integer square root, digit by digit (RMSNorm's ``r = isqrt(s2)``)."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Isqrt"]


class Isqrt(wiring.Component):
    """``floor(sqrt(v))`` of an unsigned ``width``-bit integer, ``steps`` result bits per cycle.

    Golden model: :func:`mmfree.sim.golden.isqrt` (``math.isqrt``), exact for every input.

    The classic restoring digit-by-digit method: each step brings down the next two bits of
    ``v`` into the partial remainder ``rem``, and sets the next root bit when
    ``rem >= 4 * root + 1`` (subtracting it). A cycle chains ``steps`` of them; the first
    cycle runs in the cycle of the input transfer, on the input itself, and takes the steps
    left over (``width // 2`` modulo ``steps``, or ``steps``).

    Parameters
    ----------
    width : int
        Width of the operand, a positive even number; the root has ``width // 2`` bits.
    steps : int
        Root bits per cycle (default 1): 2 halves the latency and chains two compares and
        subtractions in a cycle.

    Latency: :attr:`latency` = ``ceil(width / 2 / steps)``: ``out.valid`` rises that many
    cycles after the cycle of the ``inp`` transfer (16 for ``width=32``, 8 with ``steps=2``).
    Throughput: one root per ``latency + 1`` cycles at full rate: ``inp.ready`` is high only
    while the block is empty, and it is empty again in the cycle after the ``out`` transfer.

    Members
    -------
    inp : In(stream.Signature(unsigned(width)))
        Operands.
    out : Out(stream.Signature(unsigned(width // 2)))
        Roots, in order.
    """

    def __init__(self, *, width=32, steps=1):
        if not isinstance(width, int) or width <= 0 or width % 2:
            raise TypeError(f"width must be a positive even integer, not {width!r}")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise TypeError(f"steps must be a positive integer, not {steps!r}")
        self._width = width
        self._steps = steps
        super().__init__({
            "inp": In(stream.Signature(unsigned(width))),
            "out": Out(stream.Signature(unsigned(width // 2))),
        })

    @property
    def width(self):
        return self._width

    @property
    def steps(self):
        return self._steps

    @staticmethod
    def cycles(width, steps=1):
        """The :attr:`latency` of an ``Isqrt(width=width, steps=steps)``, without making one
        (for the latency formulas of the blocks that use it)."""
        return -(-(width // 2) // steps)

    @property
    def latency(self):
        """Cycles from the ``inp`` transfer to ``out.valid``."""
        return self.cycles(self._width, self._steps)

    def elaborate(self, platform):
        m = Module()
        half = self._width // 2

        cycles = self.latency
        first = half - (cycles - 1) * self._steps     # steps of the input's cycle

        operand = Signal(self._width)           # bits not yet brought down, top first
        root = Signal(half)
        rem = Signal(half + 2)                  # rem <= 2 * root < 2**(half + 1)
        todo = Signal(range(cycles))            # cycles left after the current one
        busy = Signal()

        def step(bits, root, rem):
            """One digit: the next (root, rem) after bringing down two more bits."""
            cur = Cat(bits, rem)                # 4 * rem + bits
            trial = Cat(Const(1, 2), root)      # 4 * root + 1
            fits = cur >= trial
            return Cat(fits, root)[:half], Mux(fits, cur - trial, cur)[:half + 2]

        def steps(operand, count, root, rem):
            """``count`` digits from the top ``2 count`` bits of ``operand``, in one cycle."""
            for j in range(count):
                top = len(operand) - 2 * j
                root, rem = step(operand[top - 2:top], root, rem)
            return root, rem

        m.d.comb += [
            self.inp.ready.eq(~busy & ~self.out.valid),
            self.out.payload.eq(root),
        ]

        with m.If(self.inp.valid & self.inp.ready):
            first_root, first_rem = steps(self.inp.payload, first, Const(0, half),
                                          Const(0, half + 2))
            m.d.sync += [
                operand.eq(self.inp.payload << 2 * first),
                root.eq(first_root),
                rem.eq(first_rem),
                todo.eq(cycles - 1),
            ]
            if cycles == 1:
                m.d.sync += self.out.valid.eq(1)
            else:
                m.d.sync += busy.eq(1)
        with m.Elif(busy):
            next_root, next_rem = steps(operand, self._steps, root, rem)
            m.d.sync += [
                operand.eq(operand << 2 * self._steps),
                root.eq(next_root),
                rem.eq(next_rem),
                todo.eq(todo - 1),
            ]
            with m.If(todo == 1):
                m.d.sync += [busy.eq(0), self.out.valid.eq(1)]
        with m.If(self.out.valid & self.out.ready):
            m.d.sync += self.out.valid.eq(0)
        return m
