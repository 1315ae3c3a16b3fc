"""The mmfree model file: one self-describing safetensors file holding a prepared model.

What it stores is what inference uses (see docs/formats.md for the full list): the int8 per-row
embeddings and their scales, the prepared lower bounds, every norm weight as float64, and per
BitLinear the ternary matrix packed as the config says (:mod:`.packing`), its scale ``gamma``
and its inner norm weight. The metadata carries a format tag and version, the
:class:`~.model.ModelConfig` and the tokenizer, as JSON strings.

:func:`load_model` validates everything and raises :class:`ModelFormatError` with one line
naming the problem; :func:`save_model` never overwrites without ``force`` and writes atomically.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import numpy as np

from . import safetensors_io
from .model import BitLinearParams, LayerParams, Model, ModelConfig
from .packing import pack_ternary, packed_row_bytes, unpack_ternary
from .safetensors_io import SafetensorsError

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFormatError", "TOKENIZER_TYPES",
           "tensor_specs", "check_tokenizer", "save_model", "load_model"]

FORMAT = "mmfree-model"
FORMAT_VERSION = "1"
TOKENIZER_TYPES = ("bytes", "hf")


class ModelFormatError(ValueError):
    """A model file (or checkpoint) that cannot be used, with one line saying why."""


def _bitlinear_names(config: ModelConfig) -> list[tuple[str, int, int]]:
    """(name, out, in) of every BitLinear, in the order of :meth:`Model.bitlinears`."""
    names = []
    for layer in range(config.num_layers):
        for key, shape in config.ternary_shapes.items():
            names.append((f"layers.{layer}.{key}", *shape))
    names.append(("lm_head", config.vocab_size, config.hidden_size))
    return names


def tensor_specs(config: ModelConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor of a model file for ``config``: name -> (safetensors dtype, shape)."""
    v, d, n_l = config.vocab_size, config.hidden_size, config.num_layers
    specs = {"embeddings.q": ("I8", (v, d)), "embeddings.scale": ("F64", (v,)),
             "lower_bounds": ("F64", (n_l, d)), "norm": ("F64", (d,))}
    for layer in range(n_l):
        for key in ("attn_norm", "attn.g_norm", "mlp_norm"):
            specs[f"layers.{layer}.{key}"] = ("F64", (d,))
    for name, rows, cols in _bitlinear_names(config):
        specs[f"{name}.weight"] = ("U8", (rows, packed_row_bytes(cols, config.packing)))
        specs[f"{name}.gamma"] = ("F64", (1,))
        specs[f"{name}.norm"] = ("F64", (cols,))
    return specs


def check_tokenizer(tokenizer, vocab_size: int) -> None:
    """Raise :class:`ModelFormatError` unless ``tokenizer`` is a valid tokenizer description:
    ``{"type": "bytes"}`` or ``{"type": "hf", "tokenizer_json": <tokenizer.json text>,
    "bos_token_id": int | None, "eos_token_id": int | None}``."""
    if not isinstance(tokenizer, dict):
        raise ModelFormatError("tokenizer must be a JSON object")
    kind = tokenizer.get("type")
    if kind not in TOKENIZER_TYPES:
        raise ModelFormatError(f"unknown tokenizer type {kind!r} "
                               f"(known: {', '.join(TOKENIZER_TYPES)})")
    fields = {"bytes": {"type"},
              "hf": {"type", "tokenizer_json", "bos_token_id", "eos_token_id"}}[kind]
    extra = sorted(set(tokenizer) - fields)
    if extra:
        raise ModelFormatError(f"tokenizer of type {kind!r} has unknown field {extra[0]!r}")
    missing = sorted(fields - set(tokenizer))
    if missing:
        raise ModelFormatError(f"tokenizer of type {kind!r} lacks field {missing[0]!r}")
    if kind == "hf":
        text = tokenizer["tokenizer_json"]
        if not isinstance(text, str):
            raise ModelFormatError("tokenizer_json must be a string (the tokenizer.json text)")
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModelFormatError(f"tokenizer_json is not valid JSON: {error.msg} at "
                                   f"character {error.pos}") from None
        if not isinstance(parsed, dict):
            raise ModelFormatError("tokenizer_json is not a JSON object")
        for key in ("bos_token_id", "eos_token_id"):
            value = tokenizer[key]
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) \
                    or not 0 <= value < vocab_size:
                raise ModelFormatError(f"tokenizer {key} must be null or an integer in "
                                       f"[0, {vocab_size}), not {value!r}")


# --- saving ------------------------------------------------------------------------------------

def _model_tensors(model: Model) -> dict[str, np.ndarray]:
    cfg = model.config
    if len(model.layers) != cfg.num_layers:
        raise ValueError(f"model has {len(model.layers)} layers, its config says "
                         f"{cfg.num_layers}")
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    tensors = {
        "embeddings.q": np.asarray(model.emb_q),
        "embeddings.scale": f64(model.emb_scale),
        "lower_bounds": f64(np.stack([layer.lower_bound for layer in model.layers])
                            if model.layers else np.zeros((0, cfg.hidden_size))),
        "norm": f64(model.norm),
    }
    for index, layer in enumerate(model.layers):
        p = f"layers.{index}."
        tensors[p + "attn_norm"] = f64(layer.attn_norm)
        tensors[p + "attn.g_norm"] = f64(layer.g_norm)
        tensors[p + "mlp_norm"] = f64(layer.mlp_norm)
    for name, bl in model.bitlinears():
        try:
            tensors[f"{name}.weight"] = pack_ternary(bl.T, cfg.packing)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        tensors[f"{name}.gamma"] = np.array([bl.gamma], dtype=np.float64)
        tensors[f"{name}.norm"] = f64(bl.norm)
    return tensors


def _create_exclusive(directory: Path, name: str):
    while True:
        temp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
        except FileExistsError:
            continue
        return temp, os.fdopen(fd, "wb")


def save_model(model: Model, path: str | os.PathLike, *, force: bool = False) -> None:
    """Write ``model`` to ``path``. Refuses to replace an existing file unless ``force``; the
    file appears complete or not at all (written to a temporary file beside it, then renamed),
    so a failure never leaves a partial file or harms an existing one."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a model file path")
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists (use force to overwrite it)")
    cfg = model.config
    try:
        check_tokenizer(model.tokenizer, cfg.vocab_size)
        tensors = _model_tensors(model)
        _check_tensors(cfg, tensors)
    except (ModelFormatError, ValueError) as error:
        raise ValueError(f"cannot save an invalid model: {error}") from None
    metadata = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": json.dumps(cfg.to_json()),
        "tokenizer": json.dumps(model.tokenizer),
    }
    dtypes = {name: dtype for name, (dtype, _) in tensor_specs(cfg).items()}
    temp, file = _create_exclusive(path.parent, path.name)
    try:
        with file:
            safetensors_io.write(file, tensors, metadata, dtypes=dtypes)
            file.flush()
            os.fsync(file.fileno())
        if force:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)             # atomic, and fails if path appeared meanwhile
            except FileExistsError:
                raise FileExistsError(f"{path} already exists (use force to overwrite it)") \
                    from None
            except OSError:                     # no hard links on this file system
                if path.exists():
                    raise FileExistsError(f"{path} already exists (use force to overwrite it)") \
                        from None
                os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


# --- loading -----------------------------------------------------------------------------------

def _check_tensors(config: ModelConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check tensor names, shapes and values; return the unpacked ternary matrices."""
    specs = tensor_specs(config)
    for name in specs:
        if name not in tensors:
            raise ModelFormatError(f"model file lacks tensor {name!r}")
    for name in tensors:
        if name not in specs:
            raise ModelFormatError(f"model file has unexpected tensor {name!r}")
    numpy_dtypes = {"F64": np.float64, "I8": np.int8, "U8": np.uint8}
    for name, (dtype, shape) in specs.items():
        value = tensors[name]
        if value.dtype != numpy_dtypes[dtype]:
            raise ModelFormatError(f"tensor {name!r} has numpy dtype {value.dtype}, "
                                   f"expected {dtype}")
        if value.shape != shape:
            raise ModelFormatError(f"tensor {name!r} has shape {list(value.shape)}, "
                                   f"expected {list(shape)}")
        if dtype == "F64":
            bad = ~np.isfinite(value)
            if np.any(bad):
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise ModelFormatError(f"tensor {name!r} holds a non-finite value "
                                       f"{value[index]} at index {list(index)}")
    for name in ["embeddings.scale"] + [f"{n}.gamma" for n, *_ in _bitlinear_names(config)]:
        bad = tensors[name] <= 0
        if np.any(bad):
            index = int(np.argwhere(bad)[0][0])
            raise ModelFormatError(f"tensor {name!r} holds {tensors[name][index]} at index "
                                   f"{index}; it must be positive")
    lb = tensors["lower_bounds"]
    bad = (lb < 0) | (lb > 1)
    if np.any(bad):
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ModelFormatError(f"tensor 'lower_bounds' holds {lb[index]} at index "
                               f"{list(index)}; lower bounds lie in [0, 1]")
    ternary = {}
    for name, _, cols in _bitlinear_names(config):
        try:
            ternary[name] = unpack_ternary(tensors[f"{name}.weight"], cols, config.packing)
        except ValueError as error:
            raise ModelFormatError(f"tensor '{name}.weight': {error}") from None
    return ternary


def _json_metadata(metadata: dict[str, str], key: str):
    if key not in metadata:
        raise ModelFormatError(f"model file lacks the {key!r} metadata entry")
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as error:
        raise ModelFormatError(f"{key} metadata is not valid JSON: {error.msg} at character "
                               f"{error.pos}") from None


def load_model(path: str | os.PathLike) -> Model:
    """Read and validate a model file. The model's ``embeddings`` are ``emb_q * emb_scale``."""
    path = Path(path)
    if not path.exists():
        raise ModelFormatError(f"no such model file: {path}")
    if not path.is_file():
        raise ModelFormatError(f"{path} is not a file")
    try:
        infos, metadata = safetensors_io.read_header(path)
    except SafetensorsError as error:
        raise ModelFormatError(f"not a valid safetensors file: {error}") from None

    tag = metadata.get("format")
    if tag is None:
        raise ModelFormatError("not an mmfree model file (no 'format' entry in its metadata)")
    if tag != FORMAT:
        raise ModelFormatError(f"not an mmfree model file (format is {tag!r}, "
                               f"expected {FORMAT!r})")
    version = metadata.get("format_version")
    if version is None:
        raise ModelFormatError("model file lacks the 'format_version' metadata entry")
    if version != FORMAT_VERSION:
        raise ModelFormatError(f"unsupported model format version {version} "
                               f"(this mmfree reads version {FORMAT_VERSION})")
    try:
        config = ModelConfig.from_json(_json_metadata(metadata, "config"))
    except ModelFormatError:
        raise
    except (ValueError, TypeError) as error:
        raise ModelFormatError(f"invalid config: {error}") from None
    tokenizer = _json_metadata(metadata, "tokenizer")
    check_tokenizer(tokenizer, config.vocab_size)

    # Names, dtypes and shapes from the header first: cheap, and names the BF16/F32 difference.
    specs = tensor_specs(config)
    for name in specs:
        if name not in infos:
            raise ModelFormatError(f"model file lacks tensor {name!r}")
    for name in infos:
        if name not in specs:
            raise ModelFormatError(f"model file has unexpected tensor {name!r}")
    for name, (dtype, shape) in specs.items():
        if infos[name].dtype != dtype:
            raise ModelFormatError(f"tensor {name!r} has dtype {infos[name].dtype}, "
                                   f"expected {dtype}")
        if infos[name].shape != shape:
            raise ModelFormatError(f"tensor {name!r} has shape {list(infos[name].shape)}, "
                                   f"expected {list(shape)}")
    try:
        tensors, _ = safetensors_io.load_file(path)
    except SafetensorsError as error:
        raise ModelFormatError(f"not a valid safetensors file: {error}") from None
    ternary = _check_tensors(config, tensors)

    def bitlinear(name):
        return BitLinearParams(T=ternary[name], gamma=float(tensors[f"{name}.gamma"][0]),
                               norm=tensors[f"{name}.norm"])

    lb = tensors["lower_bounds"]
    layers = []
    for index in range(config.num_layers):
        p = f"layers.{index}."
        layers.append(LayerParams(
            attn_norm=tensors[p + "attn_norm"],
            i_proj=bitlinear(p + "attn.i_proj"), f_proj=bitlinear(p + "attn.f_proj"),
            g_proj=bitlinear(p + "attn.g_proj"), o_proj=bitlinear(p + "attn.o_proj"),
            g_norm=tensors[p + "attn.g_norm"], mlp_norm=tensors[p + "mlp_norm"],
            gate_proj=bitlinear(p + "mlp.gate_proj"), down_proj=bitlinear(p + "mlp.down_proj"),
            lower_bound=lb[index].copy(),
        ))
    emb_q, emb_scale = tensors["embeddings.q"], tensors["embeddings.scale"]
    return Model(config=config, embeddings=emb_q * emb_scale[:, None], layers=layers,
                 norm=tensors["norm"], lm_head=bitlinear("lm_head"), emb_q=emb_q,
                 emb_scale=emb_scale, tokenizer=tokenizer)
