"""Size rules: which image sizes the model takes, and how to round a requested size to one it takes.

- Outputs: height and width must be multiples of 16 (VAE /8, then DiT patch 2).
- References: multiples of 32 (the vision tower sees them at 28/32, which must be a multiple of 28).
- "fix_pixels" (the training resolution rule): scale so that sqrt(H*W) is about `target`, keep the
  aspect ratio, and round each side *up* to a multiple of 32.
"""

from __future__ import annotations

import math

from .errors import InputError, SizeError

__all__ = ["SizeError", "OUTPUT_MULTIPLE", "REFERENCE_MULTIPLE"]  # and the functions below

OUTPUT_MULTIPLE = 16
REFERENCE_MULTIPLE = 32


def check_output_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0 or height % OUTPUT_MULTIPLE or width % OUTPUT_MULTIPLE:
        raise SizeError(
            f"Output size {width}x{height} (WxH) is not a multiple of {OUTPUT_MULTIPLE}. "
            f"Use e.g. {round_to_multiple(width, OUTPUT_MULTIPLE)}x{round_to_multiple(height, OUTPUT_MULTIPLE)}."
        )


def check_reference_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0 or height % REFERENCE_MULTIPLE or width % REFERENCE_MULTIPLE:
        raise SizeError(
            f"Reference image size {width}x{height} (WxH) is not a multiple of {REFERENCE_MULTIPLE}. "
            "Resize it to multiples of 32 first, or let DeepGen resize it (reference resize mode 'fix_pixels')."
        )


def round_to_multiple(value: float, multiple: int, mode: str = "nearest") -> int:
    """Round to a positive multiple. mode: nearest | up | down."""
    q = value / multiple
    n = {"nearest": round(q), "up": math.ceil(q), "down": math.floor(q)}[mode]
    return max(multiple, int(n) * multiple)


def round_output_size(height: int, width: int) -> tuple[int, int]:
    """Nearest valid output size (multiples of 16)."""
    return round_to_multiple(height, OUTPUT_MULTIPLE), round_to_multiple(width, OUTPUT_MULTIPLE)


def fix_pixels_size(height: int, width: int, target: int = 512, unit: int = REFERENCE_MULTIPLE) -> tuple[int, int]:
    """The official training rule (`resize_image_fix_pixels`): about target**2 pixels, aspect ratio kept, sides
    ceil-aligned to `unit`, with the official float operations. E.g. 720x1280 -> 384x704."""
    if height < 1 or width < 1:
        raise SizeError(f"image size must be positive, got {height}x{width} (HxW)")
    if target < 1 or unit < 1:
        raise SizeError(f"target and unit must be >= 1, got target={target}, unit={unit}")
    ratio = target / ((height * width) ** 0.5)
    return max(unit, math.ceil(height * ratio / unit) * unit), max(unit, math.ceil(width * ratio / unit) * unit)


def longest_side_size(height: int, width: int, longest: int = 512, unit: int = REFERENCE_MULTIPLE) -> tuple[int, int]:
    """The official model-file CLI rule: the longest side becomes `longest`, the other is ceil-aligned to `unit`."""
    scale = longest / max(height, width)
    return (
        max(unit, math.ceil(height * scale / unit) * unit),
        max(unit, math.ceil(width * scale / unit) * unit),
    )


def reference_size(height: int, width: int, mode: str = "fix_pixels", target: int = 512) -> tuple[int, int]:
    """Size a reference image is resized to. mode: fix_pixels | longest_side | square | keep."""
    if mode == "fix_pixels":
        return fix_pixels_size(height, width, target)
    if mode == "longest_side":
        return longest_side_size(height, width, target)
    if mode == "square":  # what the official benchmark scripts do
        return target, target
    if mode == "keep":
        check_reference_size(height, width)
        return height, width
    raise InputError(f"Unknown resize mode {mode!r}; use fix_pixels, longest_side, square or keep")
