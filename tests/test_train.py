"""Training script (tools/train.py): the torch model against the float64 reference, the scan,
the STE gradients, a short training run, its checkpoint, and the command line's errors."""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from mmfree.sim import reference                                           # noqa: E402
from mmfree.sim.model import ModelConfig, from_state_dict, state_dict_keys  # noqa: E402
from mmfree.sim.modelfile import load_model                                 # noqa: E402
from mmfree.tools import train                                              # noqa: E402
from mmfree.tools.checkpoint import load_checkpoint                         # noqa: E402
from mmfree.tools.convert import convert                                    # noqa: E402

CONFIG = ModelConfig(vocab_size=256, hidden_size=32, num_layers=2, intermediate_size=64)
SMALL = ["--hidden-size", "32", "--layers", "2", "--intermediate-size", "64",
         "--batch-size", "4", "--seq-len", "32", "--device", "cpu", "--threads", "1"]

# Public domain (Shakespeare, Sonnet 18); repeated to a few KB of training text.
SONNET = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.
"""


def reference_logits(config, sd, tokens):
    """Logits of mmfree.sim.reference.decode_step run token by token (float64)."""
    model = from_state_dict(config, sd)
    state = reference.init_state(model)
    out = []
    for token in tokens:
        logits, state = reference.decode_step(model, int(token), state)
        out.append(logits)
    return np.array(out)


def torch_logits(model, tokens):
    model = model.double().eval()
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens))[None])[0].numpy()


def perturbed_model(config, seed, scan="parallel"):
    """A fresh model with non-trivial norm weights and lower bounds."""
    torch.manual_seed(seed)
    model = train.HGRNBitForCausalLM(config, scan=scan)
    with torch.no_grad():
        model.model.lower_bounds.normal_(0.0, 1.0)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def assert_matches_reference(model, tokens, what):
    lt = torch_logits(model, tokens)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    lr = reference_logits(model.config, sd, tokens)
    scale = np.abs(lr).max()
    err = np.abs(lt - lr).max()
    assert err <= 1e-9 * scale, f"{what}: max |torch - reference| = {err:.3g} (scale {scale:.3g})"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint trained for a few steps through the command line."""
    root = tmp_path_factory.mktemp("train")
    text = root / "sonnet.txt"
    text.write_text(SONNET * 8, encoding="utf-8")
    out = root / "ckpt"
    log = root / "log.jsonl"
    status = train.main(["--text", str(text), "--out", str(out), "--steps", "8", "--lr", "1e-2",
                         "--warmup", "2", "--eval-interval", "4", "--log", str(log), *SMALL])
    assert status == 0
    return {"root": root, "text": text, "out": out, "log": log}


# --- structure ---------------------------------------------------------------------------------

def test_state_dict_has_hugging_face_layout():
    model = train.HGRNBitForCausalLM(CONFIG)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == state_dict_keys(CONFIG)
    assert sum(p.numel() for p in model.parameters()) == CONFIG.num_parameters


# --- the key test: torch model == float64 reference ----------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_logits_match_reference_at_init(seed):
    tokens = np.random.default_rng(seed).integers(0, 256, 24)
    assert_matches_reference(perturbed_model(CONFIG, seed), tokens, f"seed {seed}")


def test_logits_match_reference_with_gelu_and_three_layers():
    config = ModelConfig(vocab_size=256, hidden_size=24, num_layers=3, intermediate_size=40,
                         hidden_act="gelu")
    tokens = np.random.default_rng(5).integers(0, 256, 24)
    assert_matches_reference(perturbed_model(config, 5), tokens, "gelu, L=3")


def test_logits_match_reference_after_training(trained):
    config, sd, _ = load_checkpoint(trained["out"])
    assert config == CONFIG
    lb = sd["model.lower_bounds"]
    assert np.abs(lb).max() > 1e-4, "training left the lower bounds at zero"
    model = train.HGRNBitForCausalLM(config)
    train.load_state_dict(model, sd)
    tokens = list(SONNET.encode()[:24])
    assert_matches_reference(model, tokens, "trained")


# --- the scan ------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [1, 2, 7, 64, 77])
def test_parallel_scan_equals_sequential(length):
    g = torch.Generator().manual_seed(length)
    f = torch.rand(3, length, 5, generator=g, dtype=torch.float64)
    f[0, ::3] = 0.0             # full reset
    f[1, ::2] = 1.0             # perfect memory
    f[2, 1::4] = 1e-300         # (almost) underflow
    c = torch.randn(3, length, 5, generator=g, dtype=torch.float64)
    h0 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    seq = train.hgrn_scan_sequential(f, c)
    par = train.hgrn_scan(f, c)
    assert torch.allclose(par, seq, rtol=0, atol=1e-12), (par - seq).abs().max()
    seq0, par0 = train.hgrn_scan_sequential(f, c, h0), train.hgrn_scan(f, c, h0)
    assert torch.allclose(par0, seq0, rtol=0, atol=1e-12), (par0 - seq0).abs().max()


def test_parallel_scan_gradients_equal_sequential():
    g = torch.Generator().manual_seed(0)
    f0 = torch.rand(2, 37, 4, generator=g, dtype=torch.float64)
    c0 = torch.randn(2, 37, 4, generator=g, dtype=torch.float64)
    w = torch.randn(2, 37, 4, generator=g, dtype=torch.float64)
    grads = []
    for scan in (train.hgrn_scan_sequential, train.hgrn_scan):
        f, c = f0.clone().requires_grad_(), c0.clone().requires_grad_()
        (scan(f, c) * w).sum().backward()
        grads.append((f.grad, c.grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=0, atol=1e-11), (a - b).abs().max()


def test_model_with_sequential_scan_is_the_same():
    tokens = torch.as_tensor(np.random.default_rng(2).integers(0, 256, (2, 40)))
    a = perturbed_model(CONFIG, 2, scan="parallel").double().eval()
    b = perturbed_model(CONFIG, 2, scan="sequential").double().eval()
    with torch.no_grad():
        assert torch.allclose(a(tokens), b(tokens), rtol=0, atol=1e-12)


# --- BitLinear -----------------------------------------------------------------------------------

def test_bitlinear_gradients_are_the_released_ste():
    """Our exact-integer formulation has the gradients of
    F.linear(y + (q/s - y).detach(), W + (T*gamma - W).detach())."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 5, 16, generator=g, dtype=torch.float64)
    w0 = torch.randn(8, 16, generator=g, dtype=torch.float64) * 0.02
    n0 = 1 + 0.1 * torch.randn(16, generator=g, dtype=torch.float64)
    up = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)

    def released(x, w, n):
        y = train.rms_norm(x, n, 1e-6)
        s = 127.0 / y.abs().amax(-1, keepdim=True).clamp(min=1e-5)
        v = y * s
        q = (torch.sign(v) * torch.floor(v.abs() + 0.5)).clamp(-128, 127) / s
        gamma = w.abs().mean().clamp(min=1e-5)
        wq = (w / gamma).round().clamp(-1, 1) * gamma
        return F.linear(y + (q - y).detach(), w + (wq - w).detach())

    results = []
    for fn in (released, lambda x, w, n: train.bitlinear(x, w, n, 1e-6)):
        x, w, n = (t.clone().requires_grad_() for t in (x0, w0, n0))
        out = fn(x, w, n)
        (out * up).sum().backward()
        results.append((out.detach(), x.grad, w.grad, n.grad))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14), (a - b).abs().max()


# --- training run, checkpoint, conversion --------------------------------------------------------

def test_training_run_writes_checkpoint_and_record(trained):
    out = trained["out"]
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    record = json.loads((out / "training.json").read_text())
    for key in ("command", "hyperparameters", "seed", "steps", "wall_time_s", "final_train_loss",
                "final_val_loss", "device", "torch_version", "parameters"):
        assert key in record, key
    assert record["steps"] == 8 and record["seed"] == 0
    assert record["parameters"] == CONFIG.num_parameters
    history = [h["val_loss"] for h in record["val_history"]]
    assert [h["step"] for h in record["val_history"]] == [0, 4, 8]
    assert all(math.isfinite(v) for v in history)
    assert abs(history[0] - math.log(256)) < 0.1          # uniform at init
    assert history[-1] < history[0] - 0.3, history           # it learns
    lines = [json.loads(line) for line in trained["log"].read_text().splitlines()]
    assert any("train_loss" in r for r in lines) and any("val_loss" in r for r in lines)


def test_training_is_deterministic(trained, tmp_path):
    out = tmp_path / "again"
    status = train.main(["--text", str(trained["text"]), "--out", str(out), "--steps", "8",
                         "--lr", "1e-2", "--warmup", "2", "--eval-interval", "4", *SMALL])
    assert status == 0
    _, a, _ = load_checkpoint(trained["out"])
    _, b, _ = load_checkpoint(out)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_checkpoint_converts_and_loads(trained, tmp_path):
    model_file = tmp_path / "model.safetensors"
    converted = convert(trained["out"], model_file)
    loaded = load_model(model_file)
    assert loaded.config == CONFIG
    _, sd, _ = load_checkpoint(trained["out"])
    expected = from_state_dict(CONFIG, sd)
    for model in (converted, loaded):
        for (name, got), (_, want) in zip(model.bitlinears(), expected.bitlinears()):
            np.testing.assert_array_equal(got.T, want.T, err_msg=name)
            assert got.gamma == pytest.approx(want.gamma, rel=1e-6), name
        np.testing.assert_allclose(model.layers[1].lower_bound, expected.layers[1].lower_bound,
                                   rtol=1e-6)


# --- schedule and data ---------------------------------------------------------------------------

def test_learning_rate_schedule():
    lrs = [train.lr_at(step, 1.0, 10, 100) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_validation_is_last_tenth_in_zero_state_windows():
    data = train.ByteData(bytes(range(200)) * 5, seq_len=16)
    assert len(data.val) == 100 and bytes(data.val) == (bytes(range(200)) * 5)[900:]
    model = perturbed_model(CONFIG, 3).double()
    val = torch.from_numpy(data.val.copy())
    got = train.evaluate(model, val, 16, batch=3)
    total, count = 0.0, 0
    for start in range(0, len(val) - 1, 16):              # 99 predictions: 6 windows + 3
        x, y = val[start:start + 16], val[start + 1:start + 17]
        x = x[:len(y)]
        with torch.no_grad():
            total += F.cross_entropy(model(x[None].long())[0], y.long(), reduction="sum").item()
        count += len(y)
    assert count == 99
    assert got == pytest.approx(total / count, rel=1e-12)


# --- command line errors -------------------------------------------------------------------------

def one_line_error(capsys, status, expected_status, pattern):
    err = capsys.readouterr().err
    assert status == expected_status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0] and pattern in lines[0], err
    assert "Traceback" not in err


def test_missing_text_file(tmp_path, capsys):
    status = train.main(["--text", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o"),
                         *SMALL])
    one_line_error(capsys, status, 1, "nope.txt")


def test_text_too_short(tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text("too short", encoding="utf-8")
    status = train.main(["--text", str(text), "--out", str(tmp_path / "o"), *SMALL])
    one_line_error(capsys, status, 1, "text too short")
    assert not (tmp_path / "o").exists()


def test_refuses_non_empty_out_dir(trained, capsys):
    before = (trained["out"] / "model.safetensors").read_bytes()
    status = train.main(["--text", str(trained["text"]), "--out", str(trained["out"]), *SMALL])
    one_line_error(capsys, status, 1, "--force")
    assert (trained["out"] / "model.safetensors").read_bytes() == before


def test_torch_missing_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "torch", None)
    text = tmp_path / "t.txt"
    text.write_text(SONNET, encoding="utf-8")
    status = train.main(["--text", str(text), "--out", str(tmp_path / "o"), *SMALL])
    one_line_error(capsys, status, 3, train.TORCH_MISSING)
