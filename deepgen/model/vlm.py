"""How DeepGen talks to Qwen2.5-VL: prompt templates, reference images as vision patches, M-RoPE
positions, and the hidden-state taps that SCB stacks. Functions only; the modules live in DeepGenModel.

Version notes: transformers >= 4.52 nests the text tower at `lmm.model.language_model` and the vision tower
at `lmm.model.visual`; 5.x `get_rope_index` takes an extra `mm_token_type_ids` argument and the vision tower
returns an output object whose `pooler_output` holds the merged tokens. Both are handled here, once.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

from .. import constants as C


def template_prompt(text: str, num_image_tokens: Sequence[int] = ()) -> str:
    """The official prompt: T2I gets 'Generate an image: ', edits get one vision block per reference."""
    text = text.strip()
    if not num_image_tokens:
        body = C.GENERATION_TEMPLATE.format(input=text)
    else:
        blocks = "".join(C.IMAGE_START_TOKEN + C.IMAGE_CONTEXT_TOKEN * n + C.IMAGE_END_TOKEN for n in num_image_tokens)
        body = blocks + "\n" + text
    return C.INSTRUCTION_TEMPLATE.format(input=body)


def vision_patches(pixels: torch.Tensor, vision_config) -> tuple[torch.Tensor, torch.Tensor]:
    """A [-1, 1] reference (3, H, W), H and W multiples of 32, to the flat patches Qwen2.5-VL's vision tower takes.

    Exactly the official `get_semantic_features_dynamic`: bilinear x28/32 (no antialias), CLIP normalisation,
    two identical temporal frames, and Qwen2-VL's processor patch order: rows (t, h/m, w/m, m, m), columns
    (c, tp, p, p). Returns (patches (N, 3*tp*p*p), grid_thw (3,)).
    """
    patch, tp, merge = vision_config.patch_size, vision_config.temporal_patch_size, vision_config.spatial_merge_size
    x = F.interpolate(pixels[None].float(), scale_factor=C.VISION_RESIZE_FACTOR, mode="bilinear", align_corners=False)[
        0
    ]
    x = (x + 1) / 2
    mean = torch.tensor(C.CLIP_MEAN, device=x.device)[:, None, None]
    std = torch.tensor(C.CLIP_STD, device=x.device)[:, None, None]
    x = (x - mean) / std
    channels, height, width = x.shape
    gh, gw = height // patch, width // patch
    frames = x[None].expand(tp, -1, -1, -1)  # (tp, c, H, W); one temporal grid step
    frames = frames.reshape(1, tp, channels, gh // merge, merge, patch, gw // merge, merge, patch)
    frames = frames.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    patches = frames.reshape(gh * gw, channels * tp * patch * patch)
    return patches.to(pixels.dtype), torch.tensor([1, gh, gw], dtype=torch.long)


def num_vision_tokens(height: int, width: int, vision_config) -> int:
    """Tokens a (height, width) reference becomes after the merger (256 at 512x512)."""
    unit = vision_config.patch_size * vision_config.spatial_merge_size
    return (round(height * C.VISION_RESIZE_FACTOR) // unit) * (round(width * C.VISION_RESIZE_FACTOR) // unit)


# The towers are found by attribute name (their place differs between transformers versions); torch types a
# child-module attribute as `Tensor | Module`, so the results are cast to the transformers model they are.
def _inner(lmm: nn.Module) -> PreTrainedModel:
    """Qwen2_5_VLModel inside the ForConditionalGeneration wrapper (or a PEFT wrapper around it)."""
    return cast("PreTrainedModel", lmm.model)


def text_tower(lmm: nn.Module) -> PreTrainedModel:
    inner = _inner(lmm)
    return getattr(inner, "language_model", inner)


def vision_tower(lmm: nn.Module) -> PreTrainedModel:
    inner = _inner(lmm)
    return cast("PreTrainedModel", inner.visual if hasattr(inner, "visual") else lmm.visual)


def vision_features(lmm: nn.Module, patches: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    visual = vision_tower(lmm)
    out = visual(patches.to(visual.dtype), grid_thw=grid_thw)
    return out.pooler_output if hasattr(out, "pooler_output") else out


def rope_positions(
    lmm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_grid_thw: torch.Tensor | None
) -> torch.Tensor:
    """M-RoPE position ids (3, B, L) from the model's own get_rope_index; left pads get position 1 (as 4.56 does)."""
    inner = _inner(lmm)
    get_rope_index: Any = inner.get_rope_index if hasattr(inner, "get_rope_index") else lmm.get_rope_index
    kwargs = {"image_grid_thw": image_grid_thw, "attention_mask": attention_mask}
    if "mm_token_type_ids" in inspect.signature(get_rope_index).parameters:
        kwargs["mm_token_type_ids"] = (input_ids == C.IMAGE_PAD_TOKEN_ID).int()
    position_ids, _ = get_rope_index(input_ids, **kwargs)
    return position_ids.masked_fill(attention_mask[None] == 0, 1)


def stack_taps(hidden_states: Sequence[torch.Tensor], num_layers: int) -> torch.Tensor:
    """SCB input: hidden_states[[35, 29, 23, 17, 11, 5]] (for 36 layers) concatenated on channels, deepest first."""
    return torch.cat([hidden_states[i] for i in C.scb_tap_indices(num_layers)], dim=-1)
