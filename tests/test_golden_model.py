"""The integer golden model (:mod:`mmfree.sim.golden`) against the float64 reference
(:mod:`mmfree.sim.reference`) on whole random models, 128 decode steps each: the project's
documented model-level tolerances, plus determinism, state handling, packing independence and
the absence of overflow.

The float reference is given exactly the int8 embeddings the integer model uses
(``embeddings = emb_q * emb_scale``), so for the SiLU model every difference comes from the
integer arithmetic; the GELU model adds ShiftGELU's x sigmoid(1.702 x) in place of the exact
GELU, measured both with and without that approximation.
The model is discontinuous by design (MODEL.md): an error of 1e-6 can flip one int8 activation
at a rounding boundary, which moves that layer's output by about 1% and, through the recurrent
state, later tokens too. So errors are bounded per layer by their median and 95th percentile
over the tokens, not by their maximum, and deeper layers (which inherit earlier flips, with
forget gates near 1 keeping them in the state) have looser bounds than layer 0.

Bounds were set from measurements on seeds 0..3 of each configuration (the tests run seed 0):
each comment gives seed 0's number and the largest over the four seeds; the bound is about 1.5x
that largest value, so that a benign change that moves individual flips still passes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mmfree.sim import golden, reference
from mmfree.sim.model import ModelConfig, random_model

N_TOKENS = 128

CONFIGS = {
    "silu-d64-L2": ModelConfig(vocab_size=256, hidden_size=64, num_layers=2,
                               intermediate_size=192),
    "gelu-d96-L3": ModelConfig(vocab_size=256, hidden_size=96, num_layers=3,
                               intermediate_size=256, hidden_act="gelu"),
}
SEED = 0


def make_model(config: ModelConfig, seed: int):
    model = random_model(config, seed)
    # The float reference then sees exactly the int8 embeddings of the integer model.
    model.embeddings = model.emb_q * model.emb_scale[:, None]
    return model


def prompt(config: ModelConfig, seed: int, count: int = N_TOKENS) -> list[int]:
    rng = np.random.default_rng([seed, 100])
    return [int(t) for t in rng.integers(0, config.vocab_size, count)]


def sigmoid_gelu(x: np.ndarray) -> np.ndarray:
    """The activation the integer model computes for hidden_act="gelu": x sigmoid(1.702 x)."""
    return x * reference.sigmoid(golden.GELU_ALPHA * x)


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@dataclasses.dataclass
class Comparison:
    """Per-token errors of the integer model against the float reference."""
    x: list          # [layer][token]: residual after the layer, relative L2
    h: list          # [layer][token]: recurrent state after the token, relative L2
    logits: list     # [token]: relative L2 of the logits (integer logits * 2**-F_LOGIT)
    top1: int        # tokens whose greedy choice agrees
    int_logits: np.ndarray


def compare(model, im: golden.IntModel, tokens: list[int]) -> Comparison:
    cfg = model.config
    layers = cfg.num_layers
    state_i, state_f = golden.init_state(im), reference.init_state(model)
    out = Comparison(x=[[] for _ in range(layers)], h=[[] for _ in range(layers)], logits=[],
                     top1=0, int_logits=np.zeros((len(tokens), cfg.vocab_size), np.int64))
    for step, token in enumerate(tokens):
        trace_i, trace_f = {}, {}
        logits_i, state_i = golden.decode_step(im, token, state_i, trace=trace_i)
        logits_f, state_f = reference.decode_step(model, token, state_f, trace=trace_f)
        for layer in range(layers):
            x_i = trace_i["x"][layer] * 2.0**-im.f_x
            out.x[layer].append(rel_l2(x_i, trace_f["x"][layer]))
            h_i = state_i[layer] * 2.0**-im.layers[layer].i_proj.f_out
            out.h[layer].append(rel_l2(h_i, state_f[layer]))
        out.logits.append(rel_l2(logits_i * 2.0**-golden.F_LOGIT, logits_f))
        out.top1 += int(golden.argmax(logits_i) == int(np.argmax(logits_f)))
        out.int_logits[step] = logits_i
    return out


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def run(request):
    config = CONFIGS[request.param]
    model = make_model(config, SEED)
    im = golden.prepare(model)
    tokens = prompt(config, SEED)
    result = {"name": request.param, "model": model, "im": im, "tokens": tokens,
              "cmp": compare(model, im, tokens)}
    result["against"] = {"model": result["cmp"]}
    if config.hidden_act == "gelu":
        # The same run against a reference whose GELU is the integer model's x sigmoid(1.702 x):
        # what is left is the integer arithmetic alone.
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(reference, "gelu", sigmoid_gelu)
            result["against"]["same-act"] = compare(model, im, tokens)
    return result


# --------------------------------------------------------------------------------------------
# Tolerances: the project's documented integer-vs-float tolerances on random models.
#
# Against "model": the float reference as the model defines it (SiLU; exact erf GELU for
# hidden_act="gelu"). Against "same-act" (GELU model only): a reference whose GELU is the
# integer model's x sigmoid(1.702 x), so only the integer arithmetic differs.
# Each entry: measured seed 0 / largest of seeds 0..3 -> bound.
#
# Why errors are what they are:
# - Layer 0 on a token without an int8 flip: ~2e-5 (the integer arithmetic's floor). A token
#   with a flip: ~1e-2. The median sees the floor, the 95th percentile sees flips.
# - Deeper layers and the states inherit every earlier flip through the recurrent state.
# - The logits of these random models are tiny (rms ~0.1, vs 2**-8 = 0.004 per logit LSB), so
#   F_LOGIT rounding alone is ~1% relative: hence also an absolute bound in logit LSBs.
# - The exact GELU differs from x sigmoid(1.702 x) by up to 0.02 per element: 1.3e-2 relative
#   at layer 0 already, a modelling approximation (ShiftGELU), not an arithmetic error.
TOLERANCES = {
    ("silu-d64-L2", "model"): {
        # residual x per layer, (median, p95):
        #   L0 median 1.75e-5 / 2.75e-5 -> 5e-5;  p95 1.64e-3 / 1.64e-3 -> 2e-2 (*)
        #   L1 median 8.04e-3 / 8.04e-3 -> 1.3e-2; p95 1.38e-2 / 1.51e-2 -> 2.3e-2
        # (*) p95 of layer 0 sits where tokens with a flip begin (one flip: up to 1.5e-2,
        #     measured max 1.48e-2); other prompts of seed 0 gave 9.7e-3, so the bound is at
        #     the flip level, and "clean0" bounds the share of tokens at the floor instead.
        "x": [(5e-5, 2e-2), (1.3e-2, 2.3e-2)],
        # state h per layer (format im.layers[l].i_proj.f_out):
        #   L0 median 1.59e-5 / 2.63e-5 -> 5e-5;  p95 3.04e-5 / 7.83e-5 -> 1.5e-4
        #   L1 median 7.12e-4 / 7.12e-4 -> 2e-3;  p95 5.43e-3 / 7.22e-3 -> 1.4e-2
        "h": [(5e-5, 1.5e-4), (2e-3, 1.4e-2)],
        # logits relative L2: median 1.54e-2 / 1.54e-2 -> 2.4e-2; p95 2.03e-2 / 2.12e-2 -> 3.4e-2
        "logits": (2.4e-2, 3.4e-2),
        # per-token max |logit error| in LSB (2**-8): median 1.16 / 1.16 -> 2; p95 1.75 / 1.75 -> 3
        "logit_lsb": (2.0, 3.0),
        # tokens whose layer-0 residual error is < 1e-4: 0.938 / min 0.938 -> >= 0.90
        "clean0": 0.90,
        # greedy top-1 agreement over 128 tokens: 125 / min 123 -> >= 118
        "top1": 118,
    },
    ("gelu-d96-L3", "model"): {
        #   L0 median 1.34e-2 / 1.34e-2 -> 2e-2;   p95 1.73e-2 / 1.84e-2 -> 2.8e-2
        #   L1 median 2.46e-2 / 2.46e-2 -> 3.7e-2; p95 3.32e-2 / 3.32e-2 -> 5e-2
        #   L2 median 3.25e-2 / 3.25e-2 -> 4.9e-2; p95 4.74e-2 / 4.74e-2 -> 7.1e-2
        "x": [(2e-2, 2.8e-2), (3.7e-2, 5e-2), (4.9e-2, 7.1e-2)],
        #   h0 median 1.06e-5 / 2.68e-5 -> 5e-5;   p95 2.13e-5 / 3.67e-5 -> 1.5e-4
        #   h1 median 1.57e-2 / 1.63e-2 -> 2.5e-2; p95 2.09e-2 / 2.14e-2 -> 3.2e-2
        #   h2 median 2.44e-2 / 2.48e-2 -> 3.7e-2; p95 3.45e-2 / 3.45e-2 -> 5.2e-2
        "h": [(5e-5, 1.5e-4), (2.5e-2, 3.2e-2), (3.7e-2, 5.2e-2)],
        # logits: median 3.42e-2 / 3.42e-2 -> 5.1e-2; p95 5.09e-2 / 5.09e-2 -> 7.6e-2
        "logits": (5.1e-2, 7.6e-2),
        # top-1: 120 / min 120 -> >= 114
        "top1": 114,
    },
    ("gelu-d96-L3", "same-act"): {
        #   L0 median 1.96e-5 / 2.92e-5 -> 5e-5;   p95 2.02e-3 / 6.80e-3 -> 2e-2 (see (*))
        #   L1 median 9.17e-3 / 1.05e-2 -> 1.6e-2; p95 1.56e-2 / 1.81e-2 -> 2.7e-2
        #   L2 median 1.63e-2 / 1.78e-2 -> 2.7e-2; p95 2.44e-2 / 2.70e-2 -> 4e-2
        "x": [(5e-5, 2e-2), (1.6e-2, 2.7e-2), (2.7e-2, 4e-2)],
        #   h0 median 1.06e-5 / 2.68e-5 -> 5e-5;   p95 2.13e-5 / 3.67e-5 -> 1.5e-4
        #   h1 median 6.06e-4 / 1.58e-3 -> 2.4e-3; p95 7.02e-3 / 9.65e-3 -> 1.5e-2
        #   h2 median 1.01e-2 / 1.33e-2 -> 2e-2;   p95 1.59e-2 / 1.94e-2 -> 2.9e-2
        "h": [(5e-5, 1.5e-4), (2.4e-3, 1.5e-2), (2e-2, 2.9e-2)],
        # logits: median 2.00e-2 / 2.18e-2 -> 3.3e-2; p95 2.84e-2 / 3.18e-2 -> 4.8e-2
        "logits": (3.3e-2, 4.8e-2),
        # logit LSB: median 2.09 / 2.11 -> 3.5; p95 3.08 / 3.22 -> 5
        "logit_lsb": (3.5, 5.0),
        # clean0: 0.906 / min 0.867 -> >= 0.80
        "clean0": 0.80,
        # top-1: 122 / min 122 -> >= 117
        "top1": 117,
    },
}


def _comparisons(run):
    for against, cmp in run["against"].items():
        yield f"{run['name']} vs {against}", TOLERANCES[(run["name"], against)], cmp


def _check_layers(errors: list, bounds: list, what: str, where: str):
    assert len(errors) == len(bounds)
    for layer, (errs, (median_tol, p95_tol)) in enumerate(zip(errors, bounds)):
        assert len(errs) == N_TOKENS
        median, p95 = float(np.median(errs)), float(np.percentile(errs, 95))
        context = f"{where}, seed {SEED}: {what} layer {layer}"
        assert median <= median_tol, f"{context} median {median:.3g}"
        assert p95 <= p95_tol, f"{context} p95 {p95:.3g}"


def test_tolerance_table_covers_every_run(run):
    assert {key for key in TOLERANCES if key[0] == run["name"]} == \
        {(run["name"], against) for against in run["against"]}


def test_residual_error(run):
    for where, tol, cmp in _comparisons(run):
        _check_layers(cmp.x, tol["x"], "residual", where)
        if "clean0" in tol:
            clean = float(np.mean(np.array(cmp.x[0]) < 1e-4))
            assert clean >= tol["clean0"], f"{where}: only {clean:.3f} of layer-0 tokens clean"


def test_state_error(run):
    for where, tol, cmp in _comparisons(run):
        _check_layers(cmp.h, tol["h"], "state", where)


def test_logits_error(run):
    for where, tol, cmp in _comparisons(run):
        median, p95 = float(np.median(cmp.logits)), float(np.percentile(cmp.logits, 95))
        assert median <= tol["logits"][0] and p95 <= tol["logits"][1], (where, median, p95)


def test_logits_error_in_lsb(run):
    model, tokens = run["model"], run["tokens"]
    for where, tol, cmp in _comparisons(run):
        if "logit_lsb" not in tol:
            continue
        with pytest.MonkeyPatch.context() as mp:
            if where.endswith("same-act"):
                mp.setattr(reference, "gelu", sigmoid_gelu)
            state = reference.init_state(model)
            errs = []
            for step, token in enumerate(tokens):
                logits_f, state = reference.decode_step(model, token, state)
                errs.append(np.max(np.abs(cmp.int_logits[step] - logits_f * 2.0**golden.F_LOGIT)))
        median, p95 = float(np.median(errs)), float(np.percentile(errs, 95))
        assert median <= tol["logit_lsb"][0] and p95 <= tol["logit_lsb"][1], (where, median, p95)


def test_top1_agreement(run):
    for where, tol, cmp in _comparisons(run):
        assert cmp.top1 >= tol["top1"], f"{where}: top-1 agrees on {cmp.top1}/{N_TOKENS}"


# --------------------------------------------------------------------------------------------
# Behaviour of the integer decode step

def _run_int(im, tokens, state=None):
    state = golden.init_state(im) if state is None else state
    logits = []
    for token in tokens:
        out, state = golden.decode_step(im, token, state)
        logits.append(out)
    return np.array(logits), state


def test_deterministic_across_prepare(run):
    # A second prepare() of the same model gives the same constants, hence the same logits.
    im2 = golden.prepare(run["model"])
    logits, _ = _run_int(im2, run["tokens"][:32])
    assert np.array_equal(logits, run["cmp"].int_logits[:32])


def test_same_prompt_twice_from_fresh_state(run):
    # Prefill is the decode step run once per prompt token: the only mode, so running the same
    # prompt twice from a fresh state must give identical logits and states.
    first, state1 = _run_int(run["im"], run["tokens"])
    second, state2 = _run_int(run["im"], run["tokens"])
    assert np.array_equal(first, second) and np.array_equal(state1, state2)
    assert np.array_equal(first, run["cmp"].int_logits)


def test_decode_step_does_not_mutate_state(run):
    im, model = run["im"], run["model"]
    _, state = _run_int(im, run["tokens"][:5])
    assert state.any()
    before = state.copy()
    logits, new_state = golden.decode_step(im, run["tokens"][5], state)
    assert np.array_equal(state, before)
    assert new_state is not state and not np.array_equal(new_state, state)
    # The float reference keeps the same contract.
    state_f = reference.init_state(model)
    for token in run["tokens"][:5]:
        _, state_f = reference.decode_step(model, token, state_f)
    before_f = state_f.copy()
    reference.decode_step(model, run["tokens"][5], state_f)
    assert np.array_equal(state_f, before_f)


def test_state_and_logits_format(run):
    im = run["im"]
    cfg = im.config
    state = golden.init_state(im)
    assert state.shape == (cfg.num_layers, cfg.hidden_size) and state.dtype == np.int64
    logits, state = golden.decode_step(im, run["tokens"][0], state)
    assert logits.shape == (cfg.vocab_size,) and logits.dtype == np.int64
    assert state.shape == (cfg.num_layers, cfg.hidden_size) and state.dtype == np.int64
    assert np.all(np.abs(logits) < 1 << (golden.LOGIT_BITS - 1))


@pytest.mark.parametrize("token", [-1, 256, 10**6])
def test_token_out_of_range(run, token):
    with pytest.raises(ValueError):
        golden.decode_step(run["im"], token, golden.init_state(run["im"]))


def test_trace(run):
    # Works for both configurations (the GELU one included): one residual per layer, int64 in
    # format f_x, the last one being what the final norm sees.
    im, cfg = run["im"], run["im"].config
    trace = {}
    golden.decode_step(im, run["tokens"][0], golden.init_state(im), trace=trace)
    assert list(trace) == ["x"] and len(trace["x"]) == cfg.num_layers
    for x in trace["x"]:
        assert x.shape == (cfg.hidden_size,) and x.dtype == np.int64
    logits_plain, _ = golden.decode_step(im, run["tokens"][0], golden.init_state(im))
    assert np.array_equal(im.lm_head(im.norm(trace["x"][-1])), logits_plain)


def test_packing_does_not_change_numerics(run, tmp_path):
    """A model saved with 1.6-bit packing (5 weights per byte) loads back to the same ternary
    matrices, so its integer logits equal the 2-bit model's bit for bit: only T matters."""
    from mmfree.sim.modelfile import load_model, save_model

    model = run["model"]
    logits = {}
    sizes = {}
    for packing in ("2bit", "1.6bit"):
        config = dataclasses.replace(model.config, packing=packing)
        path = tmp_path / f"model-{packing}.safetensors"
        save_model(dataclasses.replace(model, config=config), path)
        sizes[packing] = path.stat().st_size
        loaded = load_model(path)
        assert loaded.config.packing == packing
        for (name, a), (_, b) in zip(model.bitlinears(), loaded.bitlinears()):
            assert np.array_equal(a.T, b.T) and a.gamma == b.gamma, name
        logits[packing], _ = _run_int(golden.prepare(loaded), run["tokens"][:16])
    assert sizes["1.6bit"] < sizes["2bit"]
    assert np.array_equal(logits["1.6bit"], logits["2bit"])
    assert np.array_equal(logits["2bit"], run["cmp"].int_logits[:16])


# --------------------------------------------------------------------------------------------
# prepare() chooses formats that never overflow

def test_prepared_formats(run):
    model, im = run["model"], run["im"]
    top = 127.0 * float(np.max(model.emb_scale)) * 2.0**im.f_x
    assert 2.0**21 < top <= 2.0**22                           # largest embedding at ~2**22
    assert np.all(im.emb_m < 1 << golden.MANT_BITS)
    assert im.emb_m.max() >= 1 << (golden.MANT_BITS - 1)
    for layer, lc in zip(model.layers, im.layers):
        for name in ("i_proj", "f_proj", "g_proj", "gate_proj"):
            bound = golden.bitlinear_bound(getattr(layer, name))
            assert bound * 2.0**getattr(lc, name).f_out < 2.0**golden.ACT_HEADROOM, name
        assert golden.norm_bound(layer.g_norm) * golden.bitlinear_bound(layer.i_proj) \
            * 2.0**lc.f_o < 2.0**golden.ACT_HEADROOM
        assert golden.bitlinear_bound(layer.gate_proj) ** 2 * 2.0**lc.f_p \
            < 2.0**golden.ACT_HEADROOM
        for norm in (lc.attn_norm, lc.g_norm, lc.mlp_norm):
            assert np.all(np.abs(norm.w) < 1 << (golden.NORM_W_BITS - 1)) and norm.eps >= 1


def test_no_value_exceeds_its_width(run, monkeypatch):
    """Run the whole prompt with spies: no saturation ever clamps, every 32-bit activation stays
    below 2**ACT_HEADROOM (so products of two fit int64), residuals fit X_BITS, logits fit
    LOGIT_BITS, and every RMSNorm input is within 32 bits (rmsnorm asserts it)."""
    im = run["im"]
    act_ids = {id(getattr(lc, name)) for lc in im.layers
               for name in ("i_proj", "f_proj", "g_proj", "gate_proj")}
    residual_ids = {id(getattr(lc, name)) for lc in im.layers for name in ("o_proj", "down_proj")}
    seen = {"saturate": 0, "act": 0, "residual": 0, "logits": 0, "mlgru": 0}
    clamped = []
    peak = {"act": 0, "x": 0}

    saturate = golden.saturate

    def saturate_spy(v, bits):
        out = saturate(v, bits)
        seen["saturate"] += 1
        if np.any(np.asarray(out) != np.asarray(v)):
            clamped.append(bits)
        return out

    call = golden.BitLinearConst.__call__

    def bitlinear_spy(self, v):
        out = call(self, v)
        top = int(np.max(np.abs(out)))
        if id(self) in act_ids:
            seen["act"] += 1
            peak["act"] = max(peak["act"], top)
            assert top < 1 << golden.ACT_HEADROOM
        elif id(self) in residual_ids:
            seen["residual"] += 1
            assert top < (1 << (golden.X_BITS - 1)) - 1
        else:
            assert self is im.lm_head
            seen["logits"] += 1
            assert top < (1 << (golden.LOGIT_BITS - 1)) - 1
        return out

    mlgru = golden.mlgru

    def mlgru_spy(lc, a, h):
        o, h_new = mlgru(lc, a, h)
        seen["mlgru"] += 1
        assert np.all(np.abs(o) < 1 << golden.ACT_HEADROOM)
        assert np.all(np.abs(h_new) < 1 << golden.ACT_HEADROOM)
        return o, h_new

    monkeypatch.setattr(golden, "saturate", saturate_spy)
    monkeypatch.setattr(golden.BitLinearConst, "__call__", bitlinear_spy)
    monkeypatch.setattr(golden, "mlgru", mlgru_spy)
    state = golden.init_state(im)
    for token in run["tokens"]:
        trace = {}
        _, state = golden.decode_step(im, token, state, trace=trace)
        for x in trace["x"]:
            peak["x"] = max(peak["x"], int(np.max(np.abs(x))))
    assert not clamped, f"saturation clamped {len(clamped)} times (widths {set(clamped)})"
    layers = im.config.num_layers
    assert seen["act"] == 4 * layers * N_TOKENS and seen["residual"] == 2 * layers * N_TOKENS
    assert seen["logits"] == N_TOKENS and seen["mlgru"] == layers * N_TOKENS
    assert seen["saturate"] > 0
    # Measured peaks (seed 0 / largest of seeds 0..3), as log2 of the integer:
    #   residual x:  25.12 / 25.50 (silu), 25.84 / 25.89 (gelu) of X_BITS' 31: the residual grows
    #                ~14x beyond the largest embedding (placed at 2**22 by f_x) on these models;
    #   i, f, g, gate/up: 25.63 / 25.78 (silu), 25.26 / 25.26 (gelu) of the 2**30 headroom: the
    #                worst-case bounds behind the formats are ~20x above what occurs.
    # Bounds 2x above the largest.
    assert peak["x"] < 1 << 27 and peak["act"] < 1 << 27
