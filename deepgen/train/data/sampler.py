"""The task pattern and the seeded, resumable, sharded sampler that picks each micro-batch's rows.

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
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...errors import DataError
from .rows import EmptyDatasetError, canonical_task


class TaskPattern:
    """How many consecutive micro-batches of each task make one cycle, in order.

    ``TaskPattern({"image2image": 1, "text2image": 3})`` → cycle ``[image2image, text2image×3]``.
    Aliases ``edit``/``i2i`` and ``t2i`` are accepted; ``TaskPattern.parse("edit:1,t2i:3")`` too.
    """

    def __init__(self, repeats: Mapping[str, int]):
        parsed: dict[str, int] = {}
        for task, n in dict(repeats).items():
            t = canonical_task(task)
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

    def __init__(
        self,
        dataset_sizes: Mapping[str, int],
        pattern: TaskPattern | Mapping[str, int] | str,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"micro batch size must be an integer ≥ 1, got {batch_size!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 ≤ rank < world_size, got rank={rank}, world_size={world_size}")
        self.pattern = TaskPattern.parse(pattern)
        self.sizes = {canonical_task(t): int(n) for t, n in dataset_sizes.items()}
        skipped = [t for t, n in self.pattern.repeats.items() if n > 0 and self.sizes.get(t, 0) == 0]
        for t in skipped:
            warnings.warn(f"task pattern: no {t} data, so {t} micro-batches are skipped", stacklevel=2)
        self.cycle = [t for t in self.pattern.cycle() if self.sizes.get(t, 0) > 0]
        if not self.cycle:
            raise EmptyDatasetError(
                f"task pattern {self.pattern.to_dict()} has no task with data (dataset sizes {self.sizes})"
            )
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.micro_step = 0
        self.consumed = {t: 0 for t in self.pattern.repeats}
        self._permutation: dict[str, tuple[int, Tensor]] = {}  # task -> (epoch, its permutation)

    @property
    def global_batch_size(self) -> int:
        """Samples per micro-step over all ranks (``batch_size * world_size``)."""
        return self.batch_size * self.world_size

    def _row(self, task: str, stream_pos: int) -> int:
        n = self.sizes[task]
        epoch, offset = divmod(stream_pos, n)
        if not self.shuffle:
            return offset
        cached = self._permutation.get(task)
        if cached is None or cached[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "perm", task, epoch))
            cached = (epoch, torch.randperm(n, generator=g))
            self._permutation[task] = cached
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
        for key, mine in (
            ("seed", self.seed),
            ("pattern", self.pattern.to_dict()),
            ("dataset_sizes", self.sizes),
            ("shuffle", self.shuffle),
        ):
            if key in state and state[key] != mine:
                mismatches.append(f"{key}: saved {state[key]!r}, now {mine!r}")
        if mismatches:
            msg = (
                "data position does not match this run, so the sample order will not continue exactly ("
                + "; ".join(mismatches)
                + ")"
            )
            if strict:
                raise DataError(
                    msg + "; resume with the same data and settings, or start a new run (another "
                    "output_dir, or resume = 'no')"
                )
            warnings.warn(msg, stacklevel=2)
        self.micro_step = int(state["micro_step"])
        consumed = {canonical_task(t): int(n) for t, n in state["consumed"].items()}
        self.consumed = {t: consumed.get(t, 0) for t in self.pattern.repeats}
