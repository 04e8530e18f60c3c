"""Image conversions at the library's edges. Inside, images are float tensors in [-1, 1], (B, 3, H, W)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .sizes import check_reference_size, reference_size

ImageLike = Image.Image | torch.Tensor | np.ndarray


def to_pixels(image: ImageLike) -> torch.Tensor:
    """PIL / uint8 HWC array / float (3, H, W) in [-1, 1] -> float32 (3, H, W) in [-1, 1]."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"Expected a uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
        return torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255 * 2 - 1
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"Expected a (3, H, W) tensor in [-1, 1], got shape {tuple(image.shape)}")
        return image.float()
    raise TypeError(f"Unsupported image type {type(image).__name__}")


def resize_pixels(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(pixels.shape[-2:]) == (height, width):
        return pixels
    out = F.interpolate(pixels[None], size=(height, width), mode="bicubic", antialias=True, align_corners=False)[0]
    return out.clamp(-1, 1)


def prepare_reference(image: ImageLike, resize: str = "fix_pixels", target: int = 512) -> torch.Tensor:
    """A reference image at a size the model takes (sides multiples of 32).

    resize: fix_pixels (about target² pixels, the training rule; default) | longest_side | square | keep
    ('keep' refuses sizes that are not multiples of 32 instead of resizing).
    """
    pixels = to_pixels(image)
    height, width = pixels.shape[-2:]
    if resize == "keep":
        check_reference_size(height, width)
        return pixels
    return resize_pixels(pixels, *reference_size(height, width, resize, target))


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """The official quantisation: clamp(127.5·x + 128, 0, 255) (note +128), (B, 3, H, W) -> (B, H, W, 3) uint8."""
    return (127.5 * pixels.float() + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(a) for a in to_uint8(pixels).cpu().numpy()]


def to_comfy_image(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) [-1, 1] -> ComfyUI IMAGE (B, H, W, 3) float in 0..1.

    Scaled as (127.5·x + 128)/255 so that ComfyUI's SaveImage (which truncates 255·v) writes exactly the
    official uint8 values.
    """
    return ((127.5 * pixels.float() + 128) / 255).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def from_comfy_image(images: torch.Tensor) -> list[torch.Tensor]:
    """ComfyUI IMAGE (B, H, W, C) 0..1 -> list of (3, H, W) in [-1, 1] (alpha dropped, grey expanded)."""
    if images.ndim != 4:
        raise ValueError(f"Expected an IMAGE batch (B, H, W, C), got shape {tuple(images.shape)}")
    rgb = images[..., :3] if images.shape[-1] >= 3 else images[..., :1].expand(*images.shape[:-1], 3)
    return list(rgb.permute(0, 3, 1, 2).float() * 2 - 1)


def batched(items: Iterable, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
