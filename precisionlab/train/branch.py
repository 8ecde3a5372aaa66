"""Branching runs: a run that starts from another run's checkpoint with a config of its own.

`init.parent=RUN_ID@STEP` names the parent run (its whole id, 16 hex digits: a branch's own id
hashes the spelling, so one parent has one) and the step of one of its stored checkpoints. The
branch loads that checkpoint and trains steps STEP+1 .. train.steps, numbering them as the parent
did. A checkpoint holds a config too; where it and the branch's differ, what comes from where:

  the checkpoint      weights (names and shapes must match the branch's model: a branch may change
                      precision, optim, train and data settings, not the model's shape; a mismatch
                      is one line, `check_weights`; `check_loads` loads the checkpoint as a run would,
                      so a parameter added or removed, e.g. by model.tie_weights, is one line too);
                      AdamW's moments and step counts; the loop's bookkeeping (the initial loss; the
                      divergence rule's window, so the rule sees the parent's losses; min and last val
                      loss, the spike window and count, elapsed time: a branch's outcome
                      covers the whole curve it continues); the RNG states (batch order, dropout)
                      while the branch keeps the parent's seed
  the checkpoint where it fits, else fresh
                      each QuantLinear's own state: its call count (which keys stochastic rounding
                      and per-call Hadamard signs) and delayed-scaling amax history and scale, taken
                      where the parent has the same layer with a buffer of the same shape; a layer
                      the parent did not cast, or a new history length, starts as in a new run
  the branch's config everything else: the module swap (precision), AdamW's hyperparameters (the
                      checkpoint's param groups are dropped), the moments' formats (moments the
                      parent stored in another format are cast to the branch's at load), the LR
                      schedule over its train.steps, divergence and spike settings; another seed
                      reseeds the batch order and dropout at the branch point (a seed sweep of one
                      branch point varies the data that follows it)

Resuming a run from its own checkpoint is the same load with nothing different: so a branch with an
unchanged config (init.parent aside) continues the parent's curve bit for bit on CPU.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import torch

from precisionlab.quant.linear import DELAYED_STATE
from precisionlab.train.checkpoint import build_model
from precisionlab.train.optim import MomentFormats, build_optimizer, round_moments

__all__ = ["Parent", "PARENT_SPELLING", "parse_parent", "shapes", "check_weights", "check_loads", "load_state"]

PARENT_SPELLING = "RUN_ID@STEP (a run's 16-hex-digit id, @, a checkpoint step >= 1), e.g. 3f9a2c1b00d4e5f6@100"
_PARENT = re.compile(r"([0-9a-f]{16})@([1-9][0-9]*)")
_MODULE_STATE = ("_extra_state", *DELAYED_STATE)  # a QuantLinear's own state_dict entries (call count, delayed scaling)


class Parent(NamedTuple):
    run_id: str
    step: int


def parse_parent(text: str | None) -> Parent | None:
    """`init.parent`: None for null (a fresh start); ValueError (one line) when malformed."""
    if text is None:
        return None
    match = _PARENT.fullmatch(str(text))
    if match is None:
        raise ValueError(f"init.parent must be {PARENT_SPELLING}; got {text!r}")
    return Parent(match[1], int(match[2]))


def _is_module_state(key: str) -> bool:
    return key.rpartition(".")[2] in _MODULE_STATE


def shapes(model_state: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The weights of a model state_dict (a QuantLinear's own state left out) by name: their shapes."""
    return {k: tuple(v.shape) for k, v in model_state.items() if not _is_module_state(k)}


def check_weights(cfg: Any, saved: dict[str, tuple[int, ...]], where: str) -> None:
    """ValueError (one line, starting with `where`) unless the weights `saved` (`shapes` of a
    checkpoint's model) are those of `cfg`'s model, name for name and shape for shape."""
    with torch.device("meta"):  # the layer shapes, without allocating the model
        mine = shapes(build_model(cfg).state_dict())
    problems = []
    for what, keys in (("the checkpoint lacks", mine.keys() - saved.keys()), ("this run's model lacks", saved.keys() - mine.keys())):
        if keys:
            problems.append(f"{what} {_few(sorted(keys))}")
    differ = [f"{k} {list(saved[k])} vs {list(mine[k])}" for k in sorted(mine.keys() & saved.keys()) if mine[k] != saved[k]]
    if differ:
        problems.append(f"shapes differ (checkpoint vs this run): {_few(differ)}")
    if problems:
        raise ValueError(f"{where}: the checkpoint's weights do not fit this run's model ({'; '.join(problems)}); "
                         "a branch may change precision, optim, train and data settings, not the model's shape")


def check_loads(state: dict, cfg: Any, where: str) -> None:
    """ValueError (one line, starting with `where`) unless checkpoint `state` loads into a new model and
    optimizer of `cfg` as a run loads it (`load_state`): its weights fit (`check_weights`) and so does
    AdamW's state (a parameter added or removed, e.g. by model.tie_weights, shifts it). Torch's global
    RNG is left as it was."""
    check_weights(cfg, shapes(state["model"]), where)
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg)
        optimizer = build_optimizer(model, cfg.optim)
        try:
            load_state(state, cfg, model, optimizer, torch.Generator(), torch.device("cpu"))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        except Exception as err:  # torch's own load errors
            problem = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(f"{where}: the checkpoint does not load into this run's model ({type(err).__name__}: "
                             f"{problem})") from None


def _check_moments(optimizer: torch.optim.Optimizer) -> None:
    """ValueError unless every loaded AdamW state belongs to a parameter of this run, tensor shapes matching."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entry in optimizer.state_dict()["state"].items():
        if index >= len(params):
            raise ValueError(f"the checkpoint's optimizer holds state for {index + 1}+ parameters, this run's model has "
                             f"{len(params)} (model.tie_weights changed?); a branch may not change the model's shape")
        for name, value in entry.items():
            if torch.is_tensor(value) and value.dim() > 0 and tuple(value.shape) != tuple(params[index].shape):
                raise ValueError(f"the checkpoint's optimizer state {name} of parameter #{index} has shape "
                                 f"{list(value.shape)}, this run's parameter {list(params[index].shape)} "
                                 "(model.tie_weights changed?); a branch may not change the model's shape")


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def load_state(state: dict, cfg: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               batch_gen: torch.Generator, device: torch.device) -> None:
    """Load checkpoint `state` (weights checked by `check_weights`) into the run `cfg` as the module
    docstring says: model and module state, optimizer state, RNG states. The loop's bookkeeping
    (state["progress"], state["step"]) is the caller's."""
    own = model.state_dict()
    fits = {k: v for k, v in state["model"].items()
            if k in own and not (_is_module_state(k) and torch.is_tensor(v) and v.shape != own[k].shape)}
    model.load_state_dict(fits, strict=False)  # missing: only module state the parent lacks (checked weights)
    saved = state["optimizer"]
    optimizer.load_state_dict({"state": saved["state"], "param_groups": optimizer.state_dict()["param_groups"]})
    _check_moments(optimizer)
    formats = MomentFormats.from_cfg(cfg.optim)
    if formats != MomentFormats.from_cfg(state["config"]["optim"]):
        round_moments(optimizer, formats)  # the parent's moments, stored as this run stores them
    if int(state["config"]["seed"]) == int(cfg.seed):  # else: the streams `cfg.seed` seeded stay
        torch.set_rng_state(state["rng"]["torch"].cpu())
        batch_gen.set_state(state["rng"]["batches"].cpu())
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
