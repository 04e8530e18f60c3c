"""A DeepGen whose DiT weights dominate memory: the tiny model with a DiT at the real width.

The real DiT (SD3.5-Medium MMDiT) is 24 heads x 64 = 1536 wide; here it keeps that width with two layers (one
with dual attention), about 470 MB of fp32 weights, while the VLM, the connector and the VAE stay tiny (a few MB
plus the tiny VLM's vocabulary embedding). The weights are random: this model is for memory measurements only.
"""

from __future__ import annotations

from pathlib import Path

REAL_HEADS, REAL_HEAD_DIM = 24, 64  # SD3.5-Medium: hidden size 1536
WIDE_TRANSFORMER = {
    "num_attention_heads": REAL_HEADS,
    "attention_head_dim": REAL_HEAD_DIM,
    "caption_projection_dim": REAL_HEADS * REAL_HEAD_DIM,
    "num_layers": 2,
    "dual_attention_layers": [0],
}


def build_wide_model(seed: int = 0):
    """The tiny DeepGen (deepgen.tiny) with its DiT replaced by a real-width one (same seed rule, fp32)."""
    import torch

    from deepgen.model.dit import DeepGenTransformer2DModel
    from deepgen.tiny import TINY_TRANSFORMER, build_tiny_model

    model = build_tiny_model(seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model.transformer = DeepGenTransformer2DModel.from_config({**TINY_TRANSFORMER, **WIDE_TRANSFORMER})
    return model.float().eval()


def write_wide_checkpoint(path: Path) -> dict:
    """Save the wide model as one converted file; returns {"path", "dit_bytes", "total_bytes"} (fp32 bytes)."""
    from deepgen.loading import convert_model

    model = build_wide_model()
    dit_bytes = sum(p.numel() * p.element_size() for p in model.transformer.parameters())
    total_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    convert_model(model, path)
    del model
    return {"path": Path(path), "dit_bytes": dit_bytes, "total_bytes": total_bytes}
