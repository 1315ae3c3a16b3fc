# amaranth: UnusedElaboratable=no
"""Formal checks (bounded model checking with SymbiYosys from PyPI) of the stream rules of every
hardware block, and of vector accounting where a block buffers whole vectors.

The harness is :mod:`mmfree.sim.formal`; the first tests prove that it catches violations on
deliberately broken toy components (expected failures, asserted), the rest check the blocks of
hw/ in small configurations."""

import importlib

import pytest
from amaranth.hdl import Assert, Assume, Fragment, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.sim.formal import (FormalFailure, FormalTop, conservation, run_bmc, stream_ports,
                               stream_rules)

pytestmark = pytest.mark.formal

ELEMENT = data.StructLayout({"data": signed(8), "first": 1, "last": 1})


# --- toy components ------------------------------------------------------------------------

class _Toy(wiring.Component):
    def __init__(self):
        super().__init__({
            "inp": In(stream.Signature(ELEMENT)),
            "out": Out(stream.Signature(ELEMENT)),
        })


class PassThrough(_Toy):
    """Correct only because the environment obeys the rules on ``inp`` (the assumptions)."""

    def elaborate(self, platform):
        m = Module()
        wiring.connect(m, wiring.flipped(self.inp), wiring.flipped(self.out))
        return m


class RegisterSlice(_Toy):
    """A correct one-entry buffer: accepts when empty or when the entry leaves."""

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.inp.ready.eq(~self.out.valid | self.out.ready)
        with m.If(self.inp.ready):
            m.d.sync += [self.out.valid.eq(self.inp.valid), self.out.payload.eq(self.inp.payload)]
        return m


class OverwritingSlice(_Toy):
    """Broken: takes a new word even while the held one is stalled (payload changes)."""

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.inp.ready.eq(1)
        with m.If(self.inp.valid | self.out.ready):
            m.d.sync += [self.out.valid.eq(self.inp.valid), self.out.payload.eq(self.inp.payload)]
        return m


class BlinkingSource(wiring.Component):
    """Broken: valid toggles every cycle whatever ready says."""

    out: Out(stream.Signature(ELEMENT))

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.out.valid.eq(~self.out.valid)
        return m


class Duplicator(_Toy):
    """Follows the stream rules but emits every word twice (a duplicated vector)."""

    def elaborate(self, platform):
        m = Module()
        second = Signal()
        m.d.comb += self.inp.ready.eq(~self.out.valid)
        with m.If(self.out.valid & self.out.ready):
            m.d.sync += second.eq(~second)
            with m.If(second):
                m.d.sync += self.out.valid.eq(0)
        with m.If(self.inp.valid & self.inp.ready):
            m.d.sync += [self.out.valid.eq(1), self.out.payload.eq(self.inp.payload)]
        return m


class Dropper(_Toy):
    """Follows the stream rules but swallows every vector whose first word is negative."""

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.inp.ready.eq(~self.out.valid | self.out.ready)
        with m.If(self.inp.ready):
            m.d.sync += [self.out.valid.eq(self.inp.valid & (self.inp.payload.data >= 0)),
                         self.out.payload.eq(self.inp.payload)]
        return m


def _conserve(m, dut):
    conservation(m, dut.inp, dut.out, drain=3, elements=True)


# --- the harness ---------------------------------------------------------------------------

def test_stream_ports_finds_directions():
    dut = RegisterSlice()
    ports = {name: is_output for name, is_output, _ in stream_ports(dut)}
    assert ports == {"inp": False, "out": True}
    Fragment.get(dut, None)  # elaborated: no UnusedElaboratable warning


@pytest.mark.parametrize("toy", [PassThrough, RegisterSlice], ids=lambda t: t.__name__)
def test_correct_toys_pass(toy, tmp_path):
    result = run_bmc(FormalTop(toy(), _conserve), name=toy.__name__.lower(), depth=12,
                     workdir=tmp_path)
    assert result.depth == 12


@pytest.mark.parametrize("toy, message", [
    (OverwritingSlice, "out: payload changed before the transfer"),
    (BlinkingSource,   "out: valid dropped before the transfer"),
], ids=["overwriting", "blinking"])
def test_broken_stream_rules_caught(toy, message, tmp_path):
    with pytest.raises(FormalFailure, match=message) as info:
        run_bmc(FormalTop(toy()), name="broken", depth=8, workdir=tmp_path)
    assert info.value.trace is not None and info.value.trace.is_file(), str(info.value)
    assert str(info.value.trace) in str(info.value)


@pytest.mark.parametrize("toy, message", [
    (Duplicator, "more (vectors|elements) out than in"),
    (Dropper,    "(a vector is|elements are) missing 3 cycles after the input went quiet"),
], ids=["duplicated", "lost"])
def test_broken_accounting_caught(toy, message, tmp_path):
    with pytest.raises(FormalFailure, match=message):
        run_bmc(FormalTop(toy(), _conserve), name="broken", depth=10, workdir=tmp_path)


def test_environment_is_assumed(tmp_path):
    """Without the assumptions on ``inp`` the pass-through would fail: the rules on inputs are
    assumptions, not free behaviour."""
    def unconstrained(m, dut):
        pass

    class Top(FormalTop):
        def elaborate(self, platform):
            m = Module()
            m.submodules.dut = self.dut
            m.d.comb += Assume(~self.dut.inp.ready | self.dut.inp.ready)
            stream_rules(m, "out", self.dut.out)
            return m

    with pytest.raises(FormalFailure, match="out: "):
        run_bmc(Top(PassThrough(), unconstrained), name="open", depth=6, workdir=tmp_path)


def test_run_bmc_arguments():
    top = FormalTop(PassThrough())
    with pytest.raises(ValueError, match="depth must be a positive integer, not 0"):
        run_bmc(top, name="x", depth=0)
    with pytest.raises(ValueError, match="name must be an identifier, not 'a b'"):
        run_bmc(top, name="a b", depth=1)
    Fragment.get(top, None)  # elaborated: no UnusedElaboratable warning
    with pytest.raises(TypeError, match="dut must be a wiring.Component"):
        FormalTop("not a component")


# --- the blocks ----------------------------------------------------------------------------

def _xorshift_environment(m, dut):
    # load restarts the sequence and drops a pending word (documented); the environment only
    # loads when no word is pending.
    m.d.comb += Assume(~(dut.load & dut.out.valid & ~dut.out.ready))


def _block(module, cls):
    return getattr(importlib.import_module(f"mmfree.hw.{module}"), cls)


def _sampler_environment(m, dut):
    # x0 in range (0: greedy); the PRNG is never reseeded (load must not pulse while a sampled
    # vector is in flight), so only the greedy path produces tokens within the depth.
    m.d.comb += Assume(~dut.load)
    m.d.comb += Assume((dut.x0 == 0) | ((dut.x0 <= -4) & (dut.x0 > -2**16)))


def _shiftmax_environment(m, dut):
    # Preconditions: x0 < 0; a vector ends with last within n_max elements.
    length = Signal(range(dut.n_max), name="length")
    with m.If(dut.inp.valid & dut.inp.ready):
        m.d.sync += length.eq(Mux(dut.inp.payload.last, 0, length + 1))
    m.d.comb += Assume(dut.x0 < 0)
    m.d.comb += Assume(~dut.inp.valid | (length < dut.n_max - 1) | dut.inp.payload.last)


def _ternary_accounting(m, dut):
    # Every row (chunks up to last) produces exactly one sum, within latency + 1 cycles of
    # quiet input with out.ready high (the result FIFO may hold latency + 1 rows). The control
    # does not look at the data, so the data is fixed to keep the solver fast; the stream-rule
    # check (test_block_stream_rules) has it free.
    m.d.comb += Assume((Value.cast(dut.inp.payload.q) == 0) & (dut.inp.payload.w == 0))
    conservation(m, dut.inp, dut.out, drain=dut.latency + 2)


def _shiftmax_accounting(m, dut):
    # Every input vector produces one output vector of the same length; a vector of n_max
    # elements is through 47 - n + 2 * n_max cycles after its last input transfer.
    # Data fixed (the control does not look at it) to keep the solver fast; the stream-rule
    # check (test_block_stream_rules) has it free.
    _shiftmax_environment(m, dut)
    m.d.comb += Assume((dut.x0 == -1) & (dut.inp.payload.data == 0))
    conservation(m, dut.inp, dut.out, drain=47 - dut.n + 2 * dut.n_max + 2, elements=True)


# Stream rules with the data free: (id, module, class, constructor arguments, environment
# assumptions, depth). Each depth reaches the first output transfers.
BLOCKS = [
    ("xorshift32", "xorshift", "Xorshift32", {}, _xorshift_environment, 12),
    ("ternary-l4-n8", "ternary", "TernaryAccumulate", {"lanes": 4, "n": 8}, None, 10),
    ("serial-divider-4", "divider", "SerialDivider", {"num_width": 4, "den_width": 4}, None, 12),
    ("serial-divider-6-q3", "divider", "SerialDivider",
     {"num_width": 6, "den_width": 4, "quotient_width": 3}, None, 10),
    ("pipelined-divider-4", "divider", "PipelinedDivider",
     {"num_width": 4, "den_width": 4, "quot_width": 4}, None, 10),
    ("requantizer-8-4", "requantizer", "Requantizer", {"acc_width": 8, "out_bits": 4}, None, 8),
    ("isqrt-8", "isqrt", "Isqrt", {"width": 8}, None, 10),
    ("shiftmax-n2", "shiftmax", "Shiftmax", {"n_max": 2, "in_width": 8, "n": 30},
     _shiftmax_environment, 26),
    ("sampler-v2", "sampler", "Sampler", {"vocab": 2, "logit_width": 4}, _sampler_environment,
     10),
]

# No vector lost or duplicated (plus the stream rules, with the data fixed): the depths cover
# one full vector of the small configuration and its drain.
ACCOUNTING = [
    ("ternary-l4-n8", "ternary", "TernaryAccumulate", {"lanes": 4, "n": 8},
     _ternary_accounting, 12),
    ("shiftmax-n2", "shiftmax", "Shiftmax", {"n_max": 2, "in_width": 8, "n": 30},
     _shiftmax_accounting, 28),
]


@pytest.mark.parametrize("module, cls, kwargs, properties, depth",
                         [b[1:] for b in BLOCKS], ids=[b[0] for b in BLOCKS])
def test_block_stream_rules(module, cls, kwargs, properties, depth, tmp_path):
    dut = _block(module, cls)(**kwargs)
    assert stream_ports(dut), f"{cls} has no stream ports"
    run_bmc(FormalTop(dut, properties), name=cls.lower(), depth=depth, workdir=tmp_path)


@pytest.mark.parametrize("module, cls, kwargs, properties, depth",
                         [b[1:] for b in ACCOUNTING], ids=[b[0] for b in ACCOUNTING])
def test_block_vector_accounting(module, cls, kwargs, properties, depth, tmp_path):
    dut = _block(module, cls)(**kwargs)
    run_bmc(FormalTop(dut, properties), name=cls.lower(), depth=depth, workdir=tmp_path,
            timeout=240)


# --- unbounded proofs (k-induction) --------------------------------------------------------

@pytest.mark.parametrize("toy, message", [
    (OverwritingSlice, "out: payload changed before the transfer"),
    (BlinkingSource,   "out: valid dropped before the transfer"),
], ids=["overwriting", "blinking"])
def test_prove_mode_catches_broken_stream_rules(toy, message, tmp_path):
    with pytest.raises(FormalFailure, match=message):
        run_bmc(FormalTop(toy()), name="broken", depth=4, workdir=tmp_path, mode="prove")


def test_prove_mode_passes_correct_toy(tmp_path):
    result = run_bmc(FormalTop(RegisterSlice()), name="slice", depth=2, workdir=tmp_path,
                     mode="prove")
    assert result.depth == 2


def test_run_bmc_mode_argument():
    top = FormalTop(PassThrough())
    with pytest.raises(ValueError, match="mode must be 'bmc' or 'prove', not 'cover'"):
        run_bmc(top, name="x", depth=1, mode="cover")
    Fragment.get(top, None)  # elaborated: no UnusedElaboratable warning


def _emit_probe(module, cls, **kwargs):
    """A block whose output stream is valid exactly in its FSM state ``EMIT``, made to also
    drive ``emitting`` (that state, read from the elaborated fragment; the block itself is
    unchanged)."""
    base = _block(module, cls)

    class Probe(base):
        def __init__(self):
            super().__init__(**kwargs)
            self.emitting = Signal(name="emitting")

        def elaborate(self, platform):
            fragment = Fragment.get(super().elaborate(platform), platform)
            m = Module()
            m.submodules.core = fragment
            m.d.comb += self.emitting.eq(fragment.generated["fsm"].ongoing("EMIT"))
            return m

    return Probe()


def _shiftgelu_probe():
    """:class:`~mmfree.hw.shiftgelu.ShiftGELU` (n_max 2, in_width 8, out_bits 8) with
    ``emitting``."""
    return _emit_probe("shiftgelu", "ShiftGELU", n_max=2, in_width=8, out_bits=8)


def _shiftgelu_invariant(m, dut):
    # Auxiliary invariant that makes the stream rules inductive: out.valid is high exactly in
    # the FSM state EMIT (it is set on the way DIVIDE -> EMIT and cleared on the transfer that
    # leaves EMIT).
    m.d.comb += Assert(dut.out.valid == dut.emitting, "out.valid iff the FSM is in EMIT")


def _sampler_invariant(m, dut):
    # token.valid is high exactly in the FSM state EMIT (set on the way IN/SCAN -> EMIT,
    # cleared on the transfer that leaves it); token.payload only changes outside EMIT.
    # x0 in range; the PRNG may be reseeded at any time.
    m.d.comb += Assume((dut.x0 == 0) | ((dut.x0 <= -4) & (dut.x0 > -2**16)))
    m.d.comb += Assert(dut.token.valid == dut.emitting, "token.valid iff the FSM is in EMIT")


# Unbounded proofs of the stream rules (k-induction, sby `mode prove`): (id, factory,
# properties, k). Everything is free (data, side inputs such as frac/eps/out_shift/x0, the
# initial state in the step case) except what FormalTop assumes: no reset after the initial
# state, and the stream rules on the input streams. These blocks have latencies of 27..60+
# cycles, out of reach of BMC from reset with their wide datapaths; induction does not need
# to reach the first output, because their output registers only change when
# ~out.valid | out.ready (the pipelines stall as a whole) or, for ShiftGELU, only in the FSM
# state before EMIT (the auxiliary invariant above, itself proved).
PROOFS = [
    ("sigmoid", lambda: _block("sigmoid", "Sigmoid")(mode="sigmoid"), None, 3),
    ("silu", lambda: _block("sigmoid", "Sigmoid")(mode="silu"), None, 3),
    ("gelu", lambda: _block("sigmoid", "Sigmoid")(mode="gelu"), None, 3),
    ("rmsnorm-n2-32-24", lambda: _block("rmsnorm", "RMSNorm")(n_max=2, in_width=32,
                                                               w_width=24), None, 4),
    ("quantizer-n2-2", lambda: _block("quantizer", "ActivationQuantizer")(n_max=2, in_width=2),
     None, 2),
    ("quantizer-n2-32", lambda: _block("quantizer", "ActivationQuantizer")(n_max=2,
                                                                          in_width=32), None, 2),
    ("shiftgelu-n2-8-8", _shiftgelu_probe, _shiftgelu_invariant, 2),
    ("shiftmax-n2", lambda: _block("shiftmax", "Shiftmax")(n_max=2, in_width=8, n=30),
     _shiftmax_environment, 2),
    ("pipelined-divider-4", lambda: _block("divider", "PipelinedDivider")(
        num_width=4, den_width=4, quot_width=4), None, 2),
    ("requantizer-8-4", lambda: _block("requantizer", "Requantizer")(acc_width=8, out_bits=4),
     None, 2),
    ("sampler-v2", lambda: _emit_probe("sampler", "Sampler", vocab=2, logit_width=4),
     _sampler_invariant, 2),
    ("sampler-v5-24", lambda: _emit_probe("sampler", "Sampler", vocab=5, logit_width=24),
     _sampler_invariant, 2),
]


@pytest.mark.parametrize("factory, properties, k", [p[1:] for p in PROOFS],
                         ids=[p[0] for p in PROOFS])
def test_block_stream_rules_proved(factory, properties, k, tmp_path):
    """The stream rules on every output stream hold in every reachable state (an unbounded
    k-induction proof, not a bounded check), for all data and side inputs, given only that the
    environment obeys the stream rules on the input streams and never asserts reset. It says
    nothing about the values computed or about progress (liveness, vector accounting)."""
    dut = factory()
    assert stream_ports(dut), f"{type(dut).__name__} has no stream ports"
    run_bmc(FormalTop(dut, properties), name="proof", depth=k, workdir=tmp_path, mode="prove",
            timeout=240)


def test_shiftgelu_needs_its_invariant(tmp_path):
    """Without the auxiliary invariant the stream rules of ShiftGELU are not k-inductive for
    small k (an unreachable state with out.valid high outside EMIT breaks them): the step-case
    failure is reported, not taken for a proof."""
    with pytest.raises(FormalFailure, match="induction failed"):
        run_bmc(FormalTop(_shiftgelu_probe()), name="proof", depth=2, workdir=tmp_path,
                mode="prove", timeout=240)
