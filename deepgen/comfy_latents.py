"""ComfyUI's SD3 conventions for latents, conditioning and previews, in plain PyTorch (no ComfyUI import).

- LATENT holds the *raw* VAE latent z. ComfyUI's SD3 latent format maps it to the model's space with
  process_in(z) = (z - shift) * scale, which is the space the DeepGen DiT samples in. So
  `to_comfy_samples(x) = x / scale + shift` and `from_comfy_samples(z) = (z - shift) * scale`; ComfyUI's
  VAEDecode with the SD3.5 VAE then decodes our LATENT as is.
- CONDITIONING is `[[cross_attn (B, L, D), {"pooled_output": (B, P), ...}]]`; reference latents of an edit go
  under "reference_latents" as raw (1, 16, h, w) latents, as ComfyUI's ReferenceLatent node stores them.
- Previews use ComfyUI's SD3 latent-to-RGB factors on model-space latents (what its Latent2RGB previewer does).
"""

from __future__ import annotations

import torch
from PIL import Image

from .pipeline import Conditioning

# comfy/latent_formats.py: class SD3 (ComfyUI 0.3.75)
SD3_SCALE_FACTOR = 1.5305
SD3_SHIFT_FACTOR = 0.0609
SD3_LATENT_RGB_FACTORS = (
    (-0.0922, -0.0175, 0.0749),
    (0.0311, 0.0633, 0.0954),
    (0.1994, 0.0927, 0.0458),
    (0.0856, 0.0339, 0.0902),
    (0.0587, 0.0272, -0.0496),
    (-0.0006, 0.1104, 0.0309),
    (0.0978, 0.0306, 0.0427),
    (-0.0042, 0.1038, 0.1358),
    (-0.0194, 0.0020, 0.0669),
    (-0.0488, 0.0130, -0.0268),
    (0.0922, 0.0988, 0.0951),
    (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895),
    (-0.0069, -0.0030, -0.0810),
    (-0.0596, -0.0465, -0.0293),
    (-0.1448, -0.1463, -0.1189),
)
SD3_LATENT_RGB_BIAS = (0.2394, 0.2135, 0.1925)


def to_comfy_samples(latents: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """DiT-space latents (z - shift) * scale -> ComfyUI LATENT samples z (float32, same device)."""
    return latents.float() / scale + shift


def from_comfy_samples(samples: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """ComfyUI LATENT samples z -> DiT-space latents (z - shift) * scale (float32)."""
    return (samples.float() - shift) * scale


def to_comfy_conditioning(
    cond: Conditioning, scale: float, shift: float, device: torch.device | str = "cpu"
) -> tuple[list, list | None]:
    """Conditioning -> (positive, negative) native CONDITIONING lists (negative None without guidance rows).

    Reference latents (edits) are added as "reference_latents" when every prompt shares the same references
    (ComfyUI keeps one list per conditioning entry, shared by the whole batch).
    """

    def entry(context, pooled):
        extra = {"pooled_output": pooled.float().to(device)}
        if refs is not None:
            extra["reference_latents"] = [to_comfy_samples(r[None], scale, shift).to(device) for r in refs]
        return [[context.float().to(device), extra]]

    refs = None
    if cond.reference_latents and all(len(row) == len(cond.reference_latents[0]) for row in cond.reference_latents):
        first = cond.reference_latents[0]
        if all(all(a is b or torch.equal(a, b) for a, b in zip(row, first)) for row in cond.reference_latents):
            refs = first
    positive = entry(cond.context, cond.pooled)
    negative = entry(cond.negative_context, cond.negative_pooled) if cond.has_negative else None
    return positive, negative


def latent_preview(latents: torch.Tensor, max_size: int | None = None) -> Image.Image:
    """RGB preview of the first DiT-space latent (16, h, w) with ComfyUI's SD3 latent-to-RGB factors."""
    x = latents[0].detach().float().cpu()
    factors = torch.tensor(SD3_LATENT_RGB_FACTORS).T  # (3, 16)
    rgb = torch.nn.functional.linear(x.movedim(0, -1), factors, torch.tensor(SD3_LATENT_RGB_BIAS))
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels)
    if max_size is not None and max(image.size) > max_size:
        image.thumbnail((max_size, max_size))
    return image
