"""DeepGen LoRA adapters: add them for training (PEFT), save them to one file, apply them with a strength.

File format (safetensors, metadata format "deepgen-lora"): PEFT names without the adapter name, under the
part they adapt, plus a scalar `.alpha` per module so stock ComfyUI LoRA loaders scale them right:
  transformer.<module>.lora_A.weight (r, in) / .lora_B.weight (out, r) / .alpha   -- SD3 diffusers keys
  lmm.<module>.lora_A.weight / .lora_B.weight / .alpha                           -- Linear layers of the VLM
  lmm.<module>.lora_embedding_A (r, V) / .lora_embedding_B (d, r) / .alpha       -- the VLM's embedding
Applying merges W + strength·(alpha/r)·B·A into the weights (the embedding takes (B·A)ᵀ), keeping a backup of
every touched weight so the base can be restored exactly.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

LORA_FORMAT = "deepgen-lora"
PARTS = ("lmm", "transformer")
# DiT targets: attention projections of every joint block (image and context streams, and attn2).
DIT_TARGET_PRESETS = {
    "attn": r"transformer_blocks\.\d+\.attn2?\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)$",
    "attn_ff": r"transformer_blocks\.\d+\.(attn2?\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
               r"|ff(_context)?\.net\.(0\.proj|2))$",
}


class LoraError(ValueError):
    """A LoRA file or setting that cannot be used."""


def vlm_lora_targets(lmm: nn.Module) -> list[str]:
    """Every Linear and Embedding module of the VLM: the official `find_target_linear_names` ('auto')."""
    return [name for name, module in lmm.named_modules() if isinstance(module, (nn.Linear, nn.Embedding)) and name]


def dit_lora_targets(transformer: nn.Module, targets: str | list[str] = "attn") -> list[str]:
    if isinstance(targets, list):
        return targets
    if targets not in DIT_TARGET_PRESETS:
        raise LoraError(f"Unknown DiT LoRA targets {targets!r}: use one of {sorted(DIT_TARGET_PRESETS)} or a list")
    pattern = re.compile(DIT_TARGET_PRESETS[targets])
    return [name for name, module in transformer.named_modules() if isinstance(module, nn.Linear) and pattern.search(name)]


def add_lora(module: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float = 0.0,
             init: str | bool = "gaussian", adapter_name: str = "default") -> nn.Module:
    """Inject a trainable PEFT LoRA into `module` (in place) on exactly `targets`."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise LoraError(f"LoRA rank must be at least 1, got {rank}")
    if not targets:
        raise LoraError("No LoRA target modules")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        init_lora_weights=init)
    inject_adapter_in_model(config, module, adapter_name=adapter_name)
    return module


def _peft_modules(module: nn.Module):
    """(name, peft layer) for every LoRA-wrapped layer of `module`."""
    from peft.tuners.lora import LoraLayer

    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, LoraLayer)]


def lora_tensors(model: nn.Module, part: str, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter of `model.<part>` in file layout (with `.alpha`)."""
    tensors = {}
    for name, layer in _peft_modules(getattr(model, part)):
        if adapter_name in getattr(layer, "lora_A", {}):
            tensors[f"{part}.{name}.lora_A.weight"] = layer.lora_A[adapter_name].weight
            tensors[f"{part}.{name}.lora_B.weight"] = layer.lora_B[adapter_name].weight
        elif adapter_name in getattr(layer, "lora_embedding_A", {}):
            tensors[f"{part}.{name}.lora_embedding_A"] = layer.lora_embedding_A[adapter_name]
            tensors[f"{part}.{name}.lora_embedding_B"] = layer.lora_embedding_B[adapter_name]
        else:
            continue
        tensors[f"{part}.{name}.alpha"] = torch.tensor(float(layer.lora_alpha[adapter_name]))
    return tensors


def save_lora(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None,
              adapter_name: str = "default") -> Path:
    """Write the model's LoRA adapters (VLM and/or DiT) to one safetensors file, atomically."""
    tensors = {}
    for part in PARTS:
        tensors.update(lora_tensors(model, part, adapter_name))
    if not tensors:
        raise LoraError("The model carries no LoRA adapter to save")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": LORA_FORMAT, "format_version": "1", "deepgen": json.dumps(metadata or {}, default=str)}
    partial = path.with_name(path.name + ".partial")
    save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(partial), metadata=meta)
    os.replace(partial, path)
    return path


@dataclass
class LoraModule:
    a: torch.Tensor
    b: torch.Tensor
    alpha: float
    embedding: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / self.a.shape[0]

    def delta(self) -> torch.Tensor:
        product = self.b.float() @ self.a.float()
        return product.T if self.embedding else product


@dataclass
class LoraFile:
    path: str
    modules: dict[str, LoraModule]  # "lmm.<module>" / "transformer.<module>"
    metadata: dict = field(default_factory=dict)


def load_lora(path: str | os.PathLike) -> LoraFile:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise LoraError(f"{path} is not a readable safetensors LoRA file ({exc})") from exc
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = re.match(r"^((?:lmm|transformer)\..+)\.(lora_A\.weight|lora_B\.weight|lora_embedding_A|"
                         r"lora_embedding_B|alpha)$", key)
        if not match:
            raise LoraError(f"{path}: unrecognised LoRA key {key!r} (expected lmm.* or transformer.* LoRA tensors)")
        groups.setdefault(match.group(1), {})[match.group(2)] = value
    modules = {}
    for name, parts in groups.items():
        embedding = "lora_embedding_A" in parts
        a = parts.get("lora_embedding_A" if embedding else "lora_A.weight")
        b = parts.get("lora_embedding_B" if embedding else "lora_B.weight")
        if a is None or b is None:
            raise LoraError(f"{path}: {name} has only one of its two LoRA matrices")
        alpha = float(parts["alpha"]) if "alpha" in parts else float(a.shape[0])
        modules[name] = LoraModule(a, b, alpha, embedding)
    return LoraFile(str(path), modules, json.loads(meta.get("deepgen", "{}")))


class LoraPatcher:
    """Merges LoRA files into a model with strengths, and restores the exact base weights afterwards."""

    def __init__(self):
        self._backup: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def apply(self, model: nn.Module, loras: list[tuple[LoraFile, float]]) -> None:
        self.restore(model)
        for lora, strength in loras:
            for name, module in lora.modules.items():
                layer = _resolve(model, name, lora.path)
                weight = layer.weight
                delta = module.delta()
                if delta.shape != weight.shape:
                    raise LoraError(f"{lora.path}: {name} gives a {tuple(delta.shape)} update for a "
                                    f"{tuple(weight.shape)} weight; the LoRA was trained for another model size")
                if name not in self._backup:
                    self._backup[name] = weight.detach().clone()
                weight.add_((strength * module.scale * delta).to(device=weight.device, dtype=weight.dtype))

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        for name, original in self._backup.items():
            _resolve(model, name, "backup").weight.copy_(original)
        self._backup.clear()


def _resolve(model: nn.Module, name: str, source: str) -> nn.Module:
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        raise LoraError(f"{source}: the model has no module {name!r}; is this LoRA for DeepGen 1.0?") from None
    if hasattr(layer, "base_layer"):  # a live PEFT layer: patch its base weight
        layer = layer.base_layer
    return layer
