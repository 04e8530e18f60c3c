"""The SCB connector: a stack of SigLIP-style encoder layers over the projected VLM states.

The official `ConnectorEncoder` is a copy of SigLIP's encoder: pre-LN residual attention + GELU(tanh) MLP,
with no positional embedding, no attention mask and no final LayerNorm. We reuse transformers'
`SiglipEncoder` layers, which have exactly those layers and parameter names
(`layers.{i}.self_attn.{q,k,v,out}_proj`, `layer_norm1`, `mlp.fc1/fc2`, `layer_norm2`), so the official
`connector.*` keys load unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipEncoder


@dataclass
class ConnectorConfig:
    hidden_size: int = 2048
    intermediate_size: int = 11946
    num_hidden_layers: int = 6
    num_attention_heads: int = 32
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class ConnectorEncoder(nn.Module):
    def __init__(self, config: ConnectorConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        siglip_config = SiglipVisionConfig(**config.to_dict())
        siglip_config._attn_implementation = attn_implementation
        # Keep only the layers, so our parameter names are the official `layers.{i}.*`.
        # transformers types SiglipEncoder(config) as SiglipConfig; its own vision model passes a SiglipVisionConfig
        self.layers = SiglipEncoder(siglip_config).layers  # type: ignore[arg-type]
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # No mask on purpose: the official connector attends over every token, left pads included.
        for layer in self.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                out = checkpoint(layer, hidden_states, None, use_reentrant=False)
            else:
                out = layer(hidden_states, None)
            hidden_states = out[0] if isinstance(out, tuple) else out
        return hidden_states
