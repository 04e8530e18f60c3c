"""The phases of one MR-GRPO trainer step (mrgrpo-reference.md §5), in the order the step runs them:

1. :meth:`StepPhases.rollout`: prompts → frozen conditioning ×G → CPS trajectories with old log-probs → images;
2. :meth:`StepPhases.score`: rewards with each image's category weights → GDPO advantages;
3. :meth:`StepPhases.policy_update`: for K trained timesteps × micro-batches, the PPO-clip surrogate + β·KL,
   ``(1 − λ)·ℓ`` back-propagated (:meth:`StepPhases._grpo_loss`);
4. :meth:`StepPhases.sft_aux`: one stage-2 batch, ``λ·L_SFT`` back-propagated;
5. :meth:`StepPhases.optimizer_step`: clip, AdamW, LR schedule.

The maths is in ``sde``, ``logprob``, ``advantage`` and ``loss``; :class:`StepPhases` is mixed into
:class:`~deepgen.train.grpo.trainer.GRPOTrainer` and reads the state :class:`~.setup.RunSetup` built.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import runtime as R
from .. import sharding
from ..data import derive_seed
from .advantage import gdpo_advantages, per_sample_weights
from .logprob import cps_logprob, round_old_logprob
from .loss import clipped_surrogate, grpo_step_loss, importance_ratio, loss_scale, mix_sft_loss, velocity_kl
from .rollout import Trajectory, cps_rollout, guided_velocity, initial_group_noise
from .sde import cps_std, select_train_steps
from .state import RunState

__all__ = ["RolloutBatch", "StepPhases", "ZeroAdvantageWarning", "new_step_stats"]


class ZeroAdvantageWarning(UserWarning):
    """Every advantage of a step is 0 (all groups have identical rewards): only the KL / SFT terms train."""


@dataclass
class RolloutBatch:
    """One process's rollout of one trainer step (B = prompts × G images, group-major)."""

    step: int
    group_ids: Tensor  # (B,) global group id
    prompts: list[str]  # (B,)
    categories: list[str]  # (B,)
    context: Tensor  # (B, L, D) frozen conditioning (device)
    pooled: Tensor  # (B, P)
    negative_context: Tensor | None
    negative_pooled: Tensor | None
    trajectory: Trajectory
    images: list  # B PIL images
    scores: dict[str, Tensor] | None = None
    total: Tensor | None = None
    advantages: Tensor | None = None
    adv_stats: dict | None = None


def new_step_stats() -> dict:
    """The per-step accumulator the phases fill (sums over trained samples, maxima, the SFT loss, updates)."""
    return {
        "policy_loss": 0.0,
        "kl": 0.0,
        "kl_max": 0.0,
        "ratio": 0.0,
        "ratio_max_dev": 0.0,
        "clip_frac": 0.0,
        "approx_kl": 0.0,
        "count": 0,
        "grad_norm": float("nan"),
        "updates_this_step": 0,
        "sft_loss": float("nan"),
    }


class StepPhases(RunState):
    """Rollout, scoring, the GRPO gradient passes, SFT-Aux and the optimiser update (mixed into ``GRPOTrainer``)."""

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return self.accelerator.autocast()

    def rollout(self, step: int) -> RolloutBatch:
        """Prompts → conditioning → CPS trajectories → decoded images (no gradients)."""
        g = self.g
        P = self.prompts_per_rank
        records = self.prompt_set.sample(P, seed=g.seed, step=step, rank=self.rank, world_size=self.world)
        prompts = [r.prompt for r in records]
        guided = g.cfg_scale > 1.0
        # FSDP: whole weights outside the training forward (every process rolls out as many images)
        with sharding.full_weights(self.accelerator, self.model):
            return self._rollout(step, records, prompts, guided)

    def _rollout(self, step, records, prompts, guided) -> RolloutBatch:
        g = self.g
        G, P = g.group_size, self.prompts_per_rank
        with torch.no_grad(), self._autocast():
            cond = self.pipeline.encode(prompts, guidance=guided).repeat(G)
        size = g.resolution
        shape = (self.model.transformer.config.in_channels, size // 8, size // 8)
        first_group = self.rank * P
        x_T = initial_group_noise(
            P, G, shape, seed=g.seed, tag=(step,), same_noise=g.init_same_noise, first_group=first_group
        )
        dtype = torch.bfloat16 if self.mixed_precision == "bf16" else torch.float32
        with self._autocast():
            traj = cps_rollout(
                self.policy_velocity,
                x_T,
                cond.context,
                cond.pooled,
                sigmas=self.sigmas,
                timesteps=self.timesteps,
                eta=g.eta,
                logprob=g.logprob,
                seed=g.seed,
                noise_tag=(step,),
                image_ids=range(first_group * G, (first_group + P) * G),
                micro_batch_size=g.rollout_micro_batch_size,
                negative_context=cond.negative_context,
                negative_pooled=cond.negative_pooled,
                cfg_scale=g.cfg_scale,
                dtype=dtype,
                storage_device="cpu",
                callback=lambda i, n: self.callbacks.check_interrupt(),
            )
        images = self.decode(traj.final)
        gids = torch.arange(first_group, first_group + P).repeat_interleave(G)
        return RolloutBatch(
            step=step,
            group_ids=gids,
            prompts=[r.prompt for r in records for _ in range(G)],
            categories=[r.category for r in records for _ in range(G)],
            context=cond.context,
            pooled=cond.pooled,
            negative_context=cond.negative_context,
            negative_pooled=cond.negative_pooled,
            trajectory=traj,
            images=images,
        )

    @torch.no_grad()
    def decode(self, latents: Tensor) -> list:
        from ...images import to_pil

        out = []
        mb = self.g.rollout_micro_batch_size
        with self._autocast():
            for s in range(0, latents.shape[0], mb):
                out += to_pil(self.model.decode_latents(latents[s : s + mb].to(self.device)).float())
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
            adv, stats = gdpo_advantages(
                res.scores, batch.group_ids, weights, eps=g.adv_eps, clip=g.adv_clip, nan_policy=g.nan_policy
            )
        for w in caught:  # re-emit with the step number
            warnings.warn(f"step {batch.step}: {w.message}", w.category, stacklevel=2)
        if bool((adv == 0).all()):
            warnings.warn(
                f"step {batch.step}: every advantage is 0 (all groups have identical rewards, e.g. "
                "group_size 1 or a constant reward); only the KL / SFT terms train this step",
                ZeroAdvantageWarning,
                stacklevel=2,
            )
        batch.scores, batch.total, batch.advantages, batch.adv_stats = res.scores, res.total, adv, stats

    def policy_update(self, batch: RolloutBatch, acc_stats: dict) -> None:
        """The GRPO gradient passes (ref §4.1, §5 step 6): K trained timesteps (one draw keyed by (seed, step),
        the same on every process), the samples shuffled once; per timestep (ascending) and micro-batch the
        clipped surrogate + β·KL (:meth:`_grpo_loss`), ``(1 − λ)·ℓ`` back-propagated; gradients all-reduced on
        the last backward before an update.  In timestep mode an optimiser step follows every timestep."""
        g = self.g
        traj = batch.trajectory
        B = traj.latents.shape[0]
        steps = select_train_steps(
            g.num_steps,
            g.timestep_fraction,
            include_last=g.include_last_step,
            rng=derive_seed(g.seed, "train_steps", batch.step),
        )
        mb = g.train_micro_batch_size
        micro = math.ceil(B / mb)
        scale = loss_scale(g.num_actor_update_steps, len(steps), micro)
        per_timestep = g.optimizer_step_per_timestep
        assert batch.advantages is not None, "score(batch) runs before policy_update(batch)"
        adv = batch.advantages.to(self.device)
        acc_stats["train_steps"] = steps
        for u in range(g.num_actor_update_steps):
            gen = R.sample_generator(g.seed, "shuffle", batch.step, self.rank, u)
            perm = torch.randperm(B, generator=gen)
            for k, j in enumerate(steps):
                for m in range(micro):
                    self.callbacks.check_interrupt()
                    idx = perm[m * mb : (m + 1) * mb]
                    x_t, x_next = traj.transition(idx, j)
                    # sync the gradients on the last backward before an optimiser step
                    last_backward = (
                        k == len(steps) - 1 and u == g.num_actor_update_steps - 1 and not self._sft_due(batch.step)
                    )
                    last = m == micro - 1 and (per_timestep or last_backward)
                    with self._maybe_no_sync(not last):
                        out = self.loss_module(
                            "grpo",
                            x_t=x_t.to(self.device),
                            x_next=x_next.to(self.device),
                            step_index=j,
                            context=batch.context[idx],
                            pooled=batch.pooled[idx],
                            negative_context=None if batch.negative_context is None else batch.negative_context[idx],
                            negative_pooled=None if batch.negative_pooled is None else batch.negative_pooled[idx],
                            old_logprob=traj.logprobs[idx, j].to(self.device),
                            advantages=adv[idx],
                            scale=scale,
                        )
                        sharding.backward(self.accelerator, self.loss_module, out["loss"], boundary=last)
                    n = idx.numel()
                    acc_stats["policy_loss"] += float(out["policy_loss"]) * n
                    acc_stats["kl"] += float(out["kl"].sum())
                    acc_stats["kl_max"] = max(acc_stats["kl_max"], float(out["kl"].max()))
                    acc_stats["ratio"] += float(out["ratio"].sum())
                    acc_stats["ratio_max_dev"] = max(acc_stats["ratio_max_dev"], float((out["ratio"] - 1).abs().max()))
                    acc_stats["clip_frac"] += float(out["clip_frac"]) * n
                    acc_stats["approx_kl"] += float(out["approx_kl"]) * n
                    acc_stats["count"] += n
                if per_timestep:
                    self.optimizer_step(acc_stats)

    def _sft_due(self, step: int) -> bool:
        return self._sft_iter is not None and step % self.g.sft_every_n_steps == 0

    def sft_aux(self, step: int, acc_stats: dict) -> None:
        """SFT-Aux (ref §4.2): every ``sft_every_n_steps``, one stage-2 batch, ``λ·L_SFT`` back-propagated."""
        if not self._sft_due(step):
            return
        assert self._sft_iter is not None  # _sft_due: there is SFT-Aux data
        batch = next(self._sft_iter)
        with self._maybe_no_sync(False):
            out = self.loss_module("sft", **self._sft_inputs(batch))
            sharding.backward(self.accelerator, self.loss_module, out["loss"], boundary=True)
        acc_stats["sft_loss"] = float(out["sft_loss"])
        if self.g.optimizer_step_per_timestep:
            self.optimizer_step(acc_stats)

    def _sft_inputs(self, batch) -> dict:
        """The SFT-Aux batch's flow-matching inputs, drawn per sample position as in stages 1-2."""
        with self._autocast():
            return R.flow_batch_inputs(
                self.model,
                batch,
                seed=self.g.seed,
                rank=self.rank,
                world=self.world,
                device=self.device,
                purpose="sft_",
                num_timesteps=len(self.grid),
            )

    _train_passes = policy_update  # the name tests/test_grpo_trainer.py calls

    def _maybe_no_sync(self, skip_sync: bool):
        if skip_sync and self.world > 1:
            return self.accelerator.no_sync(self.loss_module)
        return contextlib.nullcontext()

    def optimizer_step(self, acc_stats: dict) -> None:
        """Clip the gradient norm (``max_grad_norm``), AdamW step, LR-schedule step, zero the gradients."""
        norm = sharding.optimizer_step(
            self.accelerator, self.loss_module, self.optimizer, self.params.values(), self.g.max_grad_norm, measure=True
        )
        acc_stats["grad_norm"] = norm if norm is not None else float("nan")
        self.lr_scheduler.step()
        self.updates += 1
        self._clean_step = None  # parameters are now past the last completed step
        acc_stats["updates_this_step"] += 1

    # ------------------------------------------------------------------------------------------ loss
    def _loss_fn(self, model, kind: str, **kw):
        """The forward of the DDP-wrapped :class:`~deepgen.train.runtime.LossModule`."""
        if kind == "grpo":
            return self._grpo_loss(**kw)
        if kind == "sft":
            return self._sft_loss(**kw)
        raise ValueError(kind)

    def _grpo_loss(
        self,
        *,
        x_t,
        x_next,
        step_index: int,
        context,
        pooled,
        negative_context,
        negative_pooled,
        old_logprob,
        advantages,
        scale: float,
    ) -> dict:
        g = self.g
        n = x_t.shape[0]
        sig, sig_next = float(self.sigmas[step_index]), float(self.sigmas[step_index + 1])
        t = self.timesteps[step_index].to(self.device).expand(n)
        v = guided_velocity(
            self.policy_velocity, x_t, t, context, pooled, negative_context, negative_pooled, g.cfg_scale
        )
        logp = cps_logprob(x_t, v, sig, sig_next, x_next, eta=g.eta, kind=g.logprob)
        old = round_old_logprob(old_logprob, bf16=g.bf16_old_logprob)
        policy_loss, st = clipped_surrogate(logp, old, advantages, g.clip_range)
        if g.kl_beta != 0.0:
            with torch.no_grad():
                v_ref = guided_velocity(
                    self.reference_velocity, x_t, t, context, pooled, negative_context, negative_pooled, g.cfg_scale
                )
            kl = velocity_kl(v, v_ref, cps_std(sig_next, g.eta), eps=g.kl_eps)
        else:  # β = 0: the reference forward is skipped
            kl = torch.zeros(n, device=v.device)
        step_loss = grpo_step_loss(policy_loss, kl, g.kl_beta, scale)
        loss = mix_sft_loss(step_loss, torch.zeros((), device=step_loss.device), g.sft_lambda)  # (1 − λ)·ℓ
        ratio = importance_ratio(logp.detach(), old)
        return {
            "loss": loss,
            "policy_loss": policy_loss.detach(),
            "kl": kl.detach(),
            "ratio": ratio,
            "clip_frac": st["clip_frac"],
            "approx_kl": st["approx_kl"],
        }

    def _sft_loss(self, *, prompts, targets, noise, timestep_index, reference_images, reference_latents) -> dict:
        from ..losses import flow_matching_loss

        out = flow_matching_loss(
            self.model,
            prompts,
            targets,
            grid=self.grid,
            reference_images=reference_images,
            reference_latents=reference_latents,
            noise=noise,
            timestep_index=timestep_index,
        )
        loss = mix_sft_loss(torch.zeros((), device=out.loss.device), out.loss, self.g.sft_lambda)  # λ·L_SFT
        return {"loss": loss, "sft_loss": out.loss.detach()}
