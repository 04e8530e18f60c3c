"""Per-step transition log-probabilities (mrgrpo-reference.md §1.3, §4.1).

All functions return one value per sample, shape ``(B,)``, in fp32, averaged (not summed) over the
non-batch dimensions C·H·W like the official code. ``next_latent`` is detached: it is a sample, not
a function of the parameters.
"""

from __future__ import annotations

import math

import torch

from .sde import _bcast, cps_sde_step

__all__ = [
    "LOGPROB_KINDS",
    "simplified_logprob",
    "gaussian_logprob",
    "step_logprob",
    "cps_logprob",
    "round_old_logprob",
]

LOGPROB_KINDS = ("simplified", "exact")

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _mean_over_sample(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).mean(dim=1)


def simplified_logprob(next_latent: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Official ``cps_sde`` log-prob: ``−(1/D)·‖x' − μ‖²`` (mean over C, H, W), fp32.

    The Gaussian's ``1/(2s²)`` factor, the ``−log s`` term and the constant are dropped, so a
    difference of these values is ``2s²`` times the exact per-element Gaussian difference.
    Same convention as Flow-GRPO's CPS branch. Finite also at σ' = 0 (the last step).
    """
    d = next_latent.detach().float() - mean.float()
    return -_mean_over_sample(d * d)


def gaussian_logprob(
    next_latent: torch.Tensor,
    mean: torch.Tensor,
    std,
    *,
    eps: float = 1e-8,
    reduce: str = "mean",
) -> torch.Tensor:
    """Gaussian log-density of ``x' ~ N(μ, s²I)`` per element,

        −(x' − μ)²/(2(s² + eps)) − log(s + eps) − log √(2π),

    the official formula for the ``flowgrpo_sde`` / ``dance_sde`` samplers (eps = 1e-8), then
    averaged over the sample's elements (``reduce="mean"``, official) or summed
    (``reduce="sum"``, the true joint log-density of the transition). ``std`` is a float, a 0-d,
    ``(B,)`` or latent-broadcastable tensor. Blows up as s → 0, which is why the σ' = 0 step is
    not trained.
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    x = next_latent.detach().float()
    s = _bcast(std, x)
    d = x - mean.float()
    lp = -(d * d) / (2.0 * (s * s + eps)) - torch.log(s + eps) - _LOG_SQRT_2PI
    lp = torch.broadcast_to(lp, x.shape).reshape(x.shape[0], -1)
    return lp.mean(dim=1) if reduce == "mean" else lp.sum(dim=1)


def step_logprob(next_latent: torch.Tensor, mean: torch.Tensor, std, kind: str = "simplified") -> torch.Tensor:
    """Dispatch: ``"simplified"`` (official default for CPS) or ``"exact"`` (per-element mean Gaussian)."""
    if kind == "simplified":
        return simplified_logprob(next_latent, mean)
    if kind == "exact":
        return gaussian_logprob(next_latent, mean, std)
    raise ValueError(f"unknown logprob kind {kind!r}; expected one of {LOGPROB_KINDS}")


def cps_logprob(
    x_t: torch.Tensor,
    v: torch.Tensor,
    sigma,
    sigma_next,
    next_latent: torch.Tensor,
    *,
    eta: float = 1.0,
    kind: str = "simplified",
) -> torch.Tensor:
    """Log-prob of a stored CPS transition ``x_t → next_latent`` under velocity ``v``; used both at
    rollout time (old log-prob, ``no_grad``) and when recomputing it with gradients at train time."""
    step = cps_sde_step(x_t, v, sigma, sigma_next, eta=eta, next_latent=next_latent)
    return step_logprob(next_latent, step.mean, step.std, kind)


def round_old_logprob(old_logprob: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """Old log-probs as the ratio uses them.

    ``bf16=False`` (default, corrected): kept in fp32. ``bf16=True`` reproduces the official quirk
    (mrgrpo-reference §4.1): the stored fp32 value is cast to bf16 on the device before
    ``logp_new − logp_old`` (fp32 − bf16 promotes to fp32 of the *rounded* value). With unchanged
    weights the ratio then misses 1 by up to ~|logp|·2⁻⁹, more than the 1e-4 clip range.
    """
    old = old_logprob.detach()
    if bf16:
        old = old.to(torch.bfloat16)
    return old.float()
