"""Putting a loaded checkpoint back into a live run: parameters, optimizer, LR schedule, grad scaler and RNG."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import CheckpointError
from ..zero import CHECKPOINT_TAG
from .layout import OPTIMIZER_SHARDS_DIR, trainable_parameters
from .load import Checkpoint
from .rng import restore_rng_state


def load_trainable_into(
    params: Mapping[str, Tensor] | nn.Module, tensors: Mapping[str, Tensor], *, strict: bool = True
) -> tuple[list[str], list[str]]:
    """Copy saved tensors into the live parameters (by name); returns ``(missing, unexpected)``.

    ``strict`` raises :class:`CheckpointError` on missing/unexpected names; shape mismatches always raise.
    """
    if isinstance(params, nn.Module):
        params = trainable_parameters(params)
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"checkpoint parameters do not match the trainable parameters: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). Train the same "
            "parts (train_* / LoRA settings) as the saved run."
        )
    with torch.no_grad():
        for name in [n for n in params if n in tensors]:  # one order on every process (FSDP: see below)
            dst, src = params[name], tensors[name]
            if dst.shape != src.shape:
                raise CheckpointError(
                    f"{name}: checkpoint shape {tuple(src.shape)} != parameter shape {tuple(dst.shape)}"
                )
            src = src.to(device=dst.device, dtype=dst.dtype)
            if _is_dtensor(dst):  # an FSDP shard: every process read the whole saved tensor; keep its own part
                from torch.distributed.tensor import distribute_tensor

                mesh, placements = getattr(dst, "device_mesh"), getattr(dst, "placements")
                src = distribute_tensor(src, mesh, placements, src_data_rank=None)
            dst.copy_(src)
    return missing, unexpected


def _is_dtensor(t: Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _group_names(groups: Sequence[Mapping]) -> list[list[str] | None]:
    """The parameter names each optimizer group recorded (None where it recorded none)."""
    return [list(g["param_names"]) if "param_names" in g else None for g in groups]


def _restore_optimizer(ckpt: Checkpoint, optimizer: Any) -> None:
    if ckpt.optimizer is None:
        if (ckpt.path / OPTIMIZER_SHARDS_DIR).is_dir():
            kind = "DeepSpeed" if (ckpt.path / OPTIMIZER_SHARDS_DIR / CHECKPOINT_TAG).is_dir() else "FSDP"
            config = "zero2.yaml or zero3.yaml" if kind == "DeepSpeed" else "fsdp.yaml"
            raise CheckpointError(
                f"{ckpt.path} was written by a {kind} run: its optimizer state is sharded ({OPTIMIZER_SHARDS_DIR}/); "
                f"resume it under {kind} (accelerate launch --config_file configs/accelerate/{config}), or start a "
                "new run from its weights with init_from"
            )
        raise CheckpointError(f"{ckpt.path} holds no optimizer state")
    saved = _group_names(ckpt.optimizer.get("param_groups", []))
    live_opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    current = _group_names(live_opt.state_dict()["param_groups"])
    if all(n is not None for n in saved + current) and saved != current:
        raise CheckpointError(
            "the optimizer's parameters differ from the checkpoint's (by name or order): saved "
            f"{[len(n) for n in saved if n is not None]} per group, "
            f"now {[len(n) for n in current if n is not None]}; build the optimizer "
            "with deepgen.train.optim.build_optimizer over the same trainable parameters."
        )
    optimizer.load_state_dict(ckpt.optimizer)


def restore_training_state(
    ckpt: Checkpoint,
    *,
    params: Mapping[str, Tensor] | nn.Module | None = None,
    optimizer: Any = None,
    lr_scheduler: Any = None,
    grad_scaler: Any = None,
    rank: int = 0,
    restore_rng: bool = True,
    strict: bool = True,
) -> None:
    """Put a loaded checkpoint back: parameters, optimizer, LR schedule, grad scaler and RNG of ``rank``.

    The optimizer must have been built the same way (same trainable parameters in the same order);
    recorded parameter names are checked and a mismatch raises :class:`CheckpointError`.  If the
    checkpoint has fewer RNG states than ``rank + 1`` (resumed with more processes) a warning is given
    and rank 0's state is used.  The data position is not restored here: pass ``ckpt.data_position`` to
    ``MicroBatchLoader.load_state_dict``.
    """
    if params is not None:
        load_trainable_into(params, ckpt.trainable, strict=strict)
    if optimizer is not None:
        _restore_optimizer(ckpt, optimizer)
    if lr_scheduler is not None:
        if ckpt.lr_scheduler is None:
            raise CheckpointError(f"{ckpt.path} holds no LR-scheduler state")
        lr_scheduler.load_state_dict(ckpt.lr_scheduler)
    if grad_scaler is not None and ckpt.grad_scaler is not None:
        grad_scaler.load_state_dict(ckpt.grad_scaler)
    if restore_rng and ckpt.rng_states:
        if rank < len(ckpt.rng_states):
            restore_rng_state(ckpt.rng_states[rank])
        else:
            warnings.warn(
                f"checkpoint has RNG states for {len(ckpt.rng_states)} process(es); rank {rank} "
                "uses rank 0's, so random draws on this rank will not continue the saved run",
                stacklevel=2,
            )
            restore_rng_state(ckpt.rng_states[0])
