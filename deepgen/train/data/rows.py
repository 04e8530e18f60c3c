"""The vocabulary of the training data: task names, parsed rows, loaded samples, bad rows and their report."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar, Union

from torch import Tensor

from ...errors import DataError

TEXT2IMAGE = "text2image"
IMAGE2IMAGE = "image2image"
TASK_ALIASES = {
    "t2i": TEXT2IMAGE,
    "text2image": TEXT2IMAGE,
    "edit": IMAGE2IMAGE,
    "i2i": IMAGE2IMAGE,
    "image2image": IMAGE2IMAGE,
}

PathLike = Union[str, os.PathLike]


def canonical_task(task: str) -> str:
    """``"t2i"``, ``"edit"``, ... → ``TEXT2IMAGE`` or ``IMAGE2IMAGE``; ValueError for anything else."""
    try:
        return TASK_ALIASES[task.strip().lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"Unknown task {task!r}; use 'text2image' (t2i) or 'image2image' (edit)") from None


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


def collapse_whitespace(text: str) -> str:
    """One line of a report (paths or errors that carry a newline would break the one-line messages)."""
    return " ".join(str(text).split())


def format_bad_rows(bad_rows: list[tuple[str, str, str]]) -> str:
    """``where [reason: detail]; ...``: bad rows ``(reason, where, detail)`` as one line."""
    return "; ".join(f"{where} [{reason}" + (f": {detail}]" if detail else "]") for reason, where, detail in bad_rows)


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
            self.examples.append((reason, collapse_whitespace(where), collapse_whitespace(detail)))

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
            shown = self.examples[:limit]
            more = self.bad - len(shown)
            text += "; first: " + format_bad_rows(shown) + (f"; … and {more} more" if more > 0 else "")
        return text
