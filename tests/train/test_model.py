"""Models: causality, initial loss, presets' sizes, weight tying."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import compose_train
from precisionlab.train.model import LM, ModelConfig


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_logits_depend_only_on_earlier_tokens(arch):
    torch.manual_seed(0)
    model = LM(ModelConfig(arch=arch, n_layer=2, n_embd=32, n_head=2, block_size=16)).eval()
    idx = torch.randint(0, 256, (2, 16))
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 256
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_initial_loss_is_near_uniform(arch):
    torch.manual_seed(1)
    model = LM(ModelConfig(arch=arch, n_layer=2, n_embd=32, n_head=2, block_size=16))
    idx, targets = torch.randint(0, 256, (8, 16)), torch.randint(0, 256, (8, 16))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(256)) < 0.05  # small init: near-uniform predictions
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def _preset_params(name: str, *overrides: str) -> int:
    cfg = compose_train(f"model={name}", *overrides, micro=False)
    with torch.device("meta"):
        return LM(ModelConfig(**cfg.model)).num_params()


def test_paper_sized_presets_match_published_counts():
    # nanoGPT's GPT-2 small (vocab 50304, 1024 positions, tied head): 124,475,904 parameters
    assert _preset_params("gpt2_124m", "data=tokens", "train.seq_len=1024") == 124_475_904
    d, h, layers, vocab = 768, 2048, 12, 50304  # Llama: 4 d^2 attention + 3 d h SwiGLU + 2 RMSNorm per layer
    assert _preset_params("llama_120m", "data=tokens", "train.seq_len=1024") == layers * (4 * d * d + 3 * d * h + 2 * d) + vocab * d + d


def test_cpu_presets_are_small():
    assert _preset_params("tiny") < 1_000_000
    assert 5_000_000 < _preset_params("small") < 15_000_000


def test_weights_tie_and_untie():
    tied = LM(ModelConfig(n_layer=1, n_embd=32, n_head=2))
    untied = LM(ModelConfig(n_layer=1, n_embd=32, n_head=2, tie_weights=False))
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.lm_head.weight is not untied.wte.weight
    assert untied.num_params() - tied.num_params() == 256 * 32


def test_a_sequence_longer_than_block_size_is_a_clear_error():
    # bad model.* values are config errors: tests/test_config.py
    with pytest.raises(ValueError, match="block_size"):
        LM(ModelConfig(n_layer=1, n_embd=32, n_head=2, block_size=8))(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys(arch):
    """QK-LayerNorm: scaling the query and key projections by 1000 changes the plain model's
    output, not the normalised one's (the norms have no bias under llama; gpt2's LayerNorm bias
    is zero at init)."""
    outputs = {}
    for qk_norm in (False, True):
        torch.manual_seed(0)
        model = LM(ModelConfig(arch=arch, n_layer=1, n_embd=32, n_head=2, block_size=16, qk_norm=qk_norm)).eval()
        idx = torch.randint(0, 256, (2, 16))
        before = model(idx)[0]
        with torch.no_grad():
            model.blocks[0].attn.c_attn.weight[:64] *= 1000  # the q and k rows of the fused projection
        outputs[qk_norm] = (before, model(idx)[0])
        assert hasattr(model.blocks[0].attn, "q_norm") == qk_norm
    plain, normed = outputs[False], outputs[True]
    assert not torch.allclose(*plain, atol=1e-3)
    torch.testing.assert_close(*normed, atol=1e-4, rtol=1e-4)


def test_without_qk_norm_the_model_has_its_old_parameters():
    keys = set(LM(ModelConfig()).state_dict())
    assert not any("q_norm" in k or "k_norm" in k for k in keys)
    assert {"blocks.0.attn.q_norm.weight", "blocks.0.attn.k_norm.weight"} <= set(LM(ModelConfig(qk_norm=True)).state_dict())


def test_z_loss_is_the_mean_squared_log_normaliser():
    from precisionlab.train.loop import z_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g) * 4
    log_z = [[math.log(sum(math.exp(v) for v in row)) for row in batch] for batch in logits.double().tolist()]
    expected = 1e-4 * sum(z * z for batch in log_z for z in batch) / 6
    assert z_loss(logits, 1e-4).item() == pytest.approx(expected, rel=1e-6)


def test_z_loss_changes_training_but_not_what_is_recorded(train_cfg):
    from helpers import MemoryRecorder
    from precisionlab.train.loop import run

    curves = {}
    for weight in (0.0, 1e-2):
        rec = MemoryRecorder()
        run(train_cfg(f"optim.z_loss={weight}", "store.path=null"), recorder=rec)
        curves[weight] = rec.losses()
    assert curves[0.0][0] == curves[1e-2][0]  # step 1's recorded loss: the cross-entropy, before any update
    assert curves[0.0][1:] != curves[1e-2][1:]
