"""Stage 3 of DeepGen 1.0: MR-GRPO reinforcement learning with mixed rewards, headless and accelerate-based.

    deepgen train --stage 3 --config configs/train/stage3_1gpu_lora.toml [key=value ...]
    accelerate launch --num_processes 8 -m deepgen.train.grpo.trainer --config configs/train/stage3_8gpu.toml

One trainer step on one process (mrgrpo-reference.md §5; docs/mrgrpo.md "Trainer"):

1. **prompts**: ``prompts_per_step / num_processes`` prompt records drawn from the prompt set (weighted, with
   replacement, a function of (seed, step, rank));
2. **rollout** (``no_grad``): VLM → SCB once per prompt, ×G; one shared x_T per group; ``num_steps`` CPS SDE steps
   with the conditional velocity only (CFG optional); every transition and its old log-prob is kept;
3. **rewards**: decode, then :class:`deepgen.rewards.RewardMix` with each image's *category* weights (a reward is
   computed only where its weight is non-zero);
4. **advantages**: :func:`~deepgen.train.grpo.advantage.gdpo_advantages` (per-reward group z-score → category
   weights → batch z-score → clip ±5), on the local batch as officially;
5. **gradient passes**: K = ⌊N·timestep_fraction⌋ step indices (shared by every process), the samples shuffled
   once; for each trained timestep and micro-batch the policy forward (grad) and the reference forward
   (``no_grad``) give the new log-prob (:func:`cps_logprob`), the PPO-clip surrogate, the velocity KL and
   ``(1 − λ)·ℓ`` is back-propagated;
6. **SFT-Aux**: one stage-2 batch, :func:`deepgen.train.losses.flow_matching_loss`, ``λ·L_SFT`` back-propagated;
7. **update**: one optimiser step per rollout (default, as designed), or one after every trained timestep and one
   after the SFT term (``optimizer_step_per_timestep = true``, the official as-run quirk, ref §4.4).

The math is the colleague's core (``sde``, ``logprob``, ``advantage``, ``loss``); accelerate setup, model loading,
trainable selection, the DDP wrapper and checkpoints come from :mod:`deepgen.train.runtime`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...errors import one_line
from .. import runtime as R
from ..data import derive_seed
from .advantage import gdpo_advantages, per_sample_weights
from .logprob import cps_logprob, round_old_logprob
from .loss import (
    clipped_surrogate,
    grpo_step_loss,
    importance_ratio,
    loss_scale,
    mix_sft_loss,
    velocity_kl,
)
from .prompts import PromptRecord, PromptSet, load_prompt_set
from .rollout import (
    Trajectory,
    cps_rollout,
    guided_velocity,
    initial_group_noise,
    rollout_schedule,
)
from .run_config import Stage3Config, load_stage3_config
from .sde import cps_std, select_train_steps

log = logging.getLogger("deepgen.train.grpo")

__all__ = [
    "LOG_FILE",
    "GRPOTrainer",
    "RolloutBatch",
    "ZeroAdvantageWarning",
    "lora_disabled",
    "read_log",
    "run_grpo",
    "run_grpo_from_config_file",
    "user_errors",
]

LOG_FILE = "log.jsonl"
ADV_HIST_BINS = 10
_PROBE_TIMEOUT = 5.0  # seconds a remote reward judge gets to accept a connection at start-up


class ZeroAdvantageWarning(UserWarning):
    """Every advantage of a step is 0 (all groups have identical rewards): only the KL / SFT terms train."""


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


@dataclass
class RolloutBatch:
    """One process's rollout of one trainer step (B = prompts × G images, group-major)."""

    step: int
    records: list[PromptRecord]        # one per group
    group_ids: Tensor                  # (B,) global group id
    prompts: list[str]                 # (B,)
    categories: list[str]              # (B,)
    context: Tensor                    # (B, L, D) frozen conditioning (device)
    pooled: Tensor                     # (B, P)
    negative_context: Tensor | None
    negative_pooled: Tensor | None
    trajectory: Trajectory
    images: list                       # B PIL images
    scores: dict[str, Tensor] | None = None
    total: Tensor | None = None
    advantages: Tensor | None = None
    adv_stats: dict | None = None


def _import_reward_module(spec: str) -> None:
    """Import a module (``pkg.mod``) or a ``.py`` file that registers custom rewards."""
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise R.TrainingError(f"reward_modules: {path} does not exist")
        name = f"deepgen_user_rewards_{abs(hash(str(path.resolve())))}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        mod_spec.loader.exec_module(module)
    else:
        importlib.import_module(spec)


def _finite_stats(x: Tensor) -> tuple[float, float, int]:
    v = x[torch.isfinite(x)].double()
    n = v.numel()
    mean = float(v.mean()) if n else float("nan")
    std = float(v.std(unbiased=True)) if n > 1 else float("nan")
    return mean, std, n


class GRPOTrainer:
    """An MR-GRPO run.  ``GRPOTrainer(cfg).setup().train()`` returns the per-step log records.

    ``model``: an already built DeepGenModel (tests; default: ``runtime.load_model_for_training(cfg.model)``).
    ``rewards``: ``{name: Reward | callable}`` objects that override / add to the registry for this run.
    ``callbacks``: :class:`deepgen.train.runtime.TrainCallback` objects (``StepInfo.extra`` holds the GRPO
    record of the step; ``step`` counts trainer steps = rollouts).
    """

    def __init__(self, cfg: Stage3Config, *, accelerator=None, model=None, rewards: Mapping[str, Any] | None = None,
                 callbacks: Iterable[R.TrainCallback] = ()):
        self.cfg = cfg.validate()
        self.g = cfg.grpo
        self._accelerator = accelerator
        self._model = model
        self._reward_overrides = dict(rewards or {})
        self.callbacks = R.CallbackList(callbacks)
        self.history: list[dict] = []
        self.start_step = 0
        self.updates = 0
        self._setup_done = False

    # ------------------------------------------------------------------------------------------ setup
    def setup(self) -> GRPOTrainer:
        cfg, g = self.cfg, self.g
        # without CUDA always cpu=True: under `accelerate launch --multi_gpu` on a CPU machine an Accelerator
        # without it would run every process as an independent single process
        cpu = True if (cfg.cpu or not torch.cuda.is_available()) else None
        acc = self._accelerator or R.build_accelerator(cfg.mixed_precision, cpu=cpu,
                                                       kwargs_handlers=[R.ddp_kwargs(True)])
        self.accelerator = acc
        self.rank, self.world = acc.process_index, acc.num_processes
        self.device = acc.device
        self.mixed_precision = acc.mixed_precision
        if g.prompts_per_step % self.world:
            raise R.TrainingError(f"prompts_per_step ({g.prompts_per_step}) must be a multiple of the number of "
                                  f"processes ({self.world})")
        self.prompts_per_rank = g.prompts_per_step // self.world
        self.output_dir = Path(cfg.output_dir)

        # prompts and rewards first: bad input fails before the model loads
        self.prompt_set: PromptSet = load_prompt_set(cfg.prompts, category_sample_weights=g.category_sample_weights)
        self.eval_set: PromptSet | None = None
        if cfg.eval_prompts:
            self.eval_set = load_prompt_set(cfg.eval_prompts, category_sample_weights=g.category_sample_weights)
        self._setup_rewards()
        # the output folder and the SFT-Aux data next, still before the model loads
        self.ckpt = R.CheckpointManager(acc, self.output_dir, keep_last=cfg.keep_last, config=cfg.to_dict())
        self.ckpt.check_writable()
        self._setup_sft()

        # model, policy, reference
        weight_dtype = R.weight_dtype_for(self.mixed_precision)
        if self._model is None:
            model, _ = R.load_model_for_training(cfg.model, dtype=weight_dtype, device=self.device)
        else:
            model = self._model.to(self.device)
        self.model = model
        model.requires_grad_(False)
        if cfg.init_from:
            names = R.load_init_tensors(model, cfg.init_from)
            log.info("init_from %s: %d tensors", cfg.init_from, len(names))
        reference = cfg.reference if cfg.reference != "auto" else (
            "disable_adapter" if cfg.policy == "lora" else "copy")
        self.reference_mode = reference
        self.ref_transformer = None
        if reference == "copy":  # the initial DiT, before LoRA injection / fp32 masters / resume
            # in the masters' dtype (fp32): under autocast the reference then computes exactly what the policy
            # computes at step 0 (a bf16 copy would run its norms etc. in bf16: KL ≠ 0 before any update)
            self.ref_transformer = copy.deepcopy(model.transformer).to(torch.float32).requires_grad_(False).eval()
        spec = R.TrainableSpec(meta_queries=False, projectors=False, connector=False, dit=cfg.policy,
                               dit_lora_rank=cfg.lora_rank, dit_lora_alpha=cfg.lora_alpha,
                               dit_lora_targets=cfg.lora_targets, vlm_lora=False)
        self.params = R.setup_trainable(model, spec, seed=g.seed)
        if cfg.gradient_checkpointing:
            R.enable_gradient_checkpointing(model, parts=("transformer",))
        self.num_trainable = R.count_parameters(self.params)

        from ..optim import build_lr_scheduler, build_optimizer

        opt = build_optimizer(self.params, lr=g.lr, betas=tuple(g.adam_betas), weight_decay=g.weight_decay,
                              eps=g.adam_eps)
        self.lr_scheduler = build_lr_scheduler(opt, schedule="constant", warmup_steps=g.warmup_steps)
        self.loss_module = acc.prepare(R.LossModule(model, self._loss_fn))
        self.optimizer = acc.prepare(opt)

        from ...pipeline import DeepGenPipeline
        from ..losses import TrainingGrid

        self.pipeline = DeepGenPipeline(model)
        self.sigmas, self.timesteps = rollout_schedule(self.pipeline.make_scheduler(g.shift), g.num_steps)
        self.grid = TrainingGrid.from_model(model)
        acc.wait_for_everyone()
        resumed = self.ckpt.resume(cfg.resume, trainable=self.params, optimizer=self.optimizer,
                                   lr_scheduler=self.lr_scheduler)
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
        self.run_info = R.RunInfo(stage=3, total_steps=g.max_train_steps, start_step=self.start_step,
                                  output_dir=self.output_dir, is_main_process=acc.is_main_process,
                                  num_processes=self.world, trainable_parameters=self.num_trainable,
                                  config=cfg.to_dict())
        self._setup_done = True
        return self

    def _setup_rewards(self) -> None:
        from ...rewards import RewardMix, RewardModelNotFound, available_rewards
        from ...rewards.base import canonical_reward_name

        cfg, g = self.cfg, self.g
        for spec in cfg.reward_modules:
            _import_reward_module(spec)
        cats = self.prompt_set.categories + ([c for c in self.eval_set.categories if c not in
                                              self.prompt_set.categories] if self.eval_set else [])
        missing = [c for c in cats if c not in g.category_weights]
        if missing:
            raise R.TrainingError(
                f"prompt categories {missing} have no reward weights; add them to [category_weights] "
                f"(defined: {sorted(g.category_weights)}; presets: general, text_rendering)")
        self.category_weights = {c: {n: w for n, w in g.category_weights[c].items() if w != 0} for c in cats}
        overrides = {canonical_reward_name(k): v for k, v in self._reward_overrides.items()}
        known = set(available_rewards()) | set(overrides)
        for c, ws in self.category_weights.items():
            for n in ws:
                if n not in known:
                    raise R.TrainingError(
                        f"category_weights.{c} names the reward {n!r}, which is not registered; available rewards: "
                        f"{', '.join(sorted(known))}. Register custom rewards with deepgen.rewards.register_reward "
                        "in a module listed in reward_modules")
        self.reward_names = sorted({n for ws in self.category_weights.values() for n in ws})
        unused = sorted(set(map(canonical_reward_name, cfg.rewards)) - set(self.reward_names))
        if unused:
            warnings.warn(f"[rewards.*] settings for {unused}, which no prompt category uses", stacklevel=2)
        kwargs = {canonical_reward_name(k): dict(v) for k, v in cfg.rewards.items()}
        for name in self.reward_names:  # in-process reward models go to this process's device unless set
            if name not in overrides and _takes_device(name) and "device" not in kwargs.get(name, {}):
                kwargs.setdefault(name, {})["device"] = str(self.device)
        self.reward_mix = RewardMix({n: 1.0 for n in self.reward_names}, rewards=overrides, reward_kwargs=kwargs)
        for name in self.reward_names:  # remote judges: one cheap connect, even without preflight_rewards
            reward = self.reward_mix.reward(name)
            if hasattr(reward, "probe"):
                reward.probe(_PROBE_TIMEOUT)  # ResourceError naming the URL
        if cfg.preflight_rewards:
            for name in self.reward_names:
                users = [c for c, ws in self.category_weights.items() if name in ws]
                try:
                    _preflight(self.reward_mix.reward(name))
                except (RewardModelNotFound, ImportError, OSError) as e:
                    raise R.TrainingError(
                        f"reward {name!r} (used by categories {users}) cannot load its model: {one_line(e)}; "
                        f"point [rewards.{name}] at a local copy (e.g. model_path = \"...\" or url = \"...\"), "
                        "or drop the reward from category_weights.") from e

    def _setup_sft(self) -> None:
        cfg, g = self.cfg, self.g
        self.sft_loader = None
        if not cfg.sft_data or g.sft_lambda == 0.0:
            if g.sft_lambda > 0 and not cfg.sft_data:
                log.info("no sft_data: the SFT-Aux term (λ = %g) is off", g.sft_lambda)
            return
        from ..data import MicroBatchLoader, load_datasets

        data = load_datasets(cfg.sft_data, root=cfg.sft_data_root or None, resolution=cfg.sft_resolution,
                             verify=cfg.sft_data_verify)
        self.sft_loader = MicroBatchLoader(data, cfg.sft_task_pattern, g.sft_batch_size, seed=g.seed, rank=self.rank,
                                           world_size=self.world, caption_dropout=g.sft_caption_drop,
                                           num_workers=cfg.sft_num_workers)

    # ------------------------------------------------------------------------------------------ velocity
    def policy_velocity(self, x, t, context, pooled) -> Tensor:
        return self.model.velocity(x, t, context, pooled)

    def reference_velocity(self, x, t, context, pooled) -> Tensor:
        from ...model.deepgen import DeepGenModel

        if self.reference_mode == "copy":
            return DeepGenModel.velocity(_DiT(self.ref_transformer), x, t, context, pooled)
        with lora_disabled(self.model.transformer):
            return self.model.velocity(x, t, context, pooled)

    # ------------------------------------------------------------------------------------------ loss
    def _loss_fn(self, model, kind: str, **kw):
        """The forward of the DDP-wrapped :class:`~deepgen.train.runtime.LossModule`."""
        if kind == "grpo":
            return self._grpo_loss(**kw)
        if kind == "sft":
            return self._sft_loss(**kw)
        raise ValueError(kind)

    def _grpo_loss(self, *, x_t, x_next, step_index: int, context, pooled, negative_context, negative_pooled,
                   old_logprob, advantages, scale: float) -> dict:
        g = self.g
        n = x_t.shape[0]
        sig, sig_next = float(self.sigmas[step_index]), float(self.sigmas[step_index + 1])
        t = self.timesteps[step_index].to(self.device).expand(n)
        v = guided_velocity(self.policy_velocity, x_t, t, context, pooled, negative_context, negative_pooled,
                            g.cfg_scale)
        logp = cps_logprob(x_t, v, sig, sig_next, x_next, eta=g.eta, kind=g.logprob)
        old = round_old_logprob(old_logprob, bf16=g.bf16_old_logprob)
        policy_loss, st = clipped_surrogate(logp, old, advantages, g.clip_range)
        if g.kl_beta != 0.0:
            with torch.no_grad():
                v_ref = guided_velocity(self.reference_velocity, x_t, t, context, pooled, negative_context,
                                        negative_pooled, g.cfg_scale)
            kl = velocity_kl(v, v_ref, cps_std(sig_next, g.eta), eps=g.kl_eps)
        else:  # β = 0: the reference forward is skipped
            kl = torch.zeros(n, device=v.device)
        step_loss = grpo_step_loss(policy_loss, kl, g.kl_beta, scale)
        loss = mix_sft_loss(step_loss, torch.zeros((), device=step_loss.device), g.sft_lambda)  # (1 − λ)·ℓ
        ratio = importance_ratio(logp.detach(), old)
        return {"loss": loss, "policy_loss": policy_loss.detach(), "kl": kl.detach(),
                "ratio": ratio, "clip_frac": st["clip_frac"], "approx_kl": st["approx_kl"]}

    def _sft_loss(self, *, prompts, targets, noise, timestep_index, reference_images, reference_latents) -> dict:
        from ..losses import flow_matching_loss

        out = flow_matching_loss(self.model, prompts, targets, grid=self.grid, reference_images=reference_images,
                                 reference_latents=reference_latents, noise=noise, timestep_index=timestep_index)
        loss = mix_sft_loss(torch.zeros((), device=out.loss.device), out.loss, self.g.sft_lambda)  # λ·L_SFT
        return {"loss": loss, "sft_loss": out.loss.detach()}

    # ------------------------------------------------------------------------------------------ phases
    def _autocast(self):
        return self.accelerator.autocast()

    def rollout(self, step: int) -> RolloutBatch:
        """Prompts → conditioning → CPS trajectories → decoded images (no gradients)."""
        g = self.g
        G, P = g.group_size, self.prompts_per_rank
        records = self.prompt_set.sample(P, seed=g.seed, step=step, rank=self.rank, world_size=self.world)
        prompts = [r.prompt for r in records]
        guided = g.cfg_scale > 1.0
        with torch.no_grad(), self._autocast():
            cond = self.pipeline.encode(prompts, guidance=guided).repeat(G)
        size = g.resolution
        shape = (self.model.transformer.config.in_channels, size // 8, size // 8)
        first_group = self.rank * P
        x_T = initial_group_noise(P, G, shape, seed=g.seed, tag=(step,), same_noise=g.init_same_noise,
                                  first_group=first_group)
        dtype = torch.bfloat16 if self.mixed_precision == "bf16" else torch.float32
        with self._autocast():
            traj = cps_rollout(self.policy_velocity, x_T, cond.context, cond.pooled, sigmas=self.sigmas,
                               timesteps=self.timesteps, eta=g.eta, logprob=g.logprob, seed=g.seed,
                               noise_tag=(step,), image_ids=range(first_group * G, (first_group + P) * G),
                               micro_batch_size=g.rollout_micro_batch_size, negative_context=cond.negative_context,
                               negative_pooled=cond.negative_pooled, cfg_scale=g.cfg_scale, dtype=dtype,
                               storage_device="cpu", callback=lambda i, n: self.callbacks.check_interrupt())
        images = self.decode(traj.final)
        gids = torch.arange(first_group, first_group + P).repeat_interleave(G)
        return RolloutBatch(step=step, records=list(records), group_ids=gids,
                            prompts=[r.prompt for r in records for _ in range(G)],
                            categories=[r.category for r in records for _ in range(G)],
                            context=cond.context, pooled=cond.pooled, negative_context=cond.negative_context,
                            negative_pooled=cond.negative_pooled, trajectory=traj, images=images)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> list:
        from ...images import to_pil

        out = []
        mb = self.g.rollout_micro_batch_size
        with self._autocast():
            for s in range(0, latents.shape[0], mb):
                out += to_pil(self.model.decode_latents(latents[s:s + mb].to(self.device)).float())
        return out

    def score(self, batch: RolloutBatch) -> None:
        """Rewards (per category weights) and GDPO advantages of a rollout, in place."""
        g = self.g
        for name in self.reward_names:  # seeded per (step, rank): exact resume of e.g. the pair order
            r = self.reward_mix.reward(name)
            if hasattr(r, "reseed"):
                r.reseed(derive_seed(g.seed, "reward", name, batch.step, self.rank))
        specs = [self.category_weights[c] for c in batch.categories]
        res = self.reward_mix(batch.images, batch.prompts, batch.group_ids.tolist(), weights=specs)
        names = list(res.scores)
        weights = per_sample_weights(batch.categories, self.category_weights, names)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            adv, stats = gdpo_advantages(res.scores, batch.group_ids, weights, eps=g.adv_eps, clip=g.adv_clip,
                                         nan_policy=g.nan_policy)
        for w in caught:  # re-emit with the step number
            warnings.warn(f"step {batch.step}: {w.message}", w.category, stacklevel=2)
        if bool((adv == 0).all()):
            warnings.warn(f"step {batch.step}: every advantage is 0 (all groups have identical rewards, e.g. "
                          "group_size 1 or a constant reward); only the KL / SFT terms train this step",
                          ZeroAdvantageWarning, stacklevel=2)
        batch.scores, batch.total, batch.advantages, batch.adv_stats = res.scores, res.total, adv, stats

    def _train_passes(self, batch: RolloutBatch, acc_stats: dict) -> None:
        g = self.g
        traj = batch.trajectory
        B = traj.latents.shape[0]
        steps = select_train_steps(g.num_steps, g.timestep_fraction, include_last=g.include_last_step,
                                   rng=derive_seed(g.seed, "train_steps", batch.step))
        mb = g.train_micro_batch_size
        micro = math.ceil(B / mb)
        scale = loss_scale(g.num_actor_update_steps, len(steps), micro)
        per_timestep = g.optimizer_step_per_timestep
        adv = batch.advantages.to(self.device)
        acc_stats["train_steps"] = steps
        for u in range(g.num_actor_update_steps):
            gen = R.sample_generator(g.seed, "shuffle", batch.step, self.rank, u)
            perm = torch.randperm(B, generator=gen)
            for k, j in enumerate(steps):
                for m in range(micro):
                    self.callbacks.check_interrupt()
                    idx = perm[m * mb:(m + 1) * mb]
                    x_t, x_next = traj.transition(idx, j)
                    last = m == micro - 1 and (per_timestep or (k == len(steps) - 1 and u == g.num_actor_update_steps - 1
                                                                and not self._sft_due(batch.step)))
                    with self._maybe_no_sync(not last):
                        out = self.loss_module(
                            "grpo", x_t=x_t.to(self.device), x_next=x_next.to(self.device), step_index=j,
                            context=batch.context[idx], pooled=batch.pooled[idx],
                            negative_context=None if batch.negative_context is None else batch.negative_context[idx],
                            negative_pooled=None if batch.negative_pooled is None else batch.negative_pooled[idx],
                            old_logprob=traj.logprobs[idx, j].to(self.device), advantages=adv[idx], scale=scale)
                        self.accelerator.backward(out["loss"])
                    n = idx.numel()
                    acc_stats["policy_loss"] += float(out["policy_loss"]) * n
                    acc_stats["kl"] += float(out["kl"].sum())
                    acc_stats["kl_max"] = max(acc_stats["kl_max"], float(out["kl"].max()))
                    acc_stats["ratio"] += float(out["ratio"].sum())
                    acc_stats["ratio_max_dev"] = max(acc_stats["ratio_max_dev"],
                                                     float((out["ratio"] - 1).abs().max()))
                    acc_stats["clip_frac"] += float(out["clip_frac"]) * n
                    acc_stats["approx_kl"] += float(out["approx_kl"]) * n
                    acc_stats["count"] += n
                if per_timestep:
                    self._update(acc_stats)

    def _sft_due(self, step: int) -> bool:
        return self._sft_iter is not None and step % self.g.sft_every_n_steps == 0

    def _sft_pass(self, step: int, acc_stats: dict) -> None:
        if not self._sft_due(step):
            return
        batch = next(self._sft_iter)
        with self._maybe_no_sync(False):
            out = self.loss_module("sft", **self._sft_inputs(batch))
            self.accelerator.backward(out["loss"])
        acc_stats["sft_loss"] = float(out["sft_loss"])
        if self.g.optimizer_step_per_timestep:
            self._update(acc_stats)

    def _sft_inputs(self, batch) -> dict:
        """The SFT-Aux batch's flow-matching inputs, drawn per sample position as in stages 1-2."""
        with self._autocast():
            return R.flow_batch_inputs(self.model, batch, seed=self.g.seed, rank=self.rank, world=self.world,
                                       device=self.device, purpose="sft_", num_timesteps=len(self.grid))

    def _maybe_no_sync(self, skip_sync: bool):
        if skip_sync and self.world > 1:
            return self.accelerator.no_sync(self.loss_module)
        return contextlib.nullcontext()

    def _update(self, acc_stats: dict) -> None:
        g = self.g
        params = list(self.params.values())
        if g.max_grad_norm > 0:
            norm = self.accelerator.clip_grad_norm_(params, g.max_grad_norm)
        else:
            grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros(())
        acc_stats["grad_norm"] = float(norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        self._clean_step = None  # parameters are now past the last completed step
        acc_stats["updates_this_step"] += 1

    # ------------------------------------------------------------------------------------------ one step
    def train_step(self, step: int) -> dict:
        """Rollout, rewards, advantages, gradient passes, SFT-Aux and the update(s) of trainer step ``step``."""
        t0 = time.perf_counter()
        lr = self.lr_scheduler.get_last_lr()[0]
        batch = self.rollout(step)
        t1 = time.perf_counter()
        self.score(batch)
        t2 = time.perf_counter()
        st = {"policy_loss": 0.0, "kl": 0.0, "kl_max": 0.0, "ratio": 0.0, "ratio_max_dev": 0.0, "clip_frac": 0.0,
              "approx_kl": 0.0, "count": 0, "grad_norm": float("nan"), "updates_this_step": 0,
              "sft_loss": float("nan")}
        self._train_passes(batch, st)
        self._sft_pass(step, st)
        if not self.g.optimizer_step_per_timestep:
            self._update(st)
        t3 = time.perf_counter()
        record = self._record(step, batch, st, lr, {"rollout": t1 - t0, "reward": t2 - t1, "train": t3 - t2})
        return record

    def _record(self, step: int, batch: RolloutBatch, st: dict, lr: float, times: dict) -> dict:
        acc = self.accelerator
        g = self.g
        rec: dict[str, Any] = {"step": step + 1, "lr": lr, "updates": self.updates}
        # rewards over every process
        for name in self.reward_names:
            col = batch.scores.get(name, torch.full((len(batch.images),), float("nan")))
            allv = acc.gather(col.to(self.device)).cpu()
            mean, std, n = _finite_stats(allv)
            rec[f"reward/{name}/mean"], rec[f"reward/{name}/std"], rec[f"reward/{name}/n"] = mean, std, n
        total = acc.gather(batch.total.to(self.device)).cpu()
        rec["reward/weighted/mean"], rec["reward/weighted/std"], _ = _finite_stats(total)
        adv = acc.gather(batch.advantages.to(self.device)).cpu().float()
        c = g.adv_clip or 5.0
        rec["adv/hist"] = torch.histc(adv, bins=ADV_HIST_BINS, min=-c, max=c).long().tolist()
        rec["adv/hist_range"] = [-c, c]
        rec["adv/std"] = float(adv.std()) if adv.numel() > 1 else float("nan")
        rec["adv/abs_mean"] = float(adv.abs().mean())
        rec["adv/zero_frac"] = float((adv == 0).float().mean())
        sums = {"policy_loss": st["policy_loss"], "kl": st["kl"], "ratio_mean": st["ratio"],
                "clip_frac": st["clip_frac"], "approx_kl": st["approx_kl"],
                "adv/clip_frac": batch.adv_stats.get("clip_frac", 0.0),
                "adv/num_degenerate_groups": batch.adv_stats.get("num_degenerate_groups", 0.0)}
        counts = {k: st["count"] for k in ("policy_loss", "kl", "ratio_mean", "clip_frac", "approx_kl")}
        counts.update({"adv/clip_frac": 1.0, "adv/num_degenerate_groups": 1.0 / self.world})
        if not math.isnan(st["sft_loss"]):
            sums["sft_loss"], counts["sft_loss"] = st["sft_loss"], 1.0
        rec.update(R.global_mean(acc, sums, counts))
        mx = torch.tensor([st["kl_max"], st["ratio_max_dev"]], dtype=torch.float64, device=self.device)
        if self.world > 1:
            mx = _all_max(mx)
        rec["kl_max"], rec["ratio_max_dev"] = float(mx[0]), float(mx[1])
        rec["kl_loss"] = g.kl_beta * rec.get("kl", 0.0)
        rec["grad_norm"] = st["grad_norm"]
        rec["train_steps"] = st["train_steps"]
        rec["num_images"] = len(batch.images) * self.world
        rec.update({f"time/{k}": round(v, 4) for k, v in times.items()})
        return rec

    # ------------------------------------------------------------------------------------------ loop
    def train(self) -> list[dict]:
        if not self._setup_done:
            self.setup()
        g, acc = self.g, self.accelerator
        self.callbacks.on_train_start(self.run_info)
        watch = R.Stopwatch()
        if self.eval_set is not None and self.cfg.eval_before_training and self.start_step == 0:
            self.evaluate(0)
        self._clean_step: int | None = self.start_step  # params == after this many completed steps
        try:
            for step in range(self.start_step, g.max_train_steps):
                ts = time.perf_counter()
                rec = self.train_step(step)
                done = step + 1
                self._clean_step = done
                rec["time/step"] = round(time.perf_counter() - ts, 4)
                self.history.append(rec)
                if acc.is_main_process:
                    self._write_log(rec)
                    if done % self.cfg.log_every == 0 or done == g.max_train_steps:
                        log.info(_console_line(rec, self.reward_names))
                info = R.StepInfo(step=done, total_steps=g.max_train_steps, loss=rec.get("policy_loss", 0.0),
                                  task_losses={"grpo": rec.get("policy_loss", 0.0)}, lr=rec["lr"],
                                  grad_norm=rec["grad_norm"], samples=done * rec["num_images"],
                                  step_time=rec["time/step"], elapsed=watch.elapsed, extra=rec)
                self.callbacks.on_step_end(self.run_info, info)
                if g.save_every and done % g.save_every == 0 and done != g.max_train_steps:
                    self.save(done, "periodic")
                if self.eval_set is not None and g.eval_every and done % g.eval_every == 0:
                    self.evaluate(done)
            self.save(g.max_train_steps, "final")
            self._check_in_sync()
        except BaseException as exc:
            path = self._save_on_interrupt()
            self.callbacks.on_interrupt(self.run_info, self._clean_step or 0, path, exc)
            raise
        self.callbacks.on_train_end(self.run_info, self.history)
        return self.history

    def _check_in_sync(self) -> None:
        """With several processes: every rank must hold bit-identical trainable parameters (DDP averaged the
        same gradients); a mismatch means a desynchronised run, which is an error, not a warning."""
        if self.world == 1:
            return
        from accelerate.utils import gather_object

        local = [float(sum(p.detach().double().sum() for p in self.params.values())),
                 float(sum(p.detach().double().abs().sum() for p in self.params.values()))]
        sums = gather_object([local])
        if any(s != sums[0] for s in sums):
            raise R.TrainingError(f"trainable parameters differ between processes at the end of training: {sums}")

    def _save_on_interrupt(self) -> Path | None:
        """Checkpoint the last completed trainer step if the parameters are still exactly its result.

        In the default mode (one update per rollout) an interrupt inside a step leaves the parameters of the
        previous step, which is saved.  In update-every-timestep mode an interrupt after an update inside a step
        leaves half-updated parameters; nothing is written then and a resume starts from the last checkpoint.
        """
        step = self._clean_step
        if step is None:
            log.warning("interrupted after an optimizer update inside a step (update-every-timestep mode): no "
                        "checkpoint written; a resume continues from checkpoint %s", self.ckpt.last_saved_step)
            return None
        if step <= self.start_step or self.ckpt.last_saved_step == step:
            return None
        try:
            return self.save(step, "interrupt")
        except Exception as e:  # noqa: BLE001 - never hide the original exception
            log.error("could not write the interrupt checkpoint: %s", e)
            return None

    # ------------------------------------------------------------------------------------------ output
    def save(self, step: int, reason: str) -> Path | None:
        if self.ckpt.last_saved_step == step:
            return None
        pos = {"updates": self.updates, "sft": self.sft_loader.state_dict() if self.sft_loader is not None else None}
        path = self.ckpt.save(step, trainable=self.params, optimizer=self.optimizer, lr_scheduler=self.lr_scheduler,
                              data_position=pos, extra={"updates": self.updates, "reason": reason})
        exports: dict[str, Path] = {}
        if self.accelerator.is_main_process:
            exports["checkpoint"] = path
            if self.cfg.policy == "lora" and self.cfg.save_lora_every_checkpoint:
                from ...lora import save_lora

                exports["lora"] = save_lora(self.model, self.output_dir / "lora.safetensors",
                                            metadata={"stage": 3, "step": step, "rank": self.cfg.lora_rank})
            if reason == "interrupt":
                self._truncate_log(step)
            self.callbacks.on_export(self.run_info, exports)
        self.callbacks.on_checkpoint(self.run_info, step, path, reason)
        return path

    @property
    def log_path(self) -> Path:
        return self.output_dir / LOG_FILE

    def _prepare_log_file(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.start_step == 0:
            self.log_path.write_text("", encoding="utf-8")
        else:
            self._truncate_log(self.start_step)

    def _truncate_log(self, step: int) -> None:
        """Drop records of steps after ``step`` (a resumed run writes them again)."""
        if not self.log_path.is_file():
            return
        keep = [line for line in self.log_path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.log_path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

    def _write_log(self, rec: dict) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=_json_default) + "\n")

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, step: int) -> dict:
        """ODE samples (``eval_num_steps``, CFG ``eval_cfg_scale``, seeds ``eval_seed + 1000·index + dup``) of the
        eval prompts, split over the processes, scored with each prompt's category weights."""
        acc, cfg, g = self.accelerator, self.cfg, self.g
        recs = self.eval_set.records
        mine = [(i, r) for i, r in enumerate(recs) if i % self.world == self.rank]
        rows = []
        images_all = []
        size = g.resolution
        for i, r in mine:
            n = cfg.eval_images_per_prompt
            guided = g.eval_cfg_scale > 1.0
            with self._autocast():
                cond = self.pipeline.encode([r.prompt], guidance=guided).repeat(n)
                lat = self.pipeline.sample(cond, size, size, num_steps=cfg.eval_num_steps, cfg_scale=g.eval_cfg_scale,
                                           seed=[cfg.eval_seed + 1000 * i + d for d in range(n)])
            images = self.decode(lat)
            res = self.reward_mix(images, [r.prompt] * n, [i] * n, weights=[self.category_weights[r.category]] * n)
            for d, im in enumerate(images):
                rows.append({"index": i, "dup": d, "category": r.category,
                             "scores": {k: float(v[d]) for k, v in res.scores.items()}, "total": float(res.total[d])})
                images_all.append((i, d, im))
        from accelerate.utils import gather_object

        all_rows = gather_object(rows) if self.world > 1 else rows
        out: dict[str, Any] = {"step": step, "eval": True}
        for name in self.reward_names:
            vals = torch.tensor([row["scores"].get(name, float("nan")) for row in all_rows], dtype=torch.float64)
            out[f"eval/{name}/mean"], out[f"eval/{name}/std"], _ = _finite_stats(vals)
        out["eval/weighted/mean"], out["eval/weighted/std"], _ = _finite_stats(
            torch.tensor([row["total"] for row in all_rows], dtype=torch.float64))
        paths: list[Path] = []
        if cfg.eval_save_images:
            folder = self.output_dir / "eval" / f"step-{step:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, d, im in images_all:
                p = folder / f"{i:05d}_{d}.png"
                im.save(p)
                paths.append(p)
        if acc.is_main_process:
            self._write_log(out)
            log.info("eval step %d: %s", step, "  ".join(f"{k[5:]} {v:.4f}" for k, v in out.items()
                                                            if k.endswith("/mean")))
            self.callbacks.on_validation(self.run_info, step, [im for _, _, im in images_all], paths)
        self.history.append(out)
        return out


def _all_max(t: Tensor) -> Tensor:
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def _takes_device(name: str) -> bool:
    """Whether the registered reward ``name`` is a class with an explicit ``device`` argument (e.g. CLIP)."""
    import inspect

    from ...rewards.base import registered_reward

    obj = registered_reward(name)
    if not isinstance(obj, type):
        return False
    try:
        return "device" in inspect.signature(obj.__init__).parameters
    except (TypeError, ValueError):
        return False


def _preflight(reward) -> None:
    """Load a reward's model now (CLIP weights, a local VLM judge, the OCR engine) so a missing one fails at
    start-up with the reward's own message, not after the first rollout."""
    if hasattr(reward, "load"):
        reward.load()
    judge = getattr(reward, "judge", None)
    if judge is not None and hasattr(judge, "load"):
        judge.load()
    if hasattr(reward, "engine"):
        reward.engine()


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, Tensor):
        return o.tolist()
    return str(o)


def _console_line(rec: dict, names: Sequence[str]) -> str:
    parts = [f"step {rec['step']}", f"lr {rec['lr']:.2e}"]
    for n in names:
        parts.append(f"{n} {rec[f'reward/{n}/mean']:.4f}±{rec[f'reward/{n}/std']:.3f}")
    parts.append(f"kl {rec.get('kl', 0.0):.3e}")
    parts.append(f"clip {rec.get('clip_frac', 0.0):.3f}")
    parts.append(f"ratio-1 {rec.get('ratio_max_dev', 0.0):.1e}")
    if "sft_loss" in rec:
        parts.append(f"sft {rec['sft_loss']:.4f}")
    parts.append("adv " + "".join(" ▁▂▃▄▅▆▇█"[min(8, math.ceil(8 * c / max(1, max(rec["adv/hist"]))))]
                                  for c in rec["adv/hist"]))
    parts.append(f"{rec.get('time/step', 0.0):.2f}s")
    return "  ".join(parts)


def read_log(output_dir: str | os.PathLike) -> list[dict]:
    """The JSONL log of a run (training records and ``"eval": true`` records)."""
    path = Path(output_dir) / LOG_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------------
# entry points


def run_grpo(cfg: Stage3Config, *, callbacks: Iterable[R.TrainCallback] = (), **kwargs) -> list[dict]:
    """Set up and run an MR-GRPO training from a config; returns the per-step records."""
    return GRPOTrainer(cfg, callbacks=callbacks, **kwargs).setup().train()


def run_grpo_from_config_file(path: str | os.PathLike, overrides: list[str] | None = None,
                              resume: str | None = None) -> None:
    """``deepgen train --stage 3 --config FILE [key=value ...]``: load, override, run.

    ``resume`` (the CLI's ``--resume``), when given, replaces the config's ``resume`` (auto | no | folder).
    """
    overrides = list(overrides or [])
    if resume is not None:
        overrides.append(f"resume={json.dumps(str(resume))}")
    cfg = load_stage3_config(path, overrides)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.setLevel(logging.INFO)
    run_grpo(cfg)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "fix your config / data / models / folders / network" (print the message on one
    line, exit 2; no traceback): every DeepGenError, and OS errors (a missing file, a full disk, a dead host)."""
    from ...errors import DeepGenError

    return (DeepGenError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deepgen.train.grpo.trainer",
                                description="DeepGen stage 3 (MR-GRPO); same as `deepgen train --stage 3`")
    p.add_argument("--config", required=True)
    p.add_argument("--resume", default=None, help="auto | no | a checkpoint folder (overrides the config)")
    p.add_argument("overrides", nargs="*", help="key=value (TOML values), e.g. group_size=4")
    args = p.parse_args(argv)
    try:
        run_grpo_from_config_file(args.config, args.overrides, args.resume)
    except KeyboardInterrupt:
        return 130
    except user_errors() as exc:
        from ...errors import user_message

        print(f"error: {user_message(exc) or one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
