"""Reward models for the nodes: held by ComfyUI's model manager, owned by the node that uses them.

deepgen.rewards caches its models for good (right for the CLI and the trainer).  In a node,
``with use_model_store(store)`` sends them here instead: each model is built on the offload device, wrapped in a
patcher and brought onto the compute device through the manager on every use, so ComfyUI counts it, evicts it when
another model needs room and unloads it on "Unload models".  The store lives on the node instance, so when ComfyUI
drops the node (POST /free, a new graph) the models go with it.
"""

from __future__ import annotations

import torch
from torch import nn

from . import comfy_services as cs
from .comfy_services import managed_models as mm


class RewardModelWeights(nn.Module):
    """Holds one reward model for the manager (transformers models have a read-only ``device``, which ComfyUI's
    patcher sets on what it holds)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.reward_model = model


class RewardModelStore:
    """deepgen.rewards.ModelStore backed by the model manager."""

    def __init__(self):
        self._entries: dict = {}  # key -> (object the reward asked for, [patchers])

    def get(self, key, loader, device):
        entry = self._entries.get(key)
        if entry is None:
            offload = cs.offload_device()
            built = loader(offload)
            parts = built if isinstance(built, tuple) else (built,)
            load = torch.device(device) if device is not None else cs.torch_device()
            patchers = [mm.manage(RewardModelWeights(p), load, offload) for p in parts if isinstance(p, nn.Module)]
            entry = self._entries[key] = (built, patchers)
        mm.load_models(entry[1])
        return entry[0]

    def patchers(self) -> list:
        return [p for _, patchers in self._entries.values() for p in patchers]

    def clear(self) -> None:
        mm.unload_models(self.patchers())
        self._entries.clear()
