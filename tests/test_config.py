"""The typed config schema (precisionlab.config): every preset composes onto it, every key is
typed, bad keys / types / values are one line and exit 2 before anything is written, and a
run is validated once."""

from __future__ import annotations

import dataclasses
import os
import typing
import subprocess

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ReadonlyConfigError
from typer.testing import CliRunner

from helpers import CLI, MICRO, SWEEP_MICRO, MemoryRecorder, compose_train
from precisionlab import config
from precisionlab.cli import app
from precisionlab.config import ConfigError, one_line, validate
from precisionlab.train.data import DataError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A folder that is both a text corpus (a.txt) and a tokens dataset (train.bin, val.bin)."""
    path = tmp_path_factory.mktemp("data")
    (path / "a.txt").write_text("hello precision " * 100)
    (path / "train.bin").write_bytes(b"\x01\x00" * 200)
    (path / "val.bin").write_bytes(b"\x01\x00" * 200)
    return path


def _compose(name: str, *overrides: str) -> DictConfig:
    with initialize_config_module(config_module="precisionlab.configs", version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


PRESETS = [
    *(("train", f"model={m}") for m in ("tiny", "small", "gpt2_124m", "llama_120m")),
    *(("train", f"precision={p}") for p in ("fp32", "bf16", "mask", "fp8")),
    *(("train", f"data={d}") for d in ("default", "text", "tokens")),
    ("train", "optim=adamw"),
    *(("sweep", f"sweep={s}") for s in ("default", "paper")),
]


def _untyped_nodes(node: DictConfig, prefix: str = "") -> list[str]:
    """The keys of `node` (recursively) whose mapping is not a structured config."""
    found = [] if dataclasses.is_dataclass(OmegaConf.get_type(node)) else [prefix or "<root>"]
    for key in node:
        child = node._get_node(key)
        declared_mapping = typing.get_origin(child._metadata.ref_type) is dict  # model.hf: HF's own keys, a dict
        if isinstance(child, DictConfig) and not declared_mapping:
            found += _untyped_nodes(child, f"{prefix}{key}.")
    return found


@pytest.mark.parametrize("name, choice", PRESETS)
def test_every_preset_composes_onto_the_schema_and_validates(name, choice, data_dir):
    extra = [f"data.path={data_dir}"] if choice in ("data=text", "data=tokens") else []
    cfg = _compose(name, choice, *extra)
    assert _untyped_nodes(cfg) == []  # every group, train.divergence and train.spikes included
    assert OmegaConf.get_type(cfg) is (config.SweepConfig if name == "sweep" else config.TrainConfig)
    group, option = choice.split("=")
    if group == "data":
        assert OmegaConf.get_type(cfg.data) is config.DATA_SOURCES[cfg.data.source]
    validated = validate(cfg)
    assert validated.precision.x == validated.precision.format or choice == "precision=fp8"  # ${.format}
    assert validated.model.vocab_size == validated.data.vocab_size  # ${data.vocab_size}
    assert validated.model.block_size == validated.train.seq_len  # ${train.seq_len}


def test_schema_defaults_are_the_default_presets():
    """A key a config leaves out means what the default preset says (run identity relies on it)."""
    assert OmegaConf.to_container(validate({})) == OmegaConf.to_container(validate(compose_train(micro=False)))
    assert OmegaConf.to_container(validate({"sweep": {}}).sweep) == OmegaConf.to_container(_compose("sweep").sweep)
    for source, preset in (("text", "text"), ("tokens", "tokens")):
        schema = OmegaConf.to_container(OmegaConf.structured(config.DATA_SOURCES[source]))
        assert schema == OmegaConf.to_container(_compose("train", f"data={preset}").data)


@pytest.mark.parametrize("override, message", [
    ("model.n_layer=abc", "model.n_layer must be an integer; got 'abc'"),
    ("model.bias=maybe", "model.bias must be true or false or null; got 'maybe'"),
    ("precision.saturate=maybe", "precision.saturate must be true or false; got 'maybe'"),
    ("precision.exclude=lm_head", "precision.exclude must be a list of strings; got 'lm_head'"),
    ("data.vocab_size=abc", "data.vocab_size must be an integer; got 'abc'"),
    ("data.path=x", "data.path is not a config key; data takes source, vocab_size, budget_bytes, val_fraction, split, cache_dir"),
    ("optim.lr=abc", "optim.lr must be a number; got 'abc'"),
    ("optim.betas=[0.9,b]", "optim.betas[1] must be a number; got 'b'"),
    ("train.steps=1.5", "train.steps must be an integer; got 1.5"),
    ("train.threads=x", "train.threads must be an integer or null; got 'x'"),
    ("train.divergence.factor=abc", "train.divergence.factor must be a number; got 'abc'"),
    ("train.spikes.windo=3", "train.spikes.windo is not a config key; train.spikes takes z, window"),
    ("sharpness.every=x", "sharpness.every must be an integer; got 'x'"),
    ("store.journal_mode=[wal]", "store.journal_mode must be a string; got ['wal']"),
    ("seed=true", "seed must be an integer; got True"),
    ("train=5", "train must be a mapping of steps, batch_size, "),
])
def test_a_wrong_type_or_unknown_key_fails_composition_as_one_line(override, message):
    with pytest.raises(Exception) as err:
        compose_train(override)
    assert one_line(err.value) .startswith(message)


def test_sweep_keys_are_typed_in_the_sweep_config_only():
    with pytest.raises(Exception) as err:
        _compose("sweep", "sweep.force=maybe")
    assert one_line(err.value) == "sweep.force must be true or false; got 'maybe'"
    with pytest.raises(Exception) as err:
        compose_train("sweep.force=true")
    assert one_line(err.value).startswith("sweep is not a config key; the top level takes model, precision, data, optim, seed")


@pytest.mark.parametrize("overrides, error, message", [
    (["+foo=1"], ConfigError, "foo is not a config key; the top level takes model, precision, data, optim, seed, device, train, init, sharpness, diagnostics, loggers, store"),
    (["+model.foo=1"], ConfigError, "model.foo is not a config key; model takes arch, vocab_size, block_size,"),
    (["optim.schedule=linear"], ConfigError, "optim.schedule must be one of cosine, constant; got 'linear'"),
    (["train.divergence.rule=foo"], ConfigError, "train.divergence.rule must be one of none, median, factor; got 'foo'"),
    (["train.divergence.window=0"], ConfigError, "train.divergence.window must be a positive integer; got 0"),
    (["train.divergence.margin=nan"], ConfigError, "train.divergence.margin must be a finite number of nats; got nan"),
    (["precision.rounding=up"], ConfigError, "precision.rounding must be one of nearest_even, nearest_away, toward_zero, stochastic; got 'up'"),
    (["precision.scaling=row"], ConfigError, "precision.scaling must be one of none, tensor, delayed; got 'row'"),
    (["model.arch=rnn"], ConfigError, "model.arch must be one of gpt2, llama, hf; got 'rnn'"),
    (["optim.name=sgd"], ConfigError, "optim.name must be adamw; got 'sgd'"),
    (["store.journal_mode=fast"], ConfigError, "store.journal_mode must be one of wal, delete; got 'fast'"),
    (["precision.format=e9m3"], ConfigError, "precision.format: format 'e9m3' is out of range; accepted: fp32"),
    (["optim.lr=-1"], ConfigError, "optim.lr must be a positive number; got -1.0"),
    (["model.n_head=3"], ConfigError, "model.n_embd (32) must be divisible by model.n_head; got 3"),
    (["model.arch=llama", "model.n_head=32"], ConfigError, "model.arch=llama (RoPE) needs an even head size model.n_embd (32) // model.n_head; got 32"),
    (["model.dropout=1"], ConfigError, "model.dropout must be in [0, 1); got 1.0"),
    (["data=text", "data.path=/nonexistent"], DataError, "data.path '/nonexistent' does not exist (data=text expects a file or folder)"),
    (["data=tokens"], DataError, "data=tokens needs data.path=FILE_OR_FOLDER"),
    (["data.val_fraction=1"], ConfigError, "data.val_fraction must be in (0, 1); got 1.0"),
    (["data.source=web"], ConfigError, "data.source must be one of stdlib, text, tokens; got 'web'"),
    (["device=tpu"], ConfigError, "device must be auto, cpu, cuda or cuda:N; got 'tpu'"),
    (["train.seq_len=32", "model.block_size=16"], ConfigError, "train.seq_len must be <= model.block_size (16); got 32"),
    # combinations that were silently reinterpreted: delayed scaling on block formats and on the attention casts
    (["precision=fp8_delayed", "precision.format=mxfp8"], ConfigError,
     "precision.scaling=delayed needs an element format, but operand fwd_x casts to block format 'mxfp8'"),
    (["precision=fp8_delayed", "precision.operands.wgrad_g.format=mxfp4"], ConfigError,
     "precision.scaling=delayed needs an element format, but operand wgrad_g casts to block format 'mxfp4'"),
    (["precision=mxfp8", "precision.operands.fwd_w.scaling=delayed"], ConfigError,
     "precision.operands.fwd_w.scaling=delayed needs an element format, but operand fwd_w casts to block format 'e4m3fn/b32/e8m0/rceil'"),
    (["precision=fp8_delayed", "precision.attention.format=e4m3fn"], ConfigError,
     "precision.scaling=delayed does not reach the attention casts (they keep no amax history), but attention casts q"),
])
def test_what_types_cannot_say_is_checked_by_validate(overrides, error, message):
    cfg = compose_train(*overrides)  # composes: these are well-typed
    with pytest.raises(error) as err:
        validate(cfg)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_config_built_in_python_is_typed_too():
    with pytest.raises(ConfigError, match=r"^optim\.lr must be a number; got 'fast'$"):
        validate({"optim": {"lr": "fast"}})
    with pytest.raises(ConfigError, match=r"^data\.glob is not a config key; data takes source, vocab_size, budget_bytes"):
        validate({"data": {"glob": "*.txt"}})  # stdlib data has no glob
    assert validate({"optim": {"lr": 1}}).optim.lr == 1.0 and isinstance(validate({"optim": {"lr": 1}}).optim.lr, float)


def test_a_validated_config_is_read_only_and_passes_through():
    cfg = validate(compose_train())
    assert config.is_validated(cfg) and not config.is_validated(compose_train())
    assert config.ensure_valid(cfg) is cfg
    with pytest.raises(ReadonlyConfigError):
        cfg.optim.lr = 1.0  # a validated config cannot be changed into an invalid one
    assert OmegaConf.to_container(cfg)["optim"]["lr"] == 3e-3  # to_container: a plain dict again


# ---- validated once per run


@pytest.fixture
def checks(monkeypatch):
    """Counts validations: one more check, run once by every `validate`."""
    calls = []
    monkeypatch.setattr(config, "_CHECKS", (lambda cfg: calls.append(1), *config._CHECKS))
    return calls


def test_train_recorded_and_run_validate_once(checks, tmp_path, monkeypatch):
    from precisionlab.run.job import train_recorded
    from precisionlab.train.loop import run

    monkeypatch.chdir(tmp_path)
    result = train_recorded(compose_train("train.steps=2", "store.path=null"), MemoryRecorder())
    assert result.status == "completed" and len(checks) == 1
    cfg = validate(compose_train("train.steps=2"))
    run(cfg, recorder=MemoryRecorder())
    assert len(checks) == 2  # validate's, not run's: run takes a validated config (the training stage imports no config)


@pytest.mark.slow
def test_train_and_sweep_commands_validate_each_run_once(checks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", *MICRO, "train.steps=2"])
    assert result.exit_code == 0, result.output
    assert len(checks) == 1 and len(list((tmp_path / "outputs").glob("*/*/run.json"))) == 1
    grid = ["precision.format=e8m7", "optim.lr=1e-3", "seed=0,1"]  # replaces sweep=default's grid: 2 runs
    result = CliRunner().invoke(app, ["sweep", *SWEEP_MICRO, "train.steps=2", *grid])
    assert result.exit_code == 0, result.output
    assert len(checks) == 1 + 2  # plan() validated both grid points; their runs did not again


# ---- bad input through the console script: one line, exit 2, nothing written


@pytest.mark.parametrize("overrides, fragment", [
    (["precision=fp8_delayed", "precision.format=mxfp8"], "precision.scaling=delayed needs an element format"),
    (["precision=fp8_delayed", "precision.attention.format=e4m3fn"], "precision.scaling=delayed does not reach the attention casts"),
])
def test_a_refused_precision_combination_is_one_line_exit_2(overrides, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", *MICRO, *overrides])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {fragment}"), result.output
    assert list(tmp_path.iterdir()) == []

TRAIN_CASES = [
    (["+foo=1"], "foo is not a config key; the top level takes model, precision,"),
    (["+model.foo=1"], "model.foo is not a config key; model takes arch, vocab_size,"),
    (["optim.lr=abc"], "optim.lr must be a number; got 'abc'"),
    (["train.steps=1.5"], "train.steps must be an integer; got 1.5"),
    (["seed=true"], "seed must be an integer; got True"),
    (["optim.schedule=linear"], "optim.schedule must be one of cosine, constant; got 'linear'"),
    (["precision.rounding=up"], "precision.rounding must be one of nearest_even, nearest_away, toward_zero, stochastic; got 'up'"),
    (["model.arch=rnn"], "model.arch must be one of gpt2, llama, hf; got 'rnn'"),
    (["precision.format=e9m3"], "precision.format: format 'e9m3' is out of range; accepted: fp32, tf32, bf16"),
    (["optim.lr=-1"], "optim.lr must be a positive number; got -1.0"),
    (["model.n_head=3"], "model.n_embd (128) must be divisible by model.n_head; got 3"),
    (["data=text", "data.path=/nonexistent"], "data.path '/nonexistent' does not exist (data=text expects a file or folder)"),
    (["device=tpu"], "device must be auto, cpu, cuda or cuda:N; got 'tpu'"),
]
# Half of them for sweep, one as a swept value (checked grid point by grid point).
SWEEP_CASES = [TRAIN_CASES[i] for i in (0, 1, 2, 4, 8, 11, 12)] + [
    (["optim.schedule=cosine,linear"], "optim.schedule must be one of cosine, constant; got 'linear'")]


@pytest.mark.slow
@pytest.mark.parametrize("command, overrides, message",
                         [("train", *case) for case in TRAIN_CASES] + [("sweep", *case) for case in SWEEP_CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, command, overrides, message):
    proc = subprocess.run([CLI, command, *overrides], cwd=tmp_path, capture_output=True, text=True,
                          env=os.environ.copy(), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(f"error: {message}"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert list(tmp_path.iterdir()) == []  # no outputs/, multirun/, results/


@pytest.mark.parametrize("key", ["precision.w", "precision.grad", "precision.operands.dgrad_w.format",
                                 "precision.operands.wgrad_x.format", "precision.weight_grad"])
def test_two_d_blocks_stay_accepted_on_two_d_operands(key):
    """The refusal of 2-D blocks (tests/test_cli.py's PRECISION_CASES) is for the operands cast from a
    tensor of rank > 2 only."""
    validate(compose_train(f"{key}=e2m1fn/b16x16/e4m3fn/tensor"))
