# amaranth: UnusedElaboratable=no
"""NormQuant (hw/normquant.py): RMSNorm + activation quantizer, ``width`` elements per cycle,
bit-exact with :func:`mmfree.sim.golden.norm_quant` in the Amaranth simulator, with random
gaps on ``inp``/``w`` and back-pressure on ``out``; the cycle count at full rate."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from mmfree.hw.normquant import NormQuant
from mmfree.sim import golden


def _vectors(rng, n, count):
    out = []
    for k in range(count):
        scale = [2**31 - 1, 2**12, 3, 2**20, 1][k % 5]
        x = rng.integers(-scale, scale + 1, n)
        if k % 5 == 2:                       # a lone small element: large normalization shift
            x[:] = 0
            x[int(rng.integers(n))] = 1
        if k % 5 == 4:                       # all zero: ymax 0, q 0
            x[:] = 0
        w = rng.integers(-(2**23) + 1, 2**23, n)
        w_frac = int(rng.integers(0, 24))
        eps = int(rng.integers(1, 2**60))
        out_shift = int(rng.integers(0, 64))
        y = golden.rmsnorm(x, w, w_frac, eps, 0, 30 + w_frac - out_shift)
        q, ymax = golden.norm_quant(x, w, w_frac, eps, 0, 30 + w_frac - out_shift)
        out.append((x, w, eps, out_shift, y, q, ymax))
    return out


def _run(dut, vectors, rng, gaps, quantize=True):
    W = dut.width
    results = []

    async def bench(ctx):
        for x, w, eps, shift, *_ in vectors:
            n = len(x)
            beats = n // W
            ctx.set(dut.eps, eps)
            ctx.set(dut.out_shift, shift)
            ctx.set(dut.quantize, int(quantize))
            cycles = 0
            b = 0
            while b < beats:
                valid = not gaps or rng.random() < 0.7
                ctx.set(dut.inp.payload, {"data": [int(v) for v in x[b * W:(b + 1) * W]],
                                          "last": int(b == beats - 1)})
                ctx.set(dut.inp.valid, int(valid))
                ready = ctx.get(dut.inp.ready)
                await ctx.tick()
                if b or (valid and ready):
                    cycles += 1
                if valid and ready:
                    b += 1
            ctx.set(dut.inp.valid, 0)
            wb, q, y, ymaxes = 0, [], [], set()
            while len(q) < n:
                w_valid = wb < beats and (not gaps or rng.random() < 0.7)
                if wb < beats:
                    ctx.set(dut.w.payload, [int(v) for v in w[wb * W:(wb + 1) * W]])
                ctx.set(dut.w.valid, int(w_valid))
                ready = not gaps or rng.random() < 0.6
                ctx.set(dut.out.ready, int(ready))
                w_take = w_valid and ctx.get(dut.w.ready)
                out_valid = ctx.get(dut.out.valid)
                payload = ctx.get(dut.out.payload)
                await ctx.tick()
                cycles += 1
                wb += int(w_take)
                if out_valid and ready:
                    q += list(payload.q)
                    y += list(payload.y)
                    ymaxes.add(payload.ymax)
                    assert payload.first == (len(q) == W)
                    assert payload.last == (len(q) == n)
            ctx.set(dut.w.valid, 0)
            results.append((np.array(q), np.array(y), ymaxes, cycles))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


@pytest.mark.parametrize("width, n", [(1, 7), (4, 16), (16, 128), (8, 200)],
                         ids=["w1-n7", "w4-n16", "w16-n128", "w8-n200"])
@pytest.mark.parametrize("gaps", [False, True], ids=["full-rate", "gaps"])
def test_normquant_matches_golden(width, n, gaps):
    rng = np.random.default_rng(width * 1000 + n)
    dut = NormQuant(width=width, n_max=n)
    vectors = _vectors(rng, n, 10)
    for (x, w, eps, shift, y, q, ymax), (hq, hy, hmax, cycles) in zip(
            vectors, _run(dut, vectors, rng, gaps)):
        np.testing.assert_array_equal(hy, y)
        np.testing.assert_array_equal(hq, q)
        assert hmax == {ymax}
        if not gaps:
            assert cycles == 3 * (n // width) + NormQuant.LATENCY, cycles


@pytest.mark.parametrize("width, n", [(1, 7), (8, 200)], ids=["w1-n7", "w8-n200"])
@pytest.mark.parametrize("gaps", [False, True], ids=["full-rate", "gaps"])
def test_normquant_without_quantizer(width, n, gaps):
    """``quantize = 0`` (the engine's stand-alone RMSNorms): ``y`` and ``max |y|`` as the
    golden model's, the quantizer's reciprocal left out of the latency."""
    rng = np.random.default_rng(width * 1000 + n + 1)
    dut = NormQuant(width=width, n_max=n)
    vectors = _vectors(rng, n, 10)
    for (x, w, eps, shift, y, q, ymax), (hq, hy, hmax, cycles) in zip(
            vectors, _run(dut, vectors, rng, gaps, quantize=False)):
        np.testing.assert_array_equal(hy, y)
        assert hmax == {ymax}
        if not gaps:
            assert cycles == 3 * (n // width) + NormQuant.LATENCY - NormQuant.QRECIP_CYCLES, \
                cycles


def test_normquant_parameters():
    assert NormQuant(width=8, n_max=64).width == 8
    assert NormQuant(width=8, n_max=64).quantize.init == 1   # q unless told otherwise
    with pytest.raises(ValueError, match="width must be a power of two from 1 to 64, not 3"):
        NormQuant(width=3, n_max=12)
    with pytest.raises(ValueError, match="width must be a power of two from 1 to 64, not 128"):
        NormQuant(width=128, n_max=128)
    with pytest.raises(ValueError, match="n_max must be a positive multiple of width 8, not 20"):
        NormQuant(width=8, n_max=20)


def _run_sum_in(dut, vectors, rng, gaps, quantize=True, reuse=None):
    """As :func:`_run` for ``sum_in``: ``ss`` with the first beat, then the beats of ``inp``
    and ``w`` side by side in pass 2; ``reuse`` (a NormQuant with ``reuse``): the indices of
    the vectors that take the last one's R (``reuse`` high, ``ss`` and ``eps`` garbage)."""
    W = dut.width
    results = []

    async def bench(ctx):
        for k, (x, w, eps, shift, *_) in enumerate(vectors):
            n, beats = len(x), len(x) // W
            ctx.set(dut.eps, eps)
            ctx.set(dut.out_shift, shift)
            ctx.set(dut.quantize, int(quantize))
            if reuse is not None:
                ctx.set(dut.reuse, int(k in reuse))
                if k in reuse:                   # neither is used
                    eps = int(rng.integers(1, 2**60))
                    x = rng.integers(-5, 5, n)
                    ctx.set(dut.eps, eps)
            ctx.set(dut.ss, golden.sum_of_squares(np.asarray(x, dtype=np.int64)))
            x = vectors[k][0]
            xb = wb = cycles = 0
            started = False
            q, y, ymaxes = [], [], set()
            while len(q) < n:
                ss_valid = not gaps or rng.random() < 0.5
                x_valid = xb < beats and (not gaps or rng.random() < 0.7)
                w_valid = wb < beats and (not gaps or rng.random() < 0.7)
                if xb < beats:
                    ctx.set(dut.inp.payload, {"data": [int(v) for v in x[xb * W:(xb + 1) * W]],
                                              "last": int(xb == beats - 1)})
                if wb < beats:
                    ctx.set(dut.w.payload, [int(v) for v in w[wb * W:(wb + 1) * W]])
                ctx.set(dut.ss_valid, int(ss_valid))
                ctx.set(dut.inp.valid, int(x_valid))
                ctx.set(dut.w.valid, int(w_valid))
                ready = not gaps or rng.random() < 0.6
                ctx.set(dut.out.ready, int(ready))
                x_take = x_valid and ctx.get(dut.inp.ready)
                w_take = w_valid and ctx.get(dut.w.ready)
                assert x_take == w_take          # pass 2 takes a beat of each together
                out_valid = ctx.get(dut.out.valid)
                payload = ctx.get(dut.out.payload)
                y_out = ctx.get(dut.y_out)
                await ctx.tick()
                started = started or (x_valid and ss_valid)
                cycles += int(started)
                xb += int(x_take)
                wb += int(w_take)
                if quantize:
                    assert not y_out.valid
                else:                                # y from pass 2, nothing on out
                    assert not out_valid
                    out_valid, ready, payload = y_out.valid, True, y_out
                if out_valid and ready:
                    q += list(payload.q) if quantize else [0] * W
                    y += list(payload.y)
                    if quantize:
                        ymaxes.add(payload.ymax)
                    assert payload.first == (len(q) == W)
                    assert payload.last == (len(q) == n)
            ctx.set(dut.inp.valid, 0)
            ctx.set(dut.w.valid, 0)
            ctx.set(dut.ss_valid, 0)
            results.append((np.array(q), np.array(y), ymaxes, cycles))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


@pytest.mark.parametrize("width, n", [(1, 7), (4, 16), (8, 200)],
                         ids=["w1-n7", "w4-n16", "w8-n200"])
@pytest.mark.parametrize("quantize", [True, False], ids=["quantize", "norm"])
@pytest.mark.parametrize("gaps", [False, True], ids=["full-rate", "gaps"])
def test_normquant_sum_in(width, n, quantize, gaps):
    """``sum_in`` (the engine's NormQuant): the sum of squares given on ``ss``, no pass 1;
    ``y``, ``q`` and ``max |y|`` as the golden model's, ``2 B`` passes plus the fixed latency;
    with ``quantize = 0``, ``y`` on ``y_out`` from pass 2 (one pass)."""
    rng = np.random.default_rng(width * 1000 + n + 2)
    dut = NormQuant(width=width, n_max=n, sum_in=True)
    vectors = _vectors(rng, n, 10)
    for k, ((x, w, eps, shift, y, q, ymax), (hq, hy, hmax, cycles)) in enumerate(zip(
            vectors, _run_sum_in(dut, vectors, rng, gaps, quantize))):
        np.testing.assert_array_equal(hy, y)
        if quantize:
            np.testing.assert_array_equal(hq, q)
            assert hmax == {ymax}
            if not gaps:
                assert cycles == 2 * (n // width) + NormQuant.LATENCY_SUM_IN, cycles
        elif not gaps and k == 0:
            # (a later vector, offered at once, also waits for pass 2 to drain)
            assert cycles == n // width + NormQuant.LATENCY_Y_OUT, cycles


@pytest.mark.parametrize("width, n", [(1, 7), (4, 16), (8, 200)],
                         ids=["w1-n7", "w4-n16", "w8-n200"])
@pytest.mark.parametrize("gaps", [False, True], ids=["full-rate", "gaps"])
def test_normquant_reuse(width, n, gaps):
    """``reuse`` (the i, f and g BitLinears of a layer): a vector normalized with the R of the
    one before, whose sum and eps are its own; its own weights, out_shift and quantizer, as
    the golden model's, in ``2 B + LATENCY_REUSE`` cycles (no square root or reciprocal)."""
    rng = np.random.default_rng(width * 1000 + n + 3)
    dut = NormQuant(width=width, n_max=n, sum_in=True, reuse=True)
    vectors, reuse = [], set()
    for x, *_ in _vectors(rng, n, 6):
        eps = int(rng.integers(1, 2**60))
        for k in range(3):                       # one vector, three weights and shifts
            w = rng.integers(-(2**23) + 1, 2**23, n)
            w_frac, shift = int(rng.integers(0, 24)), int(rng.integers(0, 64))
            f_out = 30 + w_frac - shift
            q, ymax = golden.norm_quant(x, w, w_frac, eps, 0, f_out)
            if k:
                reuse.add(len(vectors))
            vectors.append((x, w, eps, shift, golden.rmsnorm(x, w, w_frac, eps, 0, f_out),
                            q, ymax))
    for k, ((x, w, eps, shift, y, q, ymax), (hq, hy, hmax, cycles)) in enumerate(zip(
            vectors, _run_sum_in(dut, vectors, rng, gaps, reuse=reuse))):
        np.testing.assert_array_equal(hy, y)
        np.testing.assert_array_equal(hq, q)
        assert hmax == {ymax}
        if not gaps:
            latency = NormQuant.LATENCY_REUSE if k in reuse else NormQuant.LATENCY_SUM_IN
            assert cycles == 2 * (n // width) + latency, (k, cycles)
