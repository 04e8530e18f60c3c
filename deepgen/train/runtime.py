"""The training runtime shared by every DeepGen trainer (stages 1–2 in ``trainer.py``, stage 3 in ``grpo/``).

Nothing here knows about a stage's loss or data.  This module only gathers the names trainers import; each job
lives in its own module:

* ``accelerate_setup.py`` — :func:`build_accelerator` (``mixed_precision`` ``auto|no|bf16|fp16``; safe to call
  again in the same process, e.g. from a ComfyUI node), :func:`ddp_kwargs`, :func:`global_mean` and
  :class:`LossModule` (the module handed to ``accelerator.prepare``: its ``forward`` calls the stage's loss
  function on the model, so DDP's gradient hooks see the whole step);
* ``model_source.py`` — :func:`load_model_for_training` (``"tiny"``, a release folder/file, or a folder with only
  the base VLM + DiT, which gives a freshly initialised SCB for stage 1) and :class:`ModelSource`;
* ``trainable.py`` — :class:`TrainableSpec` (what trains: think tokens, projectors, connector, DiT
  ``full|lora|frozen``, VLM LoRA), :func:`setup_trainable` (freezes everything else, injects the PEFT LoRAs,
  keeps fp32 master copies of what trains), :func:`enable_gradient_checkpointing` and :func:`preserve_model`;
* ``checkpoint_manager.py`` — :class:`CheckpointManager` (save on every rank, resume ``auto|no|path`` with the
  optimizer, LR schedule, RNG and data position; the format is the ``checkpointing`` package's) and
  :func:`load_init_tensors`;
* ``draws.py`` — :func:`sample_generator`, :func:`flow_batch_inputs` and :func:`seeded_step`: draws keyed by the
  sample's global stream position, so they depend neither on the process count nor on a resume;
* ``sharding.py`` — FSDP2 / DeepSpeed through accelerate: ``prepare`` (model and optimizer together, the VAE
  kept out of the shards), ``full_weights`` (whole weights for sampling and exports, on every process);
* ``trackers.py`` — accelerate's ``log_with`` (TensorBoard by default when installed, W&B when asked) and
  :class:`TrackerCallback`, which logs the JSONL numbers and the validation images;
* ``callbacks.py`` — :class:`TrainCallback` (progress, loss, interrupt, checkpoint, validation, export hooks),
  :class:`CallbackList` (and the interrupt protocol), :class:`RunInfo`, :class:`StepInfo`, :class:`Stopwatch`.
"""

from __future__ import annotations

from ..errors import TrainingError  # a run that cannot start or continue
from .accelerate_setup import (
    LossModule,
    build_accelerator,
    ddp_kwargs,
    global_mean,
    resolve_mixed_precision,
    weight_dtype_for,
)
from .callbacks import CallbackList, RunInfo, StepInfo, Stopwatch, TrainCallback
from .checkpoint_manager import CheckpointManager, load_init_tensors
from .draws import flow_batch_inputs, sample_generator, seeded_step
from .model_source import ModelSource, describe_model_source, load_model_for_training
from .trainable import (
    SCB_PARTS,
    TrainableSpec,
    count_parameters,
    enable_gradient_checkpointing,
    preserve_model,
    remove_lora_adapters,
    setup_trainable,
    trainable_named_parameters,
)

__all__ = [
    "TrainingError",
    "RunInfo",
    "StepInfo",
    "TrainCallback",
    "CallbackList",
    "build_accelerator",
    "ddp_kwargs",
    "resolve_mixed_precision",
    "weight_dtype_for",
    "ModelSource",
    "describe_model_source",
    "load_model_for_training",
    "TrainableSpec",
    "setup_trainable",
    "trainable_named_parameters",
    "count_parameters",
    "enable_gradient_checkpointing",
    "LossModule",
    "CheckpointManager",
    "sample_generator",
    "seeded_step",
    "flow_batch_inputs",
    "global_mean",
    "load_init_tensors",
    "preserve_model",
    "remove_lora_adapters",
    "Stopwatch",
    "SCB_PARTS",
]
