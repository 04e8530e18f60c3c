"""MR-GRPO losses (mrgrpo-reference.md §4.1, §4.2). Pure tensor functions, fp32.

Per (trained timestep, micro-batch):

    ρ_i    = exp(logp_i − logp_old_i)                                  (no clamp)
    L_pol  = mean_i max(−A_i·ρ_i, −A_i·clip(ρ_i, 1−ε, 1+ε))             ε = 1e-4
    KL_i   = (1/D)·‖v_θ − v_ref‖² / (2·s² + 1e-7)                        s = σ'·sin(η·π/2)
    ℓ      = (L_pol + β·mean_i KL_i) · 1/(U·K·M)                        β = 5e-7

and per trainer step ``L = (1 − λ)·L_GRPO + λ·L_SFT`` with λ = 1e-4.
"""

from __future__ import annotations

import torch

__all__ = [
    "importance_ratio",
    "clipped_surrogate",
    "velocity_kl",
    "grpo_step_loss",
    "loss_scale",
    "mix_sft_loss",
    "flow_matching_loss",
]


def _per_sample(s, B: int, device) -> torch.Tensor:
    """A float / 0-d / ``(B,)`` / ``(B,1,…,1)`` quantity as an fp32 ``(B,)`` vector."""
    t = torch.as_tensor(s, dtype=torch.float32, device=device).reshape(-1)
    if t.numel() == 1:
        return t.expand(B)
    if t.numel() == B:
        return t
    raise ValueError(f"expected a scalar or {B} per-sample values, got {t.numel()}")


def importance_ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """``ρ = exp(logp − old_logp)`` in fp32, no clamp (official default). Exactly 1 when equal."""
    return torch.exp(logp.float() - old_logp.float())


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: "float | tuple[float, float]" = 1e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip policy loss, mean over the samples given (the micro-batch).

    ``clip_range`` ε clips ρ to ``[1 − ε, 1 + ε]``; a tuple ``(low, high)`` clips to
    ``[1 + low, 1 + high]`` (official tuple form, e.g. ``(-1e-4, 2e-4)``). The max of the two
    negated terms is the pessimistic bound: for A > 0 the gradient vanishes once ρ > 1 + ε, for
    A < 0 once ρ < 1 − ε.

    Returns ``(loss, stats)``; stats are detached scalars: ``ratio_mean``, ``clip_frac``
    (fraction with ρ outside the clip interval, Flow-GRPO's definition), ``approx_kl``
    (½·mean((logp − old)²), logging only).
    """
    if isinstance(clip_range, (tuple, list)):
        lo, hi = 1.0 + float(clip_range[0]), 1.0 + float(clip_range[1])
    else:
        lo, hi = 1.0 - float(clip_range), 1.0 + float(clip_range)
    if not lo <= hi:
        raise ValueError(f"invalid clip range {clip_range}")
    adv = advantages.float().reshape(-1)
    ratio = importance_ratio(logp, old_logp).reshape(-1)
    if ratio.shape != adv.shape:
        raise ValueError(f"logp {tuple(ratio.shape)} and advantages {tuple(adv.shape)} differ")
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, lo, hi)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        diff = logp.detach().float().reshape(-1) - old_logp.detach().float().reshape(-1)
        stats = {
            "ratio_mean": ratio.detach().mean(),
            "clip_frac": ((ratio.detach() < lo) | (ratio.detach() > hi)).float().mean(),
            "approx_kl": 0.5 * (diff * diff).mean(),
        }
    return loss, stats


def velocity_kl(v: torch.Tensor, v_ref: torch.Tensor, std, *, eps: float = 1e-7) -> torch.Tensor:
    """Per-sample v-based "KL" ``(1/D)·‖v − v_ref‖² / (2·s² + eps)``, shape ``(B,)``, fp32.

    Mean (not sum) over the C·H·W elements; ``std`` is the CPS std s (= σ' for η = 1) as a float,
    0-d, ``(B,)`` or ``(B,1,…,1)`` tensor. ``v_ref`` (frozen initial DiT, ``no_grad``) is detached.
    A velocity-MSE regulariser, not the exact transition KL (which has an extra ((1−σ')σ)² factor).
    """
    B = v.shape[0]
    d = v.float() - v_ref.detach().float()
    mse = (d * d).reshape(B, -1).mean(dim=1)
    s = _per_sample(std, B, v.device)
    return mse / (2.0 * s * s + eps)


def loss_scale(num_actor_update_steps: int = 1, num_train_steps: int = 30, num_micro_batches: int = 1) -> float:
    """Official per-backward scale ``1/(U·K·M)`` (U inner epochs, K trained timesteps, M micro-batches)."""
    return 1.0 / (num_actor_update_steps * num_train_steps * num_micro_batches)


def grpo_step_loss(
    policy_loss: torch.Tensor, kl: torch.Tensor, kl_beta: float = 5e-7, scale: float = 1.0
) -> torch.Tensor:
    """``(L_pol + β·mean_i KL_i)·scale`` for one (timestep, micro-batch)."""
    return (policy_loss + kl_beta * kl.float().mean()) * scale


def mix_sft_loss(grpo_loss: torch.Tensor, sft_loss: torch.Tensor, sft_lambda: float = 1e-4) -> torch.Tensor:
    """Convex mixture ``(1 − λ)·L_GRPO + λ·L_SFT``.

    The official trainer back-propagates the two parts separately (``(1−λ)·ℓ`` after every
    (timestep, micro-batch), ``λ·L_SFT`` once at the end), which has the same gradient when the
    optimiser steps once per rollout.
    """
    if not 0.0 <= sft_lambda <= 1.0:
        raise ValueError(f"sft_lambda must be in [0, 1], got {sft_lambda}")
    return (1.0 - sft_lambda) * grpo_loss + sft_lambda * sft_loss


def flow_matching_loss(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """SFT-Aux loss on tensors: per-image mean of ``(v − (ε − x0))²``, then mean over images; no weighting.

    Built from :mod:`deepgen.train.losses` (``flow_matching_target``, ``weighted_mse``), the one home of the
    flow-matching loss; the trainer calls ``deepgen.train.losses.flow_matching_loss`` on the model itself.
    """
    from ..losses import flow_matching_target, weighted_mse

    target = flow_matching_target(x0.float(), noise.float())
    return torch.stack([weighted_mse(v, y) for v, y in zip(v_pred, target)]).mean()
