"""Reading data sources into rows: JSON/JSONL lists and image folders, each row checked and bad rows counted.

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
files outside the folder are skipped the same way.  Rows that only fail when their pixels are decoded
during training are handled by the datasets (``datasets.py``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path, PureWindowsPath
from typing import Any, TypeGuard

from ...errors import ConfigError, DataError
from ...paths import is_inside
from .images import VERIFY_LEVELS, verify_image_file
from .rows import IMAGE2IMAGE, TEXT2IMAGE, BadRowError, DataReport, EditRow, EmptyDatasetError, PathLike, T2IRow

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def check_verify_level(verify: str) -> None:
    if verify not in VERIFY_LEVELS:
        raise ConfigError(f"data_verify must be one of {', '.join(VERIFY_LEVELS)}, got {verify!r}")


def _resolve(base: Path, rel: str, key: str = "path") -> str:
    """``base / rel``, or :class:`BadRowError` ``outside_root`` if ``rel`` is absolute, climbs out of ``base``
    with ``..`` or leads through a symlink to a place outside ``base`` (nothing outside is ever opened)."""
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or PureWindowsPath(rel).drive:
        raise BadRowError("outside_root", f"{key} {rel!r} is an absolute path; give it relative to {base}")
    candidate = base / rel
    if not is_inside(os.path.normpath(os.path.abspath(candidate)), os.path.normpath(os.path.abspath(base))):
        raise BadRowError("outside_root", f"{key} {rel!r} leads out of {base} (..)")
    if not is_inside(os.path.realpath(candidate), os.path.realpath(base)):
        raise BadRowError(
            "outside_root", f"{key} {rel!r} is a symlink to {os.path.realpath(candidate)}, outside {base}"
        )
    return str(candidate)


def _read_utf8(path: Path, what: str) -> str:
    """A text file's content; a file that is not UTF-8 raises :class:`DataError` naming it and the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); save it as UTF-8"
        ) from None


class _BadJson(str):
    """A JSONL line that does not parse (the text is the parser's message)."""


def read_json_rows(path: PathLike) -> list[tuple[str, Any]]:
    """Rows of a ``.json`` list or ``.jsonl`` file as ``(where, row)``; a broken JSONL line gives a ``_BadJson``
    row (reported as ``bad_json_row``).

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
        raise DataError(
            f"{path} is not valid JSON ({e}); use a JSON list, or .jsonl with one object per line"
        ) from None
    if not isinstance(data, list):
        raise DataError(f"{path} must hold a JSON list of rows, found {type(data).__name__}")
    return [(f"{path}[{i}]", row) for i, row in enumerate(data)]


def _nonempty_str(x: Any) -> TypeGuard[str]:
    return isinstance(x, str) and x.strip() != ""


def read_caption_annotation(path: str, cap_source: str) -> str:
    """The caption ``cap_source`` of an annotation JSON (official caption rows); raises :class:`BadRowError`."""
    try:
        with open(path, encoding="utf-8") as f:
            annotation = json.load(f)
    except FileNotFoundError as e:
        raise BadRowError("missing_file", f"annotation {path} not found") from e
    except UnicodeDecodeError as e:
        raise BadRowError("bad_annotation", f"{path} is not UTF-8 text; save it as UTF-8") from e
    except (OSError, ValueError) as e:
        raise BadRowError("bad_annotation", f"{path}: {e}") from e
    if not isinstance(annotation, dict):
        raise BadRowError("bad_annotation", f"{path}: expected a JSON object")
    caption = annotation.get(cap_source)
    if not _nonempty_str(caption):
        raise BadRowError("missing_caption", f"{path} has no non-empty {cap_source!r}")
    return caption.strip()


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
        return EditRow(
            tuple(_resolve(base, r, "input_image") for r in refs),
            _resolve(base, row["output_image"], "output_image"),
            row["instruction"].strip(),
        )
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
    """Check a row's files at level ``verify``; a T2I row's annotation caption is read now (unless "none")."""
    if isinstance(row, EditRow):
        for path in (*row.references, row.target):
            verify_image_file(path, verify, min_side, max_aspect)
        return row
    if row.caption is None and row.annotation is None:  # never built by _parse_row
        raise BadRowError("missing_caption", f"{row.image} has neither a caption nor an annotation file")
    if row.caption is None and row.annotation is not None and verify != "none":
        row = dataclasses.replace(row, caption=read_caption_annotation(row.annotation, row.cap_source), annotation=None)
    verify_image_file(row.image, verify, min_side, max_aspect)
    return row


def scan_json_source(
    path: PathLike,
    *,
    root: PathLike | None = None,
    cap_source: str = "caption",
    max_references: int | None = None,
    verify: str = "header",
    min_side: int = 80,
    max_aspect: float = 10.0,
    report: DataReport | None = None,
) -> tuple[list[T2IRow], list[EditRow], DataReport]:
    """Parse (and check, per ``verify``) one JSON/JSONL list: ``(t2i_rows, edit_rows, report)``."""
    check_verify_level(verify)
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


def _read_caption_file(txt: Path) -> str:
    try:
        caption = _read_utf8(txt, "caption").strip()
    except DataError as e:
        raise BadRowError("unreadable_caption", str(e)) from None
    except OSError as e:
        raise BadRowError("unreadable_caption", f"cannot read {txt}: {e.strerror or e}") from e
    if not caption:
        raise BadRowError("missing_caption", f"{txt.name} is empty")
    return caption


def scan_image_folder(
    folder: PathLike,
    *,
    recursive: bool = False,
    verify: str = "header",
    min_side: int = 80,
    max_aspect: float = 10.0,
    report: DataReport | None = None,
) -> tuple[list[T2IRow], DataReport]:
    """Images with same-named ``.txt`` captions in ``folder`` → ``(t2i_rows, report)``.

    Raises :class:`EmptyDatasetError` if the folder has no images, or has images but not one caption.
    """
    check_verify_level(verify)
    folder = Path(folder)
    report = report if report is not None else DataReport()
    pattern = "**/*" if recursive else "*"
    images = sorted(
        (
            p
            for p in folder.glob(pattern)
            if p.is_file()
            and p.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        ),
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
    for image in images:
        report.rows_seen += 1
        where = str(image)
        txt = image.with_suffix(".txt")
        try:
            if not txt.is_file():
                raise BadRowError("missing_caption", f"no {txt.name} next to {image.name}")
            n_captions += 1
            for p in (image, txt):  # a symlink (or a symlinked sub-folder) to a file elsewhere is never read
                if not is_inside(os.path.realpath(p), real_folder):
                    raise BadRowError(
                        "outside_root", f"{p.name} is a symlink to {os.path.realpath(p)}, outside {folder}"
                    )
            caption = _read_caption_file(txt)
            verify_image_file(str(image), verify, min_side, max_aspect)
        except BadRowError as e:
            report.add(e.reason, where, e.detail)
            continue
        rows.append(T2IRow(str(image), caption=caption, where=where))
        report.good[TEXT2IMAGE] += 1
    if n_captions == 0:
        raise EmptyDatasetError(
            f"{folder} has {len(images)} image(s) but no captions: each image needs a same-named .txt "
            f"caption file next to it (e.g. {images[0].name} + {images[0].with_suffix('.txt').name})."
        )
    return rows, report
