"""DeepSpeed ZeRO-2/3 through accelerate (``configs/accelerate/zero2.yaml``, ``zero3.yaml``): what the trainers
do differently when ``accelerate launch`` starts them under DeepSpeed.  ``sharding.py`` dispatches here.

* :func:`configure` writes the run's settings into the DeepSpeed config before ``accelerator.prepare``: the
  micro-batch, ``gradient_accumulation_steps`` and ``gradient_clipping`` come from the training config (a launch
  config that sets them otherwise is refused, not silently overridden);
* :func:`backward` / :func:`step`: the engine owns accumulation and the update.  Every micro-batch's backward goes
  through ``engine.backward`` with the trainer's own loss scaling (``scale_wrt_gas=False``: the trainers already
  divide by their accumulation count, stage 3 by its official ``1/(U·K·M)``), the last one before an update
  declared as the engine's accumulation boundary; ``engine.step()`` then clips with ``gradient_clipping``,
  steps the optimizer and zeroes the gradients;
* :func:`gathered` (ZeRO-3) puts whole weights in the model for code outside the training forward, on every
  process; :func:`fp32_tensors` gathers the fp32 master weights for ``trainable.safetensors``;
* :func:`save` / :func:`load`: the engine's own checkpoint (``engine.save_checkpoint`` with the frozen weights
  left out: the optimizer partitions and fp32 masters of every process) in ``optimizer_shards/zero/`` of deepgen's
  atomic checkpoint folder.

Tested on two CPU processes (gloo, DeepSpeed's CPU accelerator): tests/test_trainer_deepspeed.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, TrainingError

__all__ = [
    "ZERO_STAGES",
    "CHECKPOINT_TAG",
    "is_deepspeed",
    "zero_stage",
    "switch_cpu_state",
    "whole_model",
    "configure",
    "backward",
    "step",
    "gathered",
    "fp32_tensors",
    "save",
    "load",
]

ZERO_STAGES = (2, 3)  # the stages tested (ZeRO-1 and 0 are refused: never run here)
CHECKPOINT_TAG = "zero"  # the engine's checkpoint sub-folder inside optimizer_shards/


def is_deepspeed(acc) -> bool:
    return acc is not None and str(getattr(acc, "distributed_type", "NO")).rsplit(".", 1)[-1] == "DEEPSPEED"


def zero_stage(acc) -> int:
    return int(acc.state.deepspeed_plugin.zero_stage)


def switch_cpu_state(acc) -> None:
    """Honour a DeepSpeed launch config in CPU processes (``deepgen train --cpu``).

    accelerate 1.16 enables DeepSpeed only without ``cpu=True``, and then, on a machine with no accelerator, gives
    every process ``num_processes == 1`` although DeepSpeed joined them all (measured: ``train_batch_size``
    assertion in ``deepspeed.initialize``).  With ``cpu=True`` accelerate sets up the processes (gloo), and this
    switches its state to DeepSpeed with the plugin the launcher's environment describes, as accelerate does for
    its own DeepSpeed state; DeepSpeed's CPU accelerator does the rest.  Only public attributes are written.
    """
    import os

    from accelerate.state import PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    wants = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if not wants or acc.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision(acc.mixed_precision)
    plugin.set_deepspeed_weakref()
    state = acc.state
    state.deepspeed_plugins = plugin
    state.distributed_type = DistributedType.DEEPSPEED
    PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED
    acc.deepspeed_engine_wrapped = None


@contextlib.contextmanager
def whole_model(acc) -> Iterator[None]:
    """Build the model whole inside this block under ZeRO-3 (a no-op otherwise).

    accelerate points transformers at its DeepSpeed config, and under ZeRO-3 transformers then partitions every
    model it constructs (``deepspeed.zero.Init``), even with ``zero3_init_flag: false``; deepgen's loaders copy
    real weights into whole modules (measured: "Cannot copy out of meta tensor").  So transformers is unhooked
    while the model is built, and DeepSpeed partitions the model at ``prepare``.  The start-up peak is then the
    unsharded weights on every process, as under FSDP."""
    if not (is_deepspeed(acc) and zero_stage(acc) == 3):
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        acc.state.deepspeed_plugin.set_deepspeed_weakref()


def _explicit(value) -> bool:
    return value is not None and value != "auto"


def configure(acc, *, micro_batch_size: int, grad_accumulation: int, max_grad_norm: float) -> None:
    """Put the run's batch, accumulation and clipping into the DeepSpeed config (before ``prepare``)."""
    stage = zero_stage(acc)
    if stage not in ZERO_STAGES:
        raise TrainingError(
            f"deepgen trains under DeepSpeed ZeRO stage 2 or 3 only (the accelerate config asks for {stage}): use "
            "configs/accelerate/zero2.yaml or zero3.yaml"
        )
    config = acc.state.deepspeed_plugin.deepspeed_config
    if (config.get("fp16") or {}).get("enabled") is True:
        raise TrainingError(
            "deepgen does not train under DeepSpeed's fp16 (never run here; its loss scaler may skip an update that "
            "the LR schedule still counts): use mixed_precision bf16 or no"
        )
    wanted = {"gradient_accumulation_steps": int(grad_accumulation), "gradient_clipping": float(max_grad_norm)}
    for key, value in wanted.items():
        if _explicit(config.get(key)) and float(config[key]) != value:
            raise TrainingError(
                f"the accelerate config sets DeepSpeed's {key} to {config[key]}, the training config to {value} "
                "(grad_accumulation / max_grad_norm): leave it out of the accelerate config"
            )
    config.update(wanted, train_micro_batch_size_per_gpu=int(micro_batch_size))
    acc.gradient_accumulation_steps = int(grad_accumulation)  # what prepare would otherwise warn it takes over
    config["train_batch_size"] = int(micro_batch_size) * int(grad_accumulation) * acc.num_processes


def backward(engine, loss: torch.Tensor, *, boundary: bool) -> None:
    """One micro-batch's backward through the engine; ``boundary``: the last before an update."""
    engine.set_gradient_accumulation_boundary(boundary)
    engine.backward(loss, scale_wrt_gas=False)


def step(engine) -> float | None:
    """The update at an accumulation boundary (clip, optimizer step, zero grad); returns the gradient norm."""
    engine.step()
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else None


@contextlib.contextmanager
def gathered(acc, module: nn.Module) -> Iterator[None]:
    """Whole weights in ``module`` inside the block under ZeRO-3 (collective: every process enters it, in the same
    order); a no-op under ZeRO-2, whose weights are whole on every process."""
    if zero_stage(acc) < 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        yield


def fp32_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{name: whole fp32 master}`` of the trainable parameters (collective: every process, same order)."""
    from deepspeed.utils import safe_get_full_fp32_param

    out = {}
    for name, param in tensors.items():
        full = safe_get_full_fp32_param(param)
        if full is None:  # not one of the engine's optimizer parameters
            raise TrainingError(f"{name} trains but DeepSpeed's optimizer does not hold it")
        out[name] = full.detach().cpu()
    return out


def save(engine, folder: Path) -> None:
    """Every process writes its optimizer partition (and fp32 masters) into ``folder/zero`` (collective)."""
    engine.save_checkpoint(
        str(folder), tag=CHECKPOINT_TAG, client_state={}, save_latest=False, exclude_frozen_parameters=True
    )


def load(engine, folder: Path, *, num_processes: int) -> None:
    """Restore the engine's optimizer partitions, fp32 masters and weights (collective)."""
    files = sorted((folder / CHECKPOINT_TAG).glob("*optim_states.pt")) if (folder / CHECKPOINT_TAG).is_dir() else []
    if not files:
        raise CheckpointError(
            f"{folder.parent} has no DeepSpeed optimizer state ({folder.name}/{CHECKPOINT_TAG}/): it was not written "
            "by a DeepSpeed run; resume it the way it was trained, or start from its weights with init_from"
        )
    if len(files) != num_processes:
        raise CheckpointError(
            f"{folder.parent} holds DeepSpeed optimizer partitions of {len(files)} process(es); resume it with "
            f"{len(files)}, not {num_processes} (or start from its weights with init_from)"
        )
    params = dict(engine.module.named_parameters())
    wanted = sorted(n for n, p in params.items() if p.requires_grad)

    def load_module(src: Mapping[str, torch.Tensor], dst: nn.Module) -> None:
        # the saved module state holds the trainable parameters (exclude_frozen_parameters drops the frozen ones;
        # buffers and tied aliases such as lm_head.weight stay): the same parts must train.  ZeRO-2 takes the
        # weights from it (measured: without this copy the resumed step 2 ran on other weights); ZeRO-3's are
        # empty partitions here, restored from the optimizer's fp32 partitions instead
        saved = sorted(k for k in src if k in params)
        if saved != wanted:
            raise CheckpointError(
                f"the DeepSpeed checkpoint in {folder.parent} trains {len(saved)} tensors, this run {len(wanted)} "
                f"(e.g. {sorted(set(saved) ^ set(wanted))[:3]}): train the same parts as the saved run"
            )
        with torch.no_grad():
            for name in saved:
                if not hasattr(params[name], "ds_id"):  # ZeRO-3 parameters carry a ds_id
                    params[name].copy_(src[name].to(params[name].device, params[name].dtype))

    path, _ = engine.load_checkpoint(
        str(folder),
        tag=CHECKPOINT_TAG,
        load_optimizer_states=True,
        load_lr_scheduler_states=False,
        custom_load_fn=load_module,
    )
    if path is None:
        raise CheckpointError(f"DeepSpeed could not read its checkpoint in {folder}")
