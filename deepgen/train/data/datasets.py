"""The two task datasets (rows → samples) and ``load_datasets``, which scans every source into them.

A row that only fails when its pixels are decoded during training is reported on the returned
:class:`~deepgen.train.data.loader.MicroBatch` (``failures``) and replaced by the next good row of the same
dataset — deterministic, so an exact resume stays exact.  No usable row at all raises
:class:`EmptyDatasetError` naming the sources and the counts; a folder whose images have no captions at all
raises one explaining the ``.txt`` convention.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ...errors import DataError
from .images import load_training_image
from .rows import (
    IMAGE2IMAGE,
    TEXT2IMAGE,
    BadRowError,
    DataReport,
    DataSourceNotFoundError,
    EditRow,
    EditSample,
    EmptyDatasetError,
    PathLike,
    T2IRow,
    TextToImageSample,
    canonical_task,
    collapse_whitespace,
    format_bad_rows,
)
from .scan import read_caption_annotation, scan_image_folder, scan_json_source


class ImageRowsDataset(torch.utils.data.Dataset):
    """Rows of one task that load into samples; a row that fails to load is replaced by the next good one."""

    task: ClassVar[str] = ""

    def __init__(
        self,
        rows: Sequence,
        *,
        resolution: int = 512,
        unit: int = 32,
        min_side: int = 80,
        max_aspect: float = 10.0,
        exif_transpose: bool = True,
    ):
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
        return load_training_image(
            path,
            resolution=self.resolution,
            unit=self.unit,
            min_side=self.min_side,
            max_aspect=self.max_aspect,
            exif_transpose=self.exif_transpose,
        )

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
        failures: list[tuple[str, str, str]] = []
        for k in range(n):
            i = (index + k) % n
            if i in self._bad:
                continue
            try:
                return self.load(i), failures
            except BadRowError as e:
                self._bad.add(i)
                failures.append((e.reason, self.rows[i].where or str(i), e.detail))
        first = format_bad_rows(
            [
                (reason, collapse_whitespace(where), collapse_whitespace(detail))
                for reason, where, detail in failures[:3]
            ]
        )
        raise EmptyDatasetError(
            f"every row of this {self.task} data set failed to load ({len(failures)} rows); "
            f"first: {first}; fix or remove these files"
        )

    def __getitem__(self, index: int):
        return self.get_with_fallback(index)[0]


class TextToImageDataset(ImageRowsDataset):
    """Map-style dataset of :class:`T2IRow` → :class:`TextToImageSample` (fix_pixels resized)."""

    task: ClassVar[str] = TEXT2IMAGE

    def load(self, index: int) -> TextToImageSample:
        row: T2IRow = self.rows[index]
        caption = row.caption
        if caption is None:
            if row.annotation is None:  # the scanners never build such a row; a hand-made one is a bad row
                raise BadRowError("missing_caption", f"{row.image} has neither a caption nor an annotation file")
            caption = read_caption_annotation(row.annotation, row.cap_source)
        return TextToImageSample(caption=caption, image=self._image(row.image), source=row.where)


class EditDataset(ImageRowsDataset):
    """Map-style dataset of :class:`EditRow` → :class:`EditSample` (each image fix_pixels resized on its own)."""

    task: ClassVar[str] = IMAGE2IMAGE

    def load(self, index: int) -> EditSample:
        row: EditRow = self.rows[index]
        refs = [self._image(p) for p in row.references]
        return EditSample(
            instruction=row.instruction, references=refs, target=self._image(row.target), source=row.where
        )


@dataclass
class TaskDatasets:
    """The datasets of both tasks (either may be empty) and the scan report."""

    text2image: TextToImageDataset
    image2image: EditDataset
    report: DataReport

    def by_task(self) -> dict[str, ImageRowsDataset]:
        return {TEXT2IMAGE: self.text2image, IMAGE2IMAGE: self.image2image}

    def __getitem__(self, task: str) -> ImageRowsDataset:
        return self.by_task()[canonical_task(task)]

    def sizes(self) -> dict[str, int]:
        return {task: len(dataset) for task, dataset in self.by_task().items()}


def load_datasets(
    sources: PathLike | Sequence[PathLike],
    *,
    root: PathLike | None = None,
    cap_source: str = "caption",
    recursive: bool = False,
    resolution: int = 512,
    unit: int = 32,
    max_references: int | None = None,
    verify: str = "header",
    min_side: int = 80,
    max_aspect: float = 10.0,
    exif_transpose: bool = True,
    max_examples: int = 10,
) -> TaskDatasets:
    """Scan every source (JSON/JSONL list or image folder) and build both task datasets.

    Rows keep the order of ``sources`` then file order.  Raises :class:`DataSourceNotFoundError` (a
    ``FileNotFoundError``) for a missing source, :class:`DataError` for a list that is not UTF-8 or not valid
    JSON, :class:`EmptyDatasetError` if no row at all is usable (one line: sources, skipped counts by reason
    and the first bad rows).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    paths = [Path(s) for s in sources]
    if not paths:
        raise EmptyDatasetError("No data sources given (config key 'data').")
    report = DataReport(max_examples=max_examples)
    checks: dict[str, Any] = dict(verify=verify, min_side=min_side, max_aspect=max_aspect, report=report)
    t2i: list[T2IRow] = []
    edit: list[EditRow] = []
    for source in paths:
        if not source.exists():
            raise DataSourceNotFoundError(f"Data source {source} does not exist; check the 'data' setting")
        if source.is_dir():
            t2i += scan_image_folder(source, recursive=recursive, **checks)[0]
        elif source.suffix.lower() in (".json", ".jsonl"):
            t2i_rows, edit_rows, _ = scan_json_source(
                source, root=root, cap_source=cap_source, max_references=max_references, **checks
            )
            t2i += t2i_rows
            edit += edit_rows
        else:
            raise DataError(f"Data source {source}: expected a folder, a .json list or a .jsonl file")
    if not t2i and not edit:
        raise EmptyDatasetError(
            f"No usable training rows in {', '.join(map(str, paths))}: {report.brief()}; fix or remove the "
            "bad rows (data_verify = 'none' skips the checks, but the rows then fail during training)"
        )
    image_settings: dict[str, Any] = dict(
        resolution=resolution, unit=unit, min_side=min_side, max_aspect=max_aspect, exif_transpose=exif_transpose
    )
    return TaskDatasets(TextToImageDataset(t2i, **image_settings), EditDataset(edit, **image_settings), report)
