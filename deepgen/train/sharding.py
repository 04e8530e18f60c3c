"""Sharded training through accelerate (FSDP2, DeepSpeed ZeRO-2/3): what the trainers do differently when
``accelerate launch --config_file configs/accelerate/fsdp.yaml`` (or ``zero2.yaml`` / ``zero3.yaml``) starts them.
The DeepSpeed specifics live in ``zero.py``.

* :func:`prepare` hands the loss module and the optimizer to ``accelerator.prepare`` together (FSDP2 swaps every
  parameter for a sharded one and re-points the optimizer at the new ones; DeepSpeed wraps both in its engine),
  keeps the frozen VAE out of FSDP's shards (the trainers call it outside the training forward) and returns the
  trainable parameters *after* wrapping, which are the ones to clip, step and save;
* :func:`backward` and :func:`optimizer_step`: one micro-batch's backward, and the update (clip, step, zero
  grad) that returns the gradient norm; under DeepSpeed the engine accumulates and steps (``zero.py``);
* :func:`full_weights` puts whole weights in the model as plain tensors, for code that reads the model
  outside the training forward (validation sampling, stage-3 rollouts, the exports' ``state_dict``): every
  process must enter it, in the same order, and run the same forwards inside (the wrapped blocks' hooks still
  all-gather);
* :func:`gather_tensors` gathers sharded trainable tensors for a checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from . import zero
from .trainable import trainable_named_parameters

__all__ = [
    "is_fsdp",
    "every_process_samples",
    "prepare",
    "backward",
    "optimizer_step",
    "full_weights",
    "gather_tensors",
    "sharding_name",
]


def _type(acc) -> str:
    return str(getattr(acc, "distributed_type", "NO")).rsplit(".", 1)[-1]


def is_fsdp(acc) -> bool:
    return acc is not None and _type(acc) == "FSDP"


def every_process_samples(acc) -> bool:
    """Whether sampling outside the training forward is collective (FSDP, ZeRO-3: the weights' gathers are), so
    every process must sample, not the main one alone."""
    return is_fsdp(acc) or (zero.is_deepspeed(acc) and zero.zero_stage(acc) == 3)


def sharding_name(acc) -> str:
    if is_fsdp(acc):
        return f"FSDP{getattr(acc.state.fsdp_plugin, 'fsdp_version', 1)}"
    if zero.is_deepspeed(acc):
        return f"ZeRO-{zero.zero_stage(acc)}"
    return "none"


def prepare(acc, loss_module: nn.Module, optimizer, model: nn.Module, *, deepspeed: dict | None = None):
    """``accelerator.prepare(loss_module, optimizer)``; returns ``(wrapped, optimizer, trainable)`` where
    ``trainable`` is ``{name: parameter}`` of ``model`` after wrapping (FSDP2 replaces the parameter objects).
    ``deepspeed``: the keyword arguments of :func:`zero.configure` (micro-batch, accumulation, clipping), needed
    under DeepSpeed."""
    if zero.is_deepspeed(acc):
        if deepspeed is None:
            raise TypeError("a DeepSpeed run needs the micro-batch, accumulation and clipping settings")
        zero.configure(acc, **deepspeed)
    if is_fsdp(acc):
        plugin = acc.state.fsdp_plugin
        if getattr(plugin, "fsdp_version", 1) != 2:
            from ..errors import TrainingError

            raise TrainingError(
                "deepgen trains under FSDP version 2 only (torch fully_shard): set fsdp_version: 2 in the accelerate "
                "config (configs/accelerate/fsdp.yaml)"
            )
        vae = getattr(model, "vae", None)
        if vae is not None and plugin.ignored_modules is None:  # frozen, called outside the training forward
            plugin.ignored_modules = [vae]
    wrapped, optimizer = acc.prepare(loss_module, optimizer)
    if is_fsdp(acc):
        _init_fsdp_root(wrapped)
    return wrapped, optimizer, trainable_named_parameters(model)


def backward(acc, wrapped, loss: torch.Tensor, *, boundary: bool) -> None:
    """One micro-batch's backward of an already scaled loss; ``boundary``: the last one before an update (DDP's
    gradient sync is the caller's ``no_sync``; DeepSpeed is told here)."""
    if zero.is_deepspeed(acc):
        zero.backward(wrapped, loss, boundary=boundary)
    else:
        acc.backward(loss)


def optimizer_step(acc, wrapped, optimizer, params, max_grad_norm: float, *, measure: bool = False) -> float | None:
    """Clip to ``max_grad_norm`` (0: no clipping), step, zero the gradients; returns the gradient norm before
    clipping, or None when nothing clipped and ``measure`` is off.  DeepSpeed: its engine does all of it
    (``gradient_clipping`` = ``max_grad_norm``) and reports its norm."""
    if zero.is_deepspeed(acc):
        return zero.step(wrapped)
    params = list(params)
    total = None
    if max_grad_norm > 0:
        total = acc.clip_grad_norm_(params, max_grad_norm)
    elif measure:
        grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
        total = torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros(())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(total) if total is not None else None


def _init_fsdp_root(wrapped: nn.Module) -> None:
    """FSDP2 decides which module is the root at the first forward of *any* unit.  Stage 3 rolls out (blocks
    called directly) before its first training forward, which would make a block the root; initialise the
    real root now.  ``_lazy_init`` is private: torch has no public call for it (checked on torch 2.13)."""
    state = wrapped._get_fsdp_state()  # type: ignore[operator]
    state._lazy_init()


@contextlib.contextmanager
def full_weights(acc, module: nn.Module) -> Iterator[None]:
    """Whole weights in ``module`` inside the block, under FSDP2 and ZeRO-3 (``zero.gathered``); a no-op
    otherwise.

    FSDP2: every sharded parameter is all-gathered and put in the module as a plain tensor, and the sharded one is put
    back on exit, so code that reads the model outside the training forward (validation sampling, stage-3
    rollouts, the exports' ``state_dict``) sees ordinary tensors.  FSDP's own hooks keep working inside: a
    wrapped block's forward still all-gathers (and reshards) its unit.  Collective: every process must enter it,
    in the same order, and run the same forwards inside it.  Costs the whole model's memory on every process
    while inside.
    """
    if zero.is_deepspeed(acc):
        with zero.gathered(acc, module):
            yield
        return
    if not is_fsdp(acc):
        yield
        return
    from torch.distributed.tensor import DTensor

    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    with torch.no_grad():
        for owner in module.modules():
            for name, param in list(owner._parameters.items()):
                if isinstance(param, DTensor):
                    swapped.append((owner, name, param))
                    owner._parameters[name] = nn.Parameter(param.full_tensor(), requires_grad=False)
    try:
        yield
    finally:
        for owner, name, param in swapped:
            owner._parameters[name] = param


def gather_tensors(acc, tensors) -> dict[str, torch.Tensor]:
    """``{name: whole tensor}`` of a ``{name: tensor}`` mapping whose tensors may be FSDP shards, or DeepSpeed
    parameters (then their fp32 masters); collective under FSDP and DeepSpeed: call it on every process; detached."""
    if zero.is_deepspeed(acc):
        return zero.fp32_tensors(tensors)
    from torch.distributed.tensor import DTensor

    out = {}
    for name, t in tensors.items():
        t = t.detach()
        out[name] = t.full_tensor() if isinstance(t, DTensor) else t
    return out
