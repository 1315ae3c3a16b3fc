"""Token loops shared by every backend: prefill, greedy/temperature generation, evaluation.

A backend turns one token into logits and picks the next token from logits and a PRNG draw. The
golden backend runs the integer model (:mod:`.golden`), the float backend the float reference
(:mod:`.reference`); later backends (simulated board, real board) plug into the same loop. The
PRNG is :func:`.golden.xorshift32`, advanced once per *sampled* token (never when greedy), so
every backend sees the same draws for a given seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from . import golden, reference
from .model import Model

__all__ = ["GoldenBackend", "FloatBackend", "BACKENDS", "generate", "evaluate", "EvalResult",
           "log_softmax"]


class GoldenBackend:
    """The bit-exact integer model."""

    name = "golden"

    def __init__(self, model: Model):
        self.model = model
        self.int_model = golden.prepare(model)
        self.reset()

    def reset(self):
        self.state = golden.init_state(self.int_model)

    def step(self, token: int) -> np.ndarray:
        logits, self.state = golden.decode_step(self.int_model, token, self.state)
        return logits

    def float_logits(self, logits: np.ndarray) -> np.ndarray:
        return np.asarray(logits, dtype=np.float64) * 2.0**-golden.F_LOGIT

    def choose(self, logits: np.ndarray, temperature: float, draw: int | None) -> int:
        if temperature == 0:
            return golden.argmax(logits)
        return golden.sample(logits, golden.sampler_x0(temperature), draw)


class FloatBackend:
    """The float64 reference."""

    name = "float"

    def __init__(self, model: Model):
        self.model = model
        self.reset()

    def reset(self):
        self.state = reference.init_state(self.model)

    def step(self, token: int) -> np.ndarray:
        logits, self.state = reference.decode_step(self.model, token, self.state)
        return logits

    def float_logits(self, logits: np.ndarray) -> np.ndarray:
        return logits

    def choose(self, logits: np.ndarray, temperature: float, draw: int | None) -> int:
        return reference.sample_float(logits, temperature, draw or 0)


BACKENDS = {"golden": GoldenBackend, "float": FloatBackend}


def check_temperature(temperature: float):
    """Greedy is exactly 0; otherwise the integer sampler's range applies to every backend."""
    if temperature != 0:
        golden.sampler_x0(temperature)


def generate(backend, prompt: list[int], max_new_tokens: int, *, temperature: float = 0.0,
             seed: int = 0, stop: Callable[[int], bool] | None = None) -> Iterator[int]:
    """Prefill ``prompt`` (one decode step per token), then yield up to ``max_new_tokens`` new
    tokens as they are produced. ``stop(token)`` ends generation after that token."""
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, not {max_new_tokens}")
    check_temperature(temperature)
    prng = golden.xorshift32_seed(seed)
    backend.reset()
    logits = None
    for token in prompt:
        logits = backend.step(int(token))
    for index in range(max_new_tokens):
        draw = None
        if temperature != 0:
            prng = golden.xorshift32(prng)
            draw = prng
        token = backend.choose(logits, temperature, draw)
        yield token
        if stop is not None and stop(token):
            return
        if index + 1 < max_new_tokens:
            logits = backend.step(token)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max()
    return z - math.log(float(np.exp(z).sum()))


@dataclass
class EvalResult:
    tokens: int              # predictions scored (len(text) - 1)
    nll_float: float         # mean negative log-likelihood, nats/token
    nll_golden: float
    agreement: float         # fraction of positions where both argmaxes agree

    @property
    def ppl_float(self) -> float:
        return math.exp(self.nll_float)

    @property
    def ppl_golden(self) -> float:
        return math.exp(self.nll_golden)


def evaluate(model: Model, tokens: Iterable[int], *, progress: Callable[[int], None] | None = None
             ) -> EvalResult:
    """Perplexity of the float reference and of the integer model over ``tokens`` (each token
    predicts the next, from a zero state), and their greedy top-1 agreement."""
    tokens = [int(t) for t in tokens]
    if len(tokens) < 2:
        raise ValueError("evaluation needs at least two tokens of text")
    fb, gb = FloatBackend(model), GoldenBackend(model)
    nll_f = nll_g = 0.0
    agree = 0
    for position in range(len(tokens) - 1):
        lf = fb.step(tokens[position])
        lg = gb.float_logits(gb.step(tokens[position]))
        target = tokens[position + 1]
        nll_f -= log_softmax(lf)[target]
        nll_g -= log_softmax(lg)[target]
        agree += int(np.argmax(lf) == np.argmax(lg))
        if progress is not None:
            progress(1)
    n = len(tokens) - 1
    return EvalResult(tokens=n, nll_float=nll_f / n, nll_golden=nll_g / n, agreement=agree / n)
