"""Train a small byte-level MatMul-free LM (HGRN-Bit) with torch, and write a Hugging Face-layout
checkpoint that ``mmfree convert`` turns into a model file.

    python -m mmfree.tools.train --text FILE --out DIR [--hidden-size 128 --layers 4 ...]

The torch model computes exactly what ../shared/MODEL.md states (the released code's semantics):
BitLinear = own RMSNorm (eps 1e-6), per-token absmax int8 activations (halves away from zero),
per-matrix absmean ternary weights, no bias; the HGRN token mixer with the output gate
``RMSNorm(g) * SiLU(h)`` and per-layer lower bounds on the forget gate; a GLU channel mixer with
one gate/up BitLinear; a ternary lm_head with its own norm. Quantization is trained with
straight-through estimators. ``tests/test_train.py`` checks, in float64, that its logits equal
:func:`mmfree.sim.reference.decode_step` run token by token on the exported state dict.

How a BitLinear is evaluated: ``(gamma / s) * F.linear(q, T)`` with the integers ``q`` (|q| <= 128)
and ``T`` (ternary) as exact float values, i.e. the very formula of the reference and of the
hardware. Its gradients are those of the usual ``F.linear(y + (q/s - y).detach(), W + (T*gamma -
W).detach())`` (``s`` and ``gamma`` carry no gradient there either). The integer matmul is exact
in float32 and, on CUDA, in TF32 (its 10-bit mantissa holds 8-bit integers), so TF32 tensor
cores are enabled and training runs in float32 throughout. bf16 autocast would round every
accumulator to 8 bits and was no faster (H200, d=128 L=4, 64x256 tokens: 53 ms per step against
50 ms in TF32: small models are bound by kernel launches); ``--compile`` is what pays there
(13 ms per step).

The recurrence ``h_t = f_t * h_{t-1} + c_t`` runs as a parallel prefix scan (:func:`hgrn_scan`,
Hillis-Steele: log2 T rounds of elementwise products and sums of the gates themselves, no
logarithm or exponential, hence nothing that can overflow). Measured, forward + backward of the
scan alone, d=128: on one CPU thread (16x128 tokens) sequential 20 ms, parallel 12 ms, and a
chunked log-space scan (``exp(A_t - A_s)`` within chunks of 32, state carried between chunks)
277 ms, as it materializes [B, T, chunk, d] tensors; on an H200 (64x256) 43, 2.8 and 3.6 ms.
``--scan sequential`` keeps the plain loop (same result up to rounding; tests check both).

Initialization follows the Hugging Face code's ``initializer_range`` 0.02: latent weights and
embeddings ~ N(0, 0.02), every norm weight 1, raw lower bounds 0 (lb[l] = l / L at the start).
Weight decay applies to the latent matrices and the embeddings, not to norm weights or lower
bounds. Ternarization is invariant to the scale of a latent matrix, so decay only sets how fast
the pattern can change (Adam's step size relative to |W|).

Data: the file's bytes are the tokens (vocabulary 256); the last 10% are held out. Training
batches are random windows of seq_len + 1 bytes drawn with a seeded generator; the validation
loss is the mean cross-entropy over the whole held-out part, in non-overlapping windows of
seq_len that each start from a zero state.

Exit status: 0 success, 1 data error (text, output directory, divergence), 2 usage, 3 environment
(torch or CUDA missing), 130 interrupted. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from ..sim.model import ModelConfig, state_dict_keys

try:        # torch is an optional dependency ("pip install -e .[train]"); checked when used
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:
    torch = F = nn = None

__all__ = [
    "TORCH_MISSING", "TrainError", "require_torch",
    "rms_norm", "bitlinear", "hgrn_scan", "hgrn_scan_sequential", "SCANS",
    "RMSNorm", "BitLinear", "HGRNBitAttention", "HGRNBitMLP", "HGRNBitBlock", "HGRNBitModel",
    "HGRNBitForCausalLM", "export_state_dict", "load_state_dict",
    "ByteData", "lr_at", "train", "build_parser", "main",
]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_ENV, EXIT_INTERRUPT = 0, 1, 2, 3, 130
TORCH_MISSING = 'training needs torch: python -m pip install -e ".[train]"'
VOCAB_SIZE = 256            # byte-level tokens
VAL_FRACTION = 0.1


class TrainError(Exception):
    """An expected fault: one line, and the exit status."""

    def __init__(self, message: str, status: int = EXIT_DATA):
        super().__init__(message)
        self.status = status


def require_torch() -> None:
    if torch is None:
        raise TrainError(TORCH_MISSING, EXIT_ENV)


# Without torch the classes below still exist (so that this module imports), but building one
# raises TrainError through require_torch().
_Module = nn.Module if nn is not None else object


# --- the model ---------------------------------------------------------------------------------

def rms_norm(x, weight, eps: float):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis (the reference's exact form)."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _round_half_away(x):
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def bitlinear(x, weight, norm_weight, eps: float):
    """BitLinear of MODEL.md with straight-through estimators.

    Forward value: ``(gamma / s) * (T @ q)`` with ``q`` the int8 activations and ``T`` the
    ternary weights, both held exactly as floats. ``t + (u - u.detach())`` has the forward value
    ``t`` exactly and the gradient of ``u``: the STE of the released code.
    """
    y = rms_norm(x, norm_weight, eps)
    s = 127.0 / y.detach().abs().amax(-1, keepdim=True).clamp(min=1e-5)
    ys = y * s
    q = _round_half_away(ys.detach()).clamp(-128, 127)
    q = q + (ys - ys.detach())
    gamma = weight.detach().abs().mean().clamp(min=1e-5)
    wn = weight * (1.0 / gamma)
    t = torch.round(wn.detach()).clamp(-1, 1)              # ties to even, as the released code
    t = t + (wn - wn.detach())
    return F.linear(q, t) * (gamma / s)


def hgrn_scan_sequential(f, c, h0=None):
    """``h_t = f_t * h_{t-1} + c_t`` over axis 1 of ``[B, T, D]``, one step at a time."""
    h = torch.zeros_like(c[:, 0]) if h0 is None else h0
    out = []
    for t in range(c.shape[1]):
        h = f[:, t] * h + c[:, t]
        out.append(h)
    return torch.stack(out, 1)


def hgrn_scan(f, c, h0=None):
    """The same recurrence as a parallel (Hillis-Steele) scan: ceil(log2 T) rounds, each
    composing every step's affine map ``h -> a h + b`` with the one ``k`` steps earlier:
    ``b_t += a_t b_{t-k}``, ``a_t *= a_{t-k}``. Only products of gates in [0, 1] and sums: no
    division, no exponential, nothing that can overflow; it differs from the sequential loop
    by rounding only (about log2 T ulps)."""
    a, h = f, c
    k = 1
    while k < c.shape[1]:
        h = h + a * F.pad(h[:, :-k], (0, 0, k, 0))
        a = a * F.pad(a[:, :-k], (0, 0, k, 0), value=1.0)
        k *= 2
    return h if h0 is None else h + a * h0[:, None]


SCANS = {"parallel": hgrn_scan, "sequential": hgrn_scan_sequential}


class RMSNorm(_Module):
    def __init__(self, size: int, eps: float = 1e-6):
        require_torch()
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class BitLinear(_Module):
    """A ternary projection ``[out, in]`` (latent weight ``weight``) with its own input norm."""

    def __init__(self, in_features: int, out_features: int, eps: float = 1e-6):
        require_torch()
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.norm = RMSNorm(in_features, eps)

    def forward(self, x):
        return bitlinear(x, self.weight, self.norm.weight, self.norm.eps)


class HGRNBitAttention(_Module):
    """The HGRN token mixer: i/f/g/o projections, the gated recurrence, the output gate."""

    def __init__(self, config: ModelConfig):
        require_torch()
        super().__init__()
        d, eps = config.hidden_size, config.rms_norm_eps
        self.i_proj = BitLinear(d, d, eps)
        self.f_proj = BitLinear(d, d, eps)
        self.g_proj = BitLinear(d, d, eps)
        self.o_proj = BitLinear(d, d, eps)
        self.g_norm = RMSNorm(d, eps)

    def forward(self, x, lower_bound=None, scan: str = "parallel"):
        i, f, g = self.i_proj(x), self.f_proj(x), self.g_proj(x)
        f = torch.sigmoid(f)
        if lower_bound is not None:             # layers 1..L-1
            f = lower_bound + (1.0 - lower_bound) * f
        c = F.silu(i) * (1.0 - f)
        h = SCANS[scan](f, c)
        return self.o_proj(self.g_norm(g) * F.silu(h))


class HGRNBitMLP(_Module):
    def __init__(self, config: ModelConfig):
        require_torch()
        super().__init__()
        d, inter, eps = config.hidden_size, config.intermediate_size, config.rms_norm_eps
        self.intermediate_size = inter
        self.act = F.silu if config.hidden_act == "silu" else F.gelu      # erf GELU
        self.gate_proj = BitLinear(d, 2 * inter, eps)
        self.down_proj = BitLinear(inter, d, eps)

    def forward(self, x):
        gate, up = self.gate_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(self.act(gate) * up)


class HGRNBitBlock(_Module):
    def __init__(self, config: ModelConfig):
        require_torch()
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = HGRNBitAttention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = HGRNBitMLP(config)

    def forward(self, x, lower_bound=None, scan: str = "parallel"):
        r = x + self.attn(self.attn_norm(x), lower_bound, scan)
        return r + self.mlp(self.mlp_norm(r))


class HGRNBitModel(_Module):
    def __init__(self, config: ModelConfig):
        require_torch()
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.lower_bounds = nn.Parameter(torch.zeros(config.num_layers, config.hidden_size))
        self.layers = nn.ModuleList(HGRNBitBlock(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, tokens, scan: str = "parallel"):
        x = self.embeddings(tokens)
        lb = torch.softmax(self.lower_bounds, dim=0)
        lb = lb.cumsum(0) - lb[0]
        for index, layer in enumerate(self.layers):
            x = layer(x, lb[index] if index > 0 else None, scan)
        return self.norm(x)


class HGRNBitForCausalLM(_Module):
    """HGRN-Bit with the Hugging Face parameter names (``state_dict()`` keys are exactly
    :func:`mmfree.sim.model.state_dict_keys`). ``forward(tokens [B, T]) -> logits [B, T, V]``,
    every sequence starting from a zero state."""

    def __init__(self, config: ModelConfig, *, scan: str = "parallel", init_std: float = 0.02):
        require_torch()
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {', '.join(SCANS)}, not {scan!r}")
        super().__init__()
        self.config = config
        self.scan = scan
        self.model = HGRNBitModel(config)
        self.lm_head = BitLinear(config.hidden_size, config.vocab_size, config.rms_norm_eps)
        for name, p in self.named_parameters():
            if name == "model.lower_bounds":
                nn.init.zeros_(p)
            elif name.endswith("norm.weight"):
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, init_std)

    def forward(self, tokens):
        return self.lm_head(self.model(tokens, self.scan))


def export_state_dict(model) -> dict[str, np.ndarray]:
    """The model's parameters as float32 numpy arrays with the Hugging Face key names."""
    return {k: v.detach().to("cpu", torch.float32).numpy().copy()
            for k, v in model.state_dict().items()}


def load_state_dict(model, sd: dict[str, np.ndarray]) -> None:
    """Load a Hugging Face-layout state dict (numpy arrays) into ``model``, strictly."""
    ref = model.state_dict()
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)).to(ref[k]) for k, v in sd.items()},
                          strict=True)


# --- data and schedule ---------------------------------------------------------------------------

class ByteData:
    """A text file as byte tokens: training part, and the held-out last 10%."""

    def __init__(self, data: bytes, seq_len: int, name: str = "text"):
        tokens = np.frombuffer(data, dtype=np.uint8)
        n_val = int(len(tokens) * VAL_FRACTION)
        self.train = tokens[:len(tokens) - n_val]
        self.val = tokens[len(tokens) - n_val:]
        if len(self.train) < seq_len + 1 or len(self.val) < 2:
            need = seq_len + 1
            while need - int(need * VAL_FRACTION) < seq_len + 1 or int(need * VAL_FRACTION) < 2:
                need += 1
            raise TrainError(f"{name}: text too short: {len(tokens)} bytes, --seq-len {seq_len} "
                             f"needs at least {need}")
        self.seq_len = seq_len

    @classmethod
    def from_file(cls, path, seq_len: int) -> ByteData:
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise TrainError(f"{path}: {error.strerror or error}") from None
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise TrainError(f"{path}: not UTF-8 text") from None
        return cls(data, seq_len, str(path))


def lr_at(step: int, lr: float, warmup: int, steps: int, final_fraction: float = 0.1) -> float:
    """Learning rate for update ``step`` (0-based): linear warmup over ``warmup`` updates, then
    cosine decay to ``final_fraction * lr`` at the last update."""
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, steps - 1 - warmup)
    progress = min(1.0, (step - warmup) / span)
    low = lr * final_fraction
    return low + 0.5 * (lr - low) * (1.0 + math.cos(math.pi * progress))


def _batches(train_tokens, batch: int, seq_len: int, generator, device):
    """Endless random windows of seq_len + 1 bytes: (inputs, targets) as int64 [B, T]."""
    offsets = torch.arange(seq_len + 1, device=device)
    limit = len(train_tokens) - seq_len       # start in [0, limit)
    while True:
        starts = torch.randint(0, limit, (batch,), generator=generator).to(device)
        window = train_tokens[starts[:, None] + offsets].long()
        yield window[:, :-1], window[:, 1:]


def evaluate(model, val_tokens, seq_len: int, batch: int) -> float:
    """Mean cross-entropy (nats/byte) over the held-out tokens, in non-overlapping windows of
    ``seq_len`` predictions that each start from a zero state."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _evaluate(model, val_tokens, seq_len, batch)
    finally:
        model.train(was_training)


def _evaluate(model, val_tokens, seq_len: int, batch: int) -> float:
    inputs, targets = val_tokens[:-1].long(), val_tokens[1:].long()
    n = len(targets)
    full = n // seq_len
    total = 0.0
    x = inputs[:full * seq_len].view(full, seq_len)
    y = targets[:full * seq_len].view(full, seq_len)

    def nll(inputs, targets):
        logits = model(inputs)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()

    for k in range(0, full, batch):
        total += nll(x[k:k + batch], y[k:k + batch])
    if n > full * seq_len:
        total += nll(inputs[None, full * seq_len:], targets[None, full * seq_len:])
    return total / n


# --- training ------------------------------------------------------------------------------------

def _metrics(loss: float) -> dict:
    return {"loss": loss, "bits_per_byte": loss / math.log(2),
            "perplexity": math.exp(loss) if loss < 700 else math.inf}


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise TrainError(f"{out}: exists and is not a directory")
        if any(out.iterdir()) and not force:
            raise TrainError(f"{out}: already exists and is not empty (use --force to overwrite)")


def train(args, argv: list[str] | None = None) -> dict:
    """Run training as the command line describes; returns the training.json record."""
    require_torch()
    from .checkpoint import save_checkpoint

    out = Path(args.out)
    _check_out_dir(out, args.force)
    data = ByteData.from_file(args.text, args.seq_len)

    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: CUDA is not available to this torch "
                         f"({torch.__version__})", EXIT_ENV)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device == "cuda":
        # The BitLinear matmuls multiply small integers: exact in TF32, and fast.
        torch.set_float32_matmul_precision("high")

    config = ModelConfig(vocab_size=VOCAB_SIZE, hidden_size=args.hidden_size,
                         num_layers=args.layers, intermediate_size=args.intermediate_size)
    torch.manual_seed(args.seed)
    model = HGRNBitForCausalLM(config, scan=args.scan).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == config.num_parameters, (n_params, config.num_parameters)
    keys = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert keys == state_dict_keys(config), "state dict does not have the Hugging Face layout"

    forward = torch.compile(model) if args.compile else model      # same parameters
    decay = [p for n, p in model.named_parameters()
             if p.ndim == 2 and n != "model.lower_bounds"]
    no_decay = [p for n, p in model.named_parameters()
                if not (p.ndim == 2 and n != "model.lower_bounds")]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    train_tokens = torch.from_numpy(data.train.copy()).to(device)
    val_tokens = torch.from_numpy(data.val.copy()).to(device)
    generator = torch.Generator().manual_seed(args.seed)
    batches = _batches(train_tokens, args.batch_size, args.seq_len, generator, device)
    eval_batch = max(args.batch_size, 64)
    warmup = min(args.warmup, args.steps)

    try:
        log_file = open(args.log, "a", encoding="utf-8") if args.log else None  # noqa: SIM115
    except OSError as error:
        raise TrainError(f"{args.log}: {error.strerror or error}") from None

    def emit(record: dict, line: str) -> None:
        print(line, flush=True)
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    print(f"training d={config.hidden_size} L={config.num_layers} I={config.intermediate_size} "
          f"({n_params:,} parameters) on {device}: {len(data.train):,} training bytes, "
          f"{len(data.val):,} held out; {args.steps} steps of {args.batch_size}x{args.seq_len}",
          flush=True)
    history = []
    start = time.perf_counter()
    train_time = 0.0
    tokens_seen = 0

    def run_eval(step: int) -> float:
        t0 = time.perf_counter()
        val = evaluate(model, val_tokens, args.seq_len, eval_batch)
        if not math.isfinite(val):
            raise TrainError(f"training diverged: validation loss is {val} at step {step}")
        m = _metrics(val)
        elapsed = time.perf_counter() - start
        history.append({"step": step, "val_loss": val})
        emit({"step": step, "val_loss": val, "val_bits_per_byte": m["bits_per_byte"],
              "val_perplexity": m["perplexity"], "eval_s": time.perf_counter() - t0,
              "elapsed_s": elapsed},
             f"step {step:6d}  val loss {val:.4f}  ({m['bits_per_byte']:.3f} bits/byte, "
             f"ppl {m['perplexity']:.2f})  elapsed {elapsed:.1f} s")
        return val

    val_loss = run_eval(0) if args.eval_interval else None
    recent: list[float] = []
    window_losses = []
    window_t0, window_tokens = time.perf_counter(), 0
    model.train()
    try:
        for step in range(args.steps):
            t0 = time.perf_counter()
            lr = lr_at(step, args.lr, warmup, args.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = next(batches)
            logits = forward(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            window_losses.append(loss.detach())
            done = step + 1
            tokens_seen += x.numel()
            window_tokens += x.numel()
            last = done == args.steps
            if done % args.log_interval == 0 or done == 1 or last:
                values = torch.stack(window_losses).tolist()    # one device sync per log line
                window_losses = []
                if not all(math.isfinite(v) for v in values):
                    raise TrainError(f"training diverged: loss is not finite at step {done}")
                recent = (recent + values)[-10:]
                now = time.perf_counter()
                rate = window_tokens / (now - window_t0)
                elapsed = now - start
                emit({"step": done, "train_loss": values[-1],
                      "train_loss_mean": sum(values) / len(values), "lr": lr,
                      "grad_norm": float(grad_norm), "elapsed_s": elapsed,
                      "tokens_per_s": rate},
                     f"step {done:6d}  train loss {values[-1]:.4f}  lr {lr:.2e}  "
                     f"grad {float(grad_norm):.2f}  elapsed {elapsed:.1f} s  {rate:,.0f} tok/s")
                window_t0, window_tokens = time.perf_counter(), 0
            train_time += time.perf_counter() - t0
            if args.eval_interval and (done % args.eval_interval == 0 or last):
                val_loss = run_eval(done)
                window_t0, window_tokens = time.perf_counter(), 0
        if val_loss is None or history[-1]["step"] != args.steps:
            val_loss = run_eval(args.steps)
    finally:
        if log_file is not None:
            log_file.close()
    wall = time.perf_counter() - start

    final = _metrics(val_loss)
    record = {
        "command": shlex.join([sys.executable, "-m", "mmfree.tools.train",
                               *(sys.argv[1:] if argv is None else argv)]),
        "config": config.to_json(),
        "hyperparameters": {
            "hidden_size": args.hidden_size, "layers": args.layers,
            "intermediate_size": args.intermediate_size, "steps": args.steps,
            "batch_size": args.batch_size, "seq_len": args.seq_len, "lr": args.lr,
            "final_lr_fraction": 0.1, "warmup": warmup, "weight_decay": args.weight_decay,
            "betas": [0.9, 0.95], "adam_eps": 1e-8, "grad_clip": 1.0, "init_std": 0.02,
            "scan": args.scan, "compile": args.compile, "val_fraction": VAL_FRACTION,
            "precision": "fp32 (tf32 matmuls)" if device == "cuda" else "fp32",
        },
        "seed": args.seed,
        "steps": args.steps,
        "text": str(args.text),
        "train_bytes": int(len(data.train)),
        "val_bytes": int(len(data.val)),
        "tokens_seen": tokens_seen,
        "wall_time_s": wall,
        "train_time_s": train_time,
        "train_tokens_per_s": tokens_seen / train_time if train_time else None,
        "final_train_loss": sum(recent) / len(recent) if recent else None,
        "final_train_loss_steps": len(recent),
        "final_val_loss": val_loss,
        "final_val_bits_per_byte": final["bits_per_byte"],
        "final_val_perplexity": final["perplexity"],
        "val_history": history,
        "device": torch.cuda.get_device_name() if device == "cuda" else
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch_version": torch.__version__,
        "parameters": n_params,
    }
    try:
        save_checkpoint(config, export_state_dict(model), out, dtype="fp32", force=args.force)
        (out / "training.json").write_text(json.dumps(record, indent=2) + "\n",
                                           encoding="utf-8")
    except OSError as error:
        raise TrainError(f"{out}: {error.strerror or error}") from None
    print(f"wrote {out}: val loss {val_loss:.4f} ({val_loss / math.log(2):.3f} bits/byte), "
          f"{wall:.1f} s", flush=True)
    return record


# --- command line --------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


for _fn, _name in ((_positive_int, "positive integer"), (_non_negative_int, "integer >= 0"),
                   (_positive_float, "positive number"), (_non_negative_float, "number >= 0")):
    _fn.__name__ = _name        # argparse says "invalid positive integer value: 'x'"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mmfree.tools.train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a byte-level MatMul-free LM (HGRN-Bit) on a UTF-8 text with torch and "
                    "write a Hugging Face-layout checkpoint (fp32 latent weights) plus "
                    "training.json. The last 10% of the text is held out for validation.")
    parser.add_argument("--text", required=True, help="UTF-8 text file to train on")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--force", action="store_true",
                        help="write into OUT even if it is not empty")
    parser.add_argument("--hidden-size", type=_positive_int, default=128, help="d")
    parser.add_argument("--layers", type=_positive_int, default=4, help="number of layers L")
    parser.add_argument("--intermediate-size", type=_positive_int, default=512,
                        help="channel-mixer width I")
    parser.add_argument("--steps", type=_positive_int, default=1000, help="optimizer updates")
    parser.add_argument("--batch-size", type=_positive_int, default=16, help="windows per step")
    parser.add_argument("--seq-len", type=_positive_int, default=128, help="bytes per window")
    parser.add_argument("--lr", type=_positive_float, default=3e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=_non_negative_int, default=100,
                        help="linear warmup updates (then cosine decay to 10%% of --lr)")
    parser.add_argument("--weight-decay", type=_non_negative_float, default=0.1,
                        help="AdamW weight decay of the latent matrices and embeddings")
    parser.add_argument("--seed", type=int, default=0, help="seed of the init and data order")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available")
    parser.add_argument("--threads", type=_non_negative_int, default=0,
                        help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--scan", choices=tuple(SCANS), default="parallel",
                        help="how the recurrence runs over time (same result up to rounding)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the training forward pass (about 4x faster steps on "
                             "a GPU after a minute of compiling; needs Triton or a C++ compiler)")
    parser.add_argument("--eval-interval", type=_non_negative_int, default=100,
                        help="validate every K updates, at the start and at the end "
                             "(0: only at the end)")
    parser.add_argument("--log-interval", type=_positive_int, default=10,
                        help="print the training loss every K updates")
    parser.add_argument("--log", help="also append the log records to this file as JSON lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        train(args, argv)
    except TrainError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return error.status
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPT
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
