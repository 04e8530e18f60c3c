"""Image conversions at the library's edges. Inside, images are float tensors in [-1, 1], (B, 3, H, W)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputImageError, NotFoundError
from .sizes import check_reference_size, reference_size

ImageLike = Image.Image | torch.Tensor | np.ndarray

# Refused before decoding: 64 megapixels (8192 x 8192) is far above what the model takes (references are
# resized to about 512²), and decoding more lets a small crafted file take gigabytes ("decompression bomb").
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
# Smaller references carry nothing the model can use (its vision tower sees 28-pixel patches).
MIN_IMAGE_SIDE = 16


def open_image(path: str | os.PathLike, *, exif_transpose: bool = True, check_size: bool = True) -> Image.Image:
    """Open an image file for the model: checked, fully decoded, EXIF-rotated and converted to RGB.

    Raises InputImageError (or NotFoundError) with one line naming the file for anything unusable: empty, not an
    image, truncated, larger than MAX_IMAGE_PIXELS, smaller than MIN_IMAGE_SIDE. Other modes are converted
    correctly (see to_rgb); an animated image gives its first frame. ``check_size=False`` leaves the size limits
    to the caller (the training data applies the official ones; PIL's own decompression-bomb limit still holds).
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"image {path} not found")
    if path.stat().st_size == 0:
        raise InputImageError(f"image {path} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit applies
            with Image.open(path) as image:
                if check_size:
                    check_input_image_size(image.width, image.height, str(path))
                image.seek(0)  # the first frame of an animation
                image.load()
                if exif_transpose:
                    image = ImageOps.exif_transpose(image)
                return to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise InputImageError(f"image {path} is too large to open safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise InputImageError(f"{path} is not an image that can be read (PNG, JPEG, WebP, BMP, TIFF, GIF...)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, InputImageError):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputImageError(
            f"image {path} is truncated or damaged ({reason}); open it in an image editor and save it again"
        ) from exc


def check_input_image_size(width: int, height: int, where: str = "image") -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise InputImageError(
            f"{where} is {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS // 2**20} "
            "megapixels DeepGen accepts; downscale it first (references are used at about 512²)"
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputImageError(
            f"{where} is {width}x{height} pixels; an input image needs at least {MIN_IMAGE_SIDE} pixels per side"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB. 16/32-bit and float greys are scaled to 8 bits (PIL's convert('RGB') would clip
    them to white). Transparency is dropped, as the official code and ComfyUI's LoadImage do (convert('RGB')),
    so a picture gives the same result from the CLI and from a workflow; palettes and CMYK go through PIL."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = values.max(initial=0)
        top = (1.0 if peak <= 1.0 else 255.0) if image.mode == "F" else (255.0 if peak <= 255 else 65535.0)
        grey = np.clip(np.round(values / top * 255), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


def to_pixels(image: ImageLike) -> torch.Tensor:
    """PIL / uint8 HWC array / float (3, H, W) in [-1, 1] -> float32 (3, H, W) in [-1, 1]."""
    if isinstance(image, Image.Image):
        image = np.asarray(to_rgb(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise InputImageError(f"Expected a uint8 (H, W, 3) image array, got {image.dtype} {image.shape}")
        return torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255 * 2 - 1
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise InputImageError(f"Expected a (3, H, W) image tensor in [-1, 1], got shape {tuple(image.shape)}")
        if not torch.isfinite(image).all():
            raise InputImageError("the image holds NaN or infinite values")
        return image.float()
    raise InputImageError(f"Unsupported image type {type(image).__name__}; give a PIL image, an array or a tensor")


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
    check_input_image_size(width, height, "the reference image")
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
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] not in (1, 3, 4):
        raise InputImageError(
            f"Expected a ComfyUI IMAGE batch (B, H, W, C) with C 1, 3 or 4, got shape {tuple(images.shape)}"
        )
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
