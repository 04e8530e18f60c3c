"""The training runtime shared by every DeepGen trainer (stages 1–2 in ``trainer.py``, stage 3 in ``grpo/``).

Nothing here knows about a stage's loss or data.  It gives a trainer:

* **accelerate setup** — :func:`build_accelerator` (``mixed_precision`` ``auto|no|bf16|fp16``; safe to call
  again in the same process, e.g. from a ComfyUI node), :func:`ddp_kwargs`;
* **model sources** — :func:`load_model_for_training` (``"tiny"``, a release folder/file, or a folder with only
  the base VLM + DiT, which gives a freshly initialised SCB for stage 1) and :class:`ModelSource`;
* **trainable-parameter selection** — :class:`TrainableSpec` (what trains: think tokens, projectors, connector,
  DiT ``full|lora|frozen``, VLM LoRA) and :func:`setup_trainable`, which freezes everything else, injects the
  PEFT LoRAs and keeps fp32 master copies of what trains; :func:`enable_gradient_checkpointing`;
* **a module to hand to** ``accelerator.prepare`` — :class:`LossModule` (``forward`` calls the stage's loss
  function on the model, so DDP's gradient hooks see the whole step);
* **checkpoint glue** — :class:`CheckpointManager` (save on every rank, resume ``auto|no|path`` with the
  optimizer, LR schedule, RNG and data position; see ``checkpointing.py`` for the format);
* **determinism** — :func:`sample_generator` (a CPU generator per sample and purpose, keyed by the sample's
  global stream position, so draws do not depend on how a global batch is split over processes or on when a
  run was resumed) and :func:`seeded_step` (seeds the global RNG for one micro-step, e.g. LoRA dropout,
  without disturbing the caller's RNG);
* **callbacks** — :class:`TrainCallback` (progress, loss, interrupt, checkpoint, validation, export hooks; the
  CLI adapts them to tqdm + logs, the ComfyUI node to its progress bar and websocket events) and
  :class:`CallbackList`.

Interrupt protocol: a trainer calls :meth:`CallbackList.check_interrupt` at least once per micro-step.  A
callback that wants to stop raises (ComfyUI's ``InterruptProcessingException``, ``KeyboardInterrupt``, …).
The trainer then writes a resumable checkpoint of the last *completed* optimizer update (never a half
accumulated one), calls ``on_interrupt`` and re-raises the same exception.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpointing import (Checkpoint, CheckpointError, check_output_dir_writable, find_latest_checkpoint,
                            load_checkpoint, load_latest_intact, restore_training_state, save_checkpoint_accelerate)
from ..loading.sources import ModelSource
from .data import derive_seed

log = logging.getLogger("deepgen.train")

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
    "global_mean",
    "load_init_tensors",
    "preserve_model",
    "remove_lora_adapters",
    "Stopwatch",
    "SCB_PARTS",
]


from ..errors import TrainingError  # noqa: E402 - a run that cannot start or continue


# ----------------------------------------------------------------------------------------------------
# callbacks


@dataclass
class RunInfo:
    """What a run is, given to every callback."""

    stage: int | str
    total_steps: int                 # optimizer updates of the whole run
    start_step: int                  # 0, or the step a resumed run continues from
    output_dir: Path
    is_main_process: bool = True
    num_processes: int = 1
    trainable_parameters: int = 0    # elements
    config: dict = field(default_factory=dict)


@dataclass
class StepInfo:
    """One finished optimizer update (values averaged over every process)."""

    step: int                        # updates done, 1-based
    total_steps: int
    loss: float                      # mean per-sample loss of the update (all micro-batches, all ranks)
    task_losses: dict[str, float]    # the same per task (text2image / image2image / …)
    lr: float                        # learning rate used for this update
    grad_norm: float | None          # before clipping (None when not computed)
    samples: int                     # samples seen so far (all ranks)
    step_time: float                 # seconds for this update
    elapsed: float                   # seconds since the run (or the resume) started
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"step": self.step, "total_steps": self.total_steps, "loss": self.loss, "lr": self.lr,
             "grad_norm": self.grad_norm, "samples": self.samples, "step_time": round(self.step_time, 4),
             "elapsed": round(self.elapsed, 2)}
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


# ----------------------------------------------------------------------------------------------------
# accelerate


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


def build_accelerator(mixed_precision: str = "auto", *, cpu: bool | None = None, kwargs_handlers: Sequence = (),
                      **kwargs):
    """An ``accelerate.Accelerator`` for a run.

    ``mixed_precision='auto'`` resolves as :func:`resolve_mixed_precision`.  Under ``accelerate launch`` the
    launcher's settings (processes, DDP/FSDP/DeepSpeed) apply.  In a single process an existing accelerate state
    with another precision is reset first, so a ComfyUI node or a test may build several in turn.  Gradient
    accumulation is done by the trainer (``accelerator.no_sync``), not by accelerate.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    device = "cpu" if cpu else None
    precision = resolve_mixed_precision(mixed_precision, device)
    state = AcceleratorState._shared_state
    if state:  # an Accelerator was built before in this process (never touch a fresh state: torchrun env)
        partial = PartialState()
        wrong_device = bool(cpu) and partial.device.type != "cpu"
        if partial.num_processes == 1 and (state.get("_mixed_precision") != precision or wrong_device):
            AcceleratorState._reset_state(reset_partial_state=wrong_device)
    handlers = list(kwargs_handlers) or [ddp_kwargs()]
    return Accelerator(mixed_precision=precision, cpu=bool(cpu), kwargs_handlers=handlers,
                       device_placement=False, **kwargs)


def global_mean(accelerator, sums: Mapping[str, float], counts: Mapping[str, float]) -> dict[str, float]:
    """Per-key mean of values summed over every process (one small all-reduce)."""
    keys = sorted(set(sums) | set(counts))
    if not keys:
        return {}
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    t = torch.tensor([[float(sums.get(k, 0.0)), float(counts.get(k, 0.0))] for k in keys], dtype=dtype,
                     device=device)
    if accelerator is not None and accelerator.num_processes > 1:
        t = accelerator.reduce(t, reduction="sum")
    return {k: (t[i, 0] / t[i, 1]).item() for i, k in enumerate(keys) if t[i, 1] > 0}


# ----------------------------------------------------------------------------------------------------
# model sources


def describe_model_source(spec: str | os.PathLike) -> ModelSource:
    """Interpret the config's ``model`` (deepgen.loading.resolve_source, which the CLI and the loader node use
    too): ``"tiny"`` / ``"tiny:<seed>"``, a DeepGen-1.0-diffusers folder, a ``deepgen convert`` file, an official
    checkpoint (or a folder holding one) with its Qwen2.5-VL and diffusion folders next to it, or a folder with
    only those two base folders (``bases``: stage 1 starts the think tokens, projectors and connector fresh)."""
    from ..loading import resolve_source

    return resolve_source(spec, allow_bases=True)


def load_model_for_training(source: str | os.PathLike | ModelSource, *, dtype: torch.dtype = torch.float32,
                            device: str | torch.device = "cpu", num_queries: int = 128,
                            progress: Callable[[str], None] | None = None):
    """Build the DeepGenModel a run trains.  Returns ``(model, ModelSource)``.

    Released VLM LoRAs are merged into the VLM (the trainer adds its own fresh LoRA on top).  A pre-training
    checkpoint (no DiT / LoRA tensors) is accepted.  ``bases`` builds a fresh SCB of the official size
    (``connector_config.json`` overrides it) with ``num_queries`` think tokens.
    """
    from ..loading import load_model

    src = source if isinstance(source, ModelSource) else describe_model_source(source)
    if src.layout == "bases":
        return _fresh_model(src, dtype, device, num_queries), src
    spec = f"tiny:{src.seed}" if src.layout == "tiny" else src.checkpoint
    return load_model(spec, src.vlm, src.diffusion, dtype=dtype, device=device, lora="merge",
                      allow_pretrain_checkpoint=True, connector_config=src.connector_config, progress=progress), src


def _fresh_model(src: ModelSource, dtype, device, num_queries: int):
    from diffusers import AutoencoderKL
    from transformers import Qwen2_5_VLForConditionalGeneration

    from ..loading import load_tokenizer
    from ..model.connector import ConnectorConfig
    from ..model.deepgen import DeepGenModel
    from ..model.dit import DeepGenTransformer2DModel

    diffusion = Path(src.diffusion)
    lmm = Qwen2_5_VLForConditionalGeneration.from_pretrained(src.vlm, dtype=dtype, attn_implementation="sdpa",
                                                             local_files_only=True)
    transformer = DeepGenTransformer2DModel.from_pretrained(str(diffusion / "transformer"), torch_dtype=dtype,
                                                            local_files_only=True)
    vae = AutoencoderKL.from_pretrained(str(diffusion / "vae"), torch_dtype=dtype, local_files_only=True)
    scheduler = json.loads((diffusion / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    fields = ConnectorConfig.__dataclass_fields__
    connector = ConnectorConfig(**{k: v for k, v in (src.connector_config or {}).items() if k in fields})
    model = DeepGenModel(lmm, load_tokenizer(src.vlm), transformer, vae, connector, num_queries=num_queries,
                         scheduler_config=scheduler)
    return model.to(device=device, dtype=dtype).eval()


# ----------------------------------------------------------------------------------------------------
# what trains


SCB_PARTS = ("meta_queries", "projector_1", "projector_2", "projector_3", "connector")


@dataclass
class TrainableSpec:
    """Which parts of a DeepGenModel train.  ``from_config`` reads a ``TrainConfig``'s ``train_*`` keys."""

    meta_queries: bool = True
    projectors: bool = True
    connector: bool = True
    dit: str = "frozen"                  # full | lora | frozen
    dit_lora_rank: int = 32
    dit_lora_alpha: float = 32.0
    dit_lora_targets: list[str] | str = "attn"   # preset name ("attn", "attn_ff") or module-name suffixes
    vlm_lora: bool = False
    vlm_lora_rank: int = 64
    vlm_lora_alpha: float = 128.0
    vlm_lora_dropout: float = 0.05
    vlm_lora_targets: list[str] | None = None    # None = every Linear and Embedding of the VLM (official 'auto')

    @classmethod
    def from_config(cls, cfg) -> TrainableSpec:
        targets: list[str] | str = list(cfg.dit_lora_targets)
        from ..lora import DIT_TARGET_PRESETS

        if len(targets) == 1 and targets[0] in DIT_TARGET_PRESETS:
            targets = targets[0]
        return cls(meta_queries=cfg.train_meta_queries, projectors=cfg.train_projectors,
                   connector=cfg.train_connector, dit=cfg.train_dit, dit_lora_rank=cfg.dit_lora_rank,
                   dit_lora_alpha=cfg.dit_lora_alpha, dit_lora_targets=targets, vlm_lora=cfg.vlm_lora,
                   vlm_lora_rank=cfg.vlm_lora_rank, vlm_lora_alpha=cfg.vlm_lora_alpha,
                   vlm_lora_dropout=cfg.vlm_lora_dropout)

    def problems(self) -> list[str]:
        p = []
        if self.dit not in ("full", "lora", "frozen"):
            p.append(f"dit must be full, lora or frozen (got {self.dit!r})")
        if self.dit == "lora" and self.dit_lora_rank < 1:
            p.append(f"DiT LoRA rank must be ≥ 1 (got {self.dit_lora_rank})")
        if self.vlm_lora and self.vlm_lora_rank < 1:
            p.append(f"VLM LoRA rank must be ≥ 1 (got {self.vlm_lora_rank})")
        if not (self.meta_queries or self.projectors or self.connector or self.dit != "frozen" or self.vlm_lora):
            p.append("nothing to train")
        return p

    @property
    def has_lora(self) -> bool:
        return self.vlm_lora or self.dit == "lora"

    @property
    def trains_scb(self) -> bool:
        return self.meta_queries or self.projectors or self.connector

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _has_peft(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in module.modules())


def setup_trainable(model: nn.Module, spec: TrainableSpec, *, master_dtype: torch.dtype = torch.float32,
                    seed: int = 0) -> OrderedDict[str, nn.Parameter]:
    """Freeze everything, add the LoRAs ``spec`` asks for, unfreeze what trains; returns ``{name: parameter}``.

    Trainable parameters are cast to ``master_dtype`` (fp32 masters; the frozen weights keep their dtype).
    LoRAs are PEFT adapters named ``default`` with Gaussian init (B = 0, so the model is unchanged at step 0);
    the VLM LoRA covers every Linear and Embedding of the VLM unless ``vlm_lora_targets`` says otherwise (the
    official 'auto'; the vision tower and lm_head never receive gradients, as officially).  The random A
    matrices are drawn from ``seed`` (the caller's RNG is left alone), so runs with one seed start alike.  Raises
    :class:`TrainingError` if the model already carries PEFT layers where a new LoRA would go.
    """
    from ..lora import add_lora, dit_lora_targets, vlm_lora_targets

    problems = spec.problems()
    if problems:
        raise TrainingError("Invalid trainable-parameter selection: " + "; ".join(problems))
    model.requires_grad_(False)
    if spec.vlm_lora:
        if _has_peft(model.lmm):
            raise TrainingError("the VLM already carries a PEFT LoRA; load the model with its LoRA merged")
        targets = spec.vlm_lora_targets or vlm_lora_targets(model.lmm)
        with warnings.catch_warnings(), seeded_step(seed, "lora-init", "lmm"):
            warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")  # lm_head is tied, as officially
            add_lora(model.lmm, targets, spec.vlm_lora_rank, spec.vlm_lora_alpha, spec.vlm_lora_dropout,
                     init="gaussian")
    if spec.dit == "lora":
        if _has_peft(model.transformer):
            raise TrainingError("the DiT already carries a PEFT LoRA")
        targets = dit_lora_targets(model.transformer, spec.dit_lora_targets)
        with seeded_step(seed, "lora-init", "transformer"):
            add_lora(model.transformer, targets, spec.dit_lora_rank, spec.dit_lora_alpha, 0.0, init="gaussian")
    model.requires_grad_(False)  # PEFT marks adapters trainable per module; decide everything here
    for name, param in model.named_parameters():
        if ".lora_" in name:
            part = name.split(".", 1)[0]
            param.requires_grad_((part == "lmm" and spec.vlm_lora) or (part == "transformer" and spec.dit == "lora"))
        elif name == "meta_queries":
            param.requires_grad_(spec.meta_queries)
        elif name.startswith(("projector_1.", "projector_2.", "projector_3.")):
            param.requires_grad_(spec.projectors)
        elif name.startswith("connector."):
            param.requires_grad_(spec.connector)
        elif name.startswith("transformer."):
            param.requires_grad_(spec.dit == "full")
    trainable = trainable_named_parameters(model)
    with torch.no_grad():
        for param in trainable.values():
            if param.dtype != master_dtype and param.is_floating_point():
                param.data = param.data.to(master_dtype)
    return trainable


def trainable_named_parameters(model: nn.Module) -> OrderedDict[str, nn.Parameter]:
    """``{name: parameter}`` of the parameters with ``requires_grad``, in module order."""
    return OrderedDict((n, p) for n, p in model.named_parameters() if p.requires_grad)


def count_parameters(params: Mapping[str, torch.Tensor] | Iterable[torch.Tensor]) -> int:
    values = params.values() if isinstance(params, Mapping) else params
    return int(sum(p.numel() for p in values))


def enable_gradient_checkpointing(model: nn.Module, parts: Sequence[str] = ("lmm", "connector", "transformer"),
                                  enable: bool = True) -> None:
    """Activation checkpointing of the VLM text tower (HF), the connector layers and the DiT blocks (diffusers)."""
    if "transformer" in parts:
        if enable:
            model.transformer.enable_gradient_checkpointing()
        else:
            model.transformer.disable_gradient_checkpointing()
    if "connector" in parts:
        model.connector.gradient_checkpointing = enable
    if "lmm" in parts:
        _vlm_checkpointing(model.lmm, enable)


def _vlm_checkpointing_on(lmm: nn.Module) -> bool:
    name = "is_activation_checkpointing" if hasattr(type(lmm), "is_activation_checkpointing") else \
        "is_gradient_checkpointing"
    return bool(getattr(lmm, name, False))


def _vlm_checkpointing(lmm: nn.Module, enable: bool) -> None:
    """HF activation checkpointing (transformers ≥ 5 names it activation_checkpointing_*; older: gradient_*)."""
    kwargs = {"use_reentrant": False}
    if hasattr(lmm, "activation_checkpointing_enable"):
        if enable:
            lmm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            lmm.activation_checkpointing_disable()
    elif enable:
        lmm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        lmm.gradient_checkpointing_disable()


def remove_lora_adapters(module: nn.Module) -> int:
    """Replace every PEFT LoRA layer inside ``module`` by its base layer (the base weights were never changed);
    returns how many were removed."""
    from peft.tuners.lora import LoraLayer

    found = [(name, layer) for name, layer in module.named_modules() if isinstance(layer, LoraLayer)]
    for name, layer in found:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    for sub in module.modules():  # what inject_adapter_in_model leaves on the injected modules
        if "peft_config" in sub.__dict__ and not any(isinstance(m, LoraLayer) for m in sub.modules()):
            del sub.__dict__["peft_config"]
    return len(found)


@contextlib.contextmanager
def preserve_model(model: nn.Module, restore_values: Sequence[str] = ()):
    """Train on a model other code holds (a ComfyUI cached model) and give it back unchanged.

    On exit: PEFT adapters added inside the block are removed, ``requires_grad`` flags, train/eval modes and
    gradient checkpointing are put back, and parameters whose names start with one of ``restore_values``
    (e.g. ``("meta_queries", "projector_", "connector.")`` when the SCB trains in place) get their original
    values, dtype and device back.  Export what you trained *inside* the block.
    """
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    saved = {n: p.data for n, p in model.named_parameters() if n.startswith(tuple(restore_values))}
    saved = {n: t.detach().clone() for n, t in saved.items()}
    checkpointing = (getattr(model.transformer, "gradient_checkpointing", False),
                     getattr(model.connector, "gradient_checkpointing", False),
                     _vlm_checkpointing_on(model.lmm))
    try:
        yield model
    finally:
        remove_lora_adapters(model)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in saved.items():
                if name in params:
                    params[name].data = tensor
        for name, param in params.items():
            if name in flags:
                param.requires_grad_(flags[name])
            param.grad = None
        for name, module in model.named_modules():
            if name in modes:
                module.training = modes[name]
        dit_gc, connector_gc, lmm_gc = checkpointing
        if not dit_gc and getattr(model.transformer, "gradient_checkpointing", False):
            model.transformer.disable_gradient_checkpointing()
        model.connector.gradient_checkpointing = connector_gc
        if not lmm_gc and _vlm_checkpointing_on(model.lmm):
            _vlm_checkpointing(model.lmm, False)


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


# ----------------------------------------------------------------------------------------------------
# determinism


def sample_generator(seed: int, purpose: str, *key: Any) -> torch.Generator:
    """A CPU generator for one draw, seeded from ``(seed, purpose, *key)`` (e.g. the sample's task and global
    stream position): the same sample gets the same noise whatever the process count, batch split or resume."""
    return torch.Generator().manual_seed(derive_seed(seed, purpose, *key))


@torch.no_grad()
def flow_batch_inputs(model, batch, *, seed: int, rank: int, world: int, device, purpose: str = "",
                      num_timesteps: int = 1000) -> dict[str, Any]:
    """The flow-matching inputs of one micro-batch (``flow_matching_loss`` keywords): VAE posterior samples of
    the targets and references, the noise and the timestep index of every sample, each drawn from a generator
    keyed by the sample's global stream position, so the draws depend neither on the number of processes nor
    on a resume. ``purpose`` keeps the streams of different users (stage-3 SFT-Aux) apart."""
    task = batch.task
    end = int(batch.position["consumed"][task])
    positions = [end - len(batch) * world + rank + j * world for j in range(len(batch))]
    targets = [model.encode_image(x[None].to(device), generator=sample_generator(seed, purpose + "vae", task, p))[0]
               for x, p in zip(batch.targets, positions)]
    noise = [torch.randn(t.shape, generator=sample_generator(seed, purpose + "noise", task, p))
             for t, p in zip(targets, positions)]
    index = [int(torch.rand(1, generator=sample_generator(seed, purpose + "timestep", task, p)) * num_timesteps)
             for p in positions]
    refs = [[r.to(device) for r in row] for row in batch.references]
    has_refs = any(refs)
    ref_latents = [[model.encode_image(r[None], generator=sample_generator(seed, purpose + "vae_ref", task, p, j))[0]
                    for j, r in enumerate(row)] for row, p in zip(refs, positions)] if has_refs else None
    return {"prompts": list(batch.texts), "targets": targets, "noise": noise,
            "timestep_index": torch.tensor(index, dtype=torch.long).clamp_max(num_timesteps - 1),
            "reference_images": refs if has_refs else None, "reference_latents": ref_latents}


@contextlib.contextmanager
def seeded_step(seed: int, *key: Any):
    """Seed torch's global RNG (CPU and the current CUDA device) for a block, then restore the caller's RNG.

    Used around each micro-step so dropout masks are a function of the step, which makes a resumed run repeat
    an uninterrupted one exactly.
    """
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(seed, "step", *key) % (2**63 - 1))
        yield


# ----------------------------------------------------------------------------------------------------
# checkpoints


class CheckpointManager:
    """Checkpoint save/resume for a run (format and atomicity: ``deepgen.train.checkpointing``).

    ``save`` must be called on every process (it gathers RNG states); only the main process writes.
    ``resume`` restores parameters, optimizer, LR schedule and this rank's RNG, and returns the checkpoint (its
    ``step`` and ``data_position``), or None when starting fresh.
    """

    def __init__(self, accelerator, output_dir: str | os.PathLike, *, keep_last: int = 0,
                 config: Mapping | None = None):
        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.keep_last = keep_last
        self.config = dict(config) if config is not None else None
        self.last_saved_step: int | None = None

    def check_writable(self) -> None:
        if self.accelerator is None or self.accelerator.is_main_process:
            check_output_dir_writable(self.output_dir)

    def save(self, step: int, *, trainable: Mapping[str, torch.Tensor], optimizer=None, lr_scheduler=None,
             grad_scaler=None, data_position: Mapping | None = None, extra: Mapping | None = None) -> Path | None:
        kwargs = dict(optimizer=optimizer, lr_scheduler=lr_scheduler, grad_scaler=grad_scaler,
                      data_position=data_position, config=self.config, extra=extra,
                      keep_last=self.keep_last or None)
        if self.accelerator is None:
            from .checkpointing import save_checkpoint

            path = save_checkpoint(self.output_dir, step, trainable=trainable, **kwargs)
        else:
            path = save_checkpoint_accelerate(self.accelerator, self.output_dir, step, trainable=trainable,
                                              **kwargs)
        self.last_saved_step = step
        return path

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

    def resume(self, resume: str, *, trainable: Mapping[str, torch.Tensor], optimizer=None, lr_scheduler=None,
               grad_scaler=None, strict: bool = True) -> Checkpoint | None:
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
        restore_training_state(ckpt, params=trainable, optimizer=optimizer, lr_scheduler=lr_scheduler,
                               grad_scaler=grad_scaler, rank=rank, strict=strict)
        self.last_saved_step = ckpt.step
        return ckpt


def load_init_tensors(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """``init_from``: copy a training checkpoint's tensors into the model's parameters, matched by name.

    Every saved tensor must name a parameter of the model with the same shape (a stage-1 checkpoint into a
    stage-2 run is the usual case).  Returns the names loaded.
    """
    ckpt = load_checkpoint(path, load_optimizer=False)
    params = dict(model.named_parameters())
    unknown = sorted(set(ckpt.trainable) - set(params))
    if unknown:
        raise CheckpointError(f"init_from {ckpt.path}: {len(unknown)} tensors match no parameter of the model "
                              f"(e.g. {unknown[:3]}); was it trained on another model or LoRA setting?")
    with torch.no_grad():
        for name, tensor in ckpt.trainable.items():
            dst = params[name]
            if dst.shape != tensor.shape:
                raise CheckpointError(f"init_from {ckpt.path}: {name} has shape {tuple(tensor.shape)}, the model "
                                      f"{tuple(dst.shape)}")
            dst.copy_(tensor.to(device=dst.device, dtype=dst.dtype))
    return sorted(ckpt.trainable)



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


def warn_once(message: str, _seen: set = set()) -> None:  # noqa: B006 - module-level memo on purpose
    if message not in _seen:
        _seen.add(message)
        warnings.warn(message, stacklevel=2)
