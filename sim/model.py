"""In-memory form of a MatMul-free LM (HGRN-Bit): configuration and prepared parameters.

This is the one structure every consumer shares: the float reference (:mod:`.reference`), the
integer golden model (:mod:`.golden`), the model file (:mod:`.modelfile`) and the checkpoint
converter. It holds what the released code actually *uses* at inference time: for every
BitLinear the ternary matrix ``T`` and its per-matrix scale ``gamma`` (computed once from the
latent weights, never from already-ternary ones), the norm weights, and the precomputed lower
bounds. All float arrays are float64 (see ../shared/MODEL.md: keep reference paths in float64).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .packing import PACKINGS

__all__ = [
    "ModelConfig", "BitLinearParams", "LayerParams", "Model",
    "ternarize", "lower_bounds", "quantize_embeddings", "default_intermediate_size",
    "from_state_dict", "random_state_dict", "random_model", "state_dict_keys",
]

HIDDEN_ACTS = ("silu", "gelu")


def default_intermediate_size(hidden_size: int, hidden_ratio: int = 4) -> int:
    """``int(d * hidden_ratio * 2/3)`` rounded up to a multiple of 256, as the released code."""
    size = int(hidden_size * hidden_ratio * 2 / 3)
    return 256 * ((size + 255) // 256)


@dataclass(frozen=True)
class ModelConfig:
    """Dimensions of an HGRN-Bit model (batch 1 decode)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    packing: str = "2bit"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, not {self.vocab_size}")
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"hidden_act must be one of {', '.join(HIDDEN_ACTS)}, "
                             f"not {self.hidden_act!r}")
        if self.packing not in PACKINGS:
            raise ValueError(f"packing must be one of {', '.join(PACKINGS)}, not {self.packing!r}")
        if not (isinstance(self.rms_norm_eps, float) and 0 < self.rms_norm_eps < 1):
            raise ValueError(f"rms_norm_eps must be a float in (0, 1), not {self.rms_norm_eps!r}")

    @property
    def d(self) -> int:
        return self.hidden_size

    @property
    def ternary_shapes(self) -> dict[str, tuple[int, int]]:
        """Shape [out, in] of every ternary matrix of one layer, plus ``lm_head``."""
        d, inter = self.hidden_size, self.intermediate_size
        return {
            "attn.i_proj": (d, d), "attn.f_proj": (d, d), "attn.g_proj": (d, d),
            "attn.o_proj": (d, d), "mlp.gate_proj": (2 * inter, d), "mlp.down_proj": (d, inter),
        }

    @property
    def ternary_weights_per_layer(self) -> int:
        return sum(o * i for o, i in self.ternary_shapes.values())

    @property
    def ternary_weights(self) -> int:
        """Ternary weights touched by one decode step (all layers and lm_head)."""
        return self.num_layers * self.ternary_weights_per_layer + self.vocab_size * self.hidden_size

    @property
    def num_parameters(self) -> int:
        """Parameter count as the released code counts it (latent weights, norms, bounds)."""
        d, inter, n_l, v = self.hidden_size, self.intermediate_size, self.num_layers, self.vocab_size
        per_layer = (self.ternary_weights_per_layer
                     + d            # attn_norm
                     + 4 * d        # i/f/g/o_proj.norm
                     + d            # g_norm
                     + d            # mlp_norm
                     + d + inter)   # gate_proj.norm, down_proj.norm
        return v * d + n_l * d + n_l * per_layer + d + v * d + d

    def to_json(self) -> dict:
        return {
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "num_layers": self.num_layers, "intermediate_size": self.intermediate_size,
            "rms_norm_eps": self.rms_norm_eps, "hidden_act": self.hidden_act,
            "packing": self.packing,
        }

    @classmethod
    def from_json(cls, obj) -> ModelConfig:
        if not isinstance(obj, dict):
            raise ValueError("config must be a JSON object")
        known = {"vocab_size", "hidden_size", "num_layers", "intermediate_size",
                 "rms_norm_eps", "hidden_act", "packing"}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValueError(f"config has unknown field {unknown[0]!r}")
        missing = sorted({"vocab_size", "hidden_size", "num_layers", "intermediate_size"}
                         - set(obj))
        if missing:
            raise ValueError(f"config lacks field {missing[0]!r}")
        kwargs = dict(obj)
        if "rms_norm_eps" in kwargs and isinstance(kwargs["rms_norm_eps"], int):
            kwargs["rms_norm_eps"] = float(kwargs["rms_norm_eps"])
        return cls(**kwargs)


@dataclass
class BitLinearParams:
    """One BitLinear as inference uses it: ``out = gamma / s * (T @ q)`` after its own RMSNorm."""

    T: np.ndarray        # int8 [out, in], values in {-1, 0, +1}
    gamma: float         # per-matrix scale max(mean|W|, 1e-5), float64
    norm: np.ndarray     # float64 [in], the BitLinear's inner RMSNorm weight

    def __post_init__(self):
        assert self.T.ndim == 2 and self.T.dtype == np.int8, (self.T.shape, self.T.dtype)
        assert np.all(np.abs(self.T) <= 1), "T must be ternary"
        assert self.norm.shape == (self.T.shape[1],), (self.norm.shape, self.T.shape)
        assert self.gamma > 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.T.shape


@dataclass
class LayerParams:
    attn_norm: np.ndarray
    i_proj: BitLinearParams
    f_proj: BitLinearParams
    g_proj: BitLinearParams
    o_proj: BitLinearParams
    g_norm: np.ndarray
    mlp_norm: np.ndarray
    gate_proj: BitLinearParams   # [2I, d]: rows 0..I-1 gate, I..2I-1 up
    down_proj: BitLinearParams   # [d, I]
    lower_bound: np.ndarray      # [d] float64: lb[l] after softmax/cumsum (all zero for layer 0)


@dataclass
class Model:
    """A whole model. ``embeddings`` is what the float reference looks up; ``emb_q``/``emb_scale``
    are the int8 per-row form the hardware stores (``embeddings == emb_q * emb_scale[:, None]``
    for a model read from a model file)."""

    config: ModelConfig
    embeddings: np.ndarray            # float64 [V, d]
    layers: list[LayerParams]
    norm: np.ndarray                  # float64 [d]
    lm_head: BitLinearParams          # [V, d]
    emb_q: np.ndarray = None          # int8 [V, d]
    emb_scale: np.ndarray = None      # float64 [V]
    tokenizer: dict = field(default_factory=lambda: {"type": "bytes"})

    def __post_init__(self):
        if self.emb_q is None:
            self.emb_q, self.emb_scale = quantize_embeddings(self.embeddings)

    def bitlinears(self):
        """Yield ``(name, BitLinearParams)`` for every BitLinear, in file order."""
        for index, layer in enumerate(self.layers):
            for name in ("i_proj", "f_proj", "g_proj", "o_proj"):
                yield f"layers.{index}.attn.{name}", getattr(layer, name)
            for name in ("gate_proj", "down_proj"):
                yield f"layers.{index}.mlp.{name}", getattr(layer, name)
        yield "lm_head", self.lm_head


def ternarize(latent: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-matrix absmean ternarization of a *latent* weight, as the released ``weight_quant``.

    ``gamma = max(mean|W|, 1e-5)``; ``T = clamp(round(W * (1 / gamma)), -1, 1)`` with numpy's
    (and torch's) round-half-to-even. Computed in float64.
    """
    w = np.asarray(latent, dtype=np.float64)
    gamma = max(float(np.mean(np.abs(w))), 1e-5)
    t = np.clip(np.round(w * (1.0 / gamma)), -1, 1).astype(np.int8)
    return t, gamma


def lower_bounds(raw: np.ndarray) -> np.ndarray:
    """``softmax(raw, 0)``, then ``cumsum(., 0) - first row``: lb[0] == 0 (float64 [L, d])."""
    raw = np.asarray(raw, dtype=np.float64)
    e = np.exp(raw - raw.max(axis=0, keepdims=True))
    p = e / e.sum(axis=0, keepdims=True)
    c = np.cumsum(p, axis=0)
    return c - c[0]


def quantize_embeddings(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row absmax int8: ``scale = max|row| / 127`` (1.0 for an all-zero row),
    ``q = round_half_away(row / scale)``. Returns (int8 [V, d], float64 [V])."""
    emb = np.asarray(emb, dtype=np.float64)
    amax = np.max(np.abs(emb), axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    v = emb / scale[:, None]
    q = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -127, 127).astype(np.int8)
    return q, scale


def state_dict_keys(config: ModelConfig, *, lower_bound: bool = True) -> dict[str, tuple]:
    """Every key of a Hugging Face-layout HGRN-Bit state dict, with its shape."""
    d, inter, n_l, v = config.hidden_size, config.intermediate_size, config.num_layers, \
        config.vocab_size
    keys = {"model.embeddings.weight": (v, d)}
    if lower_bound:
        keys["model.lower_bounds"] = (n_l, d)
    for layer in range(n_l):
        p = f"model.layers.{layer}."
        keys[p + "attn_norm.weight"] = (d,)
        for name in ("i_proj", "f_proj", "g_proj", "o_proj"):
            keys[p + f"attn.{name}.weight"] = (d, d)
            keys[p + f"attn.{name}.norm.weight"] = (d,)
        keys[p + "attn.g_norm.weight"] = (d,)
        keys[p + "mlp_norm.weight"] = (d,)
        keys[p + "mlp.gate_proj.weight"] = (2 * inter, d)
        keys[p + "mlp.gate_proj.norm.weight"] = (d,)
        keys[p + "mlp.down_proj.weight"] = (d, inter)
        keys[p + "mlp.down_proj.norm.weight"] = (inter,)
    keys["model.norm.weight"] = (d,)
    keys["lm_head.weight"] = (v, d)
    keys["lm_head.norm.weight"] = (d,)
    return keys


def from_state_dict(config: ModelConfig, sd: dict[str, np.ndarray],
                    tokenizer: dict | None = None) -> Model:
    """Build a :class:`Model` from a Hugging Face-layout state dict of latent (float) weights.

    Missing ``model.lower_bounds`` means the checkpoint was trained without lower bounds
    (all zero). Shapes are checked; a mismatch raises ValueError naming the key.
    """
    expected = state_dict_keys(config, lower_bound="model.lower_bounds" in sd)
    for key, shape in expected.items():
        if key not in sd:
            raise ValueError(f"missing tensor {key!r}")
        if tuple(sd[key].shape) != shape:
            raise ValueError(f"tensor {key!r} has shape {list(sd[key].shape)}, "
                             f"expected {list(shape)}")
    f64 = lambda key: np.asarray(sd[key], dtype=np.float64)  # noqa: E731

    def bitlinear(prefix):
        t, gamma = ternarize(sd[prefix + ".weight"])
        return BitLinearParams(T=t, gamma=gamma, norm=f64(prefix + ".norm.weight"))

    if "model.lower_bounds" in sd:
        lb = lower_bounds(sd["model.lower_bounds"])
    else:
        lb = np.zeros((config.num_layers, config.hidden_size))
    layers = []
    for index in range(config.num_layers):
        p = f"model.layers.{index}."
        layers.append(LayerParams(
            attn_norm=f64(p + "attn_norm.weight"),
            i_proj=bitlinear(p + "attn.i_proj"), f_proj=bitlinear(p + "attn.f_proj"),
            g_proj=bitlinear(p + "attn.g_proj"), o_proj=bitlinear(p + "attn.o_proj"),
            g_norm=f64(p + "attn.g_norm.weight"), mlp_norm=f64(p + "mlp_norm.weight"),
            gate_proj=bitlinear(p + "mlp.gate_proj"), down_proj=bitlinear(p + "mlp.down_proj"),
            lower_bound=lb[index].copy(),
        ))
    return Model(config=config, embeddings=f64("model.embeddings.weight"), layers=layers,
                 norm=f64("model.norm.weight"), lm_head=bitlinear("lm_head"),
                 tokenizer=tokenizer or {"type": "bytes"})


def random_state_dict(config: ModelConfig, seed: int = 0, *, std: float = 0.02,
                      dtype=np.float32) -> dict[str, np.ndarray]:
    """A synthetic checkpoint with the exact key names and shapes of the released models.

    Latent weights ~ N(0, std); norm weights ~ 1 + N(0, 0.1) so that they are not trivially one;
    raw lower bounds ~ N(0, 1). Used by tests and benchmarks (real checkpoints can't be fetched).
    """
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in state_dict_keys(config).items():
        if key == "model.lower_bounds":
            value = rng.normal(0.0, 1.0, shape)
        elif key.endswith("norm.weight"):
            value = 1.0 + rng.normal(0.0, 0.1, shape)
        else:
            value = rng.normal(0.0, std, shape)
        sd[key] = value.astype(dtype)
    return sd


def random_model(config: ModelConfig, seed: int = 0) -> Model:
    return from_state_dict(config, random_state_dict(config, seed))
