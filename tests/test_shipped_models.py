"""The trained models shipped in tools/models/ (docs/model-card.md): they load, fit their boards,
survive a conversion round trip, generate deterministically, and the integer model tracks the
float reference on held-out Shakespeare."""

from pathlib import Path

import numpy as np
import pytest

from mmfree.boards.capacity import BOARDS, fits, fits_image
from mmfree.tools.device import BOARD_CONFIGS, engine_image
from mmfree.sim import golden
from mmfree.sim.decoding import GoldenBackend, evaluate, generate
from mmfree.sim.modelfile import load_model, save_model
from mmfree.tools.cli import default_model_path, main

MODELS = Path(__file__).parents[1] / "tools" / "models"
SHIPPED = {
    "ulx3s-85f": (MODELS / "ulx3s-85f.safetensors", dict(hidden_size=128, num_layers=5,
                                                         intermediate_size=512)),
    "icebreaker": (MODELS / "icebreaker.safetensors", dict(hidden_size=64, num_layers=4,
                                                           intermediate_size=256)),
}
# 2977 bytes from the held-out last 10% of tinyshakespeare.txt (public domain), never trained on.
HELDOUT = Path(__file__).parent / "data" / "shakespeare-heldout.txt"


@pytest.fixture(scope="module", params=sorted(SHIPPED), ids=sorted(SHIPPED))
def shipped(request):
    path, dims = SHIPPED[request.param]
    return request.param, path, dims, load_model(path)


def test_loads_with_documented_dimensions(shipped):
    board, path, dims, model = shipped
    cfg = model.config
    assert (cfg.vocab_size, cfg.packing, cfg.hidden_act) == (256, "2bit", "silu")
    assert {k: getattr(cfg, k) for k in dims} == dims
    assert model.tokenizer == {"type": "bytes"}
    assert path.stat().st_size < 1 << 20                      # well under 1 MiB


def test_fits_its_board(shipped):
    """The shipped model fits its board: bits, and (ULX3S) the block RAMs of the board's SoC."""
    board, _, _, model = shipped
    ok, detail = fits(model.config, BOARDS[board], BOARD_CONFIGS[board].packing)
    assert ok, detail
    image = engine_image(model, BOARD_CONFIGS[board])
    if not BOARDS[board].spram_bits:
        ok, detail = fits_image(image, BOARDS[board])
        assert ok and "205 of 208 block RAMs" in detail, detail


def test_round_trip(shipped, tmp_path):
    """load -> save -> load is exact, and repacking to 1.6 bits changes nothing but the size."""
    _, path, _, model = shipped
    again = tmp_path / "again.safetensors"
    save_model(model, again)
    assert again.read_bytes() == path.read_bytes()
    assert main(["convert", str(path), str(tmp_path / "m16.safetensors"),
                 "--packing", "1.6bit"]) == 0
    m16 = load_model(tmp_path / "m16.safetensors")
    for (name, a), (_, b) in zip(model.bitlinears(), m16.bitlinears()):
        assert np.array_equal(a.T, b.T) and a.gamma == b.gamma, name
    ia, ib = golden.prepare(model), golden.prepare(m16)
    la, _ = golden.decode_step(ia, ord("A"), golden.init_state(ia))
    lb, _ = golden.decode_step(ib, ord("A"), golden.init_state(ib))
    assert np.array_equal(la, lb)


def test_generates_deterministically(shipped):
    _, _, _, model = shipped
    prompt = list(b"ROMEO:")
    greedy = list(generate(GoldenBackend(model), prompt, 40))
    assert greedy == list(generate(GoldenBackend(model), prompt, 40))
    sampled = list(generate(GoldenBackend(model), prompt, 40, temperature=0.8, seed=11))
    assert sampled == list(generate(GoldenBackend(model), prompt, 40, temperature=0.8, seed=11))
    # A trained model writes text: printable ASCII and newlines, mostly letters and spaces.
    text = bytes(greedy + sampled)
    assert all(32 <= c < 127 or c == 10 for c in text), text
    assert sum(chr(c).isalpha() or c == 32 for c in text) > 0.8 * len(text), text


def test_ulx3s_model_is_the_default(capsys):
    assert default_model_path() == SHIPPED["ulx3s-85f"][0]
    assert main(["generate", "--prompt", "ROMEO:", "--max-new-tokens", "24",
                 "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    model = load_model(default_model_path())
    expected = bytes(generate(GoldenBackend(model), list(b"ROMEO:"), 24)).decode()
    assert out == "ROMEO:" + expected + "\n"


@pytest.mark.slow
def test_integer_model_tracks_float_on_heldout_text(shipped):
    """On 2976 held-out predictions: integer perplexity within 2% of the float reference and
    greedy top-1 agreement of at least 98% (issue targets; full-split numbers in the model
    card). Measured here: see docs/model-card.md."""
    _, _, _, model = shipped
    tokens = list(HELDOUT.read_bytes())
    result = evaluate(model, tokens)
    assert abs(result.ppl_golden / result.ppl_float - 1) < 0.02, result
    assert result.agreement >= 0.98, result
    assert result.nll_float < 2.0, result                       # it learned something
