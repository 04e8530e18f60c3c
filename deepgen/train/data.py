"""Training data for DeepGen stages 1 and 2: datasets, fix_pixels resizing, the task pattern, caption drop.

Nothing here knows about the model; a sample is text plus pixel tensors in [-1, 1].

Sources (``load_datasets``)
===========================
A *source* is a file or a folder; every source feeds the task its rows belong to.

* JSON list (``.json``: one JSON array) or JSON lines (``.jsonl``: one object per line).  Each row's
  format is detected on its own, so one file may mix formats:

  ===================  ====================================================================  ==========
  format               row                                                                   task
  ===================  ====================================================================  ==========
  edit (official)      ``{"input_image": [relpath, ...], "output_image": relpath,             image2image
                       "instruction": text}`` (``input_image`` may also be a single string)
  SFT T2I (official)   ``{"txt": caption, "image_path": relpath}`` (other keys ignored)       text2image
  caption (official)   ``{"image": relpath, "annotation": relpath-to-json}``; the caption is  text2image
                       ``annotation_json[cap_source]`` (default ``"caption"``)
  inline caption       ``{"image": relpath, "caption": text}`` (key = ``cap_source``)          text2image
  ===================  ====================================================================  ==========

  Relative paths are resolved against ``root`` if given, else against the folder of the JSON file.
  The official edit loader uses only ``input_image[0]``; we use every reference (1..N) unless
  ``max_references`` is set (``max_references=1`` reproduces the official behaviour).

* A folder of images (``.png .jpg .jpeg .webp .bmp .gif .tif .tiff``), each with a same-named ``.txt``
  caption next to it (``cat.png`` + ``cat.txt``); sub-folders only with ``recursive=True``.  Rows are
  sorted by relative path so every process sees the same order.

Images
======
Every image (T2I image, edit reference, edit target) is converted to RGB (after applying its EXIF
orientation, ``exif_transpose=True``; the official code does not do that, which only matters for
photos that carry an orientation tag), rejected if a side is ≤ ``min_side`` (80) px or the aspect
ratio is ≤ 1/``max_aspect`` or ≥ ``max_aspect`` (10) — the official ``CaptionDataset`` checks; its edit
loader does not, we apply them to every image — then resized with the official ``fix_pixels`` rule
(:func:`fix_pixels_size`, PIL bicubic) and returned as a ``(3, H, W)`` float32 tensor in [-1, 1]
computed exactly as the official ``x / 255 * 2 - 1``.  Edit references and target are resized
independently (they may differ by one 32-pixel step, as in the official code).

Bad rows
========
Rows that cannot be used are skipped and counted by reason in a :class:`DataReport` (reasons:
``bad_json_row``, ``unknown_format``, ``missing_field``, ``missing_caption``, ``missing_file``,
``bad_annotation``, ``unreadable_caption``, ``unreadable_image``, ``too_small``, ``bad_aspect``,
``outside_root``).  How much is checked while loading the list is set by ``verify``: ``"none"`` (parse
rows only), ``"exists"`` (files exist, annotation JSONs read), ``"header"`` (default: also open every
image header — catches unreadable files, too small and extreme aspect ratios — and check that the file
ends as its format requires, which catches truncated files; a file whose ending cannot be checked
cheaply is decoded in full), ``"full"`` (decode every image).

Paths stay inside the data folder: a path in a JSON row (``image_path``, ``image``, ``annotation``,
``input_image``, ``output_image``) that is absolute, climbs out with ``..``, or leads through a symlink
to a place outside the base folder (``root``, else the JSON file's folder) makes the row bad
(``outside_root``) and is never opened; in an image folder, images and captions that are symlinks to
files outside the folder are skipped the same way.  A row that only
fails when its pixels are decoded during training is reported on the returned :class:`MicroBatch`
(``failures``) and replaced by the next good row of the same dataset — deterministic, so an exact
resume stays exact.  No usable row at all raises :class:`EmptyDatasetError` naming the sources and the
counts; a folder whose images have no captions at all raises one explaining the ``.txt`` convention.

Task pattern, sharding and resume
=================================
As in the official trainer every micro-batch holds a single task, and micro-batches follow a repeat
pattern: ``TaskPattern({"image2image": 1, "text2image": 3})`` yields edit, t2i, t2i, t2i, edit, …
(stage 1; stage 2 uses 1:2).  With gradient accumulation equal to the cycle length (4 and 3 in the
official configs) each optimizer update sees exactly one cycle.

For every task there is one *global stream* of row indices: an endless sequence of seeded random
permutations of the dataset (epoch ``e`` is ``randperm(n)`` seeded from ``(seed, task, e)``).  A
*global micro-batch* is the next ``micro_batch_size * world_size`` stream elements; rank ``r`` takes
the elements ``r, r + world_size, r + 2 * world_size, …`` of it (the official strided split).  So with
2 processes and micro batch B the union of the two ranks' micro-batches at each micro-step is exactly
the 1-process micro-batch of size 2B, and the global batch of one optimizer update is
``micro_batch_size * world_size * grad_accumulation`` samples.  All ranks advance through the pattern
in lockstep, so at any micro-step every rank works on the same task.

The position (``TaskBatchSampler.state_dict()`` / ``MicroBatchLoader.state_dict()``) is a small
JSON-able dict ``{micro_step, consumed: {task: stream elements used}, ...}``; it is the same on every
rank and global (it counts stream elements), so it can be saved by the main process only and even
resumed with a different number of processes.  ``MicroBatchLoader`` attaches the position *after* each
batch to the batch itself, so DataLoader prefetching does not make the saved position run ahead.

Caption dropout
===============
T2I captions are replaced by ``''`` with probability ``caption_dropout`` (0.1); edit instructions are
never dropped.  The decision for each sample is drawn from a generator seeded by
``(seed, task, stream position)``, so it is reproducible, resumable and identical however the global
batch is split across processes.  :func:`apply_caption_dropout` is the primitive.

With accelerate: build the loader with ``rank=accelerator.process_index`` and
``world_size=accelerator.num_processes`` and do **not** pass it to ``accelerator.prepare`` (that would
shard it a second time).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ..errors import ConfigError, DataError
from ..sizes import fix_pixels_size  # the one size rule, shared with inference

__all__ = [
    "TEXT2IMAGE",
    "IMAGE2IMAGE",
    "TASKS",
    "IMAGE_EXTENSIONS",
    "VERIFY_LEVELS",
    "fix_pixels_size",
    "check_image_size",
    "resize_fix_pixels",
    "image_to_tensor",
    "load_image_rgb",
    "load_training_image",
    "TextToImageSample",
    "EditSample",
    "T2IRow",
    "EditRow",
    "DataReport",
    "BadRowError",
    "EmptyDatasetError",
    "DataSourceNotFoundError",
    "TextToImageDataset",
    "EditDataset",
    "TaskDatasets",
    "read_json_rows",
    "scan_json_source",
    "scan_image_folder",
    "load_datasets",
    "TaskPattern",
    "BatchPlan",
    "TaskBatchSampler",
    "MicroBatch",
    "MicroBatchLoader",
    "apply_caption_dropout",
    "derive_seed",
    "write_synthetic_dataset",
]

TEXT2IMAGE = "text2image"
IMAGE2IMAGE = "image2image"
TASKS = (TEXT2IMAGE, IMAGE2IMAGE)
_TASK_ALIASES = {"t2i": TEXT2IMAGE, "text2image": TEXT2IMAGE, "edit": IMAGE2IMAGE, "i2i": IMAGE2IMAGE,
                 "image2image": IMAGE2IMAGE}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VERIFY_LEVELS = ("none", "exists", "header", "full")

PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------------------------------
# sizes and pixels


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


def load_image_rgb(path: PathLike, *, exif_transpose: bool = True) -> Image.Image:
    """Open and fully decode an image as RGB (EXIF orientation applied unless ``exif_transpose=False``)."""
    with Image.open(path) as im:
        im.load()
        if exif_transpose:
            im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def resize_fix_pixels(image: Image.Image, target: int = 512, unit: int = 32) -> Image.Image:
    """Resize a PIL image to :func:`fix_pixels_size` with bicubic filtering (PIL's default, as official)."""
    h, w = fix_pixels_size(image.height, image.width, target, unit)
    if (h, w) == (image.height, image.width):
        return image
    return image.resize((w, h), resample=Image.BICUBIC)


def image_to_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image → ``(3, H, W)`` float32 in [-1, 1] (official: ``x / 255 * 2 - 1``)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).float() / 255
    x = 2 * x - 1
    return x.permute(2, 0, 1).contiguous()


def load_training_image(path: PathLike, *, resolution: int = 512, unit: int = 32, min_side: int = 80,
                        max_aspect: float = 10.0, exif_transpose: bool = True) -> Tensor:
    """Load, check, fix_pixels-resize and convert one training image; raises :class:`BadRowError`."""
    try:
        image = load_image_rgb(path, exif_transpose=exif_transpose)
    except FileNotFoundError as e:
        raise BadRowError("missing_file", f"{path}: {e}") from e
    except Exception as e:  # PIL raises many kinds (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise BadRowError("unreadable_image", f"{path}: {type(e).__name__}: {e}") from e
    reason = check_image_size(image.width, image.height, min_side=min_side, max_aspect=max_aspect)
    if reason is not None:
        raise BadRowError(reason, f"{path}: {image.width}x{image.height} (WxH)")
    return image_to_tensor(resize_fix_pixels(image, resolution, unit))


# ----------------------------------------------------------------------------------------------------
# samples, rows, report


@dataclass
class TextToImageSample:
    """One T2I sample: ``image`` is ``(3, H, W)`` float32 in [-1, 1]."""

    caption: str
    image: Tensor
    source: str = ""  # where the row came from (for logs)
    task: ClassVar[str] = TEXT2IMAGE


@dataclass
class EditSample:
    """One edit sample: 1..N ``references`` and a ``target``, each ``(3, H, W)`` float32 in [-1, 1]."""

    instruction: str
    references: list[Tensor]
    target: Tensor
    source: str = ""
    task: ClassVar[str] = IMAGE2IMAGE


@dataclass(frozen=True)
class T2IRow:
    """A parsed T2I row: absolute image path plus either the caption or the annotation JSON to read it from."""

    image: str
    caption: str | None = None
    annotation: str | None = None
    cap_source: str = "caption"
    where: str = ""


@dataclass(frozen=True)
class EditRow:
    """A parsed edit row with absolute paths."""

    references: tuple[str, ...]
    target: str
    instruction: str
    where: str = ""


class BadRowError(Exception):
    """A row that cannot be used; ``reason`` is one of the DataReport reasons."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class EmptyDatasetError(DataError):
    """No usable training data (message names the sources and the bad-row counts)."""


class DataSourceNotFoundError(DataError, FileNotFoundError):
    """A data source (``data`` entry) that does not exist."""


def _clean(text: str) -> str:
    """One line of a report (paths or errors that carry a newline would break the one-line messages)."""
    return " ".join(str(text).split())


@dataclass
class DataReport:
    """Counts of skipped rows by reason, with the first ``max_examples`` examples ``(reason, where, detail)``."""

    counts: Counter = field(default_factory=Counter)
    examples: list[tuple[str, str, str]] = field(default_factory=list)
    rows_seen: int = 0
    good: Counter = field(default_factory=Counter)  # task -> usable rows
    max_examples: int = 10

    def add(self, reason: str, where: str, detail: str = "") -> None:
        self.counts[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append((reason, _clean(where), _clean(detail)))

    def merge(self, other: DataReport) -> None:
        self.counts.update(other.counts)
        self.good.update(other.good)
        self.rows_seen += other.rows_seen
        for ex in other.examples:
            if len(self.examples) >= self.max_examples:
                break
            self.examples.append(ex)

    @property
    def bad(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        good = ", ".join(f"{t}: {n}" for t, n in sorted(self.good.items())) or "none"
        lines = [f"{self.rows_seen} rows read; usable {good}; skipped {self.bad}"]
        if self.counts:
            lines.append("skipped by reason: " + ", ".join(f"{r}: {n}" for r, n in self.counts.most_common()))
        for reason, where, detail in self.examples:
            lines.append(f"  - {reason} at {where}" + (f": {detail}" if detail else ""))
        return "\n".join(lines)

    __str__ = summary

    def brief(self, limit: int = 3) -> str:
        """The report on one line: rows read, usable, skipped by reason and the first ``limit`` bad rows."""
        good = ", ".join(f"{t}: {n}" for t, n in sorted(self.good.items()) if n) or "none"
        text = f"{self.rows_seen} row{'s' if self.rows_seen != 1 else ''} read, usable {good}, skipped {self.bad}"
        if self.counts:
            text += " (" + ", ".join(f"{r}: {n}" for r, n in self.counts.most_common()) + ")"
        if self.examples:
            shown = [f"{where} [{reason}" + (f": {detail}]" if detail else "]")
                     for reason, where, detail in self.examples[:limit]]
            more = self.bad - len(shown)
            text += "; first: " + "; ".join(shown) + (f"; … and {more} more" if more > 0 else "")
        return text


# ----------------------------------------------------------------------------------------------------
# scanning sources


def _inside(path: str, base: str) -> bool:
    try:
        return os.path.commonpath([path, base]) == base
    except ValueError:  # different drives, or absolute vs relative
        return False


def _resolve(base: Path, rel: str, key: str = "path") -> str:
    """``base / rel``, or :class:`BadRowError` ``outside_root`` if ``rel`` is absolute, climbs out of ``base``
    with ``..`` or leads through a symlink to a place outside ``base`` (nothing outside is ever opened)."""
    from pathlib import PureWindowsPath

    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or PureWindowsPath(rel).drive:
        raise BadRowError("outside_root", f"{key} {rel!r} is an absolute path; give it relative to {base}")
    candidate = base / rel
    if not _inside(os.path.normpath(os.path.abspath(candidate)), os.path.normpath(os.path.abspath(base))):
        raise BadRowError("outside_root", f"{key} {rel!r} leads out of {base} (..)")
    if not _inside(os.path.realpath(candidate), os.path.realpath(base)):
        raise BadRowError("outside_root", f"{key} {rel!r} is a symlink to {os.path.realpath(candidate)}, "
                                          f"outside {base}")
    return str(candidate)


def _read_utf8(path: Path, what: str) -> str:
    """A text file's content; a file that is not UTF-8 raises :class:`DataError` naming it and the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{what} {path} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
                        "save it as UTF-8") from None


def read_json_rows(path: PathLike) -> list[tuple[str, Any]]:
    """Rows of a ``.json`` list or ``.jsonl`` file as ``(where, row)``; a broken JSONL line gives ``row=_BAD``.

    A file that is not UTF-8, a ``.json`` file that is not valid JSON, or not a list, raises :class:`DataError`
    naming the file.
    """
    path = Path(path)
    text = _read_utf8(path, "data list")
    if path.suffix.lower() == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                rows.append((f"{path}:{lineno}", _BadJson(str(e))))
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); use a JSON list, or .jsonl with one object per "
                        "line") from None
    if not isinstance(data, list):
        raise DataError(f"{path} must hold a JSON list of rows, found {type(data).__name__}")
    return [(f"{path}[{i}]", row) for i, row in enumerate(data)]


class _BadJson(str):
    pass


def _nonempty_str(x: Any) -> bool:
    return isinstance(x, str) and x.strip() != ""


def _read_caption_annotation(path: str, cap_source: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            ann = json.load(f)
    except FileNotFoundError as e:
        raise BadRowError("missing_file", f"annotation {path} not found") from e
    except UnicodeDecodeError as e:
        raise BadRowError("bad_annotation", f"{path} is not UTF-8 text; save it as UTF-8") from e
    except (OSError, ValueError) as e:
        raise BadRowError("bad_annotation", f"{path}: {e}") from e
    if not isinstance(ann, dict):
        raise BadRowError("bad_annotation", f"{path}: expected a JSON object")
    cap = ann.get(cap_source)
    if not _nonempty_str(cap):
        raise BadRowError("missing_caption", f"{path} has no non-empty {cap_source!r}")
    return cap.strip()


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


def _check_image_file(path: str, verify: str, min_side: int, max_aspect: float) -> None:
    """Raise BadRowError if the image fails the checks of ``verify`` level."""
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
    reason = check_image_size(width, height, min_side=min_side, max_aspect=max_aspect)
    if reason is not None:
        raise BadRowError(reason, f"{path}: {width}x{height} (WxH)")


def _parse_row(row: Any, base: Path, cap_source: str, max_references: int | None) -> T2IRow | EditRow:
    """Detect the row format; raise BadRowError for unusable rows (no file checks here)."""
    if isinstance(row, _BadJson):
        raise BadRowError("bad_json_row", str(row))
    if not isinstance(row, dict):
        raise BadRowError("bad_json_row", f"row is a {type(row).__name__}, not an object")
    if "input_image" in row or "output_image" in row:
        refs = row.get("input_image")
        if isinstance(refs, str):
            refs = [refs]
        if not isinstance(refs, list) or not refs or not all(_nonempty_str(r) for r in refs):
            raise BadRowError("missing_field", "edit row needs 'input_image': a non-empty list of paths")
        if not _nonempty_str(row.get("output_image")):
            raise BadRowError("missing_field", "edit row needs 'output_image'")
        if not _nonempty_str(row.get("instruction")):
            raise BadRowError("missing_caption", "edit row needs a non-empty 'instruction'")
        if max_references is not None:
            refs = refs[:max_references]
        return EditRow(tuple(_resolve(base, r, "input_image") for r in refs),
                       _resolve(base, row["output_image"], "output_image"),
                       row["instruction"].strip())
    if "image_path" in row or "txt" in row:
        if not _nonempty_str(row.get("image_path")):
            raise BadRowError("missing_field", "SFT row needs 'image_path'")
        if not _nonempty_str(row.get("txt")):
            raise BadRowError("missing_caption", "SFT row needs a non-empty 'txt'")
        return T2IRow(_resolve(base, row["image_path"], "image_path"), caption=row["txt"].strip())
    if "image" in row:
        if not _nonempty_str(row.get("image")):
            raise BadRowError("missing_field", "row needs 'image'")
        image = _resolve(base, row["image"], "image")
        if "annotation" in row:
            if not _nonempty_str(row.get("annotation")):
                raise BadRowError("missing_field", "caption row needs 'annotation'")
            return T2IRow(image, annotation=_resolve(base, row["annotation"], "annotation"), cap_source=cap_source)
        if cap_source in row:
            if not _nonempty_str(row.get(cap_source)):
                raise BadRowError("missing_caption", f"row has an empty {cap_source!r}")
            return T2IRow(image, caption=row[cap_source].strip())
        raise BadRowError("missing_caption", f"row with 'image' needs 'annotation' or {cap_source!r}")
    raise BadRowError("unknown_format", f"keys {sorted(row)[:8]}; expected an edit, SFT T2I or caption row")


def _verify_row(row: T2IRow | EditRow, verify: str, min_side: int, max_aspect: float) -> T2IRow | EditRow:
    if isinstance(row, EditRow):
        for p in (*row.references, row.target):
            _check_image_file(p, verify, min_side, max_aspect)
        return row
    if row.caption is None and verify != "none":
        row = dataclasses.replace(row, caption=_read_caption_annotation(row.annotation, row.cap_source),
                                  annotation=None)
    _check_image_file(row.image, verify, min_side, max_aspect)
    return row


def scan_json_source(path: PathLike, *, root: PathLike | None = None, cap_source: str = "caption",
                     max_references: int | None = None, verify: str = "header", min_side: int = 80,
                     max_aspect: float = 10.0, report: DataReport | None = None
                     ) -> tuple[list[T2IRow], list[EditRow], DataReport]:
    """Parse (and check, per ``verify``) one JSON/JSONL list: ``(t2i_rows, edit_rows, report)``."""
    _check_verify(verify)
    if max_references is not None and max_references < 1:
        raise ValueError(f"max_references must be ≥ 1 or None, got {max_references}")
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    report = report if report is not None else DataReport()
    t2i: list[T2IRow] = []
    edit: list[EditRow] = []
    for where, raw in read_json_rows(path):
        report.rows_seen += 1
        try:
            row = _parse_row(raw, base, cap_source, max_references)
            row = _verify_row(dataclasses.replace(row, where=where), verify, min_side, max_aspect)
        except BadRowError as e:
            report.add(e.reason, where, e.detail)
            continue
        if isinstance(row, EditRow):
            edit.append(row)
            report.good[IMAGE2IMAGE] += 1
        else:
            t2i.append(row)
            report.good[TEXT2IMAGE] += 1
    return t2i, edit, report


def scan_image_folder(folder: PathLike, *, recursive: bool = False, verify: str = "header", min_side: int = 80,
                      max_aspect: float = 10.0, report: DataReport | None = None
                      ) -> tuple[list[T2IRow], DataReport]:
    """Images with same-named ``.txt`` captions in ``folder`` → ``(t2i_rows, report)``.

    Raises :class:`EmptyDatasetError` if the folder has no images, or has images but not one caption.
    """
    _check_verify(verify)
    folder = Path(folder)
    report = report if report is not None else DataReport()
    pattern = "**/*" if recursive else "*"
    images = sorted(
        (p for p in folder.glob(pattern)
         if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
         and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not images:
        hint = ""
        if not recursive and any(p.is_dir() for p in folder.iterdir()):
            hint = " It has sub-folders: set recursive = true to include them."
        raise EmptyDatasetError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}.{hint}")
    rows: list[T2IRow] = []
    n_captions = 0
    real_folder = os.path.realpath(folder)
    for img in images:
        report.rows_seen += 1
        where = str(img)
        txt = img.with_suffix(".txt")
        try:
            if not txt.is_file():
                raise BadRowError("missing_caption", f"no {txt.name} next to {img.name}")
            n_captions += 1
            for p in (img, txt):  # a symlink (or a symlinked sub-folder) to a file elsewhere is never read
                if not _inside(os.path.realpath(p), real_folder):
                    raise BadRowError("outside_root", f"{p.name} is a symlink to {os.path.realpath(p)}, outside "
                                                      f"{folder}")
            try:
                caption = _read_utf8(txt, "caption").strip()
            except DataError as e:
                raise BadRowError("unreadable_caption", str(e)) from None
            except OSError as e:
                raise BadRowError("unreadable_caption", f"cannot read {txt}: {e.strerror or e}") from e
            if not caption:
                raise BadRowError("missing_caption", f"{txt.name} is empty")
            _check_image_file(str(img), verify, min_side, max_aspect)
        except BadRowError as e:
            report.add(e.reason, where, e.detail)
            continue
        rows.append(T2IRow(str(img), caption=caption, where=where))
        report.good[TEXT2IMAGE] += 1
    if n_captions == 0:
        raise EmptyDatasetError(
            f"{folder} has {len(images)} image(s) but no captions: each image needs a same-named .txt "
            f"caption file next to it (e.g. {images[0].name} + {images[0].with_suffix('.txt').name})."
        )
    return rows, report


def _check_verify(verify: str) -> None:
    if verify not in VERIFY_LEVELS:
        raise ConfigError(f"data_verify must be one of {', '.join(VERIFY_LEVELS)}, got {verify!r}")


# ----------------------------------------------------------------------------------------------------
# datasets


class _ImageRowsDataset(torch.utils.data.Dataset):
    task: ClassVar[str] = ""

    def __init__(self, rows: Sequence, *, resolution: int = 512, unit: int = 32, min_side: int = 80,
                 max_aspect: float = 10.0, exif_transpose: bool = True):
        if resolution < unit or resolution % unit:
            raise ValueError(f"resolution must be a positive multiple of {unit}, got {resolution}")
        self.rows = list(rows)
        self.resolution = resolution
        self.unit = unit
        self.min_side = min_side
        self.max_aspect = max_aspect
        self.exif_transpose = exif_transpose
        self._bad: set[int] = set()  # rows found bad at load time (per process)

    def __len__(self) -> int:
        return len(self.rows)

    def _image(self, path: str) -> Tensor:
        return load_training_image(path, resolution=self.resolution, unit=self.unit, min_side=self.min_side,
                                   max_aspect=self.max_aspect, exif_transpose=self.exif_transpose)

    def load(self, index: int):
        """Load row ``index``; raises :class:`BadRowError` (no fallback)."""
        raise NotImplementedError

    def get_with_fallback(self, index: int) -> tuple[Any, list[tuple[str, str, str]]]:
        """Load row ``index``, or the next good row (index+1, …, wrapping) if it fails.

        Returns ``(sample, failures)`` with ``failures`` as ``(reason, where, detail)`` for the rows that
        failed now.  Deterministic given the files, so resume stays exact.
        """
        n = len(self.rows)
        if n == 0:
            raise IndexError("empty dataset")
        failures = []
        for k in range(n):
            i = (index + k) % n
            if i in self._bad:
                continue
            try:
                return self.load(i), failures
            except BadRowError as e:
                self._bad.add(i)
                failures.append((e.reason, self.rows[i].where or str(i), e.detail))
        first = "; ".join(f"{where} [{reason}: {_clean(detail)}]" for reason, where, detail in failures[:3])
        raise EmptyDatasetError(f"every row of this {self.task} data set failed to load ({len(failures)} rows); "
                                f"first: {first}; fix or remove these files")

    def __getitem__(self, index: int):
        return self.get_with_fallback(index)[0]


class TextToImageDataset(_ImageRowsDataset):
    """Map-style dataset of :class:`T2IRow` → :class:`TextToImageSample` (fix_pixels resized)."""

    task: ClassVar[str] = TEXT2IMAGE

    def load(self, index: int) -> TextToImageSample:
        row: T2IRow = self.rows[index]
        caption = row.caption
        if caption is None:
            caption = _read_caption_annotation(row.annotation, row.cap_source)
        return TextToImageSample(caption=caption, image=self._image(row.image), source=row.where)


class EditDataset(_ImageRowsDataset):
    """Map-style dataset of :class:`EditRow` → :class:`EditSample` (each image fix_pixels resized on its own)."""

    task: ClassVar[str] = IMAGE2IMAGE

    def load(self, index: int) -> EditSample:
        row: EditRow = self.rows[index]
        refs = [self._image(p) for p in row.references]
        return EditSample(instruction=row.instruction, references=refs, target=self._image(row.target),
                          source=row.where)


@dataclass
class TaskDatasets:
    """The datasets of both tasks (either may be empty) and the scan report."""

    text2image: TextToImageDataset
    image2image: EditDataset
    report: DataReport
    sources: list[str] = field(default_factory=list)

    def __getitem__(self, task: str) -> _ImageRowsDataset:
        return {TEXT2IMAGE: self.text2image, IMAGE2IMAGE: self.image2image}[_canonical_task(task)]

    def sizes(self) -> dict[str, int]:
        return {TEXT2IMAGE: len(self.text2image), IMAGE2IMAGE: len(self.image2image)}


def load_datasets(sources: PathLike | Sequence[PathLike], *, root: PathLike | None = None,
                  cap_source: str = "caption", recursive: bool = False, resolution: int = 512, unit: int = 32,
                  max_references: int | None = None, verify: str = "header", min_side: int = 80,
                  max_aspect: float = 10.0, exif_transpose: bool = True, max_examples: int = 10) -> TaskDatasets:
    """Scan every source (JSON/JSONL list or image folder) and build both task datasets.

    Rows keep the order of ``sources`` then file order.  Raises :class:`DataSourceNotFoundError` (a
    ``FileNotFoundError``) for a missing source, :class:`DataError` for a list that is not UTF-8 or not valid
    JSON, :class:`EmptyDatasetError` if no row at all is usable (one line: sources, skipped counts by reason
    and the first bad rows).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    sources = [Path(s) for s in sources]
    if not sources:
        raise EmptyDatasetError("No data sources given (config key 'data').")
    report = DataReport(max_examples=max_examples)
    t2i: list[T2IRow] = []
    edit: list[EditRow] = []
    for src in sources:
        if not src.exists():
            raise DataSourceNotFoundError(f"Data source {src} does not exist; check the 'data' setting")
        if src.is_dir():
            rows, _ = scan_image_folder(src, recursive=recursive, verify=verify, min_side=min_side,
                                        max_aspect=max_aspect, report=report)
            t2i += rows
        elif src.suffix.lower() in (".json", ".jsonl"):
            a, b, _ = scan_json_source(src, root=root, cap_source=cap_source, max_references=max_references,
                                       verify=verify, min_side=min_side, max_aspect=max_aspect, report=report)
            t2i += a
            edit += b
        else:
            raise DataError(f"Data source {src}: expected a folder, a .json list or a .jsonl file")
    if not t2i and not edit:
        raise EmptyDatasetError(
            f"No usable training rows in {', '.join(map(str, sources))}: {report.brief()}; fix or remove the "
            "bad rows (data_verify = 'none' skips the checks, but the rows then fail during training)")
    kw = dict(resolution=resolution, unit=unit, min_side=min_side, max_aspect=max_aspect,
              exif_transpose=exif_transpose)
    return TaskDatasets(TextToImageDataset(t2i, **kw), EditDataset(edit, **kw), report, [str(s) for s in sources])


# ----------------------------------------------------------------------------------------------------
# task pattern and sampler


def _canonical_task(task: str) -> str:
    try:
        return _TASK_ALIASES[task.strip().lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"Unknown task {task!r}; use 'text2image' (t2i) or 'image2image' (edit)") from None


class TaskPattern:
    """How many consecutive micro-batches of each task make one cycle, in order.

    ``TaskPattern({"image2image": 1, "text2image": 3})`` → cycle ``[image2image, text2image×3]``.
    Aliases ``edit``/``i2i`` and ``t2i`` are accepted; ``TaskPattern.parse("edit:1,t2i:3")`` too.
    """

    def __init__(self, repeats: Mapping[str, int]):
        parsed: dict[str, int] = {}
        for task, n in dict(repeats).items():
            t = _canonical_task(task)
            if t in parsed:
                raise ValueError(f"task {t!r} given twice in the task pattern")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"task pattern repeat for {t!r} must be an integer ≥ 0, got {n!r}")
            parsed[t] = n
        if sum(parsed.values()) < 1:
            raise ValueError(f"task pattern needs at least one repeat ≥ 1, got {dict(repeats)}")
        self.repeats = parsed

    @classmethod
    def parse(cls, spec: str | Mapping[str, int] | TaskPattern) -> TaskPattern:
        if isinstance(spec, TaskPattern):
            return spec
        if isinstance(spec, Mapping):
            return cls(spec)
        out = {}
        for part in str(spec).split(","):
            if not part.strip():
                continue
            name, sep, n = part.partition(":")
            if not sep:
                raise ValueError(f"task pattern {spec!r}: expected 'task:count, ...' like 'edit:1,t2i:3'")
            try:
                out[name.strip()] = int(n)
            except ValueError:
                raise ValueError(f"task pattern {spec!r}: {n.strip()!r} is not an integer") from None
        return cls(out)

    def cycle(self) -> list[str]:
        return [t for t, n in self.repeats.items() for _ in range(n)]

    def to_dict(self) -> dict[str, int]:
        return dict(self.repeats)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskPattern) and list(self.repeats.items()) == list(other.repeats.items())

    def __repr__(self) -> str:
        return f"TaskPattern({self.repeats})"


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived from ``parts`` (stable across processes and Python runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class BatchPlan:
    """One rank's micro-batch: row ``indices`` of ``task``'s dataset at global ``stream_positions``.

    ``position`` is the sampler state *after* this micro-batch (what to save to resume after it).
    """

    task: str
    micro_step: int
    indices: list[int]
    stream_positions: list[int]
    position: dict


class TaskBatchSampler:
    """Endless, seeded, resumable, shardable single-task micro-batch sampler (see the module doc).

    ``dataset_sizes``: ``{task: number of rows}``.  Tasks of the pattern with no rows are skipped with a
    warning.  Iterate it (it is its own iterator) to get :class:`BatchPlan` objects.
    """

    STATE_VERSION = 1

    def __init__(self, dataset_sizes: Mapping[str, int], pattern: TaskPattern | Mapping[str, int] | str,
                 batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"micro batch size must be an integer ≥ 1, got {batch_size!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 ≤ rank < world_size, got rank={rank}, world_size={world_size}")
        self.pattern = TaskPattern.parse(pattern)
        self.sizes = {_canonical_task(t): int(n) for t, n in dataset_sizes.items()}
        skipped = [t for t, n in self.pattern.repeats.items() if n > 0 and self.sizes.get(t, 0) == 0]
        for t in skipped:
            warnings.warn(f"task pattern: no {t} data, so {t} micro-batches are skipped", stacklevel=2)
        self.cycle = [t for t in self.pattern.cycle() if self.sizes.get(t, 0) > 0]
        if not self.cycle:
            raise EmptyDatasetError(f"task pattern {self.pattern.to_dict()} has no task with data "
                                    f"(dataset sizes {self.sizes})")
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.micro_step = 0
        self.consumed = {t: 0 for t in self.pattern.repeats}
        self._perm: dict[str, tuple[int, Tensor]] = {}

    @property
    def global_batch_size(self) -> int:
        """Samples per micro-step over all ranks (``batch_size * world_size``)."""
        return self.batch_size * self.world_size

    def _row(self, task: str, stream_pos: int) -> int:
        n = self.sizes[task]
        epoch, offset = divmod(stream_pos, n)
        if not self.shuffle:
            return offset
        cached = self._perm.get(task)
        if cached is None or cached[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "perm", task, epoch))
            cached = (epoch, torch.randperm(n, generator=g))
            self._perm[task] = cached
        return int(cached[1][offset])

    def task_at(self, micro_step: int) -> str:
        return self.cycle[micro_step % len(self.cycle)]

    def __iter__(self) -> TaskBatchSampler:
        return self

    def __next__(self) -> BatchPlan:
        task = self.task_at(self.micro_step)
        start = self.consumed[task]
        positions = [start + self.rank + j * self.world_size for j in range(self.batch_size)]
        indices = [self._row(task, p) for p in positions]
        step = self.micro_step
        self.consumed[task] = start + self.global_batch_size
        self.micro_step += 1
        return BatchPlan(task, step, indices, positions, self.state_dict())

    def state_dict(self) -> dict:
        """JSON-able position (identical on every rank)."""
        return {
            "version": self.STATE_VERSION,
            "micro_step": self.micro_step,
            "consumed": dict(self.consumed),
            "seed": self.seed,
            "pattern": self.pattern.to_dict(),
            "dataset_sizes": dict(self.sizes),
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: Mapping, *, strict: bool = True) -> None:
        """Restore a position.  ``strict`` (default) refuses a different seed, pattern or dataset sizes,
        since the sample order would then not continue the saved run; ``strict=False`` warns instead."""
        mismatches = []
        for key, mine in (("seed", self.seed), ("pattern", self.pattern.to_dict()),
                          ("dataset_sizes", self.sizes), ("shuffle", self.shuffle)):
            if key in state and state[key] != mine:
                mismatches.append(f"{key}: saved {state[key]!r}, now {mine!r}")
        if mismatches:
            msg = ("data position does not match this run, so the sample order will not continue exactly ("
                   + "; ".join(mismatches) + ")")
            if strict:
                raise DataError(msg + "; resume with the same data and settings, or start a new run (another "
                                "output_dir, or resume = 'no')")
            warnings.warn(msg, stacklevel=2)
        self.micro_step = int(state["micro_step"])
        consumed = {_canonical_task(t): int(n) for t, n in state["consumed"].items()}
        self.consumed = {t: consumed.get(t, 0) for t in self.pattern.repeats}


# ----------------------------------------------------------------------------------------------------
# caption dropout and the micro-batch loader


def apply_caption_dropout(captions: Sequence[str], p: float, generator: torch.Generator | None = None) -> list[str]:
    """Replace each caption by ``''`` with probability ``p`` (one ``torch.rand`` draw per caption)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"caption dropout must be in [0, 1], got {p}")
    captions = list(captions)
    if p == 0.0 or not captions:
        return captions
    u = torch.rand(len(captions), generator=generator)
    return ["" if float(x) < p else c for c, x in zip(captions, u)]


class _SampleKey(NamedTuple):
    task: str
    index: int
    stream_pos: int
    micro_step: int
    position: dict


@dataclass
class MicroBatch:
    """A single-task micro-batch of variable-size samples.

    ``position`` is the loader state after this batch: save it with a checkpoint taken after training on
    this batch.  ``failures`` lists ``(reason, where, detail)`` of rows that failed to decode and were
    replaced (already merged into the loader's report).
    """

    task: str
    samples: list
    indices: list[int]
    micro_step: int
    position: dict
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def texts(self) -> list[str]:
        """Captions (after dropout) for T2I, instructions for edits."""
        return [s.caption if self.task == TEXT2IMAGE else s.instruction for s in self.samples]

    @property
    def targets(self) -> list[Tensor]:
        """The images to generate: T2I images or edit targets, each ``(3, H, W)``."""
        return [s.image if self.task == TEXT2IMAGE else s.target for s in self.samples]

    @property
    def references(self) -> list[list[Tensor]]:
        """Per sample, its reference images (empty lists for T2I)."""
        return [list(s.references) if self.task == IMAGE2IMAGE else [] for s in self.samples]


class _Router(torch.utils.data.Dataset):
    def __init__(self, datasets: Mapping[str, _ImageRowsDataset], caption_dropout: float, seed: int):
        self.datasets = dict(datasets)
        self.caption_dropout = caption_dropout
        self.seed = seed

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets.values())

    def __getitem__(self, key: _SampleKey):
        sample, failures = self.datasets[key.task].get_with_fallback(key.index)
        if key.task == TEXT2IMAGE and self.caption_dropout > 0:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "caption_dropout", key.task, key.stream_pos))
            caption = apply_caption_dropout([sample.caption], self.caption_dropout, g)[0]
            if caption != sample.caption:
                sample = dataclasses.replace(sample, caption=caption)
        return key, sample, failures


def _collate(items: list) -> MicroBatch:
    keys = [k for k, _, _ in items]
    return MicroBatch(task=keys[0].task, samples=[s for _, s, _ in items], indices=[k.index for k in keys],
                      micro_step=keys[0].micro_step, position=keys[0].position,
                      failures=[f for _, _, fs in items for f in fs])


class _KeyBatches:
    """batch_sampler for DataLoader: lists of _SampleKey from a TaskBatchSampler (endless)."""

    def __init__(self, sampler: TaskBatchSampler):
        self.sampler = sampler

    def __iter__(self):
        while True:
            plan = next(self.sampler)
            yield [_SampleKey(plan.task, i, p, plan.micro_step, plan.position)
                   for i, p in zip(plan.indices, plan.stream_positions)]


class MicroBatchLoader:
    """Endless iterator of :class:`MicroBatch` following the task pattern (see the module doc).

    Wraps a :class:`TaskBatchSampler` and a ``torch.utils.data.DataLoader`` (``num_workers`` processes
    decode images).  ``state_dict()`` is the position after the last batch *returned*, even with
    prefetching; ``load_state_dict()`` then restarts iteration exactly there.
    """

    def __init__(self, datasets: TaskDatasets | Mapping[str, _ImageRowsDataset],
                 pattern: TaskPattern | Mapping[str, int] | str, micro_batch_size: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, caption_dropout: float = 0.1, num_workers: int = 0,
                 shuffle: bool = True, prefetch_factor: int | None = None, report: DataReport | None = None):
        if isinstance(datasets, TaskDatasets):
            report = report if report is not None else datasets.report
            datasets = {TEXT2IMAGE: datasets.text2image, IMAGE2IMAGE: datasets.image2image}
        datasets = {_canonical_task(t): d for t, d in datasets.items()}
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption dropout must be in [0, 1], got {caption_dropout}")
        self.sampler = TaskBatchSampler({t: len(d) for t, d in datasets.items()}, pattern, micro_batch_size,
                                        seed=seed, rank=rank, world_size=world_size, shuffle=shuffle)
        self.router = _Router(datasets, caption_dropout, self.sampler.seed)
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.report = report if report is not None else DataReport()
        self._position = self.sampler.state_dict()

    def __iter__(self) -> Iterator[MicroBatch]:
        self.sampler.load_state_dict(self._position)
        kw = {}
        if self.num_workers > 0 and self.prefetch_factor is not None:
            kw["prefetch_factor"] = self.prefetch_factor
        loader = torch.utils.data.DataLoader(self.router, batch_sampler=_KeyBatches(self.sampler),
                                             collate_fn=_collate, num_workers=self.num_workers, **kw)
        for batch in loader:
            for reason, where, detail in batch.failures:
                self.report.add(reason, where, detail)
            self._position = copy.deepcopy(batch.position)
            yield batch

    def state_dict(self) -> dict:
        return copy.deepcopy(self._position)

    def load_state_dict(self, state: Mapping, *, strict: bool = True) -> None:
        self.sampler.load_state_dict(state, strict=strict)  # validates
        self._position = self.sampler.state_dict()


# ----------------------------------------------------------------------------------------------------
# synthetic data (tests, the tiny config)


def write_synthetic_dataset(root: PathLike, *, n_text2image: int = 8, n_edit: int = 4,
                            sizes: Iterable[tuple[int, int]] = ((96, 128), (128, 96), (112, 112)),
                            seed: int = 0) -> Path:
    """Write a small random dataset under ``root``; returns the path of its ``data.jsonl``.

    T2I rows use the SFT format, edit rows the official edit format; images are PNGs (H, W from
    ``sizes``, cycled) with a coloured square whose colour/position the captions describe.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = list(sizes)
    colours = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
    names = list(colours)

    def make(path: Path, h: int, w: int, colour: str) -> None:
        arr = (rng.random((h, w, 3)) * 60 + 100).astype(np.uint8)
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        arr[y:y + h // 3, x:x + w // 3] = colours[colour]
        Image.fromarray(arr).save(path)

    rows = []
    for i in range(n_text2image):
        h, w = sizes[i % len(sizes)]
        c = names[i % len(names)]
        make(root / "images" / f"t2i_{i:04d}.png", h, w, c)
        rows.append({"txt": f"a {c} square on a grey noisy background", "image_path": f"images/t2i_{i:04d}.png"})
    for i in range(n_edit):
        h, w = sizes[i % len(sizes)]
        c0, c1 = names[i % len(names)], names[(i + 1) % len(names)]
        make(root / "images" / f"edit_{i:04d}_src.png", h, w, c0)
        make(root / "images" / f"edit_{i:04d}_dst.png", h, w, c1)
        rows.append({"input_image": [f"images/edit_{i:04d}_src.png"], "output_image": f"images/edit_{i:04d}_dst.png",
                     "instruction": f"make the {c0} square {c1}"})
    out = root / "data.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out
