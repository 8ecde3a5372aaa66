"""What a run is called and how runs are ordered: a sweep's runs labelled by what they cast.

  format        the formats of the GEMM inputs: one name when x, w and grad share it, else x/w/grad;
                fp32 when nothing is cast; a generic block spelling with ':' for '/' (labels split
                roles at '/'), e.g. e2m1fn:b16x16:e4m3fn.
  variant       what a report row compares: the format plus every other config value that varies
                between runs of one format besides the learning rate and the seed, e.g.
                "e8m7 [rounding=toward_zero]"; presets that share formats are told apart by their
                preset: its name where the run is exactly that preset, PRESET+key=value for what an
                override changed ("nvfp4+x=e8m7"; precisionlab.analysis.presets).
  ℓ₀ (loss0)    ln V, the uniform-prediction loss (precisionlab.train.outcomes.reference_loss).
  ℓ (capped_loss)  a finished run's final validation loss capped at ℓ₀; a diverged run counts as ℓ₀.
  ℓ_best (capped_min_loss)  a finished run's best validation loss (min over its evaluations, the
                runs table's min_val_loss) capped at ℓ₀: a diverged run's best before it diverged,
                ℓ₀ when it had no finite evaluation.
  order         more bits per element first (a block format's scales included), then more exponent
                bits, then more mantissa bits: the bit-reduction trend reads top to bottom.

No statistics here: the sweep's end-of-run summary (precisionlab.sweep.progress) labels its runs
with this module without loading the report's statistics or plots.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from precisionlab.analysis.presets import preset_label
from precisionlab.numerics.blocks import BlockFormat, parse_format
from precisionlab.numerics.formats import FloatFormat
from precisionlab.store import DONE, NON_SEMANTIC_KEYS
from precisionlab.train.outcomes import reference_loss

__all__ = ["label_runs", "reference_losses", "identical_to", "display_label", "role_formats", "role_formats_parsed",
           "bits_per_element", "format_order", "format_family", "short_format", "variant_sorted", "FORMAT_KEYS",
           "GRID_AXES"]

FORMAT_KEYS = {"format", "x", "w", "grad", "name"}  # precision.* keys the formats columns already show
GRID_AXES = {"seed", "optim.lr", "lr"}              # what the tables are taken over, never part of a variant


def role_formats(label: str) -> list[str]:
    """The format names a variant label starts with: one, or x/w/grad."""
    return label.split(" ", 1)[0].split("/")


def role_formats_parsed(label: str) -> list[FloatFormat | BlockFormat] | None:
    """The formats of a variant's x, w and grad (`role_formats`), parsed; None if one is unparseable."""
    try:
        return [parse_format(_unshort(name)) for name in role_formats(label)]
    except ValueError:
        return None


def bits_per_element(label: str) -> float | None:
    """Storage bits per element of a variant, a block format's share of its scales included
    (mxfp4 4.25, nvfp4 4.5); the mean over x, w and grad when they differ; None if unparseable."""
    fmts = role_formats_parsed(label)
    if fmts is None:
        return None
    return float(np.mean([f.bits_per_element if isinstance(f, BlockFormat) else f.bits for f in fmts]))


def format_order(label: str) -> tuple:
    """Sort key: more bits per element first (fp32, bf16, e8m6, …, mxfp8, nvfp4, mxfp4), then more
    exponent bits, more mantissa bits, then the label. `label` is a variant; unparseable ones last."""
    fmts = role_formats_parsed(label)
    if fmts is None:
        return (1, 0.0, 0, 0, label)
    first = fmts[0].element if isinstance(fmts[0], BlockFormat) else fmts[0]
    return (0, -bits_per_element(label), -first.exp_bits, -first.man_bits, label)


def format_family(label: str) -> str | None:
    """What a stability-vs-bits line connects: element formats by exponent width ("E8"), block
    formats by scale format and block ("e8m0-scaled b32"); None if unparseable."""
    fmts = role_formats_parsed(label)
    if fmts is None:
        return None
    f = fmts[0]
    if not isinstance(f, BlockFormat):
        return f"E{f.exp_bits}"
    shape = f"{f.block}x{f.block_cols}" if f.block_cols > 1 else f"{f.block}"
    return f"{f.scale}-scaled b{shape}" + (" + tensor scale" if f.tensor_scale else "")


def short_format(name: str) -> str:
    """A format name fit for a label: generic block spellings use ':' (labels split roles at '/')."""
    return name.replace("/", ":")


def display_label(variant: str) -> str:
    """A variant's label in figures: a preset's name alone where its formats are long
    ("nvfp4/e2m1fn:b16x16:e4m3fn:tensor/nvfp4 [nvfp4_no_rht]" -> "nvfp4_no_rht"), with what an
    override changed ("... [nvfp4+x=e8m7]" -> "nvfp4+x=e8m7")."""
    formats, _, extras = variant.partition(" [")
    return extras[:-1] if extras and len(formats) > 16 else variant


def _unshort(name: str) -> str:
    return name.replace(":", "/")


def _skipped(key: str) -> bool:
    parts = key.split(".")
    if key in GRID_AXES or any(p in NON_SEMANTIC_KEYS for p in parts):
        return True
    return any(key.startswith(p) for p in NON_SEMANTIC_KEYS if "." in p) or (
        parts[0] == "precision" and len(parts) > 1 and parts[1] in FORMAT_KEYS)


def label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` (store.runs()) plus `format`, `variant`, `loss0` (ℓ₀), `capped_loss` (ℓ) and `capped_min_loss`
    (ℓ_best): see the module docstring."""
    runs = runs.copy()
    roles = [runs[c].astype(object).where(runs[c].notna(), "fp32") for c in ("format_x", "format_w", "format_grad")]
    roles = [r.map(lambda name: short_format(str(name))) for r in roles]
    runs["format"] = [x if x == w == g else f"{x}/{w}/{g}" for x, w, g in zip(*roles)]
    extras = [""] * len(runs)
    if "config" in runs and len(runs):
        flat = pd.json_normalize([c if isinstance(c, dict) else {} for c in runs.config]).astype(str)
        by_format = flat.groupby(runs["format"].to_numpy())
        varying = sorted(k for k in flat.columns if not _skipped(k) and (by_format[k].nunique() > 1).any())
        recipe = [k for k in varying if k.startswith("precision.")]
        by_name = bool(recipe) and "precision.name" in flat.columns and (by_format["precision.name"].nunique() > 1).any()
        if by_name:  # presets that differ beyond their formats (nvfp4 vs nvfp4_no_rht): their name says how,
            # for their precision keys and any other key a preset sets (msamp_o2's optim.exp_avg_format);
            # PRESET+key=value where an override changed the preset (never its bare name then)
            presets = pd.Series([str(preset_label(c)) if isinstance(c, dict) else "None" for c in runs.config])
            by_preset = flat.groupby(presets.to_numpy())
            varying = [k for k in varying if k not in recipe and (by_preset[k].nunique() > 1).any()]
        short = {k: k.split(".")[-1] for k in varying}
        if len(set(short.values())) < len(short):
            short = {k: k for k in varying}
        extras = []
        for i in range(len(runs)):
            parts = [presets.iat[i]] if by_name and presets.iat[i] not in _UNSET else []
            parts += [f"{short[k]}={flat[k].iat[i]}" for k in varying if flat[k].iat[i] not in _UNSET]
            if parts == [runs["format"].iat[i]]:  # the preset named after its format
                parts = []
            extras.append(" [" + ", ".join(parts) + "]" if parts else "")
    runs["variant"] = runs["format"] + pd.Series(extras, index=runs.index)
    runs["loss0"] = reference_losses(runs)
    final = runs.final_val_loss.astype(float)
    capped = np.where(runs.status == "diverged", runs.loss0, np.fmin(final, runs.loss0))
    runs["capped_loss"] = np.where(runs.status.isin(DONE), capped, np.nan)
    best = runs.min_val_loss.astype(float) if "min_val_loss" in runs else pd.Series(np.nan, index=runs.index)
    best = np.fmin(best, np.where(runs.status == "completed", final, np.nan))  # fmin: a NaN side is ignored
    runs["capped_min_loss"] = np.where(runs.status.isin(DONE), np.fmin(best, runs.loss0), np.nan)
    return runs


def reference_losses(runs: pd.DataFrame) -> pd.Series:
    """ℓ₀ of each run: ln V, the loss of predicting its V = model.vocab_size tokens uniformly (what an
    untrained model scores; deterministic, never one batch's loss); the run's step-1 train loss only
    where its config does not say V (runs recorded by other code)."""
    vocab = [c.get("model", {}).get("vocab_size") if isinstance(c, dict) else None
             for c in (runs.config if "config" in runs else [None] * len(runs))]
    level = pd.Series([reference_loss(int(v)) if v else np.nan for v in vocab], index=runs.index, dtype=float)
    return level.fillna(runs.initial_loss.astype(float))


def identical_to(runs: pd.DataFrame, variant: str, reference: str) -> bool:
    """Every run of `variant` ended as the reference's run at its LR and seed: the same status and the
    same initial, final train, final and best validation loss to the last bit (a cast that changes no
    bit here, e.g. E7M7 on a model whose values never leave E7's range). False when the reference
    lacks one of its (LR, seed) cells."""
    keys = ["status", "initial_loss", "final_train_loss", "final_val_loss", "min_val_loss"]
    keys = [k for k in keys if k in runs]
    mine = runs[runs.variant == variant].set_index(["lr", "seed"])[keys]
    ref = runs[runs.variant == reference].set_index(["lr", "seed"])[keys]
    if mine.empty or not mine.index.isin(ref.index).all() or mine.index.has_duplicates or ref.index.has_duplicates:
        return False
    return bool(mine.astype(str).eq(ref.loc[mine.index].astype(str)).all().all())


_UNSET = ("nan", "None")  # a key one run's config has and another's lacks, or null: no label part


def variant_sorted(df: pd.DataFrame, *also: str) -> pd.DataFrame:
    if df.empty:
        return df
    key = df.variant.map(format_order)
    order = sorted(range(len(df)), key=lambda i: (key.iat[i], *(df[c].iat[i] for c in also)))
    return df.iloc[order].reset_index(drop=True)
