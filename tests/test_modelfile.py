"""The mmfree model file (sim/modelfile.py): exact round trip, overwrite protection,
atomic writes, and a one-line ModelFormatError for every kind of bad file."""

import json
import os

import numpy as np
import pytest

from mmfree.sim import modelfile
from mmfree.sim import safetensors_io as st
from mmfree.sim.model import ModelConfig, random_model
from mmfree.sim.modelfile import ModelFormatError, load_model, save_model
from mmfree.sim.packing import PACKINGS

CONFIG = ModelConfig(vocab_size=256, hidden_size=32, num_layers=2, intermediate_size=64)
HF_TOKENIZER = {"type": "hf", "tokenizer_json": json.dumps({"version": "1.0", "model": {}}),
                "bos_token_id": 1, "eos_token_id": 2}


def tiny_model(packing="2bit", seed=0, tokenizer=None):
    model = random_model(ModelConfig(**dict(CONFIG.to_json(), packing=packing)), seed)
    if tokenizer is not None:
        model.tokenizer = tokenizer
    return model


def assert_models_equal(got, want):
    assert got.config == want.config
    assert got.tokenizer == want.tokenizer
    np.testing.assert_array_equal(got.emb_q, want.emb_q)
    np.testing.assert_array_equal(got.emb_scale, want.emb_scale)
    np.testing.assert_array_equal(got.embeddings, want.emb_q * want.emb_scale[:, None])
    np.testing.assert_array_equal(got.norm, want.norm)
    assert len(got.layers) == len(want.layers)
    for a, b in zip(got.layers, want.layers):
        for name in ("attn_norm", "g_norm", "mlp_norm", "lower_bound"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    names = []
    for (name_a, a), (name_b, b) in zip(got.bitlinears(), want.bitlinears(), strict=True):
        assert name_a == name_b
        assert a.T.dtype == np.int8
        np.testing.assert_array_equal(a.T, b.T, err_msg=name_a)
        assert a.gamma == b.gamma, name_a
        np.testing.assert_array_equal(a.norm, b.norm, err_msg=name_a)
        names.append(name_a)
    assert len(names) == 6 * CONFIG.num_layers + 1


@pytest.mark.parametrize("packing", PACKINGS)
def test_exact_round_trip(packing, tmp_path):
    model = tiny_model(packing)
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    assert_models_equal(loaded, model)
    assert loaded.embeddings.dtype == np.float64
    # Saving what was loaded reproduces the file byte for byte.
    save_model(loaded, tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()


def test_file_layout(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(tiny_model("1.6bit", tokenizer=HF_TOKENIZER), path)
    infos, metadata = st.read_header(path)
    assert metadata["format"] == "mmfree-model" and metadata["format_version"] == "1"
    assert json.loads(metadata["config"]) == dict(CONFIG.to_json(), packing="1.6bit")
    assert json.loads(metadata["tokenizer"]) == HF_TOKENIZER
    assert infos["embeddings.q"].dtype == "I8" and infos["embeddings.q"].shape == (256, 32)
    assert infos["layers.1.mlp.gate_proj.weight"].dtype == "U8"
    assert infos["layers.1.mlp.gate_proj.weight"].shape == (128, 7)      # ceil(32 / 5)
    assert infos["layers.0.mlp.down_proj.weight"].shape == (32, 13)      # ceil(64 / 5)
    assert infos["lm_head.gamma"].shape == (1,) and infos["lower_bounds"].shape == (2, 32)
    assert set(infos) == set(modelfile.tensor_specs(load_model(path).config))


def test_hf_tokenizer_round_trip(tmp_path):
    model = tiny_model(tokenizer=HF_TOKENIZER)
    save_model(model, tmp_path / "m.safetensors")
    assert load_model(tmp_path / "m.safetensors").tokenizer == HF_TOKENIZER


def test_no_overwrite_without_force(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=r"m.safetensors already exists \(use force"):
        save_model(tiny_model(), path)
    assert path.read_bytes() == b"precious"
    save_model(tiny_model(), path, force=True)
    assert_models_equal(load_model(path), tiny_model())
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_directory_target_refused(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"is a directory"):
        save_model(tiny_model(), tmp_path, force=True)


@pytest.mark.parametrize("force", [False, True])
def test_failed_write_is_atomic(tmp_path, monkeypatch, force):
    path = tmp_path / "m.safetensors"
    if force:
        path.write_bytes(b"precious")

    def failing_write(file, tensors, metadata=None, *, dtypes=None):
        file.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(modelfile.safetensors_io, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_model(tiny_model(), path, force=force)
    if force:
        assert path.read_bytes() == b"precious"
        assert os.listdir(tmp_path) == ["m.safetensors"]
    else:
        assert os.listdir(tmp_path) == []


def test_invalid_model_not_saved(tmp_path):
    model = tiny_model(tokenizer={"type": "sentencepiece"})
    with pytest.raises(ValueError, match=r"cannot save an invalid model: unknown tokenizer "
                                         r"type 'sentencepiece'"):
        save_model(model, tmp_path / "m.safetensors")
    model = tiny_model()
    model.lm_head.gamma = float("nan")
    with pytest.raises(ValueError, match=r"cannot save an invalid model: tensor "
                                         r"'lm_head.gamma' holds a non-finite value nan"):
        save_model(model, tmp_path / "m.safetensors")
    model = tiny_model()
    model.layers[1].o_proj.T[2, 3] = 2
    with pytest.raises(ValueError, match=r"cannot save an invalid model: layers.1.attn.o_proj: "
                                         r"ternary matrix holds 2 at row 2, column 3$"):
        save_model(model, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


# --- bad files --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "m.safetensors"
    save_model(tiny_model(), path)
    return path


def variant(good, tmp_path, mutate):
    """Write a copy of the good model file after ``mutate(tensors, metadata, dtypes)``."""
    tensors, metadata = st.load_file(good)
    dtypes = {name: info.dtype for name, info in st.read_header(good)[0].items()}
    mutate(tensors, metadata, dtypes)
    dtypes = {k: v for k, v in dtypes.items() if k in tensors}
    path = tmp_path / "bad.safetensors"
    st.save_file(tensors, path, metadata, dtypes=dtypes)
    return path


def set_meta(key, value):
    def mutate(tensors, metadata, dtypes):
        if value is None:
            del metadata[key]
        else:
            metadata[key] = value
    return mutate


def set_config(**changes):
    config = dict(CONFIG.to_json(), **changes)
    return set_meta("config", json.dumps(config))


def set_tensor(name, value, dtype=None):
    def mutate(tensors, metadata, dtypes):
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
            if dtype:
                dtypes[name] = dtype
            else:
                dtypes.pop(name, None)
    return mutate


def edit_tensor(name, index, value):
    def mutate(tensors, metadata, dtypes):
        tensors[name] = tensors[name].copy()
        tensors[name][index] = value
    return mutate


def good_tokenizer(**changes):
    return set_meta("tokenizer", json.dumps(dict(HF_TOKENIZER, **changes)))


BAD = {
    "format missing": (set_meta("format", None),
                       r"^not an mmfree model file \(no 'format' entry in its metadata\)$"),
    "format wrong": (set_meta("format", "pt"),
                     r"^not an mmfree model file \(format is 'pt', expected 'mmfree-model'\)$"),
    "version missing": (set_meta("format_version", None),
                        r"^model file lacks the 'format_version' metadata entry$"),
    "version 7": (set_meta("format_version", "7"),
                  r"^unsupported model format version 7 \(this mmfree reads version 1\)$"),
    "config missing": (set_meta("config", None), r"^model file lacks the 'config' metadata"),
    "config not json": (set_meta("config", "{vocab_size: 3"),
                        r"^config metadata is not valid JSON: "),
    "config not object": (set_meta("config", "[1]"), r"^invalid config: config must be a JSON "
                                                     r"object$"),
    "config bad size": (set_config(hidden_size=-3), r"^invalid config: hidden_size must be a "
                                                    r"positive integer, not -3$"),
    "config bad packing": (set_config(packing="3bit"), r"^invalid config: packing must be one "
                                                       r"of 2bit, 1.6bit, not '3bit'$"),
    "config unknown field": (set_config(heads=2), r"^invalid config: config has unknown field "
                                                  r"'heads'$"),
    "config lacks field": (set_meta("config", json.dumps({"vocab_size": 256})),
                           r"^invalid config: config lacks field 'hidden_size'$"),
    "config string size": (set_config(hidden_size="32"),
                           r"^invalid config: hidden_size must be a positive integer"),
    "tokenizer missing": (set_meta("tokenizer", None),
                          r"^model file lacks the 'tokenizer' metadata entry$"),
    "tokenizer not json": (set_meta("tokenizer", "{"), r"^tokenizer metadata is not valid JSON"),
    "tokenizer unknown type": (set_meta("tokenizer", json.dumps({"type": "spm"})),
                               r"^unknown tokenizer type 'spm' \(known: bytes, hf\)$"),
    "tokenizer not object": (set_meta("tokenizer", "3"), r"^tokenizer must be a JSON object$"),
    "tokenizer extra field": (set_meta("tokenizer", json.dumps({"type": "bytes", "x": 1})),
                              r"^tokenizer of type 'bytes' has unknown field 'x'$"),
    "tokenizer lacks field": (set_meta("tokenizer", json.dumps({"type": "hf"})),
                              r"^tokenizer of type 'hf' lacks field 'bos_token_id'$"),
    "tokenizer bad json text": (good_tokenizer(tokenizer_json="{oops"),
                                r"^tokenizer_json is not valid JSON"),
    "tokenizer bos out of range": (good_tokenizer(bos_token_id=256),
                                   r"^tokenizer bos_token_id must be null or an integer in "
                                   r"\[0, 256\), not 256$"),
    "missing tensor": (set_tensor("layers.1.mlp.down_proj.gamma", None),
                       r"^model file lacks tensor 'layers.1.mlp.down_proj.gamma'$"),
    "extra tensor": (set_tensor("extra", np.zeros(2)),
                     r"^model file has unexpected tensor 'extra'$"),
    "dtype F32": (set_tensor("norm", np.ones(32, np.float32)),
                  r"^tensor 'norm' has dtype F32, expected F64$"),
    "dtype BF16": (set_tensor("layers.0.attn_norm", np.ones(32, np.float32), "BF16"),
                   r"^tensor 'layers.0.attn_norm' has dtype BF16, expected F64$"),
    "dtype of packed": (set_tensor("lm_head.weight", np.zeros((256, 8), np.int8)),
                        r"^tensor 'lm_head.weight' has dtype I8, expected U8$"),
    "shape": (set_tensor("norm", np.ones(31)), r"^tensor 'norm' has shape \[31\], expected "
                                               r"\[32\]$"),
    "packed width for other packing": (set_config(packing="1.6bit"),
                                       r"^tensor 'layers.0.attn.i_proj.weight' has shape "
                                       r"\[32, 8\], expected \[32, 7\]$"),
    "gamma shape": (set_tensor("lm_head.gamma", np.ones(())),
                    r"^tensor 'lm_head.gamma' has shape \[\], expected \[1\]$"),
    "invalid 2-bit code": (edit_tensor("layers.0.attn.f_proj.weight", (3, 2), 0b10_00_00_00),
                           r"^tensor 'layers.0.attn.f_proj.weight': invalid 2-bit code 0b10 at "
                           r"row 3, column 11 "),
    "non-finite norm": (edit_tensor("layers.1.mlp_norm", 3, np.nan),
                        r"^tensor 'layers.1.mlp_norm' holds a non-finite value nan at index "
                        r"\[3\]$"),
    "infinite lower bound": (edit_tensor("lower_bounds", (1, 5), np.inf),
                             r"^tensor 'lower_bounds' holds a non-finite value inf at index "
                             r"\[1, 5\]$"),
    "lower bound out of range": (edit_tensor("lower_bounds", (1, 4), 1.5),
                                 r"^tensor 'lower_bounds' holds 1.5 at index \[1, 4\]; lower "
                                 r"bounds lie in \[0, 1\]$"),
    "gamma zero": (edit_tensor("lm_head.gamma", 0, 0.0),
                   r"^tensor 'lm_head.gamma' holds 0.0 at index 0; it must be positive$"),
    "gamma negative": (edit_tensor("layers.0.mlp.gate_proj.gamma", 0, -0.5),
                       r"^tensor 'layers.0.mlp.gate_proj.gamma' holds -0.5 at index 0; it must "
                       r"be positive$"),
    "embedding scale zero": (edit_tensor("embeddings.scale", 17, 0.0),
                             r"^tensor 'embeddings.scale' holds 0.0 at index 17; it must be "
                             r"positive$"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_model_file(case, good_file, tmp_path):
    mutate, pattern = BAD[case]
    path = variant(good_file, tmp_path, mutate)
    with pytest.raises(ModelFormatError, match=pattern) as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_invalid_1p6bit_byte(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(tiny_model("1.6bit"), path)
    bad = variant(path, tmp_path, edit_tensor("lm_head.weight", (200, 6), 255))
    with pytest.raises(ModelFormatError, match=r"^tensor 'lm_head.weight': invalid 1.6-bit byte "
                                               r"255 \(> 242\) at row 200, byte 6 "):
        load_model(bad)


def test_nonzero_padding(tmp_path):
    # d = 30 does not fill whole bytes: 2 padding weights per row in 2-bit packing.
    model = random_model(ModelConfig(vocab_size=256, hidden_size=30, num_layers=1,
                                     intermediate_size=64))
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    bad = variant(path, tmp_path, edit_tensor("layers.0.attn.o_proj.weight", (5, 7), 0b0100_0000))
    with pytest.raises(ModelFormatError, match=r"^tensor 'layers.0.attn.o_proj.weight': "
                                               r"non-zero padding weight 1 at row 5, column 31"):
        load_model(bad)


def test_not_safetensors(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_text("hello, this is not a model\n")
    with pytest.raises(ModelFormatError, match=r"^not a valid safetensors file: header length "
                                               r"\d+ is absurd"):
        load_model(path)
    path.write_bytes(b"abc")
    with pytest.raises(ModelFormatError, match=r"^not a valid safetensors file: file is 3 bytes"):
        load_model(path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated(good_file, tmp_path, keep):
    data = good_file.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ModelFormatError, match=r"^not a valid safetensors file: .*(runs? past|"
                                               r"truncated)"):
        load_model(path)


def test_corrupt_header(good_file, tmp_path):
    data = bytearray(good_file.read_bytes())
    data[8] = ord("[")
    path = tmp_path / "bad.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match=r"^not a valid safetensors file: header does not "
                                               r"start with"):
        load_model(path)


def test_missing_path(tmp_path):
    with pytest.raises(ModelFormatError, match=r"^no such model file: .*nothing.safetensors$"):
        load_model(tmp_path / "nothing.safetensors")
    with pytest.raises(ModelFormatError, match=r"is not a file$"):
        load_model(tmp_path)


def test_error_is_value_error():
    assert issubclass(ModelFormatError, ValueError)
