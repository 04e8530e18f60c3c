"""fp8 weights: the DiT and the VLM's text and vision towers stored in float8_e4m3fn, upcast layer by layer.

The mechanism is diffusers' layerwise casting (`diffusers.hooks.apply_layerwise_casting`): each selected
Linear / Conv / Embedding keeps its weights in float8_e4m3fn and a forward hook casts that one layer to the
compute dtype (bf16, fp16 or fp32) right before its forward and back to fp8 right after. It is what ComfyUI's
`weight_dtype` fp8 option does with `comfy.ops`, it works on any nn.Module (the Qwen2.5-VL text tower as much
as the DiT), needs no new dependency, and needs no fp8 matmul: the matmul runs in the compute dtype, so it
works on a CPU and on any GPU. fp8 -> bf16 / fp32 -> fp8 is exact, so the round trip loses nothing after the
first cast. (torchao's float8 tensors would use fp8 matmuls, but only on recent GPUs, and add a dependency.)

What stays in the compute dtype (`DIT_SKIP`, `TEXT_SKIP`, `VISION_SKIP`), because it is small or sensitive:
- every norm (LayerNorm / RMSNorm are never cast: layerwise casting only touches Linear, Conv and Embedding);
- the DiT's patch embedding and position table (`pos_embed`), timestep / pooled embedding (`time_text_embed`),
  final modulation (`norm_out`) and output projection (`proj_out`): the first and last layers, where errors
  are not averaged out (diffusers' defaults, plus the two small embeddings). The per-block AdaLN modulation
  Linears are cast, as ComfyUI's fp8 does: they are 0.4 B of the DiT's 2.5 B parameters;
- the VLM's token embedding (`embed_tokens`): a lookup, not a matmul, and tied to the unused `lm_head` (casting
  it would put lm_head's shared weight in fp8 with no hook of its own to upcast it);
- the vision tower's patch embedding (a Conv3d: Qwen2.5-VL casts its input to the conv's weight dtype, so it
  must stay in the compute dtype; this also keeps `visual.dtype` the compute dtype) and its `merger` (the last
  layer, whose output goes straight into the text tower). Its 32 blocks (0.63 B parameters) are cast.
Not cast at all: the VAE (84 M, decodes pixels directly) and the think tokens / SCB connector / projectors
(small, and trained: they carry DeepGen's own signal).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .errors import CheckpointError

FP8 = torch.float8_e4m3fn
WEIGHT_DTYPES = ("default", "fp8_e4m3fn")
_ALIASES = {"fp8": "fp8_e4m3fn", "": "default", "none": "default"}

DIT_SKIP = ("pos_embed", "patch_embed", "time_text_embed", "^norm_out", "^proj_out$")
TEXT_SKIP = ("embed_tokens",)
VISION_SKIP = ("patch_embed", "merger")
# The parts that may be stored in fp8, by their key prefix in the model's state dict (and converted files).
FP8_PARTS = {
    "transformer": "transformer.",
    "vlm_text": "lmm.model.language_model.",
    "vlm_vision": "lmm.model.visual.",
}


def normalize_weight_dtype(weight_dtype: str | None) -> str:
    name = _ALIASES.get((weight_dtype or "").lower(), (weight_dtype or "").lower())
    if name not in WEIGHT_DTYPES:
        raise InputError(f"weight_dtype must be one of {', '.join(WEIGHT_DTYPES)} (or fp8), not {weight_dtype!r}")
    return name


def fp8_modules(model) -> dict[str, tuple[nn.Module, tuple[str, ...]]]:
    """The parts cast to fp8, by their FP8_PARTS name: (module, skip patterns)."""
    from ..model.vlm import text_tower, vision_tower

    return {
        "transformer": (model.transformer, DIT_SKIP),
        "vlm_text": (text_tower(model.lmm), TEXT_SKIP),
        "vlm_vision": (vision_tower(model.lmm), VISION_SKIP),
    }


def apply_fp8(model, compute_dtype: torch.dtype | None = None, parts: list[str] | None = None) -> None:
    """Store the DiT and the VLM text and vision towers (or only the FP8_PARTS named in `parts`) in
    float8_e4m3fn, each layer upcast to `compute_dtype` (default: the model's dtype) for its forward.
    Idempotent; the model must not be `.to(dtype)`-ed afterwards."""
    from diffusers.hooks import apply_layerwise_casting

    compute_dtype = compute_dtype or model.dtype
    if compute_dtype == FP8:
        raise InputError("fp8 is a storage dtype; compute in bf16, fp16 or fp32")
    if any(".lora_" in name for name, _ in model.lmm.named_parameters()):
        raise InputError("fp8 weights are for inference: load with lora='merge', not a PEFT adapter")
    for name, (module, skip) in fp8_modules(model).items():
        if parts is not None and name not in parts:
            continue
        if any(_hook(m) is not None for m in module.modules()):
            continue  # already cast (a converted fp8 file)
        apply_layerwise_casting(module, storage_dtype=FP8, compute_dtype=compute_dtype, skip_modules_pattern=skip)


def stored_fp8_parts(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The FP8_PARTS that hold fp8 tensors."""
    return sorted(part for part, prefix in FP8_PARTS.items() if any(_fp8_in(tensors, prefix)))


def _fp8_in(tensors: dict[str, torch.Tensor], prefix: str):
    return (k for k, t in tensors.items() if k.startswith(prefix) and t.dtype == FP8)


def check_fp8_header(claimed: list, tensors: dict[str, torch.Tensor], source: str) -> list[str]:
    """The header's `fp8_parts` must name known parts, each of which holds fp8 tensors, and every fp8 tensor
    must lie in a named part."""
    if not isinstance(claimed, list) or not all(isinstance(p, str) for p in claimed):
        raise CheckpointError(f"{source}: header field 'fp8_parts' must be a list of part names")
    unknown = sorted(set(claimed) - set(FP8_PARTS))
    if unknown:
        raise CheckpointError(
            f"{source}: header fp8_parts names unknown parts {unknown} (known: {', '.join(FP8_PARTS)}); "
            "the file is damaged or crafted"
        )
    empty = [p for p in claimed if not any(_fp8_in(tensors, FP8_PARTS[p]))]
    if empty:
        raise CheckpointError(
            f"{source}: the header says {', '.join(empty)} is stored in fp8 but it holds no fp8 tensors; "
            "the file is damaged or crafted: convert it again"
        )
    prefixes = tuple(FP8_PARTS[p] for p in claimed)
    stray = sorted(k for k, t in tensors.items() if t.dtype == FP8 and not k.startswith(prefixes))
    if stray:
        raise CheckpointError(
            f"{source}: {len(stray)} fp8 tensors outside the header's fp8_parts (e.g. {stray[0]}); "
            "the file is damaged or crafted: convert it again"
        )
    return sorted(claimed)


def check_all_cast(model, source: str) -> None:
    """After apply_fp8: every fp8 parameter belongs to a layer that upcasts it (else its forward would fail)."""
    bare = [
        f"{name}.{p}"
        for name, module in model.named_modules()
        for p, t in module.named_parameters(recurse=False)
        if t.dtype == FP8 and _hook(module) is None
    ]
    if bare:
        raise CheckpointError(
            f"{source}: {len(bare)} fp8 tensors in layers kept in the compute dtype (e.g. {bare[0]}); "
            "the file is damaged or crafted: convert it again"
        )


def _hook(module: nn.Module):
    registry = getattr(module, "_diffusers_hook", None)
    return registry.get_hook("layerwise_casting") if registry is not None else None
