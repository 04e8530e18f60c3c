"""Prompt sets for MR-GRPO (stage 3): files, categories, weighted per-step sampling.

The official run (mrgrpo-reference.md §2.1) has no prompt classifier: every prompt file is a dataset with a
static *category* (which reward weights apply) and a *sample_weight* (how often its prompts are drawn,
``sample_proportional``: each prompt's probability ∝ its dataset's weight).  We keep exactly that.

Prompt files (one *dataset* each)
=================================
* ``.txt``: one prompt per line; blank lines and lines starting with ``#`` are skipped.  Every prompt gets
  the dataset's category.
* ``.jsonl``: one JSON object per line, ``{"prompt": "...", "category": "text_rendering"}``; ``category`` is
  optional (default: the dataset's).  A line may also be a bare JSON string.  Other keys are kept as
  metadata.  Blank lines are skipped.
* ``.json``: a list of strings or of such objects.

Datasets are listed in the stage-3 config (or in a separate ``.toml``/``.json``/``.yaml`` prompt-set file
with a ``datasets`` list, which mirrors the official ``deepgen_train.yaml``)::

    [[prompts]]
    path = "prompts/ocr.txt"
    category = "text_rendering"
    sample_weight = 3.0          # default: category_sample_weights[category] (text_rendering 3, general 1)

    [[prompts]]
    path = "prompts/general.jsonl"   # category per line, else "general"

A plain string entry ``"prompts/x.txt"`` is a dataset with the default category ``general``.

Category names are free-form; the official ones have aliases: ``text_render``, ``text``, ``text-rendering``,
``textrender`` → ``text_rendering``.

Sampling
========
The ``prompts_per_step`` prompts of trainer step ``s`` are one weighted draw **with replacement**
(``torch.multinomial``, as the official ``DistributedWeightedSampler``) from a generator seeded with
``(seed, "prompts", s)``; process r takes the r-th block.  The draw is a pure function of (seed, step), so
resuming at any step continues the exact prompt sequence without sampler state, and the prompts of a step do
not depend on the number of processes (the official sampler draws per rank, with the same distribution).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import DataError
from ..data import derive_seed

__all__ = [
    "CATEGORY_ALIASES",
    "PromptDataset",
    "PromptError",
    "PromptRecord",
    "PromptSet",
    "canonical_category",
    "load_prompt_set",
    "read_prompt_file",
]

DEFAULT_CATEGORY = "general"
CATEGORY_ALIASES = {
    "text_render": "text_rendering",
    "text": "text_rendering",
    "text-rendering": "text_rendering",
    "textrender": "text_rendering",
}


class PromptError(DataError):
    """A prompt file or prompt-set entry that cannot be used (the message says which and why)."""


def canonical_category(name: str) -> str:
    key = str(name).strip()
    return CATEGORY_ALIASES.get(key.lower(), key)


@dataclass(frozen=True)
class PromptRecord:
    prompt: str
    category: str
    source: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class PromptDataset:
    path: str
    category: str
    sample_weight: float
    records: list[PromptRecord]


def _record(obj: Any, where: str, default_category: str) -> PromptRecord | None:
    if isinstance(obj, str):
        text = obj.strip()
        return PromptRecord(text, default_category, where) if text else None
    if isinstance(obj, Mapping):
        prompt = obj.get("prompt")
        if not isinstance(prompt, str):
            raise PromptError(f'{where}: expected a "prompt" string, got keys {sorted(obj)}')
        if not prompt.strip():
            return None
        cat = obj.get("category", default_category)
        if not isinstance(cat, str) or not cat.strip():
            raise PromptError(f'{where}: "category" must be a non-empty string, got {cat!r}')
        meta = {k: v for k, v in obj.items() if k not in ("prompt", "category")}
        return PromptRecord(prompt.strip(), canonical_category(cat), where, meta)
    raise PromptError(f'{where}: expected a prompt string or an object with "prompt", got {type(obj).__name__}')


def read_prompt_file(path: str | os.PathLike, category: str = DEFAULT_CATEGORY) -> list[PromptRecord]:
    """All prompts of one ``.txt`` / ``.jsonl`` / ``.json`` file (see the module doc).

    Raises :class:`PromptError` for a missing file, a bad line, an unknown suffix or **a file without prompts**.
    """
    p = Path(path)
    if not p.is_file():
        raise PromptError(f"prompt file {p} does not exist")
    category = canonical_category(category)
    suffix = p.suffix.lower()
    text = p.read_text(encoding="utf-8")
    out: list[PromptRecord] = []
    if suffix == ".txt":
        for i, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if s and not s.startswith("#"):
                out.append(PromptRecord(s, category, f"{p}:{i}"))
    elif suffix == ".jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptError(f"{p}:{i}: not valid JSON ({e.msg})") from e
            r = _record(obj, f"{p}:{i}", category)
            if r is not None:
                out.append(r)
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PromptError(f"{p}: not valid JSON ({e.msg})") from e
        if not isinstance(data, list):
            raise PromptError(f"{p}: expected a JSON list of prompts")
        for i, obj in enumerate(data):
            r = _record(obj, f"{p}[{i}]", category)
            if r is not None:
                out.append(r)
    else:
        raise PromptError(
            f"prompt file {p}: unknown format {suffix!r}; use .txt (one prompt per line), "
            '.jsonl ({{"prompt": ..., "category": ...}} per line) or .json'
        )
    if not out:
        raise PromptError(
            f"prompt file {p} holds no prompts (blank lines and '#' comments are skipped; "
            'JSONL lines need a non-empty "prompt")'
        )
    return out


def _read_set_file(path: Path) -> list:
    from ..config import ConfigError, read_config_file

    try:
        data = read_config_file(path)
    except ConfigError as e:
        raise PromptError(str(e)) from e
    entries = data.get("datasets", data.get("prompts"))
    if not isinstance(entries, list) or not entries:
        raise PromptError(f"prompt-set file {path} needs a non-empty 'datasets' list")
    out = []
    for entry in entries:  # paths inside a set file are relative to it
        if isinstance(entry, str):
            entry = {"path": entry}
        if isinstance(entry, Mapping) and "path" in entry and not Path(str(entry["path"])).is_absolute():
            entry = {**entry, "path": str(path.parent / str(entry["path"]))}
        out.append(entry)
    return out


class PromptSet:
    """The prompt datasets of a run, with per-prompt sampling weights ∝ the dataset's ``sample_weight``."""

    def __init__(self, datasets: Sequence[PromptDataset]):
        datasets = [d for d in datasets]
        if not datasets:
            raise PromptError("no prompt datasets given (config key 'prompts')")
        self.datasets = datasets
        self.records: list[PromptRecord] = [r for d in datasets for r in d.records]
        self.weights = torch.tensor([d.sample_weight for d in datasets for _ in d.records], dtype=torch.float64)
        if not bool((self.weights > 0).any()):
            raise PromptError("every prompt dataset has sample_weight 0: nothing can be drawn")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def categories(self) -> list[str]:
        """The categories that can be drawn (weight > 0), in first-seen order."""
        seen: dict[str, None] = {}
        for r, w in zip(self.records, self.weights.tolist()):
            if w > 0:
                seen.setdefault(r.category, None)
        return list(seen)

    def sample(self, n: int, *, seed: int, step: int, rank: int = 0, world_size: int = 1) -> list[PromptRecord]:
        """The ``n`` prompts of process ``rank`` at trainer step ``step``.

        One global weighted draw with replacement of ``n·world_size`` prompts, seeded with ``(seed, "prompts",
        step)``; process r takes the r-th block of ``n``.  So the prompts of a step do not depend on the number of
        processes (the official sampler draws per rank; the distribution is the same).
        """
        g = torch.Generator().manual_seed(derive_seed(int(seed), "prompts", int(step)))
        idx = torch.multinomial(self.weights, n * world_size, replacement=True, generator=g)
        return [self.records[i] for i in idx[rank * n : (rank + 1) * n].tolist()]


def load_prompt_set(
    entries: str | os.PathLike | Sequence[Any], *, category_sample_weights: Mapping[str, float] | None = None
) -> PromptSet:
    """Build a :class:`PromptSet` from config entries (see the module doc).

    ``entries``: a prompt-set file (``.toml``/``.json``/``.yaml`` with a ``datasets`` list), a prompt file, or a
    list of paths / ``{path, category, sample_weight}`` tables.  ``category_sample_weights`` gives the weight of
    a dataset without its own ``sample_weight`` (default 1.0).
    """
    csw = {canonical_category(k): float(v) for k, v in (category_sample_weights or {}).items()}
    if isinstance(entries, (str, os.PathLike)):
        p = Path(entries)
        entries = _read_set_file(p) if p.suffix.lower() in (".toml", ".yaml", ".yml") else [str(p)]
    entries = list(entries)
    if not entries:
        raise PromptError("no prompt files given (config key 'prompts')")
    datasets = []
    for i, e in enumerate(entries):
        if isinstance(e, (str, os.PathLike)):
            e = {"path": os.fspath(e)}
        if not isinstance(e, Mapping):
            raise PromptError(f"prompts[{i}]: expected a path or a table {{path, category, sample_weight}}")
        unknown = set(e) - {"path", "category", "sample_weight"}
        if unknown:
            raise PromptError(f"prompts[{i}]: unknown keys {sorted(unknown)} (allowed: path, category, sample_weight)")
        if not isinstance(e.get("path"), str) or not e["path"].strip():
            raise PromptError(f"prompts[{i}]: 'path' must be a non-empty string")
        category = canonical_category(e.get("category", DEFAULT_CATEGORY))
        weight = e.get("sample_weight", csw.get(category, 1.0))
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise PromptError(f"prompts[{i}] ({e['path']}): sample_weight must be a number ≥ 0, got {weight!r}")
        records = read_prompt_file(e["path"], category)
        datasets.append(PromptDataset(e["path"], category, float(weight), records))
    return PromptSet(datasets)
