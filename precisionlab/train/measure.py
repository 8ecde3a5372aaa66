"""Sharpness of a run's model: what `precisionlab sharpness` measures on stored checkpoints
and what training records every `sharpness.every` steps, with the same batch and keys.

The batch: the run's first fixed validation batch (`train.eval_batches`, drawn from the
run's validation split with `train.eval_seed`), so values of different steps, seeds and
formats are taken on the same sequences; `batch_size` (default: the run's
`train.batch_size`) changes how many sequences it holds.

The losses: `logit` is the last-token logit ε-sharpness (`precisionlab.analysis.sharpness`);
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from precisionlab.analysis.sharpness import (
    hessian_top_eigenvalue,
    hessian_trace,
    keskar_sharpness,
    model_logit_sharpness,
)
from precisionlab.quant.linear import DELAYED_STATE, PrecisionConfig
from precisionlab.quant.operands import CountsCalls
from precisionlab.train.model import LM

__all__ = ["METRICS", "Settings", "planned", "measure", "params_key", "check_metrics",
           "is_fp32", "fp32_twin"]

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


def is_fp32(cfg: Any) -> bool:
    """Whether the run `cfg` (a config or its dict) trains without casts."""
    return PrecisionConfig.from_cfg(cfg["precision"]).is_fp32


def _is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, CountsCalls) for m in model.modules())


def fp32_twin(model: LM, copy: bool = False) -> LM:
    """The same weights in the model without casts, in eval mode: a copy, or `model` itself if it
    has no casts and `copy` is false (with `copy`, training `model` further leaves the twin as it was)."""
    if not (copy or _is_quantized(model)):
        return model
    with torch.random.fork_rng(devices=[]):  # building a model draws init weights: leave the RNG alone
        twin = LM(model.config)
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
