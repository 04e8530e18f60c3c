"""accelerate setup for a run: the mixed precision (:func:`resolve_mixed_precision`, :func:`weight_dtype_for`),
the :func:`build_accelerator` every trainer uses (safe to call again in one process, e.g. from a ComfyUI node),
the DDP settings (:func:`ddp_kwargs`), the module handed to ``accelerator.prepare`` (:class:`LossModule`) and a
cross-process mean (:func:`global_mean`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import TrainingError
from .zero import switch_cpu_state

__all__ = [
    "resolve_mixed_precision",
    "weight_dtype_for",
    "ddp_kwargs",
    "build_accelerator",
    "LossModule",
    "global_mean",
]


def resolve_mixed_precision(value: str, device: torch.device | str | None = None) -> str:
    """``auto`` → bf16 where supported (CUDA with bf16), fp16 on older CUDA, else no.  Others pass through."""
    if value not in ("no", "bf16", "fp16", "auto"):
        raise TrainingError(f"mixed_precision must be one of no, bf16, fp16, auto (got {value!r})")
    if value != "auto":
        return value
    dev = torch.device(device) if device is not None else None
    if (dev is None or dev.type == "cuda") and torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def weight_dtype_for(mixed_precision: str) -> torch.dtype:
    """dtype of the frozen weights for a precision (trainable ones are fp32 masters in every case)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


def ddp_kwargs(find_unused_parameters: bool = True):
    """DDP settings: unused parameters are normal here (an edit micro-batch and a T2I one use different paths;
    the VLM LoRA on the vision tower never gets a gradient, as officially)."""
    from accelerate.utils import DistributedDataParallelKwargs

    return DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)


def build_accelerator(
    mixed_precision: str = "auto", *, cpu: bool | None = None, kwargs_handlers: Sequence = (), **kwargs
):
    """An ``accelerate.Accelerator`` for a run.

    ``mixed_precision='auto'`` resolves as :func:`resolve_mixed_precision`.  Under ``accelerate launch`` the
    launcher's settings (processes, DDP/FSDP/DeepSpeed) apply.  In a single process an existing accelerate state
    with another precision is reset first, so a ComfyUI node or a test may build several in turn.  Gradient
    accumulation is done by the trainer (``accelerator.no_sync``; under DeepSpeed the engine, told where an
    update's micro-batches end: ``sharding.backward``), not by accelerate's counter.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState, is_initialized

    _check_deepspeed(cpu)
    device = "cpu" if cpu else None
    precision = resolve_mixed_precision(mixed_precision, device)
    if is_initialized():  # an Accelerator was built before in this process (never touch a fresh state: torchrun env)
        partial = PartialState()
        wrong_device = bool(cpu) and partial.device.type != "cpu"
        if partial.num_processes == 1 and (AcceleratorState().mixed_precision != precision or wrong_device):
            # accelerate has no public way to drop its process-wide state: _reset_state is the one private call
            # left, which is why accelerate is pinned below the next minor release (tests/test_dependency_pins.py)
            AcceleratorState._reset_state(reset_partial_state=wrong_device)
    handlers = list(kwargs_handlers) or [ddp_kwargs()]
    acc = Accelerator(
        mixed_precision=precision, cpu=bool(cpu), kwargs_handlers=handlers, device_placement=False, **kwargs
    )
    _fsdp_on_cpu(acc)
    switch_cpu_state(acc)  # the same for a DeepSpeed launch config (zero.py)
    return acc


def _check_deepspeed(cpu: bool | None) -> None:
    """A DeepSpeed launch config (configs/accelerate/zero2.yaml, zero3.yaml) without the package fails here in one
    line naming it, before anything loads."""
    import importlib.util
    import os

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise TrainingError(
            "the accelerate config asks for DeepSpeed, which is not installed: pip install deepspeed "
            "(or pip install 'comfyui-deepgen[train]' on Linux)"
        )


def _fsdp_on_cpu(acc) -> None:
    """Honour an FSDP launch config in CPU processes.

    accelerate 1.16 enables FSDP only on accelerator devices: ``accelerate launch --config_file fsdp.yaml`` with
    ``deepgen train --cpu`` would silently run plain data parallelism (MULTI_CPU, gloo).  torch's FSDP2 runs on the
    CPU with gloo, so the state is switched to FSDP with the plugin the launcher's environment describes.  This is
    what lets CI test sharded training without a GPU; it only writes the state's public attributes.
    """
    import os

    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if not wants_fsdp or acc.distributed_type != DistributedType.MULTI_CPU:
        return
    state = acc.state
    state.fsdp_plugin = FullyShardedDataParallelPlugin()
    if acc.mixed_precision != "no":  # as accelerate does for its own FSDP state
        state.fsdp_plugin.set_mixed_precision(acc.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def global_mean(accelerator, sums: Mapping[str, float], counts: Mapping[str, float]) -> dict[str, float]:
    """Per-key mean of values summed over every process (one small all-reduce)."""
    keys = sorted(set(sums) | set(counts))
    if not keys:
        return {}
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    t = torch.tensor([[float(sums.get(k, 0.0)), float(counts.get(k, 0.0))] for k in keys], dtype=dtype, device=device)
    if accelerator is not None and accelerator.num_processes > 1:
        t = accelerator.reduce(t, reduction="sum")
    return {k: (t[i, 0] / t[i, 1]).item() for i, k in enumerate(keys) if t[i, 1] > 0}


class LossModule(nn.Module):
    """Wraps the model so that ``accelerator.prepare`` (DDP/FSDP) sees the whole loss computation as one forward.

    ``forward(*args, **kwargs)`` returns ``loss_fn(model, *args, **kwargs)``; parameter names are the model's,
    prefixed with ``model.``.  Hand this, not the DeepGenModel, to ``accelerator.prepare``: accelerate then
    patches this wrapper's ``forward`` (autocast), never the model other code holds.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Any]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *args, **kwargs):
        return self.loss_fn(self.model, *args, **kwargs)
