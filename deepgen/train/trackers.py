"""Experiment trackers through accelerate (``Accelerator(log_with=...)``): TensorBoard by default when it is
installed, Weights & Biases when asked.

:func:`resolve_trackers` turns the config's ``trackers`` (``["auto"]``, ``[]``, ``["tensorboard", "wandb"]``) into
accelerate's ``log_with``; :class:`TrackerCallback` logs what the JSONL log holds (every numeric field of a step's
record: loss, lr, grad norm, per-task losses or per-reward mean/std, KL, clip fraction, SFT-Aux loss,
throughput) and the validation images.  TensorBoard writes under ``output_dir/trackers``.  W&B is offline-safe:
nothing reaches the network unless W&B was asked for, and ``WANDB_MODE=offline`` is honoured by W&B itself.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .callbacks import RunInfo, StepInfo, TrainCallback

__all__ = [
    "KNOWN_TRACKERS",
    "TRACKER_DIR",
    "resolve_trackers",
    "tracker_kwargs",
    "TrackerCallback",
    "scalars",
    "throughput",
    "tracker_problem",
]

KNOWN_TRACKERS = ("tensorboard", "wandb")
TRACKER_DIR = "trackers"
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb"}


def _installed(name: str) -> bool:
    return importlib.util.find_spec(_PACKAGE[name]) is not None


def tracker_problem(value: Sequence[str]) -> str | None:
    """The config check (names only; whether a package is installed is checked when the run starts)."""
    names = [str(n).strip().lower() for n in value]
    if names in ([], ["none"], ["auto"]):
        return None
    bad = [n for n in names if n not in KNOWN_TRACKERS]
    if bad:
        return f"trackers: unknown {bad[0]!r}; use auto, none, or some of {', '.join(KNOWN_TRACKERS)}"
    return None


def resolve_trackers(value: Sequence[str] | str | None) -> list[str]:
    """``auto`` → ``["tensorboard"]`` when tensorboard is importable, else none; ``none``/``[]`` → none; names are
    checked (unknown or not installed: a one-line :class:`ConfigError` naming the pip package)."""
    names = [value] if isinstance(value, str) else list(value or [])
    names = [n.strip().lower() for n in names if n and n.strip()]
    if names in ([], ["none"]):
        return []
    if names == ["auto"]:
        return ["tensorboard"] if _installed("tensorboard") else []
    problem = tracker_problem(names)
    if problem:
        raise ConfigError(problem)
    missing = [n for n in names if not _installed(n)]
    if missing:
        raise ConfigError(f"trackers: {missing[0]} is not installed: pip install {_PACKAGE[missing[0]]}")
    return list(dict.fromkeys(names))


def tracker_kwargs(names: Sequence[str], output_dir: str | Path) -> dict:
    """The ``Accelerator`` arguments for ``names`` (nothing when none)."""
    if not names:
        return {}
    return {"log_with": list(names), "project_dir": str(Path(output_dir).expanduser() / TRACKER_DIR)}


def throughput(images: float, tokens: float, seconds: float, prefix: str = "") -> dict[str, float]:
    """Per-device rates of one step (this process's images and DiT image tokens over the step's seconds)."""
    if seconds <= 0:
        return {}
    return {
        f"{prefix}images_per_sec_per_device": round(images / seconds, 4),
        f"{prefix}tokens_per_sec_per_device": round(tokens / seconds, 2),
    }


def scalars(record: dict) -> dict[str, float]:
    """The finite numbers of a log record (the JSONL line), by the same names."""
    out = {}
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def _flat_config(config: dict) -> dict:
    """Hyper-parameters trackers accept (numbers, strings, bools); nested tables flattened with dots."""
    out: dict = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in _flat_config(value).items()})
        elif isinstance(value, (int, float, str, bool)):
            out[key] = value
        elif isinstance(value, (list, tuple)):
            out[key] = str(value)
    return out


class TrackerCallback(TrainCallback):
    """Logs every step's numbers and the validation images to the accelerator's trackers (main process)."""

    def __init__(self, accelerator, project: str = "deepgen"):
        self.acc = accelerator
        self.project = project
        self.started = False

    def on_train_start(self, run: RunInfo) -> None:
        self.acc.init_trackers(self.project, config=_flat_config(run.config))
        self.started = True

    def on_step_end(self, run: RunInfo, info: StepInfo) -> None:
        # the JSONL line: stage 3 writes its GRPO record (StepInfo.extra), stages 1-2 the whole StepInfo
        record = info.extra if str(run.stage) == "3" else info.to_dict()
        self.acc.log(scalars(record), step=info.step)

    def on_validation(self, run: RunInfo, step: int, images, paths) -> None:
        if not images or not self.acc.is_main_process:
            return
        for name in self.acc.log_with:
            tracker = self.acc.get_tracker(str(name).rsplit(".", 1)[-1].lower())
            if getattr(tracker, "name", "") == "tensorboard":
                arrays = [np.asarray(im.convert("RGB")) for im in images]
                if len({a.shape for a in arrays}) == 1:
                    tracker.log_images({"validation": np.stack(arrays)}, step=step, dataformats="NHWC")
            elif getattr(tracker, "name", "") == "wandb":
                tracker.log_images({"validation": list(images)}, step=step)

    def _end(self) -> None:
        if self.started:
            self.acc.end_training()
            self.started = False

    def on_train_end(self, run: RunInfo, result) -> None:
        self._end()

    def on_interrupt(self, run: RunInfo, step: int, checkpoint, exc: BaseException) -> None:
        self._end()
