"""Stage 3 run set-up: accelerator, prompts, rewards, SFT-Aux data, model, policy, frozen reference, optimiser,
resume; and the two velocity fields the loss compares (the policy's and the reference's).

:class:`RunSetup` is the set-up half of :class:`~deepgen.train.grpo.trainer.GRPOTrainer`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path

import torch
from torch import Tensor

from ...errors import ConfigError
from .. import runtime as R
from .. import sharding, zero
from ..trackers import TrackerCallback, resolve_trackers, tracker_kwargs
from .prompts import PromptSet, load_prompt_set
from .reward_setup import bind_policy_judges, build_rewards, check_policy_judge_config, policy_judges
from .sde import rollout_schedule
from .state import RunState

log = logging.getLogger("deepgen.train.grpo")

__all__ = ["RunSetup", "find_unused_parameters", "lora_disabled", "per_process_batch"]


def find_unused_parameters(spec) -> bool:
    """DDP's ``find_unused_parameters`` for a stage-3 policy (a :class:`~deepgen.train.trainable.TrainableSpec`).

    Every backward of stage 3 runs through the DiT only: the GRPO term's conditioning is encoded without grad
    in the rollout, and the SFT-Aux term reaches the VLM and connector only if they train.  Each DiT forward uses
    every DiT tensor (full or LoRA; the reference tokens share ``pos_embed``), so a DiT-only policy leaves nothing
    unused and the search is off (it would only cost a graph walk and DDP's warning each step).  A trainable part
    outside the DiT (meta-queries, projectors, connector, VLM LoRA) gets no gradient in a GRPO backward: on.
    """
    return bool(spec.meta_queries or spec.projectors or spec.connector or spec.vlm_lora)


def per_process_batch(global_batch: int, num_processes: int, name: str = "sft_batch_size") -> int:
    """This process's share of a global batch size; a config error unless the processes split it evenly."""
    if global_batch % num_processes:
        raise ConfigError(
            f"{name} ({global_batch}) is the global batch over all processes and must be a multiple of the "
            f"number of processes ({num_processes}); e.g. {name} = "
            f"{max(1, round(global_batch / num_processes)) * num_processes}"
        )
    return global_batch // num_processes


@contextlib.contextmanager
def lora_disabled(module: torch.nn.Module):
    """Run ``module`` with its PEFT LoRA adapters switched off: the base weights, i.e. the frozen reference.

    Sets each LoRA layer's ``_disable_adapters`` flag directly and restores it afterwards.  PEFT's public
    ``enable_adapters(False)`` would also set ``requires_grad=False`` on the adapter weights (and ``True`` on
    re-enabling), which would fight the trainer's parameter selection; the forward only reads the flag.
    """
    from peft.tuners.lora import LoraLayer

    layers = [m for m in module.modules() if isinstance(m, LoraLayer)]
    if not layers:
        raise R.TrainingError("reference = 'disable_adapter' needs a DiT with a PEFT LoRA (policy = 'lora')")
    if any(m.merged for m in layers):
        raise R.TrainingError("the DiT LoRA is merged into the weights; unmerge it before using it as a reference")
    saved = [m._disable_adapters for m in layers]
    try:
        for m in layers:
            m._disable_adapters = True
        yield
    finally:
        for m, s in zip(layers, saved):
            m._disable_adapters = s


class _DiT:
    """A stand-in ``self`` for :meth:`DeepGenModel.velocity` so another DiT (the frozen reference copy) runs
    through exactly the same call (dtype casts, Kontext reference tokens) without a second code path."""

    def __init__(self, transformer):
        self.transformer = transformer


class RunSetup(RunState):
    """Set-up methods and the policy / reference velocities of a GRPO run (mixed into ``GRPOTrainer``)."""

    def setup(self):
        """Build the run, inputs first: accelerator, prompt sets, rewards, output folder, SFT-Aux data, then the
        model, the policy (full DiT or LoRA, fp32 masters), the frozen reference, AdamW + warm-up schedule, the
        DDP loss module, the rollout σ schedule, and finally the resume.  Returns ``self``."""
        cfg, g = self.cfg, self.g
        # without CUDA always cpu=True: under `accelerate launch --multi_gpu` on a CPU machine an Accelerator
        # without it would run every process as an independent single process
        cpu = True if (cfg.cpu or not torch.cuda.is_available()) else None
        acc = self._accelerator or R.build_accelerator(
            cfg.mixed_precision,
            cpu=cpu,
            kwargs_handlers=[R.ddp_kwargs(find_unused_parameters(cfg.trainable_spec()))],
            **tracker_kwargs(resolve_trackers(cfg.trackers), cfg.output_dir),
        )
        self.accelerator = acc
        if getattr(acc, "log_with", None):  # trackers come with the accelerator (an injected one may have none)
            self.callbacks.callbacks.append(TrackerCallback(acc, cfg.tracker_project))
        self.rank, self.world = acc.process_index, acc.num_processes
        self.device = acc.device
        self.mixed_precision = acc.mixed_precision
        if g.prompts_per_step % self.world:
            raise R.TrainingError(
                f"prompts_per_step ({g.prompts_per_step}) must be a multiple of the number of processes ({self.world})"
            )
        self.prompts_per_rank = g.prompts_per_step // self.world
        if sharding.every_process_samples(acc) and cfg.eval_prompts:
            self._check_eval_split(cfg)
        # global like prompts_per_step: checked here, before anything loads (0 = no SFT-Aux term)
        sft_on = bool(cfg.sft_data) and g.sft_lambda != 0.0
        self.sft_batch_per_rank = per_process_batch(g.sft_batch_size, self.world) if sft_on else 0
        # no log line of the split here: one made the 2-process CPU test abort at exit ("terminate called without
        # an active exception") in 3 of 7 runs (0 of 11 without); cause not found yet
        self.output_dir = Path(cfg.output_dir)

        # prompts and rewards first: bad input fails before the model loads
        self.prompt_set: PromptSet = load_prompt_set(cfg.prompts, category_sample_weights=g.category_sample_weights)
        self.eval_set: PromptSet | None = None
        if cfg.eval_prompts:
            self.eval_set = load_prompt_set(cfg.eval_prompts, category_sample_weights=g.category_sample_weights)
        rw = build_rewards(cfg, self.prompt_set, self.eval_set, self._reward_overrides, self.device)
        self.category_weights, self.reward_names, self.reward_mix = rw.category_weights, rw.reward_names, rw.reward_mix
        vlm_judges = policy_judges(self.reward_mix, self.reward_names)  # judge = "deepgen": the policy's own VLM
        if vlm_judges:
            check_policy_judge_config(cfg, sharding.is_fsdp(acc))
        # the output folder and the SFT-Aux data next, still before the model loads
        self.ckpt = R.CheckpointManager(acc, self.output_dir, keep_last=cfg.keep_last, config=cfg.to_dict())
        self.ckpt.check_writable()
        self._setup_sft()

        # model, policy, reference
        weight_dtype = R.weight_dtype_for(self.mixed_precision)
        if self._model is None:
            with zero.whole_model(acc):  # ZeRO-3: partitioned at prepare, not while the weights load
                model, _ = R.load_model_for_training(cfg.model, dtype=weight_dtype, device=self.device)
        else:
            model = self._model.to(self.device)
        self.model = model
        model.requires_grad_(False)
        if cfg.init_from:
            names = R.load_init_tensors(model, cfg.init_from)
            log.info("init_from %s: %d tensors", cfg.init_from, len(names))
        reference = cfg.reference_mode
        self.reference_mode = reference
        self.ref_transformer = None
        if reference == "copy":  # the initial DiT, before LoRA injection / fp32 masters / resume
            # in the masters' dtype (fp32): under autocast the reference then computes exactly what the policy
            # computes at step 0 (a bf16 copy would run its norms etc. in bf16: KL ≠ 0 before any update)
            self.ref_transformer = copy.deepcopy(model.transformer).to(torch.float32).requires_grad_(False).eval()
        self.params = R.setup_trainable(model, cfg.trainable_spec(), seed=g.seed)
        bind_policy_judges(vlm_judges, model)  # refused if a VLM parameter trains
        if cfg.gradient_checkpointing:
            R.enable_gradient_checkpointing(model, parts=("transformer",))
        self.num_trainable = R.count_parameters(self.params)

        from ..optim import build_lr_scheduler, build_optimizer

        opt = build_optimizer(self.params, lr=g.lr, betas=tuple(g.betas), weight_decay=g.weight_decay, eps=g.adam_eps)
        self.lr_scheduler = build_lr_scheduler(
            opt, schedule=g.lr_schedule, max_steps=g.max_steps, warmup_steps=g.warmup_steps
        )
        # together (FSDP2 replaces the parameters and re-points the optimizer); the trainable tensors after it
        self.loss_module, self.optimizer, self.params = sharding.prepare(
            acc,
            R.LossModule(model, self._loss_fn),
            opt,
            model,
            # DeepSpeed: each backward says whether it ends an update (sharding.backward), so its accumulation
            # count is only bookkeeping; the clipping is the run's
            deepspeed=dict(
                micro_batch_size=max(1, g.train_micro_batch_size // self.world),
                grad_accumulation=1,
                max_grad_norm=g.max_grad_norm,
            ),
        )

        from ...pipeline import DeepGenPipeline
        from ..losses import TrainingGrid

        self.pipeline = DeepGenPipeline(model)
        self.sigmas, self.timesteps = rollout_schedule(self.pipeline.make_scheduler(g.shift), g.num_steps)
        self.grid = TrainingGrid.from_model(model)
        acc.wait_for_everyone()
        resumed = self.ckpt.resume(
            cfg.resume,
            trainable=self.params,
            optimizer=self.optimizer,
            lr_scheduler=self.lr_scheduler,
            model=self.loss_module,
        )
        if resumed is not None:
            self.start_step = resumed.step
            pos = resumed.data_position or {}
            self.updates = int(pos.get("updates", resumed.extra.get("updates", 0)))
            if self.sft_loader is not None and pos.get("sft") is not None:
                self.sft_loader.load_state_dict(pos["sft"])
            log.info("resumed from %s (step %d)", resumed.path, resumed.step)
        self._sft_iter = iter(self.sft_loader) if self.sft_loader is not None else None
        if acc.is_main_process:
            self._prepare_log_file()
        self.run_info = R.RunInfo(
            stage=3,
            total_steps=g.max_steps,
            start_step=self.start_step,
            output_dir=self.output_dir,
            is_main_process=acc.is_main_process,
            num_processes=self.world,
            trainable_parameters=self.num_trainable,
            config=cfg.to_dict(),
        )
        self._setup_done = True
        return self

    def _check_eval_split(self, cfg) -> None:
        """Under FSDP and ZeRO-3 every process must sample as many eval prompts as the others (the weights'
        gathers are collectives): the eval set must split evenly."""
        n = len(load_prompt_set(cfg.eval_prompts).records)
        if n % self.world:
            raise ConfigError(
                f"under {sharding.sharding_name(self.accelerator)} the eval prompts ({n}) must split evenly over the {self.world} processes: use a "
                f"multiple of {self.world} prompts"
            )

    def _setup_sft(self) -> None:
        cfg, g = self.cfg, self.g
        self.sft_loader = None
        self.val_loss_set = None  # the fixed-noise validation loss of sft_data (val_loss_every)
        if not cfg.sft_data or g.sft_lambda == 0.0:
            if g.sft_lambda > 0 and not cfg.sft_data:
                log.info("no sft_data: the SFT-Aux term (λ = %g) is off", g.sft_lambda)
            return
        from ..data import MicroBatchLoader, load_datasets

        data = load_datasets(
            cfg.sft_data, root=cfg.sft_data_root or None, resolution=cfg.sft_resolution, verify=cfg.sft_data_verify
        )
        if cfg.val_loss_every:
            from ..val_loss import FixedNoiseValidation

            self.val_loss_set = FixedNoiseValidation.from_datasets(data, cfg.val_loss_samples, seed=g.seed)
        self.sft_loader = MicroBatchLoader(
            data,
            cfg.sft_task_pattern,
            self.sft_batch_per_rank,
            seed=g.seed,
            rank=self.rank,
            world_size=self.world,
            caption_dropout=g.sft_caption_drop,
            num_workers=cfg.sft_num_workers,
        )

    # ------------------------------------------------------------------------------------------ velocity
    def policy_velocity(self, x, t, context, pooled) -> Tensor:
        return self.model.velocity(x, t, context, pooled)

    def reference_velocity(self, x, t, context, pooled) -> Tensor:
        from ...model.deepgen import DeepGenModel

        if self.reference_mode == "copy":
            # _DiT stands in for the model (velocity only reads .transformer)
            return DeepGenModel.velocity(_DiT(self.ref_transformer), x, t, context, pooled)  # type: ignore[arg-type]
        with lora_disabled(self.model.transformer):
            return self.model.velocity(x, t, context, pooled)
