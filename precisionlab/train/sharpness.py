"""Sharpness of a run's model, in one place: the metrics (loss-landscape math) and how a run's
model is measured with them, by training every `sharpness.every` steps and by `precisionlab
sharpness` on stored checkpoints (precisionlab.sweep.sharpness), with the same batch and keys.

## The metrics

Loss-landscape sharpness: last-token-logit ε-sharpness, Hessian top eigenvalue and trace,
parameter-space ε-sharpness. Four metrics, from cheapest to dearest:

* ``logit_sharpness`` — Keskar et al.'s ε-sharpness taken in *logit* space on the last
  token, as "To FP8 and Back Again" (Lee et al., 2024) proposes: exact, closed form.
* ``hessian_top_eigenvalue`` — power iteration on Hessian-vector products.
* ``hessian_trace`` — Hutchinson's estimator with Rademacher vectors, with a standard error.
* ``keskar_sharpness`` — Keskar et al.'s original ε-sharpness in *parameter* space,
  approximated by projected sign-gradient ascent (a lower bound of the true maximum).

The Hessian and parameter-space metrics take a *loss closure*: ``loss_fn()`` evaluates the
scalar loss from the current values of ``params`` (e.g. a fixed evaluation batch through the
model in eval mode). It must be deterministic — same parameters, same loss — or the metrics
measure noise. None of the metrics touches ``param.grad`` or the global RNG.

Cost, with F = one forward pass of the loss, B = one ordinary backward pass (B ≈ 2F) and
HVP = one Hessian-vector product (a backward pass through the gradient's graph):

=========================  ===========================================================  ====================================
metric                     passes                                                       memory
=========================  ===========================================================  ====================================
logit_sharpness            none (on given logits); O(batch · vocab) arithmetic          —
model_logit_sharpness      1 F under ``no_grad``                                        inference only
hessian_top_eigenvalue     1 F + 1 B (graph kept), then 1 HVP per iteration (≤ iters)   the gradient's graph stays alive
hessian_trace              1 F + 1 B (graph kept), then 1 HVP per sample                the same
keskar_sharpness           (steps + 1) F + steps B, plus elementwise updates of params   a training step + a copy of params
=========================  ===========================================================  ====================================

Measured with ``scripts/bench_sharpness.py`` (CPU, one thread, a 200k-parameter stand-in
LM): F + B ≈ 3 F, one HVP ≈ 8 F, ``keskar_sharpness`` with 10 steps ≈ 55-60 F. So with
the defaults: logit (1 F) ≪ keskar (≈ 60 F) ≪ trace, top eigenvalue (100 HVPs ≈ 800 F).

## Measuring a run's model

The batch: the run's first fixed validation batch (`train.eval_batches`, drawn from the
run's validation split with `train.eval_seed`), so values of different steps, seeds and
formats are taken on the same sequences; `batch_size` (default: the run's
`train.batch_size`) changes how many sequences it holds.

The losses: `logit` is the last-token logit ε-sharpness (`model_logit_sharpness`);
`hessian`, `trace` and `keskar` use the model's mean next-token cross-entropy over the
batch. The model runs in eval mode (no dropout), with stochastic-rounding seeds held
fixed, so every evaluation of the loss is deterministic; the global RNG, `param.grad`
and the model's state are left as they were, so measuring during training leaves the
training curve unchanged.

Precision: `logit` and `keskar` are measured under the run's precision (its quantized
GEMMs), or in fp32 when asked. `hessian` and `trace` are always measured in fp32 (the
checkpoint's weights in the model without casts): they need second derivatives (double
backward), and the autograd Functions of `QuantLinear` and `QuantAttend` cast their inputs
with the detaching `quantize` and give first derivatives only — a second backward through them runs but
drops terms (the Hessian of an almost-fp32 format, e8m22, comes out a fraction of the
true one), so the quantized model gives no meaningful Hessian. A second derivative of
the quantized loss itself would be zero almost everywhere anyway (the casts are
piecewise constant). Each stored value's parameters say which precision it used.

A value's key in the store is (run, step, metric, params); params are the inputs only:
metric-specific settings, `batch_size` and `precision` ("run" or "fp32"; "fp32" for a
run without casts). `trace` also stores its standard error as metric `trace_stderr`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from precisionlab.quant.linear import DELAYED_STATE
from precisionlab.quant.operands import CountsCalls
from precisionlab.train.model import LM

__all__ = [
    "logit_sharpness",
    "model_logit_sharpness",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "keskar_sharpness",
    "EigenEstimate",
    "TraceEstimate",
    "METRICS",
    "Settings",
    "planned",
    "measure",
    "params_key",
    "check_metrics",
    "fp32_twin",
]

LossClosure = Callable[[], Tensor]


# ----------------------------------------------------------------------------- logit space


def logit_sharpness(logits: Tensor, targets: Tensor, eps: float = 1e-3) -> Tensor:
    r"""ε-sharpness of the cross-entropy in logit space, exactly, one value per row.

    For logits ``z`` (B, V) and targets ``y`` (B,) returns, per row,

        φ = 100 · [max_{|δ_i| ≤ ε(|z_i|+1)} CE(z+δ, y) − CE(z, y)] / (1 + CE(z, y)),

    computed and returned in float64 (B,). Non-finite logits give NaN for their row.

    Why the maximum has a closed form. CE(z, y) = logsumexp(z) − z_y, with
    ∂CE/∂z_j = softmax(z)_j > 0 for j ≠ y and ∂CE/∂z_y = softmax(z)_y − 1 < 0. So CE rises
    with every non-target logit and falls with the target's, everywhere; over a box the
    maximum is therefore the corner that raises every non-target logit and lowers the
    target: δ_j = +r_j (j ≠ y), δ_y = −r_y, with r_i = ε(|z_i| + 1).

    How the increase is computed without cancellation. Writing CE through the margins,
    CE(z) = log Σ_j exp(z_j − z_y), the corner shifts every margin z_j − z_y (j ≠ y) by
    t_j = r_j + r_y ≥ 0 and the target's (zero) margin by nothing, hence, with p = softmax(z),

        ΔCE = log Σ_j p_j e^{t_j}  (t_y = 0)  = log(1 + Σ_{j≠y} p_j (e^{t_j} − 1))
            = softplus(u),   u = logsumexp_{j≠y}( log p_j + log(e^{t_j} − 1) ).

    Every term is non-negative, so nothing cancels (subtracting two CE values, or
    logsumexp(z+δ) − logsumexp(z) followed by + r_y, loses all digits when ε is small or
    the prediction confident); log(e^t − 1) = t + log(−expm1(−t)) is accurate for tiny and
    huge t alike, and working in log space never overflows. At ε = 0 every t_j is 0,
    u = −∞ and φ is exactly 0.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (batch, vocab), got shape {tuple(logits.shape)}")
    batch, vocab = logits.shape
    if vocab < 1:
        raise ValueError("logits must have at least one class (vocab ≥ 1)")
    if targets.shape != (batch,):
        raise ValueError(f"targets must have shape ({batch},) to match logits {tuple(logits.shape)}, got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if batch and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(f"targets must lie in [0, {vocab}), got values in [{int(targets.min())}, {int(targets.max())}]")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number ≥ 0, got {eps!r}")

    z = logits.detach().to(torch.float64)  # float64: log p_j's absolute error is ulp(|z|), which is u's
    y = targets.detach().to(z.device, torch.long).unsqueeze(1)  # (B, 1)
    radius = eps * (z.abs() + 1)  # (B, V)
    shift = radius + radius.gather(1, y)  # (B, V) t_j = r_j + r_y
    log_p = torch.log_softmax(z, dim=1)  # (B, V)
    terms = log_p + shift + torch.log(-torch.expm1(-shift))  # (B, V) log(p_j (e^{t_j} − 1)); −∞ where t_j = 0
    terms = terms.scatter(1, y, -math.inf)  # the target's margin does not move
    u = torch.logsumexp(terms, dim=1)  # (B,)
    increase = torch.logaddexp(torch.zeros_like(u), u)  # softplus(u), exact 0 at u = −∞
    loss = -log_p.gather(1, y).squeeze(1)  # (B,)
    return 100 * increase / (1 + loss)


def model_logit_sharpness(model: nn.Module, inputs: Tensor, targets: Tensor, eps: float = 1e-3) -> float:
    """Mean last-token logit sharpness of ``model`` on a fixed batch of sequences.

    Contract with the model: ``model(inputs)`` with ``inputs`` (B, T) returns logits
    (B, T', V) — or a tuple/list whose first element is those logits — whose last position
    ``[:, -1]`` predicts the token after the sequence. T' = T (every position) and T' = 1
    (nanoGPT-style inference that only returns the last position) both work.
    ``targets`` is (B, T) — the next-token targets of every position, of which the last is
    used — or already the last targets (B,).

    The model runs once under ``torch.no_grad`` in eval mode (dropout off), then its
    train/eval mode is restored. Returns the mean of ``logit_sharpness`` over the batch;
    for per-sequence values call ``logit_sharpness`` on the last logits yourself.
    """
    if inputs.dim() != 2:
        raise ValueError(f"inputs must be token ids of shape (batch, time), got shape {tuple(inputs.shape)}")
    if targets.shape not in (inputs.shape, inputs.shape[:1]):
        raise ValueError(
            f"targets must have shape {tuple(inputs.shape)} (every position) or ({inputs.shape[0]},) (last position), "
            f"got {tuple(targets.shape)}"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(inputs)
    finally:
        model.train(was_training)
    logits = out[0] if isinstance(out, (tuple, list)) else out
    if logits.dim() != 3 or logits.shape[0] != inputs.shape[0]:
        raise ValueError(f"model(inputs) must return logits of shape ({inputs.shape[0]}, time, vocab), got {tuple(logits.shape)}")
    last_targets = targets[:, -1] if targets.dim() == 2 else targets
    return logit_sharpness(logits[:, -1, :], last_targets, eps).mean().item()


# ----------------------------------------------------------------------------- Hessian


class EigenEstimate(NamedTuple):
    value: float  # signed Rayleigh quotient vᵀHv of the final unit vector
    iterations: int  # Hessian-vector products used
    converged: bool  # residual ‖Hv − value·v‖ ≤ tol·|value| within the iteration cap


class TraceEstimate(NamedTuple):
    estimate: float  # mean of vᵀHv over the Rademacher samples
    standard_error: float  # sample standard deviation / sqrt(samples)


def _as_param_list(params: Iterable[Tensor]) -> list[Tensor]:
    params = list(params)
    if not params:
        raise ValueError("params is empty: pass the tensors the loss depends on (e.g. model.parameters())")
    if not all(p.requires_grad for p in params):
        raise ValueError("every tensor in params must have requires_grad=True")
    return params


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    # A private generator keeps the metrics deterministic and leaves the training RNG alone.
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _dot(xs: list[Tensor], ys: list[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(xs, ys))


def _hvp_fn(loss_fn: LossClosure, params: list[Tensor]) -> Callable[[list[Tensor]], list[Tensor]]:
    """Evaluate loss and gradient once, keeping the gradient's graph; return v ↦ Hv."""
    with torch.enable_grad():
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True, materialize_grads=True)

    def hvp(vectors: list[Tensor]) -> list[Tensor]:
        with torch.enable_grad():
            g_dot_v = _dot(list(grads), vectors)
            if not g_dot_v.requires_grad:  # gradient independent of params (e.g. a linear loss): H = 0
                return [torch.zeros_like(p) for p in params]
            return list(
                torch.autograd.grad(g_dot_v, params, retain_graph=True, allow_unused=True, materialize_grads=True)
            )

    return hvp


def hessian_top_eigenvalue(
    loss_fn: LossClosure,
    params: Iterable[Tensor],
    iters: int = 100,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> EigenEstimate:
    """Eigenvalue of largest *magnitude* of the loss Hessian, by power iteration.

    Each iteration is one Hessian-vector product Hv = ∇(∇L·v) (double backward through
    a gradient graph built once). Power iteration converges to the eigenvalue of largest
    |λ|, which near a minimum is the largest (positive) curvature, but can be a negative
    one elsewhere; the returned value is the signed Rayleigh quotient λ = vᵀHv of the unit
    vector v, so a negative result means the dominant curvature is negative. Convergence
    is geometric with ratio |λ₂/λ₁|: slow when the top two magnitudes are close, and none
    at all for eigenvalues ±λ of equal magnitude.

    Converged means the residual is small: ‖Hv − λv‖ ≤ tol·|λ|, which puts λ within
    tol·|λ| of an eigenvalue of H (usually much closer: the Rayleigh quotient's error is
    of the order of the residual squared over the spectral gap). A test on the change of λ
    alone would be fooled by ±λ pairs, where λ stalls at a value that is no eigenvalue.
    Otherwise stops after ``iters`` products with ``converged=False``. The start vector is
    Gaussian from ``generator`` (default: a private generator seeded with 0), so the
    result is deterministic.
    """
    if iters < 1:
        raise ValueError(f"iters must be ≥ 1, got {iters}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    params = _as_param_list(params)
    generator = _default_generator(generator)
    hvp = _hvp_fn(loss_fn, params)

    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    norm = _dot(v, v).sqrt()
    v = [x / norm for x in v]
    for iteration in range(1, iters + 1):
        hv = [h.detach() for h in hvp(v)]
        value = _dot(v, hv).item()
        hv_norm = _dot(hv, hv).sqrt()
        if hv_norm == 0:  # v lies in the null space; with a random start, H is (numerically) zero
            return EigenEstimate(0.0, iteration, True)
        residual = [h - value * x for h, x in zip(hv, v)]
        if _dot(residual, residual).sqrt().item() <= tol * abs(value):
            return EigenEstimate(value, iteration, True)
        v = [h / hv_norm for h in hv]
    return EigenEstimate(value, iters, False)


def hessian_trace(
    loss_fn: LossClosure,
    params: Iterable[Tensor],
    samples: int = 100,
    generator: torch.Generator | None = None,
) -> TraceEstimate:
    """Trace of the loss Hessian by Hutchinson's estimator: mean of vᵀHv, v Rademacher (±1).

    Unbiased; the variance of one sample is 2·Σ_{i≠j} H_ij², so the estimate is exact when
    H is diagonal. Returns the estimate and its standard error (sample standard deviation
    over √samples). Vectors come from ``generator`` (default: a private generator seeded
    with 0), so the result is deterministic.
    """
    if samples < 2:
        raise ValueError(f"samples must be ≥ 2 (a standard error needs two), got {samples}")
    params = _as_param_list(params)
    generator = _default_generator(generator)
    hvp = _hvp_fn(loss_fn, params)

    values = []
    for _ in range(samples):
        v = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p.device, p.dtype) for p in params]
        values.append(_dot(v, hvp(v)).item())
    values = torch.tensor(values, dtype=torch.float64)
    return TraceEstimate(values.mean().item(), (values.std() / math.sqrt(samples)).item())


# ----------------------------------------------------------------------------- parameter space


def keskar_sharpness(
    loss_fn: LossClosure,
    params: Iterable[Tensor],
    eps: float = 1e-3,
    steps: int = 10,
    lr: float = 0.5,
) -> float:
    """Keskar et al.'s parameter-space ε-sharpness, approximately (a lower bound).

        φ = 100 · [max_{|δ_i| ≤ ε(|θ_i|+1)} L(θ+δ) − L(θ)] / (1 + L(θ))

    The maximum over the box is approximated by ``steps`` steps of projected sign-gradient
    ascent from δ = 0: δ ← clip(δ + lr·r·sign(∇L(θ+δ)), −r, r), r_i = ε(|θ_i|+1) — the
    ascent that suits a box (it is steepest ascent in the box's own norm, and reaches the
    exact maximiser of any loss that is monotone in each coordinate over the box, e.g. a
    linear one, within ⌈1/lr⌉ steps). Zero gradient components step up, so an exact
    stationary point is not a trap. The best loss seen at any evaluated point (δ = 0
    included) is used: the result is ≥ 0 and, every point lying in the box, never above
    the true maximum — but it can be below it (non-concave losses, too few steps). Keskar
    et al. used L-BFGS-B instead. A NaN loss at a perturbed point is skipped, an infinite
    one gives ∞; a NaN loss at θ itself gives NaN.

    The parameters are restored bit-exactly (copied back, also when ``loss_fn`` raises);
    ``param.grad`` is not touched.
    """
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number ≥ 0, got {eps!r}")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be > 0 (a fraction of the box half-width per step), got {lr!r}")
    params = _as_param_list(params)
    originals = [p.detach().clone() for p in params]
    radius = [eps * (theta.abs() + 1) for theta in originals]
    delta = [torch.zeros_like(theta) for theta in originals]

    def loss_and_grad() -> tuple[float, list[Tensor]]:
        with torch.enable_grad():
            loss = loss_fn()
            grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
        return loss.item(), grads

    try:
        base_loss, grads = loss_and_grad()
        best_loss = base_loss
        for step in range(1, steps + 1):
            with torch.no_grad():
                for p, theta, d, r, g in zip(params, originals, delta, radius, grads):
                    ascent = torch.where(g >= 0, 1.0, -1.0).to(d.dtype)
                    d.add_(lr * r * ascent)
                    torch.minimum(torch.maximum(d, -r), r, out=d)
                    p.copy_(theta + d)
            if step < steps:
                loss, grads = loss_and_grad()
            else:
                with torch.no_grad():
                    loss = loss_fn().item()
            best_loss = max(best_loss, loss)
    finally:
        with torch.no_grad():
            for p, theta in zip(params, originals):
                p.copy_(theta)
    return 100 * (best_loss - base_loss) / (1 + base_loss)


# ----------------------------------------------------------------------------- a run's model


METRICS = ("logit", "hessian", "trace", "keskar")
SECOND_ORDER = ("hessian", "trace")  # always measured in fp32, see the module docstring


@dataclass(frozen=True)
class Settings:
    """How to measure; the defaults are `precisionlab sharpness`'s."""

    eps: tuple[float, ...] = (1e-3,)  # box half-width factor of logit and keskar (one value each)
    iters: int = 100  # hessian: power-iteration cap (one Hessian-vector product each)
    tol: float = 1e-4  # hessian: relative residual that counts as converged
    samples: int = 100  # trace: Hutchinson samples (one Hessian-vector product each)
    ascent_steps: int = 10  # keskar: projected sign-gradient ascent steps
    fp32: bool = False  # measure logit and keskar without the run's casts


def check_metrics(metrics: Sequence[str]) -> None:
    """ValueError naming the first unknown metric and the accepted ones."""
    for metric in metrics:
        if metric not in METRICS:
            raise ValueError(f"unknown sharpness metric {metric!r}; accepted: {', '.join(METRICS)}")


def planned(metrics: Sequence[str], settings: Settings, batch_size: int, run_is_fp32: bool) -> list[tuple[str, dict]]:
    """The (metric, params) pairs to measure, in order; params are the store key's."""
    pairs = []
    for metric in dict.fromkeys(metrics):
        fp32 = settings.fp32 or run_is_fp32 or metric in SECOND_ORDER
        base = {"batch_size": batch_size, "precision": "fp32" if fp32 else "run"}
        if metric == "logit":
            pairs += [(metric, {**base, "eps": float(eps)}) for eps in dict.fromkeys(settings.eps)]
        elif metric == "keskar":
            pairs += [(metric, {**base, "eps": float(eps), "steps": settings.ascent_steps})
                      for eps in dict.fromkeys(settings.eps)]
        elif metric == "hessian":
            pairs.append((metric, {**base, "iters": settings.iters, "tol": settings.tol}))
        elif metric == "trace":
            pairs.append((metric, {**base, "samples": settings.samples}))
    return pairs


def params_key(params: dict) -> str:
    """Canonical text of a params dict, for comparing with what the store holds."""
    return json.dumps(params, sort_keys=True)


def _is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, CountsCalls) for m in model.modules())


def fp32_twin(model: LM, copy: bool = False) -> LM:
    """The same weights in the model without casts, in eval mode: a copy, or `model` itself if it
    has no casts and `copy` is false (with `copy`, training `model` further leaves the twin as it was)."""
    if not (copy or _is_quantized(model)):
        return model
    with torch.random.fork_rng(devices=[]):  # building a model draws init weights: leave the RNG alone
        twin = model.fresh() if hasattr(model, "fresh") else LM(model.config)  # fresh: a Hugging Face model's
    keys = set(twin.state_dict())  # the cast modules' own state (call counts, delayed-scaling histories) stays behind
    twin.load_state_dict({k: v for k, v in model.state_dict().items() if k in keys})
    device = next(model.parameters()).device
    return twin.to(device).eval()


@contextmanager
def _frozen(model: nn.Module) -> Iterator[Callable[[], None]]:
    """Eval mode, and a `reset()` that puts every cast module's call count (its stochastic-rounding
    seed) and delayed-scaling state (amax histories, scales) back to their values on entry; the
    mode, counts and histories are restored on exit."""
    layers = [m for m in model.modules() if isinstance(m, CountsCalls)]
    calls = [m.calls for m in layers]
    delayed = [(buffer, buffer.clone()) for m in layers for name, buffer in m.named_buffers() if name in DELAYED_STATE]
    was_training = model.training

    def reset() -> None:
        for layer, count in zip(layers, calls):
            layer.calls = count
        for buffer, saved in delayed:
            buffer.copy_(saved)

    model.eval()
    try:
        yield reset
    finally:
        reset()
        model.train(was_training)


def measure(model: LM, batch: tuple[Tensor, Tensor], metric: str, params: dict) -> dict[str, float]:
    """Measure one (metric, params) pair of `planned` on `batch` (inputs, targets), both (B, T),
    B = params["batch_size"].

    Returns {metric: value}, plus {"trace_stderr": ...} for trace. Leaves the model, its
    gradients and the global RNG as they were."""
    if params["precision"] == "fp32":
        model = fp32_twin(model)
    device = next(model.parameters()).device
    x, y = (t.to(device) for t in batch)
    with _frozen(model) as reset:
        if metric == "logit":
            reset()
            return {metric: model_logit_sharpness(model, x, y, params["eps"])}

        def loss_fn() -> Tensor:
            reset()  # the same rounding seeds at every evaluation: a deterministic loss
            if metric in SECOND_ORDER:  # fused attention kernels have no double backward; the math one does
                with sdpa_kernel(SDPBackend.MATH):
                    return model(x, y)[1]
            return model(x, y)[1]

        weights = [p for p in model.parameters() if p.requires_grad]
        if metric == "hessian":
            return {metric: hessian_top_eigenvalue(loss_fn, weights, iters=params["iters"], tol=params["tol"]).value}
        if metric == "trace":
            estimate = hessian_trace(loss_fn, weights, samples=params["samples"])
            return {metric: estimate.estimate, "trace_stderr": estimate.standard_error}
        if metric == "keskar":
            return {metric: keskar_sharpness(loss_fn, weights, eps=params["eps"], steps=params["steps"])}
    raise ValueError(f"unknown sharpness metric {metric!r}; accepted: {', '.join(METRICS)}")
