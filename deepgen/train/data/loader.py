"""Micro-batches: the loader that follows the sampler's plan, decodes rows (in workers) and drops captions.

Caption dropout: T2I captions are replaced by ``''`` with probability ``caption_dropout`` (0.1); edit
instructions are never dropped.  The decision for each sample is drawn from a generator seeded by
``(seed, task, stream position)``, so it is reproducible, resumable and identical however the global
batch is split across processes.  :func:`apply_caption_dropout` is the primitive.

With accelerate: build the loader with ``rank=accelerator.process_index`` and
``world_size=accelerator.num_processes`` and do **not** pass it to ``accelerator.prepare`` (that would
shard it a second time).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .datasets import ImageRowsDataset, TaskDatasets
from .rows import IMAGE2IMAGE, TEXT2IMAGE, DataReport, canonical_task
from .sampler import TaskBatchSampler, TaskPattern, derive_seed


def _check_probability(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"caption dropout must be in [0, 1], got {p}")


def apply_caption_dropout(captions: Sequence[str], p: float, generator: torch.Generator | None = None) -> list[str]:
    """Replace each caption by ``''`` with probability ``p`` (one ``torch.rand`` draw per caption)."""
    _check_probability(p)
    captions = list(captions)
    if p == 0.0 or not captions:
        return captions
    u = torch.rand(len(captions), generator=generator)
    return ["" if float(x) < p else c for c, x in zip(captions, u)]


class _SampleKey(NamedTuple):
    """What the DataLoader asks of the dataset for one sample (and carries to the collated batch)."""

    task: str
    row: int  # dataset index (not named ``index``, which would shadow ``tuple.index``)
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


class _SampleSource(torch.utils.data.Dataset):
    """The DataLoader's dataset: a sample key → ``(key, sample after caption dropout, load failures)``."""

    def __init__(self, datasets: Mapping[str, ImageRowsDataset], caption_dropout: float, seed: int):
        self.datasets = dict(datasets)
        self.caption_dropout = caption_dropout
        self.seed = seed

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets.values())

    def __getitem__(self, key: _SampleKey):
        sample, failures = self.datasets[key.task].get_with_fallback(key.row)
        if key.task == TEXT2IMAGE and self.caption_dropout > 0:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "caption_dropout", key.task, key.stream_pos))
            caption = apply_caption_dropout([sample.caption], self.caption_dropout, g)[0]
            if caption != sample.caption:
                sample = dataclasses.replace(sample, caption=caption)
        return key, sample, failures


def _collate(items: list) -> MicroBatch:
    keys = [k for k, _, _ in items]
    return MicroBatch(
        task=keys[0].task,
        samples=[s for _, s, _ in items],
        indices=[k.row for k in keys],
        micro_step=keys[0].micro_step,
        position=keys[0].position,
        failures=[f for _, _, fs in items for f in fs],
    )


class _KeyBatches:
    """batch_sampler for DataLoader: lists of _SampleKey from a TaskBatchSampler (endless)."""

    def __init__(self, sampler: TaskBatchSampler):
        self.sampler = sampler

    def __iter__(self):
        while True:
            plan = next(self.sampler)
            yield [
                _SampleKey(plan.task, i, p, plan.micro_step, plan.position)
                for i, p in zip(plan.indices, plan.stream_positions)
            ]


class MicroBatchLoader:
    """Endless iterator of :class:`MicroBatch` following the task pattern (see ``sampler.py``).

    Wraps a :class:`TaskBatchSampler` and a ``torch.utils.data.DataLoader`` (``num_workers`` processes
    decode images).  ``state_dict()`` is the position after the last batch *returned*, even with
    prefetching; ``load_state_dict()`` then restarts iteration exactly there.
    """

    def __init__(
        self,
        datasets: TaskDatasets | Mapping[str, ImageRowsDataset],
        pattern: TaskPattern | Mapping[str, int] | str,
        micro_batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        caption_dropout: float = 0.1,
        num_workers: int = 0,
        shuffle: bool = True,
        prefetch_factor: int | None = None,
        report: DataReport | None = None,
    ):
        if isinstance(datasets, TaskDatasets):
            report = report if report is not None else datasets.report
            datasets = datasets.by_task()
        datasets = {canonical_task(t): d for t, d in datasets.items()}
        _check_probability(caption_dropout)
        self.sampler = TaskBatchSampler(
            {t: len(d) for t, d in datasets.items()},
            pattern,
            micro_batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
            shuffle=shuffle,
        )
        self.sample_source = _SampleSource(datasets, caption_dropout, self.sampler.seed)
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.report = report if report is not None else DataReport()
        self._position = self.sampler.state_dict()

    def __iter__(self) -> Iterator[MicroBatch]:
        self.sampler.load_state_dict(self._position)
        options: dict[str, Any] = {}
        if self.num_workers > 0 and self.prefetch_factor is not None:
            options["prefetch_factor"] = self.prefetch_factor
        loader = torch.utils.data.DataLoader(
            self.sample_source,
            batch_sampler=_KeyBatches(self.sampler),
            collate_fn=_collate,
            num_workers=self.num_workers,
            **options,
        )
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
