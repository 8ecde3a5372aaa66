"""Checkpoints: a run's whole state in one file, and the model a config describes.

A checkpoint holds the step, the resolved config, model and optimizer state, both RNG
states, the data fingerprint and the loop's bookkeeping, so resuming continues the loss
curve bit for bit on CPU; `load_checkpoint` rebuilds the model (its quantized GEMMs
included) from the stored config, for sharpness and analysis.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf

from precisionlab.quant.linear import convert_model
from precisionlab.train.model import LM, ModelConfig

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "build_model", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_FORMAT = "precisionlab-checkpoint-1"


def build_model(cfg: Any) -> LM:
    """The model of `cfg.model` with `cfg.precision`'s quantized GEMMs (on CPU; seed torch first)."""
    model = LM(ModelConfig(**cfg.model))
    return convert_model(model, cfg.precision, seed=int(cfg.seed))


class Checkpoint(NamedTuple):
    model: LM  # rebuilt from the stored config, weights loaded, in eval mode
    cfg: DictConfig  # the run's resolved config
    step: int  # steps done when saved
    state: dict  # everything stored (optimizer, rng, progress, data meta)


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as tmp:
        torch.save(state, tmp)
    os.replace(tmp.name, path)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model of a checkpoint (quantized GEMMs included) and load its weights."""
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a precisionlab checkpoint")
    cfg = OmegaConf.create(state["config"])
    model = build_model(cfg).to(device)
    model.load_state_dict(state["model"])
    return Checkpoint(model.eval(), cfg, int(state["step"]), state)
