"""The checkpoint format on disk: names, the folder of each step, finding and pruning complete checkpoints."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Union

from torch import nn

FORMAT = "deepgen-train-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-"  # an unfinished write
TRASH_PREFIX = ".trash-"  # an old folder swapped out when a step is saved again
SHARDS_PREFIX = ".shards-"  # a sharded optimizer state being written by every process, before it moves in
LATEST_FILE = "latest"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
# sharded runs: the optimizer state, one shard per process (FSDP: accelerate/DCP files; DeepSpeed: its zero/ folder)
OPTIMIZER_SHARDS_DIR = "optimizer_shards"

PathLike = Union[str, os.PathLike]


def trainable_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` of the parameters with ``requires_grad`` (unwrap DDP/accelerate first)."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{int(step):08d}"


def parse_step(name: str) -> int | None:
    """The step of a ``checkpoint-<step>`` folder name, or None for any other name."""
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    tail = name[len(CHECKPOINT_PREFIX) :]
    return int(tail) if tail.isdigit() else None


def _is_complete(path: Path) -> bool:
    return path.is_dir() and (path / STATE_FILE).is_file() and (path / TRAINABLE_FILE).is_file()


def list_checkpoints(output_dir: PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoint folders ``[(step, path)]`` sorted by step (temp folders ignored)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        step = parse_step(p.name)
        if step is not None and _is_complete(p):
            found.append((step, p))
    return sorted(found)


def find_latest_checkpoint(output_dir: PathLike) -> Path | None:
    """The checkpoint ``latest`` names, if complete; else the highest complete step; else None."""
    out = Path(output_dir)
    pointer = out / LATEST_FILE
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
        candidate = out / name
        if name and parse_step(name) is not None and _is_complete(candidate):
            return candidate
    found = list_checkpoints(out)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: PathLike, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest complete checkpoints (never the one ``latest`` names)."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be ≥ 1, got {keep_last}")
    latest = find_latest_checkpoint(output_dir)
    found = list_checkpoints(output_dir)
    removed = []
    for _, p in found[:-keep_last]:
        if latest is not None and p.resolve() == latest.resolve():
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed
