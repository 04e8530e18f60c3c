"""MR-GRPO math core: CPS sampler step, log-probs, GDPO advantages, losses, config.

Pure tensor functions (no model); the trainer loop builds on these. See docs/mrgrpo.md.
"""

from .advantage import DegenerateGroupWarning, gdpo_advantages, per_sample_weights
from .config import DEFAULT_CATEGORY_SAMPLE_WEIGHTS, DEFAULT_CATEGORY_WEIGHTS, GRPOConfig
from .logprob import (
    LOGPROB_KINDS,
    cps_logprob,
    gaussian_logprob,
    round_old_logprob,
    simplified_logprob,
    step_logprob,
)
from .loss import (
    clipped_surrogate,
    flow_matching_loss,
    grpo_step_loss,
    importance_ratio,
    loss_scale,
    mix_sft_loss,
    velocity_kl,
)
from .sde import (
    CPSStep,
    cps_sde_step,
    cps_std,
    euler_step,
    flow_sigmas,
    num_train_steps,
    rollout_schedule,
    select_train_steps,
    train_sigmas,
)

__all__ = [
    "CPSStep",
    "DEFAULT_CATEGORY_SAMPLE_WEIGHTS",
    "DEFAULT_CATEGORY_WEIGHTS",
    "DegenerateGroupWarning",
    "GRPOConfig",
    "LOGPROB_KINDS",
    "clipped_surrogate",
    "cps_logprob",
    "cps_sde_step",
    "cps_std",
    "euler_step",
    "flow_matching_loss",
    "flow_sigmas",
    "gaussian_logprob",
    "gdpo_advantages",
    "grpo_step_loss",
    "importance_ratio",
    "loss_scale",
    "mix_sft_loss",
    "num_train_steps",
    "per_sample_weights",
    "rollout_schedule",
    "round_old_logprob",
    "select_train_steps",
    "simplified_logprob",
    "step_logprob",
    "train_sigmas",
    "velocity_kl",
]
