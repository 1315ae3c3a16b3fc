"""Float reference of the HGRN-Bit decode step, in float64, following the released code.

Batch 1, one token at a time; the recurrent state (``[L, d]``) is carried explicitly. This is
the model as ../shared/MODEL.md states it (released-code semantics, where the paper differs):
BitLinear with an inner RMSNorm (eps 1e-6), per-token absmax int8 with halves rounded away from
zero, per-matrix absmean ternary weights (prepared in :mod:`.model`), the output gate
``RMSNorm(g) * SiLU(h)``, per-layer lower bounds, and a ternary lm_head with its own norm.
"""

from __future__ import annotations

import math

import numpy as np

from .model import BitLinearParams, Model

__all__ = ["rmsnorm", "activation_quant", "bitlinear", "sigmoid", "silu", "gelu",
           "init_state", "decode_step", "softmax", "sample_float"]


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt(np.mean(x * x) + eps) * weight


def round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def activation_quant(y: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-token absmax int8: returns (q as float64 integers, s) with ``y ~ q / s``."""
    s = 127.0 / max(float(np.max(np.abs(y))), 1e-5)
    q = np.clip(round_half_away(y * s), -128, 127)
    return q, s


def bitlinear(v: np.ndarray, p: BitLinearParams, eps: float = 1e-6) -> np.ndarray:
    y = rmsnorm(v, p.norm, eps)
    q, s = activation_quant(y)
    acc = p.T.astype(np.float64) @ q      # exact: integers far below 2**53
    return (p.gamma / s) * acc


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def silu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(x)


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, what ``hidden_act="gelu"`` means in the Hugging Face code base."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def init_state(model: Model) -> np.ndarray:
    return np.zeros((model.config.num_layers, model.config.hidden_size), dtype=np.float64)


def decode_step(model: Model, token: int, state: np.ndarray, *, trace: dict | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """One decode step. Returns ``(logits [V] float64, new state [L, d])``; ``state`` is not
    modified. With ``trace`` (a dict), the residual after every layer is appended to
    ``trace["x"]`` and the pre-lm_head hidden state stored as ``trace["z"]``."""
    cfg = model.config
    if not 0 <= token < cfg.vocab_size:
        raise ValueError(f"token {token} out of range for vocab_size {cfg.vocab_size}")
    eps = cfg.rms_norm_eps
    act = silu if cfg.hidden_act == "silu" else gelu
    inter = cfg.intermediate_size
    new_state = np.array(state, dtype=np.float64, copy=True)
    x = model.embeddings[token].astype(np.float64)
    for index, layer in enumerate(model.layers):
        a = rmsnorm(x, layer.attn_norm, eps)
        i = bitlinear(a, layer.i_proj, eps)
        f = bitlinear(a, layer.f_proj, eps)
        g = bitlinear(a, layer.g_proj, eps)
        f = sigmoid(f)
        if index > 0:
            lb = layer.lower_bound
            f = lb + (1.0 - lb) * f
        c = silu(i) * (1.0 - f)
        h = f * new_state[index] + c
        new_state[index] = h
        o = rmsnorm(g, layer.g_norm, eps) * silu(h)
        r = x + bitlinear(o, layer.o_proj, eps)
        m = rmsnorm(r, layer.mlp_norm, eps)
        gu = bitlinear(m, layer.gate_proj, eps)
        x = r + bitlinear(act(gu[:inter]) * gu[inter:], layer.down_proj, eps)
        if trace is not None:
            trace.setdefault("x", []).append(x.copy())
    z = rmsnorm(x, model.norm, eps)
    if trace is not None:
        trace["z"] = z.copy()
    return bitlinear(z, model.lm_head, eps), new_state


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    e = np.exp(z - z.max())
    return e / e.sum()


def sample_float(logits: np.ndarray, temperature: float, draw: int) -> int:
    """Token for one 32-bit PRNG draw: greedy (first maximum) when temperature <= 0, otherwise
    inverse-CDF sampling of ``softmax(logits / temperature)`` at ``u = draw / 2**32``, the same
    rule the integer sampler applies to its integer probabilities."""
    if temperature <= 0:
        return int(np.argmax(logits))
    p = softmax(logits, temperature)
    c = np.cumsum(p)
    r = (draw / 2.0**32) * c[-1]
    return int(min(np.searchsorted(c, r, side="right"), len(c) - 1))
