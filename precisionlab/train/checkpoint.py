"""Checkpoints: a run's whole state in one file, and the model a config describes.

A checkpoint holds the step, the resolved config, model and optimizer state, both RNG
states, the data fingerprint and the loop's bookkeeping, so resuming continues the loss
curve bit for bit on CPU; `load_checkpoint` rebuilds the model (its quantized GEMMs
included) from the stored config, for sharpness and analysis.

Integrity: a checkpoint names the run that wrote it (`run_id`, None for a run trained outside
a results store) and its step, and carries `checksum`, the SHA-256 of its content (every
tensor's bytes, dtype and shape, every other value, under its key path). `read_checkpoint`
recomputes the checksum and, given the run and step the reader expects, compares them with
the file's: a file damaged on disk, or written by another run into the same folder, is a
`CheckpointError` naming the file, never weights to train or measure from. Checkpoints of
the earlier format (precisionlab-checkpoint-1: no run id, no checksum) cannot be verified
and are refused the same way.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf

from precisionlab.quant.linear import convert_model
from precisionlab.quant.recipe import PrecisionConfig
from precisionlab.train.model import LM, ModelConfig

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "CheckpointError", "CheckpointRef", "build_model", "plain_model", "checkpoint_path",
           "checksum", "save_checkpoint", "read_checkpoint", "load_checkpoint"]

CHECKPOINT_FORMAT = "precisionlab-checkpoint-2"  # 2: run_id and checksum
_UNVERIFIABLE = {"precisionlab-checkpoint-1": "an earlier precisionlab's checkpoint, without a run id or checksum"}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, damaged, or not the run and step expected (one line)."""


class CheckpointRef(NamedTuple):
    """A checkpoint file and what it must hold: the run that wrote it and its step."""
    path: str
    run_id: str | None
    step: int


def plain_model(model_cfg: Any) -> torch.nn.Module:
    """The model a `model` config node describes, without casts: our `LM`, or for arch=hf the
    Hugging Face model (precisionlab.train.hf) (on CPU, or on torch's default device; seed torch first)."""
    if model_cfg["arch"] == "hf":
        from precisionlab.train.hf import hf_model  # imports transformers only when asked for

        return hf_model(model_cfg)
    return LM(ModelConfig(**model_cfg))


def build_model(cfg: Any, precision: PrecisionConfig | None = None) -> torch.nn.Module:
    """The model of `cfg.model` with the quantized GEMMs of `precision`, the recipe of `cfg.precision`
    (built here when not given) (on CPU; seed torch first)."""
    model = plain_model(cfg.model)
    if precision is None:
        precision = PrecisionConfig.from_cfg(cfg.precision)
    return convert_model(model, precision, seed=int(cfg.seed))


class Checkpoint(NamedTuple):
    model: torch.nn.Module  # an LM or a Hugging Face model (model.arch=hf), rebuilt from the stored config, weights loaded, in eval mode
    cfg: DictConfig  # the run's resolved config
    step: int  # steps done when saved
    state: dict  # everything stored (optimizer, rng, progress, data meta)


def checkpoint_path(checkpoint_dir: str | os.PathLike, run_id: str | None, step: int) -> Path:
    """Where a run saves its checkpoint at `step`: a folder of its own under train.checkpoint_dir
    (when it has an id), so runs sharing one checkpoint_dir never write the same file."""
    folder = Path(checkpoint_dir) if run_id is None else Path(checkpoint_dir) / run_id
    return folder / f"step_{step:07d}.pt"


def checksum(state: dict) -> str:
    """SHA-256 of `state`'s content (its "checksum" entry left out), independent of how torch lays out the file."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != "checksum"})
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if torch.is_tensor(value):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)};".encode())
        for key in sorted(value, key=repr):
            digest.update(f"{key!r}=".encode())
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__} {len(value)};".encode())
        for item in value:
            _feed(digest, item)
    else:  # None, bool, int, float, str: repr is exact (floats round-trip)
        digest.update(f"{type(value).__name__} {value!r};".encode())


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` (with its checksum added) atomically: a killed writer leaves the previous file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**state, "checksum": checksum(state)}
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as tmp:
        torch.save(state, tmp)
    os.replace(tmp.name, path)


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", *, run_id: str | None = None,
                    step: int | None = None) -> dict:
    """The state saved at `path`, its checksum verified and, when given, its run id and step
    compared with `run_id` and `step`; CheckpointError (one line naming the file) otherwise."""
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a torn or foreign file: torch's zip or unpickling error
        problem = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {problem})") from None
    kind = state.get("format") if isinstance(state, dict) else None
    if kind in _UNVERIFIABLE:
        raise CheckpointError(f"checkpoint {path} is {_UNVERIFIABLE[kind]}, so it cannot be verified; "
                              "rerun the run that wrote it to get a checkpoint that can")
    if kind != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a precisionlab checkpoint")
    if state.get("checksum") != checksum(state):
        raise CheckpointError(f"checkpoint {path} is damaged: its content does not match its checksum "
                              "(changed on disk since it was written); move it aside or rerun the run that wrote it")
    held = (state.get("run_id"), int(state["step"]))
    if (run_id is not None and held[0] != run_id) or (step is not None and held[1] != step):
        expected = " at ".join(f"{what} {value}" for what, value in (("run", run_id), ("step", step)) if value is not None)
        raise CheckpointError(f"checkpoint {path} holds run {held[0]} at step {held[1]}, not {expected} "
                              "(overwritten by another run writing the same train.checkpoint_dir?)")
    return state


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", *, run_id: str | None = None,
                    step: int | None = None) -> Checkpoint:
    """Rebuild the model of a checkpoint (quantized GEMMs included) and load its weights; the file
    is verified as `read_checkpoint` says."""
    state = read_checkpoint(path, device, run_id=run_id, step=step)
    cfg = OmegaConf.create(state["config"])
    model = build_model(cfg).to(device)
    model.load_state_dict(state["model"])
    return Checkpoint(model.eval(), cfg, int(state["step"]), state)
