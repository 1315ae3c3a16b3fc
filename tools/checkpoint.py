"""Hugging Face-layout MatMul-free LM (HGRN-Bit) checkpoints: strict reading and writing.

A checkpoint is a directory with ``config.json`` (``HGRNBitConfig`` field names, ``model_type``
``"hgrn_bit"``), the weights in ``model.safetensors`` or in shards ``model-0000i-of-0000n
.safetensors`` listed by ``model.safetensors.index.json``, and ``tokenizer.json`` unless the
vocabulary is byte-level (256 entries). Weights are bf16, fp16 or fp32 latent weights with the
key names of ../shared/MODEL.md (:func:`mmfree.sim.model.state_dict_keys`).

:func:`load_checkpoint` refuses anything it cannot run exactly, with a one-line
:class:`~mmfree.sim.modelfile.ModelFormatError`. :func:`save_checkpoint` writes the same layout
(tests, and the training script).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from ..sim import safetensors_io
from ..sim.model import ModelConfig, default_intermediate_size, state_dict_keys
from ..sim.modelfile import ModelFormatError, check_tokenizer
from ..sim.safetensors_io import SafetensorsError

__all__ = ["load_checkpoint", "save_checkpoint", "CHECKPOINT_DTYPES",
           "SINGLE_FILE", "INDEX_FILE", "shard_name"]

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CHECKPOINT_DTYPES = {"bf16": "BF16", "fp32": "F32"}
_FLOAT_DTYPES = ("BF16", "F16", "F32")
_HIDDEN_ACTS = {"swish": "silu", "silu": "silu", "gelu": "gelu"}
_SHARD_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def shard_name(index: int, count: int) -> str:
    """File name of shard ``index`` (1-based) of ``count``, as Hugging Face names them."""
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def _read_json(path: Path, what: str):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelFormatError(f"{what} is not valid UTF-8") from None
    try:
        return json.loads(text), text
    except json.JSONDecodeError as error:
        raise ModelFormatError(f"{what} is not valid JSON: {error.msg} at line {error.lineno} "
                               f"column {error.colno}") from None


def _config_from_json(obj) -> tuple[ModelConfig, bool, int | None, int | None]:
    """(config, use_lower_bound, bos, eos) from an HGRNBitConfig ``config.json`` object."""
    if not isinstance(obj, dict):
        raise ModelFormatError("config.json is not a JSON object")
    model_type = obj.get("model_type")
    if model_type != "hgrn_bit":
        raise ModelFormatError(f"config.json has model_type {model_type!r}; only 'hgrn_bit' "
                               f"(MatMul-free LM) checkpoints are supported")

    def field(name, kind, default, *, required=False, nullable=False):
        if name not in obj:
            if required:
                raise ModelFormatError(f"config.json lacks {name!r}")
            return default
        value = obj[name]
        if value is None and nullable:
            return None
        if kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            noun = {int: "an integer", float: "a number", bool: "a boolean",
                    str: "a string"}[kind]
            raise ModelFormatError(f"config.json {name} must be {'null or ' if nullable else ''}"
                                   f"{noun}, not {value!r}")
        return float(value) if kind is float else value

    vocab = field("vocab_size", int, None, required=True)
    hidden = field("hidden_size", int, None, required=True)
    layers = field("num_hidden_layers", int, None, required=True)
    num_heads = field("num_heads", int, 1, nullable=True)
    expand_ratio = field("expand_ratio", int, 1, nullable=True)
    use_short_conv = field("use_short_conv", bool, False)
    tie = field("tie_word_embeddings", bool, False)
    use_lower_bound = field("use_lower_bound", bool, True)
    hidden_ratio = field("hidden_ratio", int, 4, nullable=True)
    intermediate = field("intermediate_size", int, None, nullable=True)
    hidden_act = field("hidden_act", str, "swish")
    eps = field("rms_norm_eps", float, 1e-6)
    bos = field("bos_token_id", int, 1, nullable=True)
    eos = field("eos_token_id", int, 2, nullable=True)

    if num_heads != 1:
        raise ModelFormatError(f"unsupported architecture: num_heads is {num_heads} "
                               f"(only 1 is supported)")
    if expand_ratio != 1:
        raise ModelFormatError(f"unsupported architecture: expand_ratio is {expand_ratio} "
                               f"(only 1 is supported)")
    if use_short_conv:
        raise ModelFormatError("unsupported architecture: use_short_conv is true "
                               "(short convolutions are not supported)")
    if tie:
        raise ModelFormatError("unsupported architecture: tie_word_embeddings is true "
                               "(embeddings and lm_head must be separate)")
    if hidden_act not in _HIDDEN_ACTS:
        raise ModelFormatError(f"unsupported hidden_act {hidden_act!r} "
                               f"(supported: {', '.join(_HIDDEN_ACTS)})")
    if hidden_ratio is None:
        hidden_ratio = 4
    if intermediate is None:
        if hidden_ratio <= 0:
            raise ModelFormatError(f"config.json hidden_ratio must be positive, "
                                   f"not {hidden_ratio}")
        intermediate = default_intermediate_size(hidden, hidden_ratio) if hidden > 0 else 0
    try:
        config = ModelConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers,
                             intermediate_size=intermediate, rms_norm_eps=eps,
                             hidden_act=_HIDDEN_ACTS[hidden_act])
    except ValueError as error:
        raise ModelFormatError(f"config.json: {error}") from None
    return config, use_lower_bound, bos, eos


def _shard_files(directory: Path) -> dict[str, list[str] | None]:
    """File name -> keys the index assigns to it (None for a single unindexed file)."""
    single, index = directory / SINGLE_FILE, directory / INDEX_FILE
    if single.exists() and index.exists():
        raise ModelFormatError(f"checkpoint has both {SINGLE_FILE} and {INDEX_FILE}; "
                               f"remove the stale one")
    if single.exists():
        return {SINGLE_FILE: None}
    if not index.exists():
        raise ModelFormatError(f"checkpoint has neither {SINGLE_FILE} nor {INDEX_FILE}")
    obj, _ = _read_json(index, INDEX_FILE)
    if not isinstance(obj, dict) or not isinstance(obj.get("weight_map"), dict):
        raise ModelFormatError(f"{INDEX_FILE} has no 'weight_map' object")
    files: dict[str, list[str]] = {}
    for key, name in obj["weight_map"].items():
        if not isinstance(name, str) or not name or "/" in name or "\\" in name \
                or name in (".", ".."):
            raise ModelFormatError(f"{INDEX_FILE} maps {key!r} to {name!r}, which is not a "
                                   f"file name in the checkpoint directory")
        files.setdefault(name, []).append(key)
    if not files:
        raise ModelFormatError(f"{INDEX_FILE} lists no tensors")
    for name in files:
        if not (directory / name).is_file():
            raise ModelFormatError(f"shard {name} listed in {INDEX_FILE} is missing")
    return dict(sorted(files.items()))


def load_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, np.ndarray], dict]:
    """Read a Hugging Face-layout HGRN-Bit checkpoint directory.

    Returns ``(config, state_dict, tokenizer)``: the :class:`ModelConfig` (packing "2bit"), the
    latent weights as float32 with the Hugging Face key names (bf16 widened exactly), and the
    tokenizer description stored in model files.
    """
    directory = Path(path)
    if not directory.exists():
        raise ModelFormatError(f"no such checkpoint directory: {directory}")
    if not directory.is_dir():
        raise ModelFormatError(f"{directory} is not a directory (a checkpoint is a directory "
                               f"with config.json and model*.safetensors)")
    if not (directory / "config.json").is_file():
        raise ModelFormatError(f"checkpoint {directory} has no config.json")
    config, use_lower_bound, bos, eos = _config_from_json(
        _read_json(directory / "config.json", "config.json")[0])
    expected = state_dict_keys(config, lower_bound=use_lower_bound)

    files = _shard_files(directory)
    # Headers first: names, dtypes and shapes are all checked before any data is read.
    found: dict[str, str] = {}
    for name, listed in files.items():
        try:
            infos, _ = safetensors_io.read_header(directory / name)
        except SafetensorsError as error:
            raise ModelFormatError(f"{name}: {error}") from None
        if listed is not None:
            for key in listed:
                if key not in infos:
                    raise ModelFormatError(f"tensor {key!r} is listed in {INDEX_FILE} under "
                                           f"{name}, but that shard lacks it")
            for key in infos:
                if key not in listed:
                    raise ModelFormatError(f"{name} holds tensor {key!r}, which {INDEX_FILE} "
                                           f"does not assign to it")
        for key, info in infos.items():
            if key in found:
                raise ModelFormatError(f"tensor {key!r} appears in both {found[key]} and {name}")
            found[key] = name
            if key not in expected:
                raise ModelFormatError(f"checkpoint has unexpected tensor {key!r} (in {name})")
            if info.dtype not in _FLOAT_DTYPES:
                raise ModelFormatError(f"tensor {key!r} has dtype {info.dtype}; checkpoint "
                                       f"weights must be {', '.join(_FLOAT_DTYPES)}")
            if info.shape != expected[key]:
                raise ModelFormatError(f"tensor {key!r} has shape {list(info.shape)}, expected "
                                       f"{list(expected[key])}")
    for key in expected:
        if key not in found:
            raise ModelFormatError(f"checkpoint lacks tensor {key!r}")

    sd: dict[str, np.ndarray] = {}
    for name in files:
        logger.info("reading %s", directory / name)
        try:
            tensors, _ = safetensors_io.load_file(directory / name)
        except SafetensorsError as error:
            raise ModelFormatError(f"{name}: {error}") from None
        for key, value in tensors.items():
            value = value.astype(np.float32, copy=False)
            if not np.all(np.isfinite(value)):
                raise ModelFormatError(f"tensor {key!r} holds non-finite values")
            sd[key] = value

    if config.vocab_size == 256:
        tokenizer = {"type": "bytes"}
    else:
        tokenizer_path = directory / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise ModelFormatError(f"checkpoint has vocab_size {config.vocab_size} but no "
                                   f"tokenizer.json")
        parsed, text = _read_json(tokenizer_path, "tokenizer.json")
        if not isinstance(parsed, dict):
            raise ModelFormatError("tokenizer.json is not a JSON object")
        tokenizer = {"type": "hf", "tokenizer_json": text, "bos_token_id": bos,
                     "eos_token_id": eos}
        check_tokenizer(tokenizer, config.vocab_size)
    return config, sd, tokenizer


def _split(keys: list[str], sizes: dict[str, int], shards: int) -> list[list[str]]:
    """Split ``keys`` in order into ``shards`` non-empty runs of about equal byte size."""
    total = sum(sizes.values())
    groups: list[list[str]] = [[]]
    filled = 0
    for position, key in enumerate(keys):
        remaining_keys = len(keys) - position
        remaining_groups = shards - len(groups)
        if groups[-1] and remaining_groups > 0 and (
                filled >= total * len(groups) / shards or remaining_keys <= remaining_groups):
            groups.append([])
        groups[-1].append(key)
        filled += sizes[key]
    return groups


def save_checkpoint(config: ModelConfig, sd: dict[str, np.ndarray], path: str | os.PathLike,
                    *, dtype: str = "bf16", shards: int = 1, tokenizer: dict | None = None,
                    force: bool = False) -> None:
    """Write ``sd`` (HF key names, float arrays) as a Hugging Face-layout checkpoint directory.

    ``dtype`` is "bf16" (round to nearest even) or "fp32"; ``shards`` > 1 writes
    ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``. An HF
    ``tokenizer`` (``{"type": "hf", ...}``) is written as tokenizer.json with its bos/eos ids.
    Refuses a directory that already holds a checkpoint unless ``force``, which first removes
    the old config.json, weights and index.
    """
    if dtype not in CHECKPOINT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(CHECKPOINT_DTYPES)}, not {dtype!r}")
    expected = state_dict_keys(config, lower_bound="model.lower_bounds" in sd)
    for key, shape in expected.items():
        if key not in sd:
            raise ValueError(f"state dict lacks tensor {key!r}")
        if tuple(np.shape(sd[key])) != shape:
            raise ValueError(f"tensor {key!r} has shape {list(np.shape(sd[key]))}, "
                             f"expected {list(shape)}")
    extra = sorted(set(sd) - set(expected))
    if extra:
        raise ValueError(f"state dict has unexpected tensor {extra[0]!r}")
    if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= len(sd):
        raise ValueError(f"shards must be an integer in [1, {len(sd)}], not {shards!r}")
    tokenizer = tokenizer or {"type": "bytes"}
    check_tokenizer(tokenizer, config.vocab_size)

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    old = [p for p in directory.iterdir()
           if p.name in ("config.json", SINGLE_FILE, INDEX_FILE, "tokenizer.json")
           or _SHARD_PATTERN.fullmatch(p.name)]
    if old and not force:
        raise FileExistsError(f"{directory} already holds a checkpoint ({old[0].name}); "
                              f"use force to replace it")
    for p in old:
        p.unlink()

    if tokenizer["type"] == "hf":
        (directory / "tokenizer.json").write_text(tokenizer["tokenizer_json"], encoding="utf-8")
        bos, eos = tokenizer["bos_token_id"], tokenizer["eos_token_id"]
    else:
        bos, eos = 1, 2
    hf_config = {
        "architectures": ["HGRNBitForCausalLM"], "model_type": "hgrn_bit",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers, "intermediate_size": config.intermediate_size,
        "hidden_ratio": 4, "hidden_act": "swish" if config.hidden_act == "silu" else "gelu",
        "rms_norm_eps": config.rms_norm_eps, "attn_mode": "fused_recurrent", "num_heads": 1,
        "expand_ratio": 1, "use_short_conv": False, "conv_size": 4, "share_conv_kernel": True,
        "use_lower_bound": "model.lower_bounds" in sd, "max_position_embeddings": 2048,
        "tie_word_embeddings": False, "bos_token_id": bos, "eos_token_id": eos,
        "pad_token_id": None, "use_cache": True, "initializer_range": 0.02,
        "fuse_cross_entropy": True,
        "torch_dtype": "bfloat16" if dtype == "bf16" else "float32",
    }
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n",
                                           encoding="utf-8")

    st_dtype = CHECKPOINT_DTYPES[dtype]
    keys = list(expected)
    itemsize = 2 if dtype == "bf16" else 4
    sizes = {key: int(np.prod(expected[key], dtype=np.int64)) * itemsize for key in keys}
    metadata = {"format": "pt"}
    if shards == 1:
        safetensors_io.save_file({k: np.asarray(sd[k], np.float32) for k in keys},
                                 directory / SINGLE_FILE, metadata,
                                 dtypes={k: st_dtype for k in keys})
        return
    weight_map = {}
    for index, group in enumerate(_split(keys, sizes, shards), start=1):
        name = shard_name(index, shards)
        safetensors_io.save_file({k: np.asarray(sd[k], np.float32) for k in group},
                                 directory / name, metadata,
                                 dtypes={k: st_dtype for k in group})
        weight_map.update({k: name for k in group})
    index_obj = {"metadata": {"total_size": sum(sizes.values())},
                 "weight_map": dict(sorted(weight_map.items()))}
    (directory / INDEX_FILE).write_text(json.dumps(index_obj, indent=2) + "\n", encoding="utf-8")
