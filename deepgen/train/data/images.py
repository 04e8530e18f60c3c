"""Training images: the official size checks, the header/end check of a scan, and decoding to a resized tensor.

Every image (T2I image, edit reference, edit target) is opened with :func:`deepgen.images.open_image` (fully
decoded, EXIF orientation applied unless ``exif_transpose=False``, any mode converted to RGB by
:func:`deepgen.images.to_rgb`, which scales 16-bit greys instead of clipping them to white; the official code
applies no EXIF orientation, which only matters for photos that carry an orientation tag), rejected if a side
is ≤ ``min_side`` (80) px or the aspect ratio is ≤ 1/``max_aspect`` or ≥ ``max_aspect`` (10) — the official
``CaptionDataset`` checks; its edit loader does not, we apply them to every image — then resized with the
official ``fix_pixels`` rule (:func:`fix_pixels_size`, PIL bicubic) and returned as a ``(3, H, W)`` float32
tensor in [-1, 1] computed exactly as the official ``x / 255 * 2 - 1``.  Edit references and target are
resized independently (they may differ by one 32-pixel step, as in the official code).

These limits replace ``open_image``'s own (at least 16 px a side, at most 64 megapixels) on purpose: they are
the official training rules, and a file that breaks them is a bad row, never an error that stops training.
"""

from __future__ import annotations

import os

from PIL import Image
from torch import Tensor

from ...errors import InputImageError
from ...images import open_image, to_pixels
from ...sizes import fix_pixels_size  # the one size rule, shared with inference
from .rows import BadRowError, PathLike

VERIFY_LEVELS = ("none", "exists", "header", "full")


def check_image_size(width: int, height: int, *, min_side: int = 80, max_aspect: float = 10.0) -> str | None:
    """The official ``CaptionDataset`` checks: ``None`` if fine, else the bad-row reason.

    Rejects a side ≤ ``min_side`` (``"too_small"``) and ``width / height`` ≤ 1/``max_aspect`` or
    ≥ ``max_aspect`` (``"bad_aspect"``).
    """
    if width <= min_side or height <= min_side:
        return "too_small"
    aspect = width / height
    if aspect <= 1.0 / max_aspect or aspect >= max_aspect:
        return "bad_aspect"
    return None


def _raise_if_bad_size(path: PathLike, width: int, height: int, min_side: int, max_aspect: float) -> None:
    reason = check_image_size(width, height, min_side=min_side, max_aspect=max_aspect)
    if reason is not None:
        raise BadRowError(reason, f"{path}: {width}x{height} (WxH)")


def resize_fix_pixels(image: Image.Image, target: int = 512, unit: int = 32) -> Image.Image:
    """Resize a PIL image to :func:`fix_pixels_size` with bicubic filtering (PIL's default, as official)."""
    h, w = fix_pixels_size(image.height, image.width, target, unit)
    if (h, w) == (image.height, image.width):
        return image
    return image.resize((w, h), resample=Image.Resampling.BICUBIC)


def image_to_tensor(image: Image.Image) -> Tensor:
    """PIL image → ``(3, H, W)`` float32 in [-1, 1] (official: ``x / 255 * 2 - 1``), contiguous."""
    return to_pixels(image).contiguous()


def load_training_image(
    path: PathLike,
    *,
    resolution: int = 512,
    unit: int = 32,
    min_side: int = 80,
    max_aspect: float = 10.0,
    exif_transpose: bool = True,
) -> Tensor:
    """Load, check, fix_pixels-resize and convert one training image; raises :class:`BadRowError`."""
    try:
        image = open_image(path, exif_transpose=exif_transpose, check_size=False)  # our limits follow
    except FileNotFoundError as e:
        raise BadRowError("missing_file", f"{path}: {e}") from e
    except InputImageError as e:  # its message names the file and what is wrong with it
        raise BadRowError("unreadable_image", str(e)) from e
    except Exception as e:  # PIL raises many kinds (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise BadRowError("unreadable_image", f"{path}: {type(e).__name__}: {e}") from e
    _raise_if_bad_size(path, image.width, image.height, min_side, max_aspect)
    return image_to_tensor(resize_fix_pixels(image, resolution, unit))


# How a complete file of a format ends.  Why an end check and not a full decode by default: decoding every
# image of a million-row data set before training costs hours, while reading the last bytes costs one seek;
# truncation (an interrupted download or copy) is the damage that a header check misses and the end check
# finds.  A file that fails the end check (or trailing bytes after the end marker, which some cameras and
# editors write) is decoded in full, so a good file is never skipped for its ending alone.
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _ends_complete(path: str, fmt: str | None) -> bool:
    """Whether the file ends as a complete ``fmt`` file must (False for formats without a cheap check)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(12)
            f.seek(max(0, size - 12))
            tail = f.read(12)
    except OSError:
        return False
    if fmt == "PNG":
        return tail.endswith(_PNG_END)
    if fmt in ("JPEG", "MPO"):
        return tail.endswith(b"\xff\xd9")
    if fmt == "GIF":
        return tail.endswith(b";")
    if fmt == "WEBP" and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return int.from_bytes(head[4:8], "little") + 8 <= size
    return False


def verify_image_file(path: str, verify: str, min_side: int, max_aspect: float) -> None:
    """The checks of a data scan at level ``verify`` (see ``VERIFY_LEVELS``); raises :class:`BadRowError`."""
    if verify == "none":
        return
    if not os.path.isfile(path):
        raise BadRowError("missing_file", path)
    if verify == "exists":
        return
    try:
        with Image.open(path) as im:
            width, height = im.size
            if verify == "full" or not _ends_complete(path, im.format):
                im.load()
    except Exception as e:
        raise BadRowError("unreadable_image", f"{path}: truncated or corrupt ({type(e).__name__}: {e})") from e
    _raise_if_bad_size(path, width, height, min_side, max_aspect)
