"""Optimizer and learning-rate schedules of the official DeepGen trainer.

* AdamW, betas (0.9, 0.95), weight decay 0.05 **only on parameters with ndim ≥ 2** (matrices,
  ``meta_queries``, LoRA A/B); 1-D parameters (biases, norm weights) get 0 — the official ``CustomAdamW``.
  Frozen parameters (``requires_grad=False``) are left out.  Groups are built with named parameters
  (torch's ``param_names``), so a checkpoint records which tensor each optimizer slot belongs to.
* ``"cosine"`` schedule (stages 1 and 2): mmengine ``LinearLR(start_factor=1e-5)`` over the first
  ``warmup_ratio`` (1 %) of the steps, then ``CosineAnnealingLR(eta_min=0)`` to 0 at ``max_steps``.
  In closed form, for scheduler step ``s`` and ``W`` warm-up steps, ``M`` = ``max_steps``::

      s < W:        factor = start + (1 - start) * s / W
      W <= s <= M:  factor = 0.5 * (1 + cos(pi * (s - W) / (M - W)))
      s > M:        factor = 0

  which is exactly torch's ``SequentialLR([LinearLR(start, total_iters=W), CosineAnnealingLR(T_max=M-W)],
  milestones=[W])``, written as one ``LambdaLR`` with a picklable lambda object so its ``state_dict``
  round-trips (also with ``torch.load(weights_only=True)``).
* ``"constant"`` schedule (stage 3, RL): linear warm-up over ``warmup_steps`` (20) then constant.  The factor
  of update ``s`` is ``(s + 1) / W`` (with ``start_factor=0``): transformers' ``constant_with_warmup`` one
  update ahead, so the first update (the first rollout) already learns at ``lr / W`` instead of lr 0, and update
  ``W - 1`` (the ``W``-th) is the first at full lr.

Step the scheduler once per optimizer update: ``max_steps`` counts optimizer updates.  (The official
configs count *micro*-iterations — 200k/400k at accumulation 4/3 — and step the schedule every
micro-iteration; a schedule over updates with the same warm-up ratio has the same shape.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Union

import torch
from torch import nn

__all__ = [
    "DEFAULT_BETAS",
    "DEFAULT_WEIGHT_DECAY",
    "DEFAULT_START_FACTOR",
    "SCHEDULES",
    "build_param_groups",
    "build_optimizer",
    "warmup_steps_for",
    "WarmupCosine",
    "WarmupConstant",
    "build_lr_scheduler",
]

DEFAULT_BETAS = (0.9, 0.95)
DEFAULT_WEIGHT_DECAY = 0.05
DEFAULT_START_FACTOR = 1e-5
SCHEDULES = ("cosine", "constant")

NamedParams = Union[nn.Module, Mapping[str, nn.Parameter], Iterable[tuple[str, nn.Parameter]]]


def _named(params: NamedParams) -> list[tuple[str, nn.Parameter]]:
    if isinstance(params, nn.Module):
        return list(params.named_parameters())
    if isinstance(params, Mapping):
        return list(params.items())
    out = list(params)
    if out and not (isinstance(out[0], tuple) and len(out[0]) == 2 and isinstance(out[0][0], str)):
        raise TypeError("params must be a module, a {name: parameter} dict or (name, parameter) pairs")
    return out


def build_param_groups(params: NamedParams, weight_decay: float = DEFAULT_WEIGHT_DECAY) -> list[dict]:
    """Two AdamW groups from named parameters: ``decay`` (ndim ≥ 2) and ``no_decay`` (ndim < 2).

    Only parameters with ``requires_grad`` are kept; empty groups are dropped.  Each group holds
    ``(name, param)`` pairs, which torch turns into ``params`` + ``param_names``, plus a ``group``
    label.  Raises ``ValueError`` if nothing is trainable or a parameter appears twice.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be ≥ 0, got {weight_decay}")
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    seen = set()
    for name, p in _named(params):
        if not p.requires_grad:
            continue
        if id(p) in seen:
            raise ValueError(f"parameter {name!r} is listed twice (tied weights?); pass each tensor once")
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append((name, p))
    if not decay and not no_decay:
        raise ValueError("no trainable parameters (every parameter has requires_grad=False)")
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": float(weight_decay), "group": "decay"})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "group": "no_decay"})
    return groups


def build_optimizer(
    params: NamedParams,
    *,
    lr: float,
    betas: tuple[float, float] = DEFAULT_BETAS,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    eps: float = 1e-8,
    **adamw_kwargs,
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over :func:`build_param_groups` (extra kwargs, e.g. ``fused``, go to AdamW)."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    b1, b2 = betas
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"betas must be in [0, 1), got {betas}")
    return torch.optim.AdamW(
        build_param_groups(params, weight_decay),
        lr=lr,
        betas=(float(b1), float(b2)),
        eps=eps,
        weight_decay=float(weight_decay),
        **adamw_kwargs,
    )


def warmup_steps_for(max_steps: int, warmup_ratio: float) -> int:
    """Warm-up length as mmengine computes it (``warmup_ratio * max_iters``), truncated to an int."""
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    return int(warmup_ratio * max_steps)


class WarmupCosine:
    """LR factor: linear warm-up from ``start_factor`` over ``warmup_steps``, cosine to 0 at ``max_steps``.

    A plain object (not a closure) so ``LambdaLR.state_dict()`` saves its fields.
    """

    def __init__(self, max_steps: int, warmup_steps: int, start_factor: float = DEFAULT_START_FACTOR):
        if max_steps < 1:
            raise ValueError(f"max_steps must be ≥ 1, got {max_steps}")
        if not 0 <= warmup_steps < max_steps:
            raise ValueError(f"warm-up steps must be in [0, max_steps), got {warmup_steps} (max_steps {max_steps})")
        if not 0 <= start_factor <= 1:
            raise ValueError(f"start_factor must be in [0, 1], got {start_factor}")
        self.max_steps = int(max_steps)
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)

    def __call__(self, step: int) -> float:
        w, m = self.warmup_steps, self.max_steps
        if step < w:
            return self.start_factor + (1.0 - self.start_factor) * step / w
        if step >= m:
            return 0.0
        return 0.5 * (1.0 + math.cos(math.pi * (step - w) / (m - w)))


class WarmupConstant:
    """LR factor: linear warm-up over ``warmup_steps``, then 1.

    Update ``s < W`` gets ``start_factor + (1 - start_factor) * (s + 1) / W``: never 0, so no update (and no
    stage 3 rollout) is spent at lr 0; the ``W``-th update is the first at full lr.
    """

    def __init__(self, warmup_steps: int, start_factor: float = 0.0):
        if warmup_steps < 0:
            raise ValueError(f"warm-up steps must be ≥ 0, got {warmup_steps}")
        if not 0 <= start_factor <= 1:
            raise ValueError(f"start_factor must be in [0, 1], got {start_factor}")
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * (step + 1) / self.warmup_steps
        return 1.0


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    schedule: str = "cosine",
    max_steps: int | None = None,
    warmup_ratio: float = 0.01,
    warmup_steps: int | None = None,
    start_factor: float | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` for ``schedule`` ``"cosine"`` (needs ``max_steps``) or ``"constant"``.

    Warm-up length: ``warmup_steps`` if given, else ``int(warmup_ratio * max_steps)``.  ``start_factor``
    defaults to 1e-5 for cosine (official) and 0 for constant (whose first update still gets ``lr / W``).
    Call ``scheduler.step()`` after each ``optimizer.step()``.
    """
    fn: WarmupCosine | WarmupConstant
    if schedule == "cosine":
        if max_steps is None:
            raise ValueError("the cosine schedule needs max_steps")
        w = warmup_steps if warmup_steps is not None else warmup_steps_for(max_steps, warmup_ratio)
        fn = WarmupCosine(max_steps, w, DEFAULT_START_FACTOR if start_factor is None else start_factor)
    elif schedule == "constant":
        if warmup_steps is None:
            warmup_steps = warmup_steps_for(max_steps, warmup_ratio) if max_steps is not None else 0
        fn = WarmupConstant(warmup_steps, 0.0 if start_factor is None else start_factor)
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
