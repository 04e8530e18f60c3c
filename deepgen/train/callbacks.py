"""Training callbacks: what a run is (:class:`RunInfo`), one finished update (:class:`StepInfo`), the hooks a
trainer calls (:class:`TrainCallback`), a dispatcher over several (:class:`CallbackList`) and a :class:`Stopwatch`.

The CLI adapts the hooks to tqdm + logs, the ComfyUI node to its progress bar and websocket events.

Interrupt protocol: a trainer calls :meth:`CallbackList.check_interrupt` at least once per micro-step.  A
callback that wants to stop raises (ComfyUI's ``InterruptProcessingException``, ``KeyboardInterrupt``, …).
The trainer then writes a resumable checkpoint of the last *completed* optimizer update (never a half
accumulated one), calls ``on_interrupt`` and re-raises the same exception.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunInfo", "StepInfo", "TrainCallback", "CallbackList", "Stopwatch"]


@dataclass
class RunInfo:
    """What a run is, given to every callback."""

    stage: int | str
    total_steps: int  # optimizer updates of the whole run
    start_step: int  # 0, or the step a resumed run continues from
    output_dir: Path
    is_main_process: bool = True
    num_processes: int = 1
    trainable_parameters: int = 0  # elements
    config: dict = field(default_factory=dict)
    sharding: str = "none"  # none | FSDP2 | ZeRO-2 | ZeRO-3 (sharding.sharding_name)


@dataclass
class StepInfo:
    """One finished optimizer update (values averaged over every process)."""

    step: int  # updates done, 1-based
    total_steps: int
    loss: float  # mean per-sample loss of the update (all micro-batches, all ranks)
    task_losses: dict[str, float]  # the same per task (text2image / image2image / …)
    lr: float  # learning rate used for this update
    grad_norm: float | None  # before clipping (None when not computed)
    samples: int  # samples seen so far (all ranks)
    step_time: float  # seconds for this update
    elapsed: float  # seconds since the run (or the resume) started
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {
            "step": self.step,
            "total_steps": self.total_steps,
            "loss": self.loss,
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "samples": self.samples,
            "step_time": round(self.step_time, 4),
            "elapsed": round(self.elapsed, 2),
        }
        d.update({f"loss_{task}": value for task, value in self.task_losses.items()})
        d.update(self.extra)
        return d


class TrainCallback:
    """Hooks a trainer calls; override what you need (all are no-ops).  Called on every process unless noted."""

    def on_train_start(self, run: RunInfo) -> None: ...

    def check_interrupt(self) -> None:
        """Raise to stop training (the trainer checkpoints first, then re-raises)."""

    def on_step_end(self, run: RunInfo, info: StepInfo) -> None: ...

    def on_checkpoint(self, run: RunInfo, step: int, path: Path | None, reason: str) -> None:
        """After a checkpoint write (``path`` is None on non-main processes); reason: periodic|final|interrupt."""

    def on_validation(self, run: RunInfo, step: int, images: list, paths: list[Path]) -> None:
        """Main process only: PIL images generated for the validation prompt, and where they were saved."""

    def on_export(self, run: RunInfo, paths: dict[str, Path]) -> None:
        """Main process only: the exported files ({"lora": ..., "checkpoint": ...})."""

    def on_interrupt(self, run: RunInfo, step: int, checkpoint: Path | None, exc: BaseException) -> None: ...

    def on_train_end(self, run: RunInfo, result: Any) -> None: ...


class CallbackList(TrainCallback):
    """Dispatches every hook to a list of callbacks, in order."""

    def __init__(self, callbacks: Iterable[TrainCallback | None] = ()):
        self.callbacks = [c for c in callbacks if c is not None]

    def __getattribute__(self, name: str):
        if name.startswith(("on_", "check_")) and name in TrainCallback.__dict__:
            callbacks = object.__getattribute__(self, "callbacks")

            def dispatch(*args, **kwargs):
                for cb in callbacks:
                    hook = getattr(cb, name, None)  # duck-typed callbacks may leave hooks out
                    if hook is not None:
                        hook(*args, **kwargs)

            return dispatch
        return object.__getattribute__(self, name)


class Stopwatch:
    """Monotonic seconds since start (``lap`` gives seconds since the previous lap)."""

    def __init__(self):
        self.start = self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.last = now - self.last, now
        return dt

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start
