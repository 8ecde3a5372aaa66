"""Store locations (precisionlab.store.url): a password kept out of configs, an sqlite:/// store.url made
absolute, and the one default store path and journal mode."""

from __future__ import annotations

import importlib.util
import inspect
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from precisionlab.store import StoreError
from precisionlab.store.url import DEFAULT_JOURNAL_MODE, DEFAULT_STORE_PATH, JOURNAL_MODES, absolute_store_url


def test_a_store_url_with_a_password_in_a_config_is_refused():
    """A password that reached the composed config (a config file; the command line's is taken out first)
    would be written into run.json and checkpoints: refused in one line, before anything runs."""
    from precisionlab.store.url import configured_store

    with pytest.raises(StoreError, match="holds a password, which would be written into run folders") as err:
        configured_store({"store": {"url": "postgresql://me:s3cr%2Fet@db:5432/runs", "path": None}})
    assert "s3cr" not in str(err.value)
    assert configured_store({"store": {"url": "postgresql://me@db:5432/runs", "path": None}}) == "postgresql://me@db:5432/runs"


def test_absolute_store_url_takes_a_relative_sqlite_url_from_the_base(tmp_path):
    cfg = OmegaConf.create({"store": {"path": "p.db", "url": "sqlite:///results/x.db"}})
    OmegaConf.set_struct(cfg, True)
    absolute_store_url(cfg, tmp_path)
    assert cfg.store.url == "sqlite:///" + os.path.join(str(tmp_path), "results", "x.db")
    assert cfg.store.path == "p.db"  # runtime.absolute_paths' key, not this one's
    absolute_store_url(cfg, tmp_path / "elsewhere")  # absolute already: kept
    assert cfg.store.url == "sqlite:///" + os.path.join(str(tmp_path), "results", "x.db")


def test_absolute_store_url_leaves_other_urls_alone(tmp_path):
    for url in ("postgresql://me@db-host:5433/precisionlab", "sqlite:///results/", "sqlite://x.db", None):
        cfg = OmegaConf.create({"store": {"url": url}})
        absolute_store_url(cfg, tmp_path)  # a malformed one is refused in one line where the store is opened
        assert cfg.store.url == url
    cfg = OmegaConf.create({"seed": 0})
    absolute_store_url(cfg, tmp_path)  # no store group
    assert "store" not in cfg


def test_the_default_store_and_journal_mode_have_one_value():
    """The config schema, configs/train.yaml, ResultsStore and the CLI's --store options give the same
    default store and journal mode as store.url's constants (the YAML keeps them for its readers)."""
    import precisionlab.cli as cli
    from precisionlab.config import Store
    from precisionlab.store import ResultsStore

    train_yaml = Path(importlib.util.find_spec("precisionlab.configs").submodule_search_locations[0]) / "train.yaml"
    written = OmegaConf.load(train_yaml).store
    assert (written.path, written.journal_mode) == (DEFAULT_STORE_PATH, DEFAULT_JOURNAL_MODE)
    assert (Store().path, Store().journal_mode) == (DEFAULT_STORE_PATH, DEFAULT_JOURNAL_MODE)
    opening = inspect.signature(ResultsStore).parameters
    assert (opening["location"].default, opening["journal_mode"].default) == (DEFAULT_STORE_PATH, DEFAULT_JOURNAL_MODE)
    for command in (cli.report, cli.sharpness):
        assert inspect.signature(command).parameters["store_path"].default.default == DEFAULT_STORE_PATH
    assert DEFAULT_JOURNAL_MODE in JOURNAL_MODES
