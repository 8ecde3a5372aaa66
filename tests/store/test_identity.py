"""Run identity: pinned ids of fixed configs, neutral defaults, what is and is not semantic."""

from __future__ import annotations

import copy
import itertools

import pytest

from helpers import compose_train
from precisionlab.config import validate
from precisionlab.store import run_id
from precisionlab.store.identity import IDENTITY_VERSION, NEUTRAL, canonical, semantic_config
from precisionlab.sweep.plan import plan

# Pinned ids. They may change only together with IDENTITY_VERSION (a release that changes what an
# existing config computes); adding a config key at its neutral default must leave them as they are.
# precisionlab 0.2's ids, which configs that keep 0.2's data split and regime still have (OLD_0_2):
# the default sweep's 18 runs in grid order (e8m7, e8m5, e8m3 x LR 3e-3, 3e-2, 3e-1 x seeds 0, 1).
OLD_0_2 = ("data.split=tail", "train.steps=200", "train.eval_batches=4", "train.divergence.rule=factor")
PINNED_DEFAULT_SWEEP_0_2 = [
    "15db7e1217eb9268", "de636225a1a8eabf", "640218336371a031", "59b610ca3f25efd0", "ba0237f20299c57f",
    "26c8e27ba8527399", "007d828cb4f8de28", "a7b1323c3bfe36d1", "2e8c0a853164d71f", "89d1dcc3aa4d2e58",
    "a7cd6d62a1d796c0", "2b29631c008a3026", "2d26a1f331ceb5db", "44aecc0b99d61c76", "efbe3c4491009074",
    "1b8311e862addf86", "db0ef4cf56f0df36", "13afbb96f4b2c278",
]
PINNED_0_2 = {  # overrides of `precisionlab train` (plus OLD_0_2) -> id
    (): "54f4e77dd4b95b60",
    ("precision=fp8",): "4b5dca057029a7a2",
    ("model=llama_120m",): "dc00cb0be60174a5",
}
# Issue 13 changed the built-in data (whole held-out files), the steps and the validation batches,
# and so these ids; the default sweep became 27 runs (3 seeds).
PINNED_DEFAULT_SWEEP = [
    "d1f74e30e6cc65c1", "bebf794167d809ec", "04828d31e832f915", "092e1f28e6bc7084", "669afc9213183dba",
    "1a6013cdee9042b9", "0bdc4f834bc9460c", "11000f881d11bc01", "6af94cdf2aa090d9", "606eb0b3fcef63a9",
    "c4be4a2f1fdd8177", "aad5c785045abfd0", "fdc5c21784780ae0", "d506da045681d6e9", "fffb5113184e035d",
    "fdb971c94adcf226", "ef2c30902bfc5041", "d039ddfb049b449f", "1aea5eac026e8e54", "ec3f818425a4fc73",
    "88ff5ce8c349e75d", "d0d6abf8e226d314", "7e1ed7ae3205a045", "2ef80c2e0332be4f", "45f906cc6298ee95",
    "41d556c6d876129a", "c68d65b32a989d58",
]
PINNED = {
    (): "78e7689bdd7d1e5a",
    ("precision=fp8",): "bfbebce7b1040b62",
    ("model=llama_120m",): "571d9f7f7b608649",
}
# The divergence rule's default became `none` (no early stop; 0.1's rule is `factor`) and the built-in
# corpus holds out whole families of near-duplicate files (data.split=families): the ids above are those
# of configs that name both old values (BEFORE); the defaults' are these.
BEFORE = ("train.divergence.rule=factor", "data.split=files")
PINNED_DEFAULT_SWEEP_NOW = [
    "3abe2c2f1ecfe65f", "8861b8cc25cb0596", "ff0dba385ab6e869", "8ec5277d56c71788", "5e44da27da57cb2e",
    "ebcf416ba0f69437", "e06a6d65e753a9a8", "44f8c1157659306b", "35e6b99bee9fc788", "3aaa1b88b3f66959",
    "e003268936e0321b", "2181f3108ecdfc28", "f4124260a52827ed", "8ba323d7c8eb1451", "1ead81a1929217f7",
    "58e5eefce155b52b", "c2288b66faf343ef", "9e2650db12baa475", "74e93f9412d4016f", "13b51b37049933cf",
    "e9625493539f9e34", "5a0bcf1e0385d2bc", "bb20221100831c7e", "a43f4b8fe1511389", "1468f760729a0230",
    "3d367e0bf6b7f50f", "159d48d67cb1d120",
]
PINNED_NOW = {
    (): "eb5ceffaf75767e2",
    ("precision=fp8",): "30ff4e1d069c579a",
    ("model=llama_120m",): "e43014b40cd52d65",
}


def _train(*overrides: str):
    return validate(compose_train(*overrides, micro=False))


# The default grid's axes until precisionlab 0.2 (configs/sweep/default.yaml now brackets the effect:
# other formats, one LR, six seeds); typed, they give those grids' runs again.
OLD_GRID = ("precision.format=e8m7,e8m5,e8m3", "optim.lr=3e-3,3e-2,3e-1")


def test_pinned_ids(tmp_path):
    assert IDENTITY_VERSION == 2
    old_sweep = plan(["sweep=default", *OLD_GRID, *OLD_0_2, "train.checkpoint_every=50", "seed=0,1"],
                     cwd=tmp_path).run_ids
    assert old_sweep == PINNED_DEFAULT_SWEEP_0_2
    assert {overrides: run_id(_train(*overrides, *OLD_0_2)) for overrides in PINNED_0_2} == PINNED_0_2
    assert plan([*OLD_GRID, *BEFORE, "seed=0,1,2"], cwd=tmp_path).run_ids == PINNED_DEFAULT_SWEEP
    assert {overrides: run_id(_train(*overrides, *BEFORE)) for overrides in PINNED} == PINNED
    assert plan([*OLD_GRID, "seed=0,1,2"], cwd=tmp_path).run_ids == PINNED_DEFAULT_SWEEP_NOW
    assert {overrides: run_id(_train(*overrides)) for overrides in PINNED_NOW} == PINNED_NOW
    # the new default grid reuses the old one's runs where they coincide (E8M7 and E8M3 at 3e-3, seeds 0-2)
    new = plan([], cwd=tmp_path)
    old = dict(zip([(c.precision.x, c.optim.lr, c.seed) for c in plan([*OLD_GRID, "seed=0,1,2"], cwd=tmp_path).configs],
                   PINNED_DEFAULT_SWEEP_NOW))
    shared = {(c.precision.x, c.optim.lr, c.seed): rid for c, rid in zip(new.configs, new.run_ids)
              if (c.precision.x, c.optim.lr, c.seed) in old}
    assert len(shared) == 6 and all(old[key] == rid for key, rid in shared.items())


def _leaves(node, path=""):
    for key, value in node.items():
        dotted = f"{path}.{key}" if path else key
        if isinstance(value, dict) and value:
            yield from _leaves(value, dotted)
        else:
            yield dotted


def test_every_key_of_every_preset_has_a_neutral_value(tmp_path):
    """A key added to the schema without a NEUTRAL entry would change every id once set: caught here."""
    text = tmp_path / "corpus.txt"
    text.write_bytes(b"abc " * 1000)
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    for name in ("train.bin", "val.bin"):
        (tokens / name).write_bytes(bytes(4000))
    data = [("data=default",), ("data=text", f"data.path={text}"), ("data=tokens", f"data.path={tokens}")]
    models = ["model=tiny", "model=small", "model=gpt2_124m", "model=llama_120m"]
    precisions = ["precision=fp32", "precision=bf16", "precision=mask", "precision=fp8"]
    for model, precision, source in itertools.product(models, precisions, data):
        missing = set(_leaves(canonical(_train(model, precision, *source)))) - set(NEUTRAL)
        assert not missing, (model, precision, source, missing)


def test_the_default_config_hashes_to_its_identity_version_and_its_changed_defaults_alone():
    assert semantic_config(_train(*OLD_0_2)) == {}  # every key at its neutral value
    assert semantic_config(_train()) == {"data": {"split": "families"},
                                         "train": {"steps": 300, "eval_batches": 32, "divergence": {"rule": "none"}}}


def test_a_new_key_at_its_neutral_value_keeps_every_id(monkeypatch):
    config = canonical(_train("precision=mask", "precision.format=e8m3", "optim.lr=1e-2"))
    before = run_id(config)
    monkeypatch.setitem(NEUTRAL, "precision.attention", None)  # a future release's knob, off by default
    monkeypatch.setitem(NEUTRAL, "optim.z_loss", 0.0)
    with_keys = copy.deepcopy(config)
    with_keys["precision"]["attention"], with_keys["optim"]["z_loss"] = None, 0.0
    assert run_id(with_keys) == before
    with_keys["optim"]["z_loss"] = 1e-4
    assert run_id(with_keys) != before


def test_a_key_without_a_neutral_value_is_always_semantic():
    config = canonical(_train(*OLD_0_2))
    config["model"]["unheard_of"] = 0
    assert semantic_config(config) == {"model": {"unheard_of": 0}} and run_id(config) != run_id(_train(*OLD_0_2))


def test_changing_a_default_value_changes_the_id():
    assert run_id(_train("train.steps=400")) != run_id(_train())
    assert run_id(_train("seed=1")) != run_id(_train())
    assert run_id(_train("precision.rounding=toward_zero")) != run_id(_train())


def test_numbers_count_by_value_and_types_stay_apart():
    config = canonical(_train())
    as_int, as_float = copy.deepcopy(config), copy.deepcopy(config)
    as_int["optim"]["lr"], as_float["optim"]["lr"] = 1, 1.0
    assert run_id(as_int) == run_id(as_float) != run_id(config)
    flag = copy.deepcopy(config)
    flag["precision"]["saturate"] = 1  # not the boolean True: a different value
    assert run_id(flag) != run_id(config)


@pytest.mark.parametrize("override", ["store.path=/elsewhere/x.db", "train.threads=1", "device=cpu",
                                      "sharpness.every=5", "train.checkpoint_dir=/scratch/ck",
                                      "diagnostics.every=10", "diagnostics.families=[casts]"])
def test_non_semantic_keys_never_change_ids(override):
    assert run_id(_train(override)) == run_id(_train())


def test_spellings_of_one_computation_share_an_id():
    """A block format's spellings, Hadamard GEMMs in any order, and Hadamard settings while it is
    off are one run; element-format names hash as typed (older ids depend on them)."""
    named = run_id(_train("precision.format=mxfp8"))
    assert run_id(_train("precision.format=mxfp8_e4m3")) == named
    assert run_id(_train("precision.format=e4m3fn/b32/e8m0")) == named
    assert run_id(_train("precision.format=e4m3fn/b32/e8m0/floor")) == named
    assert run_id(_train("precision.format=e4m3fn/b32/e8m0/rceil")) != named
    assert run_id(_train("precision=mxfp4", "precision.hadamard.gemms=[fwd]")) == run_id(_train("precision=mxfp4"))
    assert run_id(_train("precision=mxfp4", "precision.hadamard.signs=per_call")) == run_id(_train("precision=mxfp4"))
    both = run_id(_train("precision=nvfp4", "precision.hadamard.gemms=[fwd,wgrad]"))
    assert run_id(_train("precision=nvfp4", "precision.hadamard.gemms=[wgrad,fwd]")) == both != run_id(_train("precision=nvfp4"))
    assert run_id(_train("precision=nvfp4", "precision.operands.fwd_x.format=e2m1fn/b16/e4m3fn/tensor")) == \
        run_id(_train("precision=nvfp4", "precision.operands.fwd_x.format=nvfp4"))
    assert run_id(_train("precision.format=e4m3fn")) != run_id(_train("precision.format=e4m3"))
