"""Numerical diagnostics (README, "Numerical diagnostics"): with `diagnostics.every=N`, every N-th
training step is observed as it runs, on its own batch, weights and casts, and reported as rows
(site, name, value) through the recorder's optional `diagnostics` hook.

Families (`diagnostics.families`, all by default):

  casts          per cast site "<layer>/<operand>" (blocks.0.attn.c_attn/fwd_x, ...: the six operands
                 of precisionlab.quant.linear, and weight_grad), over the step's casts of it:
                   saturated    fraction of elements whose scaled value |x·s| (s: the cast's tensor,
                                delayed or block scale; 1 without scaling) exceeds the element format's
                                largest finite value: clipped (or, without saturate, overflowed)
                   flushed      fraction of the nonzero elements that the cast makes zero
                   cast_error   ‖q(x) − x‖ / ‖x‖, q(x) the dequantized cast (0 for an all-zero x)
                 x is what the cast receives (after a Hadamard rotation). A cast that serves two GEMMs
                 (precisionlab.quant.operands) is one site, named by its forward / dgrad operand.
  grad_fidelity  the run's gradient g_q (its quantized backward, before clipping) against g, an fp32
                 backward without casts (`fp32_twin`) of the same objective at the same weights, batch
                 and dropout masks (Su et al. 2025); per parameter tensor and overall (site "model"):
                   grad_cosine  <g_q, g> / (‖g_q‖ ‖g‖)
                   grad_error   ‖g_q − g‖ / ‖g‖
  proxies        Wortsman et al. 2023's instability proxies:
                   attn_logit_max  per attention layer ("blocks.<i>.attn"): the largest q·kᵀ/√D over
                                   the batch, heads and causal positions (q, k as `attend` gets them)
                   logit_max       ("model") the largest output logit
                   log_z           ("model") the mean over tokens of logsumexp of the output logits
                   update_ratio    per parameter tensor: RMS(p_after − p_before) / RMS(p_before), the
                                   size of the optimizer step relative to the weights

A value with a zero norm in its denominator (e.g. the update ratio of a zero-initialised bias at
step 1) is left out.

Cost of a diagnostic step, in passes: casts: a few elementwise passes over each cast operand (a
block format's scales computed once more); grad_fidelity: one fp32 forward + backward of a copy
of the model (built from the weights, like a checkpoint load); proxies: one q·kᵀ per attention
layer and a copy of the weights (shared with grad_fidelity). Other steps: nothing.

Measuring changes nothing: it draws no random numbers (the fp32 pass replays the step's RNG
state inside `fork_rng`), and the run's casts, call counts, delayed-scaling buffers, weights and
gradients are only read; so the training curve is the same bit for bit as without diagnostics.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from precisionlab.quant.operands import OperandCast, observing_casts
from precisionlab.train.measure import fp32_twin
from precisionlab.train.model import LM, CausalSelfAttention

__all__ = ["FAMILIES", "Diagnostics", "Probe", "CastSites", "cast_stats", "fidelity"]

FAMILIES = ("casts", "grad_fidelity", "proxies")
Row = tuple[str, str, float]  # (site, name, value)
Objective = Callable[[Tensor, Tensor], Tensor]  # (logits, loss) -> what the run differentiates


class Diagnostics:
    """When to observe a step (`diagnostics.every`), what (`families`) and where rows go (`hook`,
    the recorder's `diagnostics(step, rows)`; without one, nothing is measured)."""

    def __init__(self, every: int, families: tuple[str, ...], hook: Callable[[int, list[Row]], None] | None):
        self.every, self.families, self.hook = every, tuple(families), hook

    @classmethod
    def from_cfg(cls, cfg: Any, recorder: Any) -> Diagnostics:
        d = cfg.get("diagnostics") or {}
        return cls(int(d.get("every", 0)), tuple(d.get("families", FAMILIES)), getattr(recorder, "diagnostics", None))

    def at(self, step: int, model: LM, batch: tuple[Tensor, Tensor], objective: Objective):
        """The context to run training step `step` in (forward, backward, optimizer step): a `Probe`
        that reports its rows on leaving when the step is due, else a no-op."""
        if not (self.every and self.hook and step % self.every == 0):
            return nullcontext()
        return self._observed(step, Probe(model, batch, objective, self.families))

    @contextmanager
    def _observed(self, step: int, probe: Probe) -> Iterator[Probe]:
        with probe.watching():
            yield probe
        self.hook(step, probe.rows())


class Probe:
    """Observes one training step of `model` on `batch` (inputs, targets (B, T)). Create it before
    the step's forward (it keeps the RNG state and, for grad_fidelity and proxies, an fp32 copy of the
    weights), run forward, backward and the optimizer step inside `watching()`, then read `rows()`."""

    def __init__(self, model: LM, batch: tuple[Tensor, Tensor], objective: Objective, families=FAMILIES):
        self.model, self.batch, self.objective, self.families = model, batch, objective, tuple(families)
        self.device = next(model.parameters()).device
        self.rng = torch.get_rng_state(), (torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None)
        needs_weights = "grad_fidelity" in self.families or "proxies" in self.families
        self.before = fp32_twin(model, copy=True) if needs_weights else None  # the weights before the step
        self.casts = CastSites()
        self.attention: dict[str, Tensor] = {}  # attention layer -> max logit
        self.outputs: dict[str, Tensor] = {}  # logit_max, log_z
        self.grads: dict[str, Tensor] = {}  # parameter name -> the run's gradient, before clipping

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Within the block, the model's casts, attention, outputs and gradients are observed."""
        with ExitStack() as stack:
            if "casts" in self.families:
                stack.enter_context(observing_casts(self.casts.observe))
            if "proxies" in self.families:
                for name, module in self.model.named_modules():
                    if isinstance(module, CausalSelfAttention):
                        stack.callback(_wrap_attend(module, name, self.attention))
                stack.callback(self.model.register_forward_hook(self._output).remove)
            if "grad_fidelity" in self.families:
                for name, p in self.model.named_parameters():
                    stack.callback(p.register_post_accumulate_grad_hook(self._grad(name)).remove)
            yield

    def _output(self, module, args, output) -> None:
        logits = output[0].detach().float()  # (B, T, V)
        self.outputs = {"logit_max": logits.amax(), "log_z": torch.logsumexp(logits, dim=-1).mean()}

    def _grad(self, name: str):
        def keep(p: Tensor) -> None:
            self.grads[name] = p.grad.detach().clone()
        return keep

    def rows(self) -> list[Row]:
        """The step's rows (one host sync)."""
        rows = self.casts.rows()
        rows += [(name, "attn_logit_max", value) for name, value in self.attention.items()]
        rows += [("model", name, value) for name, value in self.outputs.items()]
        if self.grads and "grad_fidelity" in self.families:
            rows += self._fidelity()
        if "proxies" in self.families:
            rows += self._updates()
        return _synced(rows)

    def _fidelity(self) -> list:
        """The fp32 gradient of the step's objective at the step's weights, batch and RNG state."""
        twin = self.before.train(self.model.training)
        params = dict(twin.named_parameters())
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.rng[0])
            if self.rng[1] is not None:
                torch.cuda.set_rng_state(self.rng[1], self.device)
            logits, loss = twin(*self.batch)
            grads = torch.autograd.grad(self.objective(logits, loss), list(params.values()), allow_unused=True)
        pairs = {name: (self.grads[name], g) for name, g in zip(params, grads) if name in self.grads and g is not None}
        return fidelity(pairs)

    def _updates(self) -> list:
        before = dict(self.before.named_parameters())
        rows = []
        for name, p in self.model.named_parameters():
            old = before[name].detach().double()
            rows.append((name, "update_ratio", _ratio((p.detach().double() - old).square().sum(), old.square().sum()).sqrt()))
        return rows


class CastSites:
    """A cast observer (`observing_casts`) that sums `cast_stats` per site "<layer>/<operand>"."""

    def __init__(self):
        self.sums: dict[str, list] = {}  # site -> [elements, cast_stats sums]

    def observe(self, site: tuple[str, str], cast: OperandCast, t: Tensor, q: Tensor, axis: int, history) -> None:
        with torch.no_grad():
            sums = cast_stats(cast, t, q, axis, history)
        key = f"{site[0]}/{site[1]}"
        if key in self.sums:
            self.sums[key][0] += t.numel()
            self.sums[key][1] += sums
        else:
            self.sums[key] = [t.numel(), sums]

    def rows(self) -> list:
        """saturated, flushed and cast_error rows per site (values as 0-d tensors; `_synced` makes floats)."""
        rows = []
        for site, (n, (saturated, nonzero, flushed, err2, x2)) in self.sums.items():
            rows += [(site, "saturated", saturated / n), (site, "flushed", _ratio(flushed, nonzero)),
                     (site, "cast_error", _ratio(err2, x2).sqrt())]
        return rows


def cast_stats(cast: OperandCast, t: Tensor, q: Tensor, axis: int = -1, history=None) -> Tensor:
    """Sums over the cast q = cast(t): (saturated, nonzero, flushed, ‖q − t‖², ‖t‖²), float64 (5,).
    saturated: |t·s| > the element format's max finite (`OperandCast.scaled`); flushed: t ≠ 0, q = 0."""
    t, q = t.detach(), q.detach()
    zeros = torch.count_nonzero(t == 0)  # a cast keeps 0, so q's other zeros are flushed elements
    counts = torch.stack([torch.count_nonzero(cast.scaled(t, axis, history).abs() > cast.max_finite),
                          t.numel() - zeros, torch.count_nonzero(q == 0) - zeros]).double()
    squares = torch.stack([torch.sum((q - t).square(), dtype=torch.float64), torch.sum(t.square(), dtype=torch.float64)])
    return torch.cat([counts, squares])


def fidelity(pairs: dict[str, tuple[Tensor, Tensor]]) -> list:
    """grad_cosine and grad_error rows of (g_q, g) per parameter name, and overall ("model")."""
    rows, sums = [], {}
    for name, (g_q, g) in pairs.items():
        g_q, g = g_q.detach().double().flatten(), g.detach().double().flatten()
        d = g_q - g
        sums[name] = torch.stack([g_q @ g, g_q @ g_q, g @ g, d @ d])  # <g_q, g>, ‖g_q‖², ‖g‖², ‖g_q − g‖²
    if sums:
        sums["model"] = torch.stack(list(sums.values())).sum(0)
    for site, (dot, qq, gg, dd) in sums.items():
        rows += [(site, "grad_cosine", _ratio(dot, (qq * gg).sqrt(), empty=math.nan)),
                 (site, "grad_error", _ratio(dd, gg).sqrt())]
    return rows


def _synced(rows: list) -> list[Row]:
    """Rows with 0-d tensor values as rows of floats, in one host sync; NaN (undefined) rows left out."""
    if not rows:
        return []
    values = torch.stack([torch.as_tensor(v, dtype=torch.float64) for _, _, v in rows]).tolist()
    return [(site, name, value) for (site, name, _), value in zip(rows, values) if not math.isnan(value)]


def _ratio(num: Tensor, den: Tensor, empty: float = 0.0) -> Tensor:
    """num / den (float64); where den is 0: `empty` if num is 0 too (nothing there, nothing wrong), else
    NaN (undefined: the row is left out)."""
    num, den = torch.as_tensor(num, dtype=torch.float64), torch.as_tensor(den, dtype=torch.float64)
    return torch.where(den != 0, num / den, torch.where(num == 0, empty, math.nan))


def _wrap_attend(module: CausalSelfAttention, name: str, found: dict[str, Tensor]) -> Callable[[], None]:
    """Make the attention core `module.attend` (an `Attend` module, or the QuantAttend that casts it)
    record the largest causal attention logit of the q, k it receives in found[name], through a
    forward pre-hook; returns the undo."""

    def watch(_: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        q, k = inputs[0], inputs[1]  # (B, H, T, D): before any attention cast
        with torch.no_grad():
            scores = q.detach().float() @ k.detach().float().transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, T)
            causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
            top = scores.masked_fill(~causal, -math.inf).amax()
            found[name] = top if name not in found else torch.maximum(found[name], top)

    return module.attend.register_forward_pre_hook(watch).remove
