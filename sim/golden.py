"""Bit-exact integer model of the MatMul-free LM decode step: the hardware's specification.

Every function here is integer-only (``np.int64`` intermediates or Python ints) once the host has
prepared constants (:class:`IntModel`). docs/numerics.md documents every number format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MASK32 = 0xFFFF_FFFF
XORSHIFT_DEFAULT_STATE = 0x2545_F491


def xorshift32_seed(seed: int) -> int:
    """The PRNG state for a user seed: ``seed mod 2**32``, or 0x2545F491 if that is zero
    (xorshift's all-zero state is a fixed point)."""
    state = int(seed) & MASK32
    return state if state != 0 else XORSHIFT_DEFAULT_STATE


def xorshift32(state: int) -> int:
    """Marsaglia's xorshift32 (shifts 13, 17, 5): the next state, which is also the output."""
    assert 0 < state <= MASK32, state
    state ^= (state << 13) & MASK32
    state ^= state >> 17
    state ^= (state << 5) & MASK32
    return state


# --------------------------------------------------------------------------------------------
# Number formats (docs/numerics.md explains each choice). "F" is a count of fraction bits: an
# integer v of format F stands for v * 2**-F.

X_BITS = 32        # residual stream x (format F_x chosen per model from the embeddings)
NORM_BITS = 32     # RMSNorm outputs (a, y): format F_NORM
F_NORM = 20
ACT_BITS = 32      # i, f, g, gate, up, SiLU/GELU outputs, h, o, GLU product: each with its
ACT_HEADROOM = 30  # own format, chosen by the host so that a worst-case bound stays < 2**30
F_GATE = 20        # sigmoid outputs and lower bounds: unsigned, 1.0 == 2**20
EXP_FRAC = 16      # fraction bits of the sigmoid core's log2 (two 8-bit table indices)
EXP_BITS = 20      # the exp tables' scale: 1.0 == 2**20
LOGIT_BITS = 24
F_LOGIT = 8        # logits
NORM_W_BITS = 24   # signed width of norm weights (per-vector exponent)
MANT_BITS = 15     # dyadic multipliers: mantissa in [2**14, 2**15)
EXP_N = 20         # range of the sigmoid core's exp: down to 2**-20
SAMPLER_N = 15     # shift-exp range of the sampler's Shiftmax
SAMPLER_BITS = 16  # output bits of the sampler's Shiftmax
SHIFTMAX_N = 15    # I-ViT's n for Shiftmax
SHIFTGELU_N = 23   # I-ViT's n for ShiftGELU
GELU_ALPHA = 1.702
INT31_MAX = (1 << 31) - 1


def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def shift_round(v, s: int):
    """``v * 2**-s`` rounded half up (add half, arithmetic shift); ``s <= 0`` shifts left."""
    if s <= 0:
        return v << (-s)
    return (v + (1 << (s - 1))) >> s


def saturate(v, bits: int):
    """Clamp to the signed ``bits``-bit range."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if isinstance(v, (int, np.integer)):
        return min(max(int(v), lo), hi)
    return np.minimum(np.maximum(v, lo), hi)


def isqrt(n: int) -> int:
    """Exact ``floor(sqrt(n))`` for ``0 <= n < 2**64`` (digit by digit in hardware)."""
    assert 0 <= n < (1 << 64), n
    return math.isqrt(int(n))


def dyadic(value: float, bits: int = MANT_BITS) -> tuple[int, int]:
    """Host side: ``value ~ m * 2**-k`` with ``2**(bits-1) <= m < 2**bits`` (value > 0)."""
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"dyadic scale must be positive and finite, not {value!r}")
    _, exponent = math.frexp(value)           # value = f * 2**exponent, 0.5 <= f < 1
    k = bits - exponent
    m = round(math.ldexp(value, k))
    if m >= (1 << bits):                      # f rounded up to 1.0
        k -= 1
        m = round(math.ldexp(value, k))
    assert (1 << (bits - 1)) <= m < (1 << bits), (value, m, k)
    return m, k


# --------------------------------------------------------------------------------------------
# Blocks. Each function is the specification of the hardware block of the same name.

def rmsnorm(x: np.ndarray, w: np.ndarray, w_frac: int, eps: int, f_in: int, f_out: int
            ) -> np.ndarray:
    """Integer RMSNorm: ``y = x / rms(x) * w`` from format ``f_in`` to ``f_out``.

    ``x`` is up to 32 bits wide. ``w`` holds the norm weight times ``sqrt(n)`` (the host folds
    the mean's ``1/n`` into it), ``|w| < 2**23``, format ``w_frac``;
    ``eps = round(n * eps_real * 2**(2*f_in))`` (>= 1).
    1. ``ss = sum(x*x) + eps`` (exact, up to 76 bits);
    2. normalize with an even shift ``e`` so that ``s2 = ss * 2**-e`` lies in [2**30, 2**32);
    3. ``r = isqrt(s2)`` in [2**15, 2**16) and ``R = 2**31 // r`` in (2**15, 2**16];
    4. ``t = shift_round(x * R, 1 + e/2)``: ``x / sqrt(ss)`` in Q30 (|t| <= 2**30);
    5. ``y = shift_round(t * w, 30 + w_frac - f_out)``, saturated to NORM_BITS.
    """
    x = _i64(x)
    assert x.ndim == 1 and w.shape == x.shape, (x.shape, w.shape)
    assert np.all(np.abs(x) <= (1 << 31)), "rmsnorm input exceeds 32 bits"
    assert eps >= 1
    ss = sum_of_squares(x) + eps
    b = ss.bit_length()
    e = (b - 32) + ((b - 32) & 1)
    s2 = ss >> e if e >= 0 else ss << -e
    r = isqrt(s2)
    assert (1 << 15) <= r < (1 << 16), r
    big_r = (1 << 31) // r
    t = shift_round(x * big_r, 1 + e // 2)
    return saturate(shift_round(t * _i64(w), 30 + w_frac - f_out), NORM_BITS)


def norm_quant(x: np.ndarray, w: np.ndarray, w_frac: int, eps: int, f_in: int, f_out: int
               ) -> tuple[np.ndarray, int]:
    """:func:`rmsnorm` followed by :func:`activation_quant`: the input stage of a BitLinear,
    ``(q int8, ymax)`` (one block in hardware, :class:`mmfree.hw.normquant.NormQuant`)."""
    return activation_quant(rmsnorm(x, w, w_frac, eps, f_in, f_out))


def sum_of_squares(x: np.ndarray) -> int:
    """Exact ``sum(x*x)`` of 32-bit integers as a Python int (int64 halves: x = hi*2**16 + lo)."""
    hi, lo = x >> 16, x & 0xFFFF
    return (int(np.sum(hi * hi)) << 32) + (int(np.sum(hi * lo)) << 17) + int(np.sum(lo * lo))


def activation_quant(y: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-token absmax int8: ``q = round_half_away(127 * y / max|y|)``, exactly.

    ``ymax = max|y|``; ``|q| = (254 * |y| + ymax) // (2 * ymax)`` with the sign of y, so
    ``|q| <= 127``. The hardware gets there with one reciprocal per token and one correction
    per element: ``nb = bitlen(ymax)``, ``Q = (127 << (nb + 15)) // ymax`` (23 bits),
    ``e = (|y| * Q + 2**(nb+14)) >> (nb + 15)`` is the answer or one less, and
    ``254 * |y| >= (2e + 1) * ymax`` decides which. Returns (q int8, ymax); an all-zero vector
    gives q = 0 and ymax = 0.
    """
    y = _i64(y)
    mag = np.abs(y)
    ymax = int(mag.max()) if mag.size else 0
    if ymax == 0:
        return np.zeros(y.shape, dtype=np.int8), 0
    assert ymax <= (1 << (NORM_BITS - 1)), ymax
    q = (254 * mag + ymax) // (2 * ymax)
    return np.where(y < 0, -q, q).astype(np.int8), ymax


def ternary_accumulate(t: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``acc_i = sum_j T_ij * q_j``: int8 activations times ternary weights, exact.
    With ``|q| <= 127`` (the quantizer never makes -128), ``|acc| <= 127 * n`` fits
    :func:`accumulator_bits` bits.

    ``t`` may also be the float32 copy of a ternary matrix (:class:`BitLinearConst` keeps one):
    every partial sum is an integer below 2**24, so float32 BLAS is exact and much faster."""
    assert t.shape[1] == q.shape[0] and q.dtype == np.int8
    if t.dtype == np.float32:
        assert 128 * t.shape[1] < (1 << 24)
        return (t @ q.astype(np.float32)).astype(np.int64)
    assert t.dtype == np.int8
    return t.astype(np.int64) @ q.astype(np.int64)


def accumulator_bits(n: int) -> int:
    """Signed accumulator width for an input length n: ``|acc| <= 127 * n`` (18 bits for
    n = 1024, 21 for 6912, as MODEL.md counts)."""
    return (127 * n).bit_length() + 1


def requantize(acc: np.ndarray, ymax: int, m: int, k: int, bits: int) -> np.ndarray:
    """Dyadic requantization of a BitLinear result to ``bits`` (saturating).

    The per-token factor is ``ymax`` (the activation quantizer's max, i.e. 127 / s in integer
    units); ``m * 2**-k`` is the host's dyadic form of ``gamma * 2**(f_out - F_NORM) / 127``.
    ``ymax`` is first rounded to 23 significant bits, ``ys = shift_round(ymax, s)`` with
    ``s = max(0, bitlen(ymax) - 23)``; then ``out = shift_round(acc * (ys * m), k - s)``.
    ``|acc * ys * m| < 2**21 * 2**23 * 2**15 = 2**59``.
    """
    assert k >= 1 and 0 < m < (1 << MANT_BITS)
    s = max(0, ymax.bit_length() - 23)
    assert k - s >= 1
    return saturate(shift_round(_i64(acc) * (shift_round(ymax, s) * m), k - s), bits)


def shift_exp(x: np.ndarray, x0: int, n: int) -> np.ndarray:
    """I-ViT's integer exp for ``x <= 0`` of scale S, ``x0 = floor(-1/S)``: ``e * S / 2**n``
    approximates ``exp(x * S)`` (MODEL.md), for ``x * S >= -n * ln 2`` (clamped below that):
    ``p = x + (x >> 1) - (x >> 4)``; ``p = max(p, n * x0)``; ``q = p // x0``;
    ``r = p - q * x0``; ``e = ((r >> 1) - x0) << (n - q)``."""
    x = _i64(x)
    assert x0 < 0 and np.all(x <= 0)
    p = x + (x >> 1) - (x >> 4)
    p = np.maximum(p, n * x0)
    q = p // x0
    r = p - q * x0
    return ((r >> 1) - x0) << (n - q)


def _exp_tables() -> tuple[np.ndarray, np.ndarray]:
    """The sigmoid core's fraction tables (256 x 21 bits each):
    ``EXP_HI[a] = round(2**20 * 2**(-a / 2**8))`` and ``EXP_LO[b] = round(2**20 * 2**(-b / 2**16))``,
    so ``2**(-j / 2**16) ~ EXP_HI[j >> 8] * EXP_LO[j & 255] / 2**40``."""
    a = np.arange(256, dtype=np.float64)
    hi = np.round(2.0**EXP_BITS * np.exp2(-a / 2**8)).astype(np.int64)
    lo = np.round(2.0**EXP_BITS * np.exp2(-a / 2**16)).astype(np.int64)
    return hi, lo


EXP_HI, EXP_LO = _exp_tables()
EXP_ONE = 1 << (EXP_BITS + EXP_N)          # exp_core(0)


def exp_core(v: np.ndarray, frac: int, m: int, k: int) -> np.ndarray:
    """The model's shift-exp: ``e ~ 2**(EXP_BITS + EXP_N) * exp(alpha * v * 2**-frac)``, v <= 0.

    ``m * 2**-k`` is the host's dyadic ``alpha * log2(e)`` (24-bit mantissa).
    ``p = shift_round(-v * m, k + frac - EXP_FRAC)`` is the result's -log2 in format EXP_FRAC,
    clamped to ``EXP_N << EXP_FRAC``. Its integer part ``q`` is a right shift (I-ViT's
    shift-exp); its fraction ``j`` gives ``2**(-j / 2**16)`` from two 256-entry tables and one
    multiply, ``t = shift_round(EXP_HI[j >> 8] * EXP_LO[j & 255], EXP_BITS)``, instead of
    I-ViT's linear ``1 + r/2`` (which is off by up to 6%). ``e = (t << EXP_N) >> q``.
    """
    v = _i64(v)
    assert np.all(v <= 0) and k + frac - EXP_FRAC >= 1
    p = np.minimum(shift_round(-v * m, k + frac - EXP_FRAC), EXP_N << EXP_FRAC)
    q = p >> EXP_FRAC
    j = p & ((1 << EXP_FRAC) - 1)
    t = shift_round(EXP_HI[j >> 8] * EXP_LO[j & 255], EXP_BITS)
    return (t << EXP_N) >> q


LOG2E = dyadic(math.log2(math.e), 24)                   # alpha = 1
GELU_LOG2E = dyadic(GELU_ALPHA * math.log2(math.e), 24)  # alpha = 1.702


def sigmoid(x: np.ndarray, frac: int, alpha: tuple[int, int] = LOG2E, out_frac: int = F_GATE
            ) -> np.ndarray:
    """Integer ``sigmoid(alpha * x)`` for 32-bit x of format ``frac``; output format
    ``out_frac`` (unsigned, 1.0 == 2**out_frac).

    I-ViT's form ``e1 / (e1 + e2)`` with ``m = max(x, 0)``: one of ``e1 = exp(x - m)``,
    ``e2 = exp(-m)`` is always ``exp(0) = EXP_ONE``, the other ``E = exp_core(-|x|)``; then one
    exact division per element, ``((x >= 0 ? EXP_ONE : E) << out_frac) // (EXP_ONE + E)``.
    ``alpha`` is the dyadic ``alpha * log2(e)``: :data:`LOG2E` or :data:`GELU_LOG2E`."""
    x = _i64(x)
    e = exp_core(-np.abs(x), frac, *alpha)
    num = np.where(x >= 0, EXP_ONE, e)
    return (num << out_frac) // (EXP_ONE + e)


def silu(x: np.ndarray, frac: int) -> np.ndarray:
    """``x * sigmoid(x)`` for 32-bit x of format ``frac``; same format out."""
    x = _i64(x)
    return saturate(shift_round(x * sigmoid(x, frac), F_GATE), ACT_BITS)


def gelu(x: np.ndarray, frac: int) -> np.ndarray:
    """ShiftGELU on the sigmoid core: ``x * sigmoid(1.702 x)``; same format out."""
    x = _i64(x)
    return saturate(shift_round(x * sigmoid(x, frac, GELU_LOG2E), F_GATE), ACT_BITS)


# --------------------------------------------------------------------------------------------
# I-ViT's Shiftmax and ShiftGELU (public API).

def _shiftmax_x0(x_int: np.ndarray, x0: int, n: int, out_bits: int) -> np.ndarray:
    x = _i64(x_int)
    assert -x0 < (1 << (31 - n)), "shift-exp output would not fit 31 bits; scale too small"
    e = shift_exp(x - x.max(axis=-1, keepdims=True), x0, n)
    total = np.minimum(e.sum(axis=-1, keepdims=True), INT31_MAX)
    factor = INT31_MAX // total
    return (e * factor) >> (31 - out_bits + 1)


def shiftmax(x_int: np.ndarray, scale: float, out_bits: int = 8) -> np.ndarray:
    """I-ViT Shiftmax over the last axis of integers ``x_int`` of real scale ``scale``.

    Subtract the row max, shift-exp (n = 15, ``x0 = floor(-1/scale)``), sum (clamped to
    2**31 - 1), ``factor = (2**31 - 1) // sum``, ``out = (e * factor) >> (31 - out_bits + 1)``.
    Returns integers of scale ``2**-(out_bits-1)`` (np.int64).
    """
    if not 2 <= out_bits <= 24:
        raise ValueError(f"out_bits must be in 2..24, not {out_bits}")
    return _shiftmax_x0(x_int, math.floor(-1.0 / scale), SHIFTMAX_N, out_bits)


def shiftgelu(x_int: np.ndarray, scale: float, out_bits: int = 8) -> tuple[np.ndarray, float]:
    """I-ViT ShiftGELU over the last axis: ``x * sigmoid(1.702 x)`` with the sigmoid as
    ``e1 / (e1 + e2)``, ``e1 = shift_exp(x - m)``, ``e2 = shift_exp(-m)`` (n = 23, 1.702 folded
    into ``x0 = floor(-1 / (1.702 * scale))``), ``factor = (2**31 - 1) // (e1 + e2)`` and an
    ``out_bits`` sigmoid ``(e1 * factor) >> (31 - out_bits + 1)``, times ``x_int``.

    Deliberate deviation: ``m = max(row max, 0)`` instead of the row max, so both shift-exp
    inputs stay <= 0 (mathematically the sigmoid is the same for any m; I-ViT's n = 23 clamp
    makes it 1/2 for elements far below a large row max, in I-ViT and here alike).
    Returns (integers, their scale).
    """
    if not 2 <= out_bits <= 24:
        raise ValueError(f"out_bits must be in 2..24, not {out_bits}")
    x = _i64(x_int)
    x0 = math.floor(-1.0 / (scale * GELU_ALPHA))
    n = SHIFTGELU_N
    assert -x0 < (1 << (31 - n - 1)), "ShiftGELU needs scale > 1/(1.702 * 128); scale too small"
    m = np.maximum(x.max(axis=-1, keepdims=True), 0)
    e1 = shift_exp(x - m, x0, n)
    e2 = shift_exp(-m, x0, n)
    total = np.minimum(e1 + e2, INT31_MAX)
    factor = INT31_MAX // total
    sig = (e1 * factor) >> (31 - out_bits + 1)
    return x * sig, scale / 2.0**(out_bits - 1)


# --------------------------------------------------------------------------------------------
# Sampler.

def argmax(logits: np.ndarray) -> int:
    """Greedy: index of the first maximum."""
    return int(np.argmax(_i64(logits)))


MIN_TEMPERATURE = 2.0**-6   # keeps -x0 >= 4, so the largest probability is never rounded to 0


def sampler_x0(temperature: float) -> int:
    """Host constant of the sampler's Shiftmax at a temperature: the logits' scale divided by
    the temperature, ``x0 = floor(-temperature * 2**F_LOGIT)``."""
    if not (math.isfinite(temperature) and temperature >= MIN_TEMPERATURE):
        raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, "
                         f"not {temperature}")
    if temperature > 64:
        raise ValueError(f"temperature must be at most 64, not {temperature}")
    return math.floor(-temperature * (1 << F_LOGIT))


def sample(logits: np.ndarray, x0: int, draw: int) -> int:
    """Temperature sampling: ``p = Shiftmax(logits)`` (n = 15, 16-bit output), ``total =
    sum(p)``, ``r = (draw * total) >> 32`` for a 32-bit PRNG draw, token = first i with
    ``cumsum(p)[i] > r``."""
    p = _shiftmax_x0(_i64(logits), x0, SAMPLER_N, SAMPLER_BITS)
    c = np.cumsum(p)
    r = (int(draw) * int(c[-1])) >> 32
    return int(np.searchsorted(c, r, side="right"))


# --------------------------------------------------------------------------------------------
# Host preparation: every constant the integer model (and the hardware) needs, from a Model.

@dataclass(frozen=True)
class NormConst:
    """Constants of one integer RMSNorm (see :func:`rmsnorm`)."""
    w: np.ndarray      # int64 [n]: round(weight * sqrt(n) * 2**w_frac), |w| < 2**23
    w_frac: int
    eps: int           # round(n * eps * 2**(2 * f_in)), at least 1
    f_in: int
    f_out: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return rmsnorm(x, self.w, self.w_frac, self.eps, self.f_in, self.f_out)


@dataclass(frozen=True)
class BitLinearConst:
    """A BitLinear in integer form: inner RMSNorm, activation quantizer, ternary accumulate,
    dyadic requantization to ``f_out``."""
    T: np.ndarray      # int8 [out, in]
    norm: NormConst    # f_in -> F_NORM
    m: int             # gamma * 2**(f_out - F_NORM) / 127 ~ m * 2**-k
    k: int
    f_out: int
    bits: int          # output width (saturation)

    def __post_init__(self):
        exact_in_float = 128 * self.T.shape[1] < (1 << 24)
        object.__setattr__(self, "_t", self.T.astype(np.float32) if exact_in_float else self.T)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        q, ymax = activation_quant(self.norm(v))
        return requantize(ternary_accumulate(self._t, q), ymax, self.m, self.k, self.bits)


@dataclass(frozen=True)
class LayerConst:
    attn_norm: NormConst
    i_proj: BitLinearConst     # f_out = f_i, which is also the format of SiLU(i), c and h
    f_proj: BitLinearConst
    g_proj: BitLinearConst
    o_proj: BitLinearConst
    g_norm: NormConst
    mlp_norm: NormConst
    gate_proj: BitLinearConst  # f_out = f_gu for both gate and up
    down_proj: BitLinearConst
    lb: np.ndarray | None      # int64 [d], format F_GATE; None for layer 0 (no lower bound)
    f_o: int                   # format of o = RMSNorm(g) * SiLU(h)
    f_p: int                   # format of the GLU product act(gate) * up


@dataclass(frozen=True)
class IntModel:
    """A model prepared for integer inference: the hardware's constants."""
    config: object
    f_x: int                   # residual format, chosen from the embedding range
    emb_q: np.ndarray          # int8 [V, d]
    emb_m: np.ndarray          # int64 [V]: per-row multiplier, x = shift_round(q * m, emb_k)
    emb_k: int
    layers: list
    norm: NormConst
    lm_head: BitLinearConst


def quantize_norm_weight(weight: np.ndarray) -> tuple[np.ndarray, int]:
    """``weight * sqrt(n)`` as a 24-bit integer with the largest exponent that keeps
    |w| < 2**23."""
    w = np.asarray(weight, dtype=np.float64) * math.sqrt(len(weight))
    wmax = float(np.max(np.abs(w)))
    if wmax == 0:
        return np.zeros(len(w), dtype=np.int64), 0
    frac = math.floor(math.log2(((1 << (NORM_W_BITS - 1)) - 1) / wmax))
    wi = np.round(w * 2.0**frac).astype(np.int64)
    while np.max(np.abs(wi)) >= (1 << (NORM_W_BITS - 1)):   # log2 rounding at the edge
        frac -= 1
        wi = np.round(w * 2.0**frac).astype(np.int64)
    return wi, frac


def prepare_norm(weight: np.ndarray, eps: float, f_in: int, f_out: int) -> NormConst:
    w, frac = quantize_norm_weight(weight)
    eps_int = max(1, round(len(weight) * eps * 2.0**(2 * f_in)))
    if eps_int >= (1 << 60):
        raise ValueError(f"format {f_in} too fine for an RMSNorm epsilon of {eps}")
    return NormConst(w=w, w_frac=frac, eps=eps_int, f_in=f_in, f_out=f_out)


def act_format(bound: float) -> int:
    """The format of a 32-bit activation whose magnitude never exceeds ``bound``: the largest F
    with ``bound * 2**F < 2**ACT_HEADROOM`` (so products of two stay below 2**62)."""
    return ACT_HEADROOM - math.ceil(math.log2(max(bound, 2.0**-30)))


def norm_bound(weight: np.ndarray) -> float:
    """``max |RMSNorm(v) * w| <= sqrt(n) * max|w|`` (no element exceeds sqrt(n) times the rms)."""
    return math.sqrt(len(weight)) * float(np.max(np.abs(weight)))


def bitlinear_bound(p) -> float:
    """``|gamma / s * T q| <= gamma * max|y| * max_i nnz(T_i)`` (|q| <= 127 = s * max|y|)."""
    nnz = int(np.max(np.count_nonzero(p.T, axis=1)))
    return p.gamma * norm_bound(p.norm) * max(nnz, 1)


def prepare_bitlinear(p, eps: float, f_in: int, f_out: int | None = None, bits: int = ACT_BITS
                      ) -> BitLinearConst:
    """A BitLinear's constants; ``f_out`` defaults to the format of its worst-case bound."""
    if f_out is None:
        f_out = act_format(bitlinear_bound(p))
    m, k = dyadic(p.gamma * 2.0**(f_out - F_NORM) / 127.0)
    if k < 1:
        raise ValueError(f"BitLinear scale gamma={p.gamma} too large for output format {f_out}")
    return BitLinearConst(T=p.T, norm=prepare_norm(p.norm, eps, f_in, F_NORM), m=m, k=k,
                          f_out=f_out, bits=bits)


def residual_format(emb_scale: np.ndarray) -> int:
    """F_x: the largest embedding value ``127 * max(scale)`` lands at most at 2**22, which
    leaves 2**9 of headroom for residual growth within 32 bits."""
    top = 127.0 * float(np.max(emb_scale))
    return 22 - math.ceil(math.log2(top))


def prepare_layer(layer, index: int, eps: float, f_x: int) -> LayerConst:
    i_proj = prepare_bitlinear(layer.i_proj, eps, F_NORM)
    f_proj = prepare_bitlinear(layer.f_proj, eps, F_NORM)
    g_proj = prepare_bitlinear(layer.g_proj, eps, F_NORM)
    gate_proj = prepare_bitlinear(layer.gate_proj, eps, F_NORM)
    # |h| <= max|SiLU(i)| <= |i|: h is a convex combination of SiLU(i) values (and 0).
    f_o = act_format(norm_bound(layer.g_norm) * bitlinear_bound(layer.i_proj))
    f_p = act_format(bitlinear_bound(layer.gate_proj) ** 2)
    lb = None
    if index > 0:
        lb = np.round(np.asarray(layer.lower_bound) * 2.0**F_GATE).astype(np.int64)
        assert np.all((lb >= 0) & (lb <= (1 << F_GATE)))
    return LayerConst(
        attn_norm=prepare_norm(layer.attn_norm, eps, f_x, F_NORM),
        i_proj=i_proj, f_proj=f_proj, g_proj=g_proj,
        o_proj=prepare_bitlinear(layer.o_proj, eps, f_o, f_x, X_BITS),
        g_norm=prepare_norm(layer.g_norm, eps, g_proj.f_out, F_NORM),
        mlp_norm=prepare_norm(layer.mlp_norm, eps, f_x, F_NORM),
        gate_proj=gate_proj,
        down_proj=prepare_bitlinear(layer.down_proj, eps, f_p, f_x, X_BITS),
        lb=lb, f_o=f_o, f_p=f_p)


def prepare(model) -> IntModel:
    """Host side: turn a :class:`~mmfree.sim.model.Model` into integer constants."""
    cfg = model.config
    eps = cfg.rms_norm_eps
    f_x = residual_format(model.emb_scale)
    smax = float(np.max(model.emb_scale))
    emb_k = MANT_BITS - 1 - math.floor(math.log2(smax * 2.0**f_x))
    emb_m = np.round(model.emb_scale * 2.0**(f_x + emb_k)).astype(np.int64)
    if emb_m.max() >= (1 << MANT_BITS):
        emb_k -= 1
        emb_m = np.round(model.emb_scale * 2.0**(f_x + emb_k)).astype(np.int64)
    layers = [prepare_layer(layer, index, eps, f_x) for index, layer in enumerate(model.layers)]
    return IntModel(config=cfg, f_x=f_x, emb_q=model.emb_q, emb_m=emb_m, emb_k=emb_k,
                    layers=layers, norm=prepare_norm(model.norm, eps, f_x, F_NORM),
                    lm_head=prepare_bitlinear(model.lm_head, eps, F_NORM, F_LOGIT, LOGIT_BITS))


# --------------------------------------------------------------------------------------------
# The decode step.

def embed(im: IntModel, token: int) -> np.ndarray:
    """Embedding lookup into the residual format: ``shift_round(q * m_row, emb_k)``."""
    return shift_round(im.emb_q[token].astype(np.int64) * int(im.emb_m[token]), im.emb_k)


def mlgru(lc: LayerConst, a: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The token mixer after the attention norm: returns (o of format f_o, new h of format
    f_i, the i_proj output format)."""
    f_i, f_f, f_g = lc.i_proj.f_out, lc.f_proj.f_out, lc.g_proj.f_out
    i = lc.i_proj(a)
    f = sigmoid(lc.f_proj(a), f_f)                                          # F_GATE
    g = lc.g_proj(a)
    if lc.lb is not None:
        f = lc.lb + shift_round(((1 << F_GATE) - lc.lb) * f, F_GATE)
    one_minus_f = (1 << F_GATE) - f
    c = shift_round(silu(i, f_i) * one_minus_f, F_GATE)                     # f_i
    h = saturate(shift_round(f * h, F_GATE) + c, ACT_BITS)                  # f_i
    gn = lc.g_norm(g)                                                       # F_NORM
    o = saturate(shift_round(gn * silu(h, f_i), F_NORM + f_i - lc.f_o), ACT_BITS)
    return o, h


def glu(lc: LayerConst, m: np.ndarray, act: str) -> np.ndarray:
    """The channel mixer after the mlp norm: ``down(act(gate) * up)`` in the residual format."""
    f_gu = lc.gate_proj.f_out
    gu = lc.gate_proj(m)
    inter = gu.shape[0] // 2
    gate, up = gu[:inter], gu[inter:]
    ga = silu(gate, f_gu) if act == "silu" else gelu(gate, f_gu)
    p = saturate(shift_round(ga * up, 2 * f_gu - lc.f_p), ACT_BITS)         # f_p
    return lc.down_proj(p)


def init_state(im: IntModel) -> np.ndarray:
    return np.zeros((im.config.num_layers, im.config.hidden_size), dtype=np.int64)


def decode_step(im: IntModel, token: int, state: np.ndarray, *, trace: dict | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """One integer decode step: ``(logits [V] of format F_LOGIT, new state [L, d])``; layer l's
    state has the format of its i_proj output (``im.layers[l].i_proj.f_out``).
    ``state`` is not modified. ``trace`` collects the residual after every layer ("x")."""
    cfg = im.config
    if not 0 <= token < cfg.vocab_size:
        raise ValueError(f"token {token} out of range for vocab_size {cfg.vocab_size}")
    new_state = np.array(state, dtype=np.int64, copy=True)
    x = embed(im, token)
    for index, lc in enumerate(im.layers):
        o, new_state[index] = mlgru(lc, lc.attn_norm(x), new_state[index])
        r = saturate(x + lc.o_proj(o), X_BITS)
        x = saturate(r + glu(lc, lc.mlp_norm(r), cfg.hidden_act), X_BITS)
        if trace is not None:
            trace.setdefault("x", []).append(x.copy())
    z = im.norm(x)
    return im.lm_head(z), new_state
