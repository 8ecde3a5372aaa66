"""The one typed schema of every config group, and the checks types cannot express.

Schema. Every group is a dataclass registered in Hydra's ConfigStore (a structured
config; `model`'s and `precision`'s live with the code that consumes them, ModelConfig in
precisionlab.train.model and Precision in precisionlab.quant.recipe); the YAML files under `configs/` are presets on top of them: each preset's
defaults list starts with its group's schema (`model/tiny.yaml`: `- /schema/model@_here_`), and
`train.yaml` starts with the root schema (`- schema@_global_: train`, which `sweep.yaml`
overrides with `sweep`: the same plus the `sweep` key). A field's default is the value
of the default preset (model=tiny, precision=fp32, data=default, optim=adamw, train.yaml's
train/sharpness/diagnostics/store), so a key a config leaves out means what it always meant. While
Hydra composes, OmegaConf rejects a key the schema does not know (`train.stepz=5`,
`+foo=1`, `+model.foo=1`) and a value of the wrong type (`optim.lr=abc`,
`train.steps=1.5`, `seed=true`); `one_line` turns its multi-line error into our line.

Checks. `validate(cfg)` types `cfg` against the schema (for configs built in Python),
resolves it, checks allowed values (a field's `choices`) and runs one check per group
for what types cannot say (lr > 0, a parseable format name, n_embd divisible by n_head,
data.path exists, ...). Every error is `ConfigError` (or the data loader's `DataError`)
with one line naming the key, what was given and what is accepted; the CLI prints it
and exits with code 2.

Validated once. `validate` returns the resolved config read-only and marked validated
(`is_validated`); being read-only, the mark cannot go stale. `ensure_valid(cfg)` returns
a marked config as it is and validates anything else: `run.job.train_recorded` uses it, so a
config built in Python is validated once on the way in and never again. The training stage
(`train.loop.run`) imports nothing from here: it takes a validated config, and raises the same
`ConfigError` (precisionlab.train.errors) for what only it can find out. The CLI validates before Hydra starts (bad input must fail before
a run directory or store row exists): `precisionlab train` its one composed config, which
it hands to Hydra's task function (`run.app.train_main`, in its process); `precisionlab
sweep` every grid point, in `sweep.plan.plan`. Hydra composes those grid points again for
`run.job.run_job`, maybe in other processes (joblib, Slurm) where no mark made in the
CLI's process survives, so run_job takes plan()'s word for them: `assume_valid` resolves
and marks without checking.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from precisionlab.quant.linear import check_hadamard_dims, convert_model
from precisionlab.quant.recipe import Precision, PrecisionConfig
from precisionlab.runtime import DeviceError, absolute_paths, resolve_device
from precisionlab.store.trackers import tracker_problem
from precisionlab.store.url import DEFAULT_JOURNAL_MODE, DEFAULT_STORE_PATH, JOURNAL_MODES, absolute_store_url
from precisionlab.train.branch import parse_parent
from precisionlab.train.data import SPLITS, data_path
from precisionlab.train.diagnostics import FAMILIES as DIAGNOSTIC_FAMILIES
from precisionlab.train.errors import ConfigError
from precisionlab.train.sharpness import METRICS as SHARPNESS_METRICS
from precisionlab.train.checkpoint import plain_model
from precisionlab.train.model import NOT_FOR_HF, ModelConfig
from precisionlab.train.optim import MASTER_ROUNDINGS, MasterFormat, MomentFormats

__all__ = ["ConfigError", "make_paths_absolute", "validate", "ensure_valid", "assume_valid", "is_validated", "one_line",
           "TrainConfig", "SweepConfig", "DATA_SOURCES", "SCHEDULES", "register"]

SCHEDULES = ("cosine", "constant")
DIVERGENCE_RULES = ("none", "median", "factor")  # precisionlab.train.outcomes


def choice(default: str, choices: tuple[str, ...]) -> Any:
    """A str field that takes one of `choices` (OmegaConf has no Literal; `validate` checks it)."""
    return field(default=default, metadata={"choices": choices})


# ---- the schema: one dataclass per group; defaults are the default presets' values

# model: the model's own ModelConfig (precisionlab.train.model); precision: the recipe's own Precision
# (precisionlab.quant.recipe), which builds the casts from it: so their keys and defaults are declared once.


@dataclass
class StdlibData:
    source: str = "stdlib"              # which data schema this is (the data preset sets it)
    vocab_size: int = 256               # bytes are the tokens
    budget_bytes: int = 4_000_000       # whole .py files sampled over the library until this many bytes
    val_fraction: float = 0.1           # held out for validation
    split: str = choice("families", SPLITS)  # families: hold out whole families of near-duplicate files; files: single files (hash-chosen); tail: the last bytes (0.2)
    cache_dir: Optional[str] = None     # null: $PRECISIONLAB_CACHE, $XDG_CACHE_HOME/precisionlab or ~/.cache/precisionlab


@dataclass
class TextData:
    source: str = "text"                # which data schema this is (the data preset sets it)
    path: str = MISSING                 # a text file or a folder
    glob: str = "**/*.txt"              # which files of a folder data.path are read
    vocab_size: int = 256               # bytes are the tokens
    val_fraction: float = 0.1           # held out for validation
    split: str = choice("families", SPLITS)  # families / files: hold out whole files of a folder (see stdlib); tail: the last bytes


@dataclass
class TokensData:
    source: str = "tokens"              # which data schema this is (the data preset sets it)
    path: str = MISSING                 # a folder with train.bin and val.bin (uint16)
    vocab_size: int = 50304             # at least the largest token id + 1 (50304: GPT-2's, padded)


# The data sources have different keys, so each has its schema; `data.source` picks it.
DATA_SOURCES = {"stdlib": StdlibData, "text": TextData, "tokens": TokensData}


@dataclass
class Optim:
    name: str = choice("adamw", ("adamw",))  # the optimizer (AdamW only)
    lr: float = 3.0e-3                  # peak learning rate, reached after warmup
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW's moment decay rates
    eps: float = 1.0e-8                 # AdamW's denominator epsilon
    weight_decay: float = 0.1           # on matrices only
    warmup_steps: int = 20              # linear warmup from 0 to lr over this many steps
    schedule: str = choice("cosine", SCHEDULES)  # after warmup: cosine decay to min_lr_ratio * lr, or constant
    min_lr_ratio: float = 0.1           # the cosine schedule's final lr, as a fraction of lr
    grad_clip: float = 1.0              # max global grad norm; 0: no clipping
    z_loss: float = 0.0                 # adds z_loss * mean over tokens of (log Z)^2 to the trained loss (PaLM); 0: off
    state_format: str = "fp32"          # AdamW's moments stored in this format (precisionlab.train.optim)
    exp_avg_format: str = "${.state_format}"     # the first moment's (MS-AMP O2: e4m3fn)
    exp_avg_sq_format: str = "${.state_format}"  # the second moment's (MS-AMP O2: fp16)
    master_format: str = "fp32"         # parameters stored in this element format, no fp32 master copy (bf16: pure bf16)
    master_rounding: str = choice("nearest_even", MASTER_ROUNDINGS)  # how each step's fp32 result rounds into it


@dataclass
class Divergence:  # precisionlab.train.outcomes: what "diverged" means and when a run stops early
    rule: str = choice("none", DIVERGENCE_RULES)  # none: stop only on NaN/Inf, judge at the end (diverged: ended above ln V); median, factor: stop early
    window: int = 20                    # rule=median: stop once the median of the last `window` losses exceeds ln V + margin
    margin: float = 0.0                 # rule=median: nats above ln V (V = model.vocab_size)
    factor: float = 1.0                 # rule=factor: diverged if loss > factor * step 1's loss after warmup


@dataclass
class Spikes:
    z: float = 8.0                      # a spike: a loss more than z robust SDs above the median of the previous `window` losses
    window: int = 20                    # losses the spike test looks back over (precisionlab.train.outcomes)


@dataclass
class Train:
    steps: int = 300                    # optimizer steps
    batch_size: int = 16                # sequences per step
    seq_len: int = 64                   # tokens per sequence; at most model.block_size
    eval_every: int = 50                # 0: only at the end
    eval_batches: int = 32              # validation batches per evaluation, the same for every run
    eval_seed: int = 1234               # draws those validation batches
    threads: Optional[int] = None       # torch CPU threads; null: all cores
    checkpoint_steps: List[int] = field(default_factory=list)  # also save checkpoints at these steps
    checkpoint_every: int = 0           # 0: never
    checkpoint_dir: str = "checkpoints"  # checkpoints go to checkpoint_dir/RUN_ID/
    loggers: List[str] = field(default_factory=list)  # also send the run to these trackers: tensorboard, mlflow, wandb (settings: loggers.*)
    divergence: Divergence = field(default_factory=Divergence)
    spikes: Spikes = field(default_factory=Spikes)


@dataclass
class Init:  # where training starts (precisionlab.train.branch); not `init.from`: `from` is no field name
    parent: Optional[str] = None        # RUN_ID@STEP: a branch of that run from its stored checkpoint at STEP; null: a fresh start


@dataclass
class Sharpness:
    every: int = 0                      # 0: off
    metrics: List[str] = field(default_factory=lambda: ["logit"])  # which sharpness metrics to measure
    eps: float = 1.0e-3                 # the perturbation box's half-width factor (logit and keskar sharpness)


@dataclass
class Diagnostics:
    every: int = 0                      # measure every N steps, on that step's batch and casts; 0: off
    families: List[str] = field(default_factory=lambda: list(DIAGNOSTIC_FAMILIES))  # casts | grad_fidelity | proxies


@dataclass
class Loggers:
    """Where `train.loggers` send runs (precisionlab.store.trackers)."""

    dir: str = "runs"                   # TensorBoard events (DIR/SWEEP/RUN_ID) and W&B's offline folders (DIR/wandb), relative to the launch directory
    mlflow_uri: Optional[str] = None    # MLflow tracking URI (a server: http://HOST:PORT); null: $MLFLOW_TRACKING_URI, else the SQLite file DIR/mlflow.db
    wandb_project: str = "precisionlab"  # W&B project (group: the sweep); offline unless $WANDB_MODE says otherwise


@dataclass
class Store:
    path: Optional[str] = DEFAULT_STORE_PATH  # an SQLite file; null (and no url): don't record
    url: Optional[str] = None           # sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB; wins over path
    journal_mode: str = choice(DEFAULT_JOURNAL_MODE, JOURNAL_MODES)  # SQLite journal: wal (many writers on one machine) or delete (file systems without shared memory)


@dataclass
class TrainConfig:
    """The root of `precisionlab train` (configs/train.yaml); fields in the composed order."""

    model: ModelConfig = field(default_factory=ModelConfig)
    precision: Precision = field(default_factory=Precision)
    data: Any = MISSING                 # one of DATA_SOURCES' schemas, from the data preset
    optim: Optim = field(default_factory=Optim)
    seed: int = 0                       # initial weights, batch order and stochastic rounding
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    train: Train = field(default_factory=Train)
    init: Init = field(default_factory=Init)
    sharpness: Sharpness = field(default_factory=Sharpness)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    loggers: Loggers = field(default_factory=Loggers)
    store: Store = field(default_factory=Store)


@dataclass
class Sweep:
    name: Optional[str] = None          # null: the grid config's name (plus a hash when the command line changes the grid)
    force: bool = False                 # rerun completed and diverged runs too


@dataclass
class SweepConfig(TrainConfig):
    """The root of `precisionlab sweep` (configs/sweep.yaml)."""

    sweep: Sweep = field(default_factory=Sweep)


def register() -> None:
    """Put the schema into Hydra's ConfigStore (configs/__init__.py calls it: before any composition)."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="train", node=TrainConfig, package="_global_")
    cs.store(group="schema", name="sweep", node=SweepConfig, package="_global_")
    # Outside the groups they type, so they are no options of them (model=schema); the presets
    # name them with their own package: `- /schema/model@_here_`.
    cs.store(group="schema", name="model", node=ModelConfig)
    cs.store(group="schema", name="precision", node=Precision)
    cs.store(group="schema", name="optim", node=Optim)
    for source, schema in DATA_SOURCES.items():
        cs.store(group="schema/data", name=source, node=schema)


def make_paths_absolute(cfg: Any, base: str) -> None:
    """Every file-system location of `cfg` taken from the launch directory `base`, in place: the path keys
    (`runtime.absolute_paths`) and an sqlite:/// `store.url` (`store.url.absolute_store_url`), so a run's
    id and files do not depend on the folder Hydra runs it in."""
    absolute_paths(cfg, base)
    absolute_store_url(cfg, base)


# ---- validation


def validate(cfg: Any) -> DictConfig:
    """Type `cfg` (a DictConfig or dict) against the schema, resolve it and check every value;
    returns it resolved, read-only and marked validated, or raises ConfigError / DataError."""
    try:
        cfg = _typed(cfg)
        _check_choices(cfg)
        for check in _CHECKS:
            check(cfg)
    except OmegaConfBaseException as err:  # a wrong type or unknown key in a config built in Python
        raise ConfigError(one_line(err)) from None
    return _mark(cfg)


def ensure_valid(cfg: Any) -> DictConfig:
    """`cfg` itself when `validate` made it, else `validate(cfg)`."""
    return cfg if is_validated(cfg) else validate(cfg)


def assume_valid(cfg: DictConfig) -> DictConfig:
    """`cfg` resolved and marked validated without checks: only for a config the CLI validated
    before launching (Hydra's task functions compose the same config again, maybe elsewhere)."""
    return _mark(_typed(cfg))


def is_validated(cfg: Any) -> bool:
    return isinstance(cfg, DictConfig) and cfg._get_node_flag(_MARK) is True


_MARK = "precisionlab_validated"  # a custom OmegaConf node flag (as struct and readonly are): kept by copy
                                  # and pickle, dropped by to_container


def _typed(cfg: Any) -> DictConfig:
    """`cfg` merged onto its schema (SweepConfig when it has a `sweep` key; the data source's
    schema), interpolations resolved."""
    cfg = OmegaConf.to_container(OmegaConf.create(cfg))  # plain: a data node typed for another source merges too
    schema = OmegaConf.structured(SweepConfig if "sweep" in cfg else TrainConfig)
    source = (cfg.get("data") or {}).get("source", "stdlib")
    if source not in DATA_SOURCES:
        raise ConfigError(f"data.source must be one of {', '.join(DATA_SOURCES)}; got {source!r}")
    schema.data = DATA_SOURCES[source]
    typed = OmegaConf.merge(schema, cfg)
    OmegaConf.resolve(typed)
    return typed


def _mark(cfg: DictConfig) -> DictConfig:
    cfg._set_flag(_MARK, True)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _check_choices(node: DictConfig, prefix: str = "") -> None:
    """Every `choice` field of the schema (recursively) holds one of its choices."""
    for f in dataclasses.fields(OmegaConf.get_type(node)):
        if OmegaConf.is_missing(node, f.name):  # data.path=???: the group's check names it
            continue
        value = node[f.name]
        if isinstance(value, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(value)):  # not model.hf's dict
            _check_choices(value, f"{prefix}{f.name}.")
        elif "choices" in f.metadata:
            choices = f.metadata["choices"]
            _check(value in choices, f"{prefix}{f.name} must be {_one_of(choices)}", value)


def _one_of(choices: tuple[str, ...]) -> str:
    return choices[0] if len(choices) == 1 else f"one of {', '.join(choices)}"


def _check_top(cfg: DictConfig) -> None:
    _check(cfg.seed >= 0, "seed must be an integer >= 0", cfg.seed)
    try:
        resolve_device(cfg.device)
    except DeviceError as err:
        raise ConfigError(str(err)) from None


def _check_model(cfg: DictConfig) -> None:
    m = cfg.model
    if m.arch == "hf":
        return _check_hf_model(m)
    _check(m.hf is None, "model.hf is read only with model.arch=hf (e.g. model=hf); set model.hf=null or choose it",
           OmegaConf.to_container(m.hf) if m.hf is not None else None)
    for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
        _check(m[key] > 0, f"model.{key} must be a positive integer", m[key])
    _check(m.n_embd % m.n_head == 0, f"model.n_embd ({m.n_embd}) must be divisible by model.n_head", m.n_head)
    if m.arch == "llama":
        _check((m.n_embd // m.n_head) % 2 == 0, f"model.arch=llama (RoPE) needs an even head size model.n_embd "
               f"({m.n_embd}) // model.n_head", m.n_head)
    _check(m.mlp_hidden is None or m.mlp_hidden > 0, "model.mlp_hidden must be a positive integer or null (derived)", m.mlp_hidden)
    _check(0 <= m.dropout < 1, "model.dropout must be in [0, 1)", m.dropout)
    _check(m.rope_theta > 0, "model.rope_theta must be > 0", m.rope_theta)
    _check(m.norm_eps > 0, "model.norm_eps must be > 0", m.norm_eps)


def _check_hf_model(m: DictConfig) -> None:
    """A Hugging Face model (precisionlab.train.hf): its config builds, and none of our own size fields,
    which it would ignore, moved off their defaults."""
    for key in ("vocab_size", "block_size"):
        _check(m[key] > 0, f"model.{key} must be a positive integer", m[key])
    defaults = ModelConfig()
    for key in NOT_FOR_HF:
        _check(m[key] == getattr(defaults, key), f"model.{key} is not read by model.arch=hf (its sizes are "
               "model.hf's keys, e.g. model.hf.hidden_size, model.hf.num_hidden_layers); leave it at its default "
               f"{getattr(defaults, key)!r}", m[key])
    _check(m.hf is not None and "arch" in m.hf, "model.arch=hf needs model.hf.arch (e.g. model=hf: llama)",
           OmegaConf.to_container(m.hf) if m.hf is not None else None)
    from precisionlab.train.hf import hf_config  # imports transformers: only for arch=hf

    hf_config(OmegaConf.to_container(m))  # ConfigError (one line) for what it cannot build


def _check_precision(cfg: DictConfig) -> None:
    try:
        precision = PrecisionConfig.from_cfg(cfg.precision)  # parses every format name, naming its key
        hf = cfg.model.arch == "hf"
        if precision.casts.hadamard or (hf and not precision.is_fp32):
            import torch

            with torch.device("meta"):  # the layer shapes, without allocating the model
                model = plain_model(OmegaConf.to_container(cfg.model))
            check_hadamard_dims(model, precision, cfg.train.batch_size * cfg.train.seq_len)
            if hf:
                _check_casts_something(model, precision, cfg.precision.name)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_casts_something(model: Any, precision: PrecisionConfig, name: str) -> None:
    """Refuse a recipe that would train a Hugging Face model in fp32 all the same: convert_model's own
    check (nothing castable), and a recipe whose excludes leave no layer cast."""
    import torch

    from precisionlab.quant.operands import CountsCalls

    with torch.device("meta"):
        convert_model(model, precision)  # ValueError (one line) when the model has nothing the recipe casts
    if not any(isinstance(module, CountsCalls) for module in model.modules()):
        raise ConfigError(f"precision={name} casts no layer of this model (model.hf.arch={model.config.model_type}): "
                          "precision.exclude keeps every layer it casts in fp32; choose a recipe that casts one of "
                          "its layers, or fp32")


def _check_data(cfg: DictConfig) -> None:
    d = cfg.data
    if "val_fraction" in d:
        _check(0 < d.val_fraction < 1, "data.val_fraction must be in (0, 1)", d.val_fraction)
    least = 2 if d.source == "tokens" else 256
    _check(d.vocab_size >= least, f"data.vocab_size must be an integer >= {least}"
           f"{'' if d.source == 'tokens' else ' for byte-level data'}", d.vocab_size)
    if d.source == "stdlib":
        _check(d.budget_bytes >= 1024, "data.budget_bytes must be at least 1024", d.budget_bytes)
    else:
        data_path(OmegaConf.to_container(d))  # DataError: not given, or not there


def _check_optim(cfg: DictConfig) -> None:
    o = cfg.optim
    _check(0 < o.lr < math.inf, "optim.lr must be a positive number", o.lr)
    _check(o.warmup_steps >= 0, "optim.warmup_steps must be an integer >= 0", o.warmup_steps)
    _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio must be in [0, 1]", o.min_lr_ratio)
    _check(o.grad_clip >= 0, "optim.grad_clip must be >= 0 (0: no clipping)", o.grad_clip)
    _check(o.weight_decay >= 0, "optim.weight_decay must be >= 0", o.weight_decay)
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas must be two numbers in [0, 1)", list(o.betas))
    _check(o.eps > 0, "optim.eps must be > 0", o.eps)
    _check(0 <= o.z_loss < math.inf, "optim.z_loss must be a number >= 0 (0: off)", o.z_loss)
    try:
        MomentFormats.from_cfg(o)
        MasterFormat.from_cfg(o)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_train(cfg: DictConfig) -> None:
    t = cfg.train
    for key in ("steps", "batch_size", "seq_len", "eval_batches"):
        _check(t[key] > 0, f"train.{key} must be a positive integer", t[key])
    for key in ("eval_every", "checkpoint_every"):
        _check(t[key] >= 0, f"train.{key} must be an integer >= 0 (0: never)", t[key])
    _check(all(s > 0 for s in t.checkpoint_steps), "train.checkpoint_steps must be a list of positive steps", list(t.checkpoint_steps))
    _check(t.threads is None or t.threads > 0, "train.threads must be a positive integer or null (all cores)", t.threads)
    _check(t.seq_len <= cfg.model.block_size, f"train.seq_len must be <= model.block_size ({cfg.model.block_size})", t.seq_len)
    _check(t.divergence.factor > 0, "train.divergence.factor must be > 0", t.divergence.factor)
    _check(t.divergence.window > 0, "train.divergence.window must be a positive integer", t.divergence.window)
    _check(math.isfinite(t.divergence.margin), "train.divergence.margin must be a finite number of nats", t.divergence.margin)
    _check(0 < t.spikes.z < math.inf, "train.spikes.z must be a positive number", t.spikes.z)
    _check(t.spikes.window > 0, "train.spikes.window must be a positive integer", t.spikes.window)
    _check(t.steps <= MAX_STEPS, f"train.steps must be at most {MAX_STEPS:.0e} (a run that could never end)", t.steps)
    _check_memory(cfg)


MAX_STEPS = 10**9


def _check_memory(cfg: DictConfig) -> None:
    """Refuse a step that cannot fit in the device's memory up front, instead of swapping or
    being killed hours later (the estimate is a lower bound: one that passes may still not fit)."""
    short = memory_shortfall(OmegaConf.to_container(cfg.model), cfg.train.batch_size, cfg.train.seq_len, cfg.device)
    if short:
        raise ConfigError(f"a training step needs at least {short} (train.batch_size={cfg.train.batch_size}, "
                          f"train.seq_len={cfg.train.seq_len}, this model); lower train.batch_size or train.seq_len")


def memory_shortfall(model: dict, batch_size: int, seq_len: int, device: str) -> str | None:
    """'N GiB, more than the M GiB of DEVICE memory here' when a training step of `model` (a
    `model` config) on `batch_size` sequences of `seq_len` tokens cannot fit (`ModelConfig.step_bytes`,
    a lower bound), else None."""
    import os

    import torch

    where = resolve_device(device)
    if where.type == "cuda":
        total = torch.cuda.get_device_properties(where).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    known = {f.name for f in dataclasses.fields(ModelConfig)}  # a stored config may be an older version's
    if model.get("arch") == "hf":
        from precisionlab.train.hf import step_bytes  # from model.hf's sizes; imports no transformers

        need = step_bytes(model, batch_size, seq_len)
    else:
        need = ModelConfig(**{k: v for k, v in model.items() if k in known}).step_bytes(batch_size, seq_len)
    if need <= total:
        return None
    return f"{need / 2**30:.3g} GiB, more than the {total / 2**30:.3g} GiB of {where.type} memory here"


def _check_init(cfg: DictConfig) -> None:
    """init.parent's spelling and step (whether the store holds it: run.job.check_parents, in the CLI)."""
    try:
        parent = parse_parent(cfg.init.parent)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if parent is not None:
        _check(parent.step < cfg.train.steps, f"init.parent's step must be below train.steps ({cfg.train.steps}): "
               "a branch trains the steps after it", cfg.init.parent)


def _check_sharpness(cfg: DictConfig) -> None:
    s = cfg.sharpness
    _check(s.every >= 0, "sharpness.every must be an integer >= 0 (0: off)", s.every)
    _check(all(m in SHARPNESS_METRICS for m in s.metrics),
           f"sharpness.metrics must be a list of {', '.join(SHARPNESS_METRICS)}, e.g. [logit,keskar]", list(s.metrics))
    _check(0 <= s.eps < math.inf, "sharpness.eps must be a finite number >= 0", s.eps)


def _check_diagnostics(cfg: DictConfig) -> None:
    d = cfg.diagnostics
    _check(d.every >= 0, "diagnostics.every must be an integer >= 0 (0: off)", d.every)
    _check(len(d.families) > 0 and all(f in DIAGNOSTIC_FAMILIES for f in d.families),
           f"diagnostics.families must be a non-empty list of {', '.join(DIAGNOSTIC_FAMILIES)}, e.g. [casts,proxies]",
           list(d.families))


def _check_loggers(cfg: DictConfig) -> None:
    """train.loggers' names, their packages and loggers.mlflow_uri, before anything is written."""
    problem = tracker_problem(list(cfg.train.loggers), cfg.loggers.mlflow_uri)
    if problem:
        raise ConfigError(problem)


# One check per group; allowed values (`choice` fields) and types are the schema's.
_CHECKS = (_check_model, _check_precision, _check_data, _check_optim, _check_top, _check_train, _check_init,
           _check_sharpness, _check_diagnostics, _check_loggers)


def _check(ok: bool, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{message}; got {value!r}")


# ---- OmegaConf's errors as one line


def one_line(err: BaseException) -> str:
    """The one-line message of a Hydra / OmegaConf error and its causes: for a wrong type or an
    unknown key, the key, what was given and what is accepted (from the schema)."""
    found = err
    while found is not None and not (isinstance(found, OmegaConfBaseException) and found.full_key):
        found = found.__cause__
    if found is not None:
        message = _schema_message(found)
        if message:
            return message
    parts = []
    while err is not None:
        lines = str(err).split("Config search path")[0].splitlines()
        text = " ".join(ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith(_NOISE))
        text = text.rstrip(".")
        if text and text not in parts:
            parts.append(text)
        err = err.__cause__
    return ": ".join(parts)


_NOISE = ("full_key:", "object_type=", "reference_type=", "To append to your config")


def _schema_message(err: OmegaConfBaseException) -> str | None:
    """'KEY must be TYPE; got VALUE' or 'KEY is not a config key; GROUP takes ...' for an
    OmegaConf error on a node of the schema, None for anything else."""
    node, key, element = err.parent_node, err.key, ""
    if OmegaConf.is_list(node):  # an element of a list field: the field's type says what it takes
        node, key, element = node._get_parent(), node._key(), f"[{key}]"
    schema = OmegaConf.get_type(node) if node is not None else err.object_type
    if not dataclasses.is_dataclass(schema) or key is None:
        return None
    names = [f.name for f in dataclasses.fields(schema)]
    full_key = err.full_key or str(key)
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and key not in names:
        parent = full_key[: -len(str(key))].rstrip(".")
        return f"{full_key} is not a config key; {parent or 'the top level'} takes {', '.join(names)}"
    if isinstance(err, ValidationError) and key in names:
        expected = typing.get_type_hints(schema)[key]
        if element:
            (expected,) = typing.get_args(expected)
        return f"{full_key} must be {_describe(expected)}; got {_given(err.value)}"
    return None


def _given(value: Any) -> str:
    return repr(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def _describe(annotation: Any) -> str:
    """What a field of this type accepts, in words."""
    args = typing.get_args(annotation)
    if type(None) in args:  # Optional[X], X | None
        (inner,) = [a for a in args if a is not type(None)]
        return f"{_describe(inner)} or null"
    if typing.get_origin(annotation) is list:
        return f"a list of {_PLURAL.get(args[0], 'values')}"
    if dataclasses.is_dataclass(annotation):
        return f"a mapping of {', '.join(f.name for f in dataclasses.fields(annotation))}"
    return _WORDS.get(annotation, getattr(annotation, "__name__", str(annotation)))


_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURAL = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
