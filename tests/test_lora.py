"""LoRA files: a trained adapter, saved and merged back with strength 1, reproduces the adapted model;
strength 0 (or restore) gives back the exact base weights."""

from __future__ import annotations

import pytest
import torch

from deepgen.lora import (LoraError, LoraPatcher, add_lora, dit_lora_targets, load_lora, save_lora,
                          vlm_lora_targets)
from deepgen.tiny import build_tiny_model


def velocity_and_context(model):
    with torch.no_grad():
        context, pooled = model.bridge(model.think(["a cat", ""]).scb_input)
        torch.manual_seed(0)
        x = torch.randn(2, 16, 4, 4)
        return model.velocity(x, torch.tensor([500.0, 500.0]), context, pooled), context


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    model = build_tiny_model(seed=0)
    add_lora(model.transformer, dit_lora_targets(model.transformer), rank=4, alpha=8)
    targets = [t for t in vlm_lora_targets(model.lmm) if "language_model" in t][:40]
    add_lora(model.lmm, targets + ["model.language_model.embed_tokens"], rank=2, alpha=4)
    torch.manual_seed(1)
    with torch.no_grad():  # pretend training moved the B matrices away from zero
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.normal_(std=0.05)
    path = save_lora(model, tmp_path_factory.mktemp("lora") / "test.safetensors", {"steps": 3})
    return model, path


def test_file_layout(adapted):
    _, path = adapted
    lora = load_lora(path)
    assert lora.metadata == {"steps": 3}
    assert "transformer.transformer_blocks.0.attn.to_q" in lora.modules  # SD3 diffusers key, ComfyUI-loadable
    assert lora.modules["lmm.model.language_model.embed_tokens"].embedding
    assert lora.modules["transformer.transformer_blocks.0.attn.to_q"].scale == 2.0


def test_strength_one_reproduces_adapter_and_zero_the_base(adapted):
    model, path = adapted
    expected_v, expected_ctx = velocity_and_context(model)
    base = build_tiny_model(seed=0)
    base_v, base_ctx = velocity_and_context(base)
    patcher = LoraPatcher()
    patcher.apply(base, [(load_lora(path), 1.0)])
    v, ctx = velocity_and_context(base)
    assert torch.allclose(v, expected_v, atol=1e-5) and torch.allclose(ctx, expected_ctx, atol=1e-5)
    patcher.apply(base, [(load_lora(path), 0.0)])
    v0, _ = velocity_and_context(base)
    assert torch.equal(v0, base_v)
    patcher.apply(base, [(load_lora(path), 0.5)])
    patcher.restore(base)
    assert torch.equal(velocity_and_context(base)[0], base_v)


def test_bad_lora_inputs(tmp_path, adapted):
    with pytest.raises(LoraError, match="rank must be at least 1"):
        add_lora(build_tiny_model().transformer, ["proj_out"], rank=0, alpha=1)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(LoraError, match="not a readable"):
        load_lora(bad)
