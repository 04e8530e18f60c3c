"""One converter for every image format the rewards accept.

Why: rewards run on PIL RGB images (as the official scorers do), but callers hand over
ComfyUI IMAGE tensors (B,H,W,C float in 0..1), numpy arrays or PIL images.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

__all__ = ["to_pil_images", "image_to_data_url"]


def to_pil_images(images) -> list[Image.Image]:
    """Returns a list of RGB PIL images.

    Accepts a PIL image, a list of PIL images / arrays / tensors, or a float tensor/array
    (B,H,W,C) or (H,W,C) in 0..1 (uint8 arrays are taken as 0..255). C may be 1, 3 or 4
    (alpha is dropped).
    """
    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, (torch.Tensor, np.ndarray)):
        arr = images
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ValueError(f"expected an image batch (B,H,W,C), got shape {tuple(arr.shape)}")
        return [_array_to_pil(a) for a in arr]
    if isinstance(images, (list, tuple)):
        out = []
        for im in images:
            if isinstance(im, Image.Image):
                out.append(im.convert("RGB"))
            elif isinstance(im, (torch.Tensor, np.ndarray)) and im.ndim == 3:
                out.append(_array_to_pil(im))
            else:
                raise TypeError(f"unsupported image in list: {type(im).__name__}")
        return out
    raise TypeError(f"unsupported images type: {type(images).__name__}")


def _array_to_pil(a) -> Image.Image:
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float32).numpy() if a.is_floating_point() else a.cpu().numpy()
    if a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        raise ValueError(f"expected channels-last (H,W,C) images, got shape {a.shape}")
    if a.dtype == np.uint8:
        u8 = a
    else:
        u8 = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if u8.shape[-1] == 1:
        u8 = np.repeat(u8, 3, axis=-1)
    elif u8.shape[-1] == 4:
        u8 = u8[..., :3]
    return Image.fromarray(np.ascontiguousarray(u8), "RGB")


def image_to_data_url(image: Image.Image, quality: int = 95) -> str:
    """JPEG (quality 95, as the official judge client) base64 data URL."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
