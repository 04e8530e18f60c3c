"""The stage-1/2 trainer: alignment pre-training and joint SFT (official recipe, deepgen-reference §5).

One training core, :class:`SFTTrainer`, used by the ``deepgen train`` CLI (tqdm + JSONL logs) and by the ComfyUI
``DeepGenTrainLoRA`` node (progress bar + websocket events), through :class:`~deepgen.train.runtime.TrainCallback`.

Per optimizer update (``max_steps`` of them):

* ``grad_accumulation`` single-task micro-batches following the task pattern (``MicroBatchLoader``); targets and
  edit references are VAE-encoded under ``no_grad`` with the posterior *sample* (``model.encode_image``);
* the official flow-matching loss (``deepgen.train.losses.flow_matching_loss``): per-sample mean, then the mean
  over the micro-batch, divided by the accumulation count; 10 % T2I caption drop (done by the loader), none for
  edits;
* gradients all-reduced by DDP on the last micro-batch only (``accelerator.no_sync`` before), clipped to
  ``max_grad_norm``, AdamW (0.9, 0.95), wd 0.05 on ≥2-D parameters, warm-up + cosine, one scheduler step
  (under DeepSpeed its engine accumulates, clips and steps: ``sharding.backward`` / ``optimizer_step``).

Every random draw of a sample (timestep, noise, VAE posterior noise) comes from a generator keyed by
``(seed, task, global stream position)``, and each micro-step seeds the global RNG (LoRA dropout) from
``(seed, micro step, rank)``.  So a resumed run repeats an uninterrupted one exactly, and — without LoRA
dropout — N processes give the same updates as one process with the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from . import sharding, zero
from .checkpointing import Checkpoint
from .config import TrainConfig
from .data import MicroBatchLoader, load_datasets
from .optim import build_lr_scheduler, build_optimizer
from .run_context import EXPORT_DIR, VALIDATION_DIR, RunContext
from .runtime import (
    SCB_PARTS,
    CallbackList,
    CheckpointManager,
    LossModule,
    ModelSource,
    RunInfo,
    StepInfo,
    Stopwatch,
    TrainableSpec,
    TrainCallback,
    TrainingError,
    build_accelerator,
    count_parameters,
    ddp_kwargs,
    enable_gradient_checkpointing,
    flow_batch_inputs,
    global_mean,
    load_init_tensors,
    load_model_for_training,
    seeded_step,
    setup_trainable,
    weight_dtype_for,
)
from .step_log import truncate_step_log
from .trackers import TrackerCallback, resolve_trackers, throughput, tracker_kwargs
from .val_loss import FixedNoiseValidation

log = logging.getLogger("deepgen.train")

__all__ = [
    "SFTTrainer",
    "TrainResult",
    "sft_loss",
    "find_unused_parameters",
    "LOG_FILE",
    "VALIDATION_DIR",
    "EXPORT_DIR",
]

LOG_FILE = "train_log.jsonl"


@dataclass
class TrainResult:
    """What a finished (or already complete) run produced."""

    step: int
    history: list[dict] = field(default_factory=list)  # StepInfo.to_dict() of the updates run here
    checkpoint: Path | None = None  # the last checkpoint folder
    lora_path: Path | None = None  # exported LoRA file (main process)
    checkpoint_path: Path | None = None  # exported official-layout checkpoint (main process)
    validation_images: list = field(default_factory=list)  # PIL images, in order
    validation_steps: list[int] = field(default_factory=list)

    @property
    def losses(self) -> list[float]:
        return [h["loss"] for h in self.history]


def sft_loss(
    model, *, prompts, targets, grid, reference_images=None, reference_latents=None, noise=None, timestep_index=None
):
    """The loss of one micro-batch: ``(mean loss, per-sample losses)`` (a tuple, so DDP finds the tensors)."""
    from .losses import flow_matching_loss

    out = flow_matching_loss(
        model,
        prompts,
        targets,
        grid=grid,
        reference_images=reference_images,
        reference_latents=reference_latents,
        noise=noise,
        timestep_index=timestep_index,
    )
    return out.loss, out.per_sample


def find_unused_parameters(spec: TrainableSpec) -> bool:
    """DDP's ``find_unused_parameters`` for a stage-1/2 selection: on only when a trainable tensor can get no
    gradient.  Every stage-1/2 backward runs through the think tokens, the SCB and the whole DiT (T2I and edit
    micro-batches alike: the reference tokens share ``pos_embed``), so the SCB parts and the DiT (full or LoRA)
    always get one.  The VLM LoRA covers the vision tower, ``lm_head`` and the last decoder layer (officially),
    which the loss never reaches: on.  (tests/test_trainer_stages.py checks this against real backwards.)"""
    return bool(spec.vlm_lora)


class SFTTrainer:
    """Stage 1 / 2 training of a DeepGenModel (see the module doc).

    cfg: the run's :class:`TrainConfig`: every run setting, validation (``validation_*``) and export
        (``export_*``, ``save_lora_every_checkpoint``) included, so a TOML file can set it.
    The arguments are what a program injects:
    model: train this model object in place (the ComfyUI node; wrap in ``runtime.preserve_model``); by default
        the model is built from ``cfg.model`` (:func:`~deepgen.train.runtime.load_model_for_training`).
    callbacks: :class:`TrainCallback` objects (progress, loss, interrupt, …).
    accelerator: an existing ``accelerate.Accelerator``; by default one is built from ``cfg.mixed_precision``.
    device: where the model trains (default: the accelerator's device); cpu: build the accelerator on the CPU.
    datasets: already loaded ``TaskDatasets`` (default: loaded from ``cfg.data``).

    Resuming with another ``max_steps``, ``lr`` or schedule continues with the new schedule (a warning says so);
    otherwise a resumed run repeats the uninterrupted one exactly.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        model=None,
        callbacks: Sequence[TrainCallback] = (),
        accelerator=None,
        device: str | torch.device | None = None,
        cpu: bool | None = None,
        datasets=None,
    ):
        self.cfg = cfg
        self.model = model
        self.callbacks = CallbackList(callbacks)
        self.accelerator = accelerator
        self.device = device
        self.cpu = cpu
        self.datasets = datasets
        self.spec = TrainableSpec.from_config(cfg)
        self.source: ModelSource | None = None
        self._interrupt: BaseException | None = None

    # ---- setup -----------------------------------------------------------------------------------------
    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir).expanduser()

    def _load_data(self, acc):
        cfg = self.cfg
        if self.datasets is not None:
            return self.datasets
        datasets = load_datasets(
            cfg.data,
            root=cfg.data_root or None,
            cap_source=cfg.cap_source,
            recursive=cfg.recursive,
            resolution=cfg.resolution,
            max_references=cfg.max_references or None,
            verify=cfg.data_verify,
        )
        if datasets.report.bad and acc.is_main_process:  # one line; the full list is in the debug log
            log.warning("some training rows were skipped: %s", datasets.report.brief())
            log.debug("%s", datasets.report.summary())
        wanted = [t for t, n in cfg.pattern.repeats.items() if n > 0]
        if not any(datasets.sizes().get(t, 0) for t in wanted):
            raise TrainingError(
                f"the task pattern {cfg.task_pattern} uses {wanted}, but the data has {datasets.sizes()} rows per task"
            )
        return datasets

    def _build_model(self, acc, precision: str):
        if self.model is None:
            with zero.whole_model(acc):  # ZeRO-3: partitioned at prepare, not while the weights load
                self.model, self.source = load_model_for_training(
                    self.cfg.model, dtype=weight_dtype_for(precision), device="cpu"
                )
        return self.model

    # ---- the run ----------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.cfg
        acc = self.accelerator or build_accelerator(
            cfg.mixed_precision,
            cpu=self.cpu,
            kwargs_handlers=[ddp_kwargs(find_unused_parameters(self.spec))],
            **tracker_kwargs(resolve_trackers(cfg.trackers), self.output_dir),
        )
        self.accelerator = acc
        if getattr(acc, "log_with", None):  # trackers come with the accelerator (an injected one may have none)
            self.callbacks.callbacks.append(TrackerCallback(acc, cfg.tracker_project))
        device = torch.device(self.device) if self.device is not None else acc.device
        manager = CheckpointManager(acc, self.output_dir, keep_last=cfg.keep_last, config=cfg.to_dict())
        # bad input fails in seconds, before anything big loads: the output folder, then every data row
        manager.check_writable()
        datasets = self._load_data(acc)
        model = self._build_model(acc, acc.mixed_precision)
        if cfg.init_from:
            load_init_tensors(model, cfg.init_from)
        trainable = setup_trainable(model, self.spec, seed=cfg.seed)
        scb_initial = {
            n: p.detach().to("cpu", copy=True) for n, p in trainable.items() if n.split(".", 1)[0] in SCB_PARTS
        }
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        model.to(device)
        model.train()
        model.vae.eval()
        from .losses import TrainingGrid

        grid = TrainingGrid.from_model(model)
        optimizer = build_optimizer(
            trainable, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.adam_eps
        )
        scheduler = build_lr_scheduler(
            optimizer,
            schedule=cfg.lr_schedule,
            max_steps=cfg.max_steps,
            warmup_ratio=cfg.warmup_ratio,
            warmup_steps=cfg.warmup_steps,
            start_factor=cfg.lr_start_factor,
        )
        # not the loader, not the scheduler; under FSDP the trainable tensors are the sharded ones from here on
        wrapper, optimizer, trainable = sharding.prepare(
            acc,
            LossModule(model, sft_loss),
            optimizer,
            model,
            deepspeed=dict(
                micro_batch_size=cfg.micro_batch_size,
                grad_accumulation=cfg.grad_accumulation,
                max_grad_norm=cfg.max_grad_norm,
            ),
        )
        loader = MicroBatchLoader(
            datasets,
            cfg.pattern,
            cfg.micro_batch_size,
            seed=cfg.seed,
            rank=acc.process_index,
            world_size=acc.num_processes,
            caption_dropout=cfg.caption_dropout,
            num_workers=cfg.num_workers,
        )
        fresh_schedule = ([dict(fn.__dict__) for fn in scheduler.lr_lambdas], list(scheduler.base_lrs))
        scaler = getattr(acc, "scaler", None)  # fp16 only
        ckpt: Checkpoint | None = manager.resume(
            cfg.resume,
            trainable=trainable,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            grad_scaler=scaler,
            model=wrapper,
        )
        step = 0
        if ckpt is not None:
            step = ckpt.step
            if ckpt.data_position:
                loader.load_state_dict(ckpt.data_position, strict=cfg.strict_resume_data)
            _keep_new_schedule(scheduler, optimizer, fresh_schedule, step)
            if acc.is_main_process:
                log.info("resumed from %s at step %d", ckpt.path, step)
        position = loader.state_dict()
        validation = (
            FixedNoiseValidation.from_datasets(datasets, cfg.val_loss_samples, seed=cfg.seed)
            if cfg.val_loss_every
            else None
        )
        samples = int((ckpt.extra or {}).get("samples", 0)) if ckpt is not None else 0

        run = RunInfo(
            stage=cfg.stage,
            total_steps=cfg.max_steps,
            start_step=step,
            output_dir=self.output_dir,
            is_main_process=acc.is_main_process,
            num_processes=acc.num_processes,
            trainable_parameters=count_parameters(trainable),
            config=cfg.to_dict(),
            sharding=sharding.sharding_name(acc),
        )
        result = TrainResult(step=step, checkpoint=ckpt.path if ckpt is not None else None)
        ctx = RunContext(
            self,
            acc,
            model,
            wrapper,
            optimizer,
            scheduler,
            trainable,
            manager,
            run,
            result,
            grid,
            device,
            scb_initial,
            datasets,
        )
        self.callbacks.on_train_start(run)
        log_path = self.output_dir / LOG_FILE
        if acc.is_main_process and cfg.log_file:
            truncate_step_log(log_path, step)  # a killed run may have logged steps after its last checkpoint
        clock = Stopwatch()
        it = iter(loader)
        try:
            while step < cfg.max_steps:
                sums: dict[str, float] = defaultdict(float)
                counts: dict[str, float] = defaultdict(float)
                tokens = 0  # DiT image tokens of this process's targets (throughput)
                for k in range(cfg.grad_accumulation):
                    self._check_interrupt()
                    batch = next(it)
                    last = k == cfg.grad_accumulation - 1
                    sync = contextlib.nullcontext() if last or acc.num_processes == 1 else acc.no_sync(wrapper)
                    with sync, seeded_step(cfg.seed, batch.micro_step, acc.process_index):
                        inputs = flow_batch_inputs(
                            model,
                            batch,
                            seed=cfg.seed,
                            rank=acc.process_index,
                            world=acc.num_processes,
                            device=device,
                            sample_latents=cfg.vae_latents == "sample",
                        )
                        with acc.autocast():
                            loss, per_sample = wrapper(grid=grid, **inputs)
                        sharding.backward(acc, wrapper, loss / cfg.grad_accumulation, boundary=last)
                    tokens += sum(t.shape[-2] * t.shape[-1] // 4 for t in inputs["targets"])  # 2x2 patches
                    values = per_sample.detach().float()
                    sums[batch.task] += float(values.sum())
                    counts[batch.task] += values.numel()
                self._check_interrupt()
                lr = float(scheduler.get_last_lr()[0])
                # clip, step, zero grad (DeepSpeed: its engine, clipping with gradient_clipping = max_grad_norm)
                grad_norm = sharding.optimizer_step(acc, wrapper, optimizer, trainable.values(), cfg.max_grad_norm)
                scheduler.step()
                step += 1
                position = loader.state_dict()
                task_losses = global_mean(acc, sums, counts)
                total = global_mean(acc, {"all": sum(sums.values())}, {"all": sum(counts.values())})["all"]
                samples += int(sum(counts.values())) * acc.num_processes
                step_time = clock.lap()  # the validation below is not part of the update's time
                extra = throughput(sum(counts.values()), tokens, step_time)
                if validation is not None and (step % cfg.val_loss_every == 0 or step == cfg.max_steps):
                    with sharding.full_weights(acc, model):  # collective under FSDP: every rank, same forwards
                        extra["val_loss"] = validation.compute(model, grid, accelerator=acc, autocast=acc.autocast)
                    clock.lap()  # nor of the next one's
                info = StepInfo(
                    step=step,
                    total_steps=cfg.max_steps,
                    loss=total,
                    task_losses=task_losses,
                    lr=lr,
                    grad_norm=grad_norm,
                    samples=samples,
                    step_time=step_time,
                    elapsed=clock.elapsed,
                    extra=extra,
                )
                result.step = step
                result.history.append(info.to_dict())
                if acc.is_main_process and cfg.log_file:
                    with open(log_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(info.to_dict()) + "\n")
                if not math.isfinite(total):
                    raise TrainingError(
                        f"the loss is {total} at step {step}: training diverged. Lower lr "
                        f"(now {cfg.lr}) or resume from the last checkpoint."
                    )
                self.callbacks.on_step_end(run, info)
                periodic = cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps
                if periodic:
                    ctx.save(step, position, samples, "periodic")
                if cfg.validation_every and step % cfg.validation_every == 0 and step < cfg.max_steps:
                    ctx.validate(step)
        except BaseException as exc:
            if exc is self._interrupt or (isinstance(exc, KeyboardInterrupt) and acc.num_processes == 1):
                optimizer.zero_grad(set_to_none=True)
                path = None
                if manager.last_saved_step != step:
                    path = ctx.save(step, position, samples, "interrupt")
                self.callbacks.on_interrupt(run, step, path, exc)
            raise
        if manager.last_saved_step != step or result.checkpoint is None:
            ctx.save(step, position, samples, "final")
        if cfg.validation_at_end and cfg.validation_prompt.strip():
            ctx.validate(step)
        ctx.export(step)
        self.callbacks.on_train_end(run, result)
        return result

    def _check_interrupt(self) -> None:
        try:
            self.callbacks.check_interrupt()
        except BaseException as exc:
            self._interrupt = exc
            raise


def _keep_new_schedule(scheduler, optimizer, fresh, step: int) -> None:
    """After a resume: if max_steps / lr / warm-up changed, continue on the new schedule from ``step``."""
    lambdas, base_lrs = fresh
    if [dict(fn.__dict__) for fn in scheduler.lr_lambdas] == lambdas and list(scheduler.base_lrs) == base_lrs:
        return
    warnings.warn(
        "the learning-rate schedule differs from the checkpoint's (max_steps, lr or warm-up changed); "
        "continuing on the new schedule",
        stacklevel=3,
    )
    state = scheduler.state_dict()
    state.update(lr_lambdas=lambdas, base_lrs=list(base_lrs), last_epoch=step - 1)
    scheduler.load_state_dict(state)
    with warnings.catch_warnings():  # the step-order check is for training steps, not for this re-positioning
        warnings.filterwarnings("ignore", message=r"(?s).*lr_scheduler\.step\(\)", category=UserWarning)
        scheduler.step()  # back at ``step``: every group's lr (and get_last_lr) is base_lr * lambda(step)
