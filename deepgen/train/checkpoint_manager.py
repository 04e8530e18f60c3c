"""Checkpoint glue for a run: :class:`CheckpointManager` (save on every rank, resume ``auto|no|path`` with the
optimizer, LR schedule, RNG and data position) and :func:`load_init_tensors` (``init_from``).  The format and its
atomicity live in :mod:`deepgen.train.checkpointing`."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from . import sharding, zero
from .checkpointing import (
    Checkpoint,
    CheckpointError,
    check_output_dir_writable,
    find_latest_checkpoint,
    load_checkpoint,
    load_latest_intact,
    restore_training_state,
    save_checkpoint,
    save_checkpoint_accelerate,
)
from .checkpointing.layout import OPTIMIZER_SHARDS_DIR, SHARDS_PREFIX, checkpoint_dir_name

log = logging.getLogger("deepgen.train")

__all__ = ["CheckpointManager", "load_init_tensors"]


class CheckpointManager:
    """Checkpoint save/resume for a run (format and atomicity: ``deepgen.train.checkpointing``).

    ``save`` must be called on every process (it gathers RNG states); only the main process writes.
    ``resume`` restores parameters, optimizer, LR schedule and this rank's RNG, and returns the checkpoint (its
    ``step`` and ``data_position``), or None when starting fresh.
    """

    def __init__(
        self, accelerator, output_dir: str | os.PathLike, *, keep_last: int = 0, config: Mapping | None = None
    ):
        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.keep_last = keep_last
        self.config = dict(config) if config is not None else None
        self.last_saved_step: int | None = None

    def check_writable(self) -> None:
        if self.accelerator is None or self.accelerator.is_main_process:
            check_output_dir_writable(self.output_dir)

    def save(
        self,
        step: int,
        *,
        trainable: Mapping[str, torch.Tensor],
        optimizer=None,
        lr_scheduler=None,
        grad_scaler=None,
        data_position: Mapping | None = None,
        extra: Mapping | None = None,
        model: nn.Module | None = None,
    ) -> Path | None:
        """``model``: the prepared (wrapped) module; needed under FSDP and DeepSpeed, whose optimizer state is saved
        in shards."""
        sharded = sharding.is_fsdp(self.accelerator) or zero.is_deepspeed(self.accelerator)
        if sharded:
            shards = self._save_optimizer_shards(step, optimizer, model)
            trainable = sharding.gather_tensors(self.accelerator, trainable)
            optimizer = None
        kwargs = dict(
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            grad_scaler=grad_scaler,
            data_position=data_position,
            config=self.config,
            extra=extra,
            keep_last=self.keep_last or None,
        )
        path: Path | None
        if self.accelerator is None:
            path = save_checkpoint(self.output_dir, step, trainable=trainable, **kwargs)
        else:
            if sharded:
                kwargs["shards"] = shards
            path = save_checkpoint_accelerate(self.accelerator, self.output_dir, step, trainable=trainable, **kwargs)
        self.last_saved_step = step
        return path

    def _save_optimizer_shards(self, step: int, optimizer, model) -> Path:
        """Every process writes its shard of the optimizer state (FSDP: accelerate's writer, DCP; DeepSpeed: the
        engine's ZeRO checkpoint) into a folder beside the checkpoint's temp folder; the main process then moves
        it in before the atomic rename."""
        from accelerate.utils import broadcast_object_list, save_fsdp_optimizer

        acc = self.accelerator
        if model is None or optimizer is None:
            raise TypeError("a sharded checkpoint needs the optimizer and the prepared model")
        token = [secrets.token_hex(4) if acc.is_main_process else None]
        broadcast_object_list(token)
        shards = self.output_dir / f"{SHARDS_PREFIX}{checkpoint_dir_name(step)}-{token[0]}"
        if zero.is_deepspeed(acc):
            zero.save(model, shards)
        else:
            save_fsdp_optimizer(acc.state.fsdp_plugin, acc, optimizer, model, str(shards))
        acc.wait_for_everyone()
        return shards

    def find(self, resume: str) -> Path | None:
        """``auto`` → latest in output_dir (or None); ``no`` → None; else the folder (must hold a checkpoint)."""
        resume = (resume or "auto").strip()
        if resume == "no":
            return None
        if resume == "auto":
            return find_latest_checkpoint(self.output_dir)
        path = Path(resume).expanduser()
        if not path.exists():
            raise CheckpointError(f"resume: {path} does not exist")
        return path

    def resume(
        self,
        resume: str,
        *,
        trainable: Mapping[str, torch.Tensor],
        optimizer=None,
        lr_scheduler=None,
        grad_scaler=None,
        strict: bool = True,
        model: nn.Module | None = None,
    ) -> Checkpoint | None:
        """``auto`` falls back to the newest *intact* checkpoint when the latest cannot be read (one warning line
        naming it); an explicit folder that cannot be read raises :class:`CheckpointError`."""
        if (resume or "auto").strip() == "auto":
            main = self.accelerator is None or self.accelerator.is_main_process
            ckpt = load_latest_intact(self.output_dir, warn=log.warning if main else None)
            if ckpt is None:
                return None
        else:
            path = self.find(resume)
            if path is None:
                return None
            ckpt = load_checkpoint(path)
        rank = self.accelerator.process_index if self.accelerator is not None else 0
        deepspeed = zero.is_deepspeed(self.accelerator)
        sharded = sharding.is_fsdp(self.accelerator) or deepspeed
        restore_training_state(
            ckpt,
            params=None if deepspeed else trainable,  # DeepSpeed: the weights come back from its fp32 masters
            optimizer=None if sharded else optimizer,
            lr_scheduler=lr_scheduler,
            grad_scaler=grad_scaler,
            rank=rank,
            strict=strict,
        )
        if sharded and optimizer is not None:
            self._load_optimizer_shards(ckpt, optimizer, model)
        self.last_saved_step = ckpt.step
        return ckpt

    def _load_optimizer_shards(self, ckpt: Checkpoint, optimizer, model) -> None:
        from accelerate.utils import load_fsdp_optimizer

        folder = ckpt.path / OPTIMIZER_SHARDS_DIR
        acc = self.accelerator
        if zero.is_deepspeed(acc):
            zero.load(model, folder, num_processes=acc.num_processes)
            return
        if not folder.is_dir() or (folder / zero.CHECKPOINT_TAG).is_dir():
            raise CheckpointError(
                f"{ckpt.path} has no FSDP optimizer state ({OPTIMIZER_SHARDS_DIR}/ of torch DCP files): it was not "
                "written by an FSDP run; resume it the way it was trained, or start from its weights with init_from"
            )
        load_fsdp_optimizer(acc.state.fsdp_plugin, acc, optimizer, model, str(folder))


def load_init_tensors(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """``init_from``: copy a training checkpoint's tensors into the model's parameters, matched by name.

    Every saved tensor must name a parameter of the model with the same shape (a stage-1 checkpoint into a
    stage-2 run is the usual case).  Returns the names loaded.
    """
    ckpt = load_checkpoint(path, load_optimizer=False)
    params = dict(model.named_parameters())
    unknown = sorted(set(ckpt.trainable) - set(params))
    if unknown:
        raise CheckpointError(
            f"init_from {ckpt.path}: {len(unknown)} tensors match no parameter of the model "
            f"(e.g. {unknown[:3]}); was it trained on another model or LoRA setting?"
        )
    with torch.no_grad():
        for name, tensor in ckpt.trainable.items():
            dst = params[name]
            if dst.shape != tensor.shape:
                raise CheckpointError(
                    f"init_from {ckpt.path}: {name} has shape {tuple(tensor.shape)}, the model {tuple(dst.shape)}"
                )
            dst.copy_(tensor.to(device=dst.device, dtype=dst.dtype))
    return sorted(ckpt.trainable)
