"""One training run: `run(cfg) -> RunResult`, pure (no Hydra), never raises once training starts.

The loop: AdamW on fp32 master weights, or on weights stored in a format such as bf16 (its
moments and the weights optionally stored in a format, precisionlab.train.optim), linear warmup then cosine (or
constant) learning rate, gradient-norm clipping, a fixed set of validation
batches evaluated every `train.eval_every` steps and at the end, checkpoints
at `train.checkpoint_steps` / every `train.checkpoint_every` steps.

Outcomes, the divergence rules (when a run stops early) and loss spikes: `precisionlab.train.outcomes`.
User-config errors (`ConfigError`, `DataError`) are raised by `precisionlab.config.validate`
and before the first step, so nothing is recorded for a run that cannot start.


Sharpness: with `sharpness.every=N` the `sharpness.metrics` are measured every N
steps (after that step's checkpoint) on the first fixed validation batch, exactly as
`precisionlab sharpness` measures a checkpoint (precisionlab.train.measure), and reported
through the recorder's optional `sharpness` hook. Measuring draws no random numbers,
keeps the stochastic-rounding call counts, the weights and their gradients, so the
curve is the same as without it.

Diagnostics: with `diagnostics.every=N` every N-th step is observed as it runs (its casts,
an fp32 backward at its weights and batch, attention and output logits, the update) and
reported through the recorder's optional `diagnostics` hook (precisionlab.train.diagnostics);
the curve is again the same as without.

Reproducibility: `run` seeds torch's global RNG (model init, dropout) and a
private generator for batches from `seed`, and sets torch's thread count,
so runs in one process do not leak state. Checkpoints hold the model,
optimizer, both RNG states, the step and the loop's bookkeeping, so resuming
continues the loss curve bit for bit on CPU. A branch (`init.parent=RUN_ID@STEP`) starts
from another run's checkpoint with its own config, through the same load
(precisionlab.train.branch says what comes from the checkpoint and what from the config).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from precisionlab.config import ConfigError, ensure_valid
from precisionlab.runtime import provenance, resolve_device
from precisionlab.train.branch import check_weights, load_state, parse_parent, shapes
from precisionlab.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointRef,
    build_model,
    checkpoint_path,
    read_checkpoint,
    save_checkpoint,
)
from precisionlab.train.data import DataError, get_batch, load_dataset
from precisionlab.train.diagnostics import Diagnostics
from precisionlab.train.measure import Settings as SharpnessSettings
from precisionlab.train.measure import is_fp32, measure, planned
from precisionlab.train.model import LM
from precisionlab.train.optim import MasterFormat, MomentFormats, build_optimizer, round_master, round_moments
from precisionlab.train.outcomes import RunResult, SpikeCounter, make_rule
from precisionlab.train.recorder import Recorder

__all__ = ["run", "eval_batches", "lr_at"]


def lr_at(step: int, optim: Any, total_steps: int) -> float:
    """Learning rate for 1-based `step`: linear warmup to optim.lr, then cosine to min_lr_ratio * lr (or constant)."""
    if step <= optim.warmup_steps:
        return optim.lr * step / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    progress = (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps)
    floor = optim.min_lr_ratio * optim.lr
    return floor + (optim.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def z_loss(logits: torch.Tensor, weight: float) -> torch.Tensor:
    """PaLM's auxiliary z-loss, weight * mean over tokens of (log Z)^2 with log Z = logsumexp of a
    token's logits (B, T, V): it keeps the softmax normaliser near 1 (Wortsman et al. 2023's
    mitigation of output-logit divergence)."""
    return weight * torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


def objective(weight: float):
    """What training differentiates, as a function of (logits, loss): the cross-entropy, plus the
    z-loss of `weight` (optim.z_loss) when it is not 0."""
    return lambda logits, loss: (loss + z_loss(logits, weight)) if weight else loss


def eval_batches(val_tokens: Any, cfg: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed validation batches: drawn with `train.eval_seed`, identical for every run and seed."""
    generator = torch.Generator().manual_seed(int(cfg.train.eval_seed))
    return [get_batch(val_tokens, cfg.train.batch_size, cfg.train.seq_len, generator) for _ in range(cfg.train.eval_batches)]


def run(cfg: Any, recorder: Recorder | None = None, resume_from: str | os.PathLike | CheckpointRef | None = None,
        run_id: str | None = None) -> RunResult:
    """Train one model as `cfg` says; see the module docstring for outcomes and definitions.

    `recorder` gets the metadata, per-step metrics, checkpoints and outcome
    (default: `RunDirRecorder` on the current directory). `resume_from` is a
    checkpoint path written by an earlier run with the same config, or for a branch
    (`init.parent`, precisionlab.train.branch) its parent's checkpoint at the branch step
    (`precisionlab train` and `sweep` look it up in the results store); a `CheckpointRef` says which
    run and step the file must hold (precisionlab.train.checkpoint). `run_id` (the results store's id of
    `cfg`; default: the recorder's `run_id`, as a store's recorder has) is written into every checkpoint,
    which goes to train.checkpoint_dir/RUN_ID/. `cfg` is validated
    unless `precisionlab.config.validate` made it (the CLI and the sweep validate before they call this).
    """
    cfg = ensure_valid(cfg)
    t = cfg.train
    device = resolve_device(cfg.device)
    torch.set_num_threads(t.threads or os.cpu_count() or 1)
    if resume_from is None and cfg.init.parent is not None:
        raise ConfigError(f"init.parent={cfg.init.parent}: a branch starts from its parent's checkpoint; pass its path "
                          "as resume_from (precisionlab train and sweep find it in the results store)")
    state = None if resume_from is None else _read_checkpoint(resume_from, cfg, device)
    torch.manual_seed(cfg.seed)
    batch_gen = torch.Generator().manual_seed(cfg.seed)
    try:
        train_tokens, val_tokens, data_meta = load_dataset(cfg.data)
    except OSError as err:
        raise DataError(f"cannot read the data: {err}") from None
    trained_on = (state or {}).get("data", {}).get("fingerprint")
    if cfg.init.parent is None and trained_on not in (None, data_meta["fingerprint"]):  # one corpus per run id
        raise DataError(f"checkpoint {resume_from} trained on data with fingerprint {trained_on[:12]}, but the data here "
                        f"gives {data_meta['fingerprint'][:12]} (the built-in corpus depends on the Python installation, "
                        "see scripts/corpus_info.py); resume the run where it started")
    for split, tokens in (("train", train_tokens), ("val", val_tokens)):
        if len(tokens) <= t.seq_len:
            raise DataError(f"the {split} split has {len(tokens)} tokens, fewer than train.seq_len + 1 = {t.seq_len + 1}")
    if recorder is None:
        from precisionlab.train.rundir import RunDirRecorder

        recorder = RunDirRecorder(".")
    run_id = run_id if run_id is not None else getattr(recorder, "run_id", None)
    result = RunResult(status="completed")
    try:
        _train(cfg, device, batch_gen, train_tokens, val_tokens, data_meta, recorder, state, resume_from, result, run_id)
    except Exception as err:  # never crash a sweep: record the failure
        result.status, result.error = "failed", f"{type(err).__name__}: {err}"
    recorder.finish(asdict(result))
    return result


def _read_checkpoint(source: str | os.PathLike | CheckpointRef, cfg: DictConfig, device: torch.device) -> dict:
    """The checkpoint at `source`, verified (precisionlab.train.checkpoint), whose weights fit `cfg`'s model;
    ConfigError (one line) otherwise."""
    ref = source if isinstance(source, CheckpointRef) else CheckpointRef(os.fspath(source), None, None)
    try:
        state = read_checkpoint(ref.path, device, run_id=ref.run_id, step=ref.step)
        check_weights(cfg, shapes(state["model"]), f"checkpoint {ref.path}")
    except ValueError as err:  # CheckpointError included
        raise ConfigError(str(err)) from None
    except Exception as err:  # a missing key
        raise ConfigError(f"checkpoint {ref.path} cannot be read: {type(err).__name__}: {err}") from None
    return state


def _train(cfg, device, batch_gen, train_tokens, val_tokens, data_meta, recorder, state, resume_from,
           result: RunResult, run_id: str | None) -> None:
    t, o = cfg.train, cfg.optim
    model = build_model(cfg).to(device)
    optimizer, moment_formats = build_optimizer(model, o), MomentFormats.from_cfg(o)
    master = MasterFormat.from_cfg(o)
    round_master(model, master, cfg.seed, 0)  # the initial weights in the master format (a resume overwrites them)
    spikes, rule = SpikeCounter(t.spikes.z, t.spikes.window), make_rule(cfg)
    start_step, elapsed0 = 0, 0.0
    if state is not None:  # resumed, or a branch: precisionlab.train.branch says what comes from where
        load_state(state, cfg, model, optimizer, batch_gen, device)
        progress = state["progress"]
        start_step, elapsed0 = int(state["step"]), progress["elapsed"]
        result.initial_loss, result.min_val_loss = progress["initial_loss"], progress["min_val_loss"]
        result.final_val_loss = progress["final_val_loss"]
        spikes.load(progress["spikes"])
        spikes.step = start_step
        # older checkpoints hold no rule state: the rule restarts its window of recent losses here
        rule.load(progress.get("divergence") or
                  {"recent": [], "step": start_step, "first": result.initial_loss, "above_since": None})
    val_batches = eval_batches(val_tokens, cfg)
    checkpoint_steps = set(t.checkpoint_steps)
    sharpness_every = (cfg.get("sharpness") or {}).get("every", 0)
    parent = parse_parent(cfg.init.parent)
    diagnostics, trained = Diagnostics.from_cfg(cfg, recorder), objective(o.z_loss)
    recorder.start({
        "config": OmegaConf.to_container(cfg), "data": data_meta, "device": str(device),
        "n_params": model.num_params(),
        "resumed_from": None if resume_from is None else os.fspath(getattr(resume_from, "path", resume_from)),
        "start_step": start_step, "parent_run_id": parent and parent.run_id, "branch_step": parent and parent.step,
        "versions": provenance(),
    })
    tokens_per_step = t.batch_size * t.seq_len
    started = time.perf_counter()
    model.train()
    for step in range(start_step + 1, t.steps + 1):
        lr = lr_at(step, o, t.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = (b.to(device) for b in get_batch(train_tokens, t.batch_size, t.seq_len, batch_gen))
        with diagnostics.at(step, model, (x, y), trained):  # diagnostics.every: observes the step, changes nothing
            logits, loss = model(x, y)
            loss_value = loss.item()  # the cross-entropy: what is recorded and checked for divergence
            if math.isfinite(loss_value):
                optimizer.zero_grad(set_to_none=True)
                trained(logits, loss).backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip or math.inf).item()
                optimizer.step()
                round_moments(optimizer, moment_formats)
                round_master(model, master, cfg.seed, step)
            else:
                grad_norm = math.nan
        if result.initial_loss is None:
            result.initial_loss = loss_value
        result.steps_done, result.final_train_loss = step, loss_value
        recorder.log(step, "train", {
            "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
            "tokens": step * tokens_per_step, "elapsed": elapsed0 + time.perf_counter() - started,
        })
        if rule.update(loss_value):  # predicted to end diverged (precisionlab.train.outcomes): stop here
            _diverged(result, spikes, step)  # the step it stops at is no spike
            return
        spikes.update(loss_value)
        result.spikes = spikes.count
        if (t.eval_every and step % t.eval_every == 0) or step == t.steps:
            result.final_val_loss = _evaluate(model, val_batches, device)
            result.min_val_loss = min(result.min_val_loss or math.inf, result.final_val_loss)
            recorder.log(step, "val", {"loss": result.final_val_loss})
        if step in checkpoint_steps or (t.checkpoint_every and step % t.checkpoint_every == 0):
            path = checkpoint_path(t.checkpoint_dir, run_id, step)
            save_checkpoint(path, {
                "format": CHECKPOINT_FORMAT, "run_id": run_id, "step": step, "config": OmegaConf.to_container(cfg),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "data": data_meta,
                "rng": {"torch": torch.get_rng_state(), "batches": batch_gen.get_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                "progress": {"initial_loss": result.initial_loss, "min_val_loss": result.min_val_loss,
                             "final_val_loss": result.final_val_loss, "spikes": spikes.state(), "divergence": rule.state(),
                             "elapsed": elapsed0 + time.perf_counter() - started},
            })
            result.checkpoints.append((step, str(path.resolve())))
            recorder.checkpoint(step, str(path.resolve()))
        if sharpness_every and step % sharpness_every == 0:  # after the checkpoint: the same state it holds
            _record_sharpness(model, val_batches[0], cfg, step, recorder)
    onset = rule.end()  # ran to the end: diverged if it ended above the level (rule=none, median)
    if onset is not None:
        _diverged(result, spikes, onset)


def _diverged(result: RunResult, spikes: SpikeCounter, step: int) -> None:
    """Mark `result` diverged at `step`; spikes from then on are the blow-up, not recovered excursions."""
    result.status, result.diverged_step, result.spikes = "diverged", step, spikes.before(step)


def _record_sharpness(model: LM, batch: tuple, cfg: DictConfig, step: int, recorder: Recorder) -> None:
    """`sharpness.metrics` on the first fixed validation batch, as `precisionlab sharpness` measures
    them (same params, same store key); the model, RNG and gradients are left as they were."""
    hook = getattr(recorder, "sharpness", None)  # optional in the Recorder protocol
    if hook is None:
        return
    s = cfg.sharpness
    settings = SharpnessSettings(eps=(float(s.eps),))
    for metric, params in planned(list(s.metrics), settings, batch[0].shape[0], run_is_fp32=is_fp32(cfg)):
        values = measure(model, batch, metric, params)
        for name in sorted(values, key=lambda name: name == metric):
            hook(step, name, values[name], params)


@torch.no_grad()
def _evaluate(model: LM, batches: list, device: torch.device) -> float:
    model.eval()
    losses = [model(x.to(device), y.to(device))[1].item() for x, y in batches]
    model.train()
    return sum(losses) / len(losses)
