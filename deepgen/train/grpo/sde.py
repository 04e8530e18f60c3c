"""Rollout transitions and step schedules for MR-GRPO.

Conventions (docs/mrgrpo.md, mrgrpo-reference.md §1):

* flow matching: ``x_σ = (1 − σ)·x0 + σ·ε``, the DiT velocity ``v`` targets ``ε − x0``
  (``deepgen.train.losses.noisy_latents`` / ``flow_matching_target``);
* a step goes from ``σ`` to the next, smaller ``σ'`` (``dt = σ' − σ < 0``);
* ``sigma`` / ``sigma_next`` may be Python floats, 0-d tensors or per-sample ``(B,)`` tensors.

The CPS transition is the only sampler formula here (the Euler/ODE step is its η = 0 case).  The σ grids are the
diffusers ``FlowMatchEulerDiscreteScheduler``'s own, read from a scheduler object, not recomputed.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple, overload

import torch

__all__ = [
    "CPSStep",
    "cps_std",
    "cps_sde_step",
    "euler_step",
    "flow_sigmas",
    "num_train_steps",
    "rollout_schedule",
    "select_train_steps",
    "train_sigmas",
]


class CPSStep(NamedTuple):
    """Result of one CPS transition.

    ``next_latent`` has the dtype of ``x_t`` (bf16 in the official rollout); ``mean`` and ``std``
    are fp32. ``std`` is broadcastable to the latent (0-d, or ``(B, 1, …, 1)`` for per-sample σ').
    """

    next_latent: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def _bcast(sigma, x: torch.Tensor) -> torch.Tensor:
    """σ as an fp32 tensor on ``x.device`` that broadcasts against ``x`` (batch-first)."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if s.ndim == 0 or s.ndim == x.ndim:
        return s
    if s.ndim == 1 and s.shape[0] == x.shape[0]:
        return s.view(-1, *([1] * (x.ndim - 1)))
    raise ValueError(f"sigma of shape {tuple(s.shape)} does not match latent of shape {tuple(x.shape)}")


@overload
def cps_std(sigma_next: float, eta: float = 1.0) -> float: ...
@overload
def cps_std(sigma_next: torch.Tensor, eta: float = 1.0) -> torch.Tensor: ...
def cps_std(sigma_next, eta: float = 1.0) -> "float | torch.Tensor":
    """CPS noise std ``s = σ'·sin(η·π/2)`` (``std_dev_t`` in the official code).

    ``sin`` is evaluated in float64 on the Python side, so η = 1 gives exactly ``s = σ'``.
    """
    return sigma_next * math.sin(eta * math.pi / 2)


def cps_sde_step(
    x_t: torch.Tensor,
    v: torch.Tensor,
    sigma,
    sigma_next,
    *,
    eta: float = 1.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    next_latent: torch.Tensor | None = None,
) -> CPSStep:
    """One Coefficients-Preserving-Sampling (Flow-CPS) SDE step, ``cps_sde`` of the official code.

        x̂0 = x_t − σ·v            x̂1 = x_t + (1 − σ)·v
        s  = σ'·sin(η·π/2)
        μ  = (1 − σ')·x̂0 + sqrt(σ'² − s²)·x̂1
        x' = μ + s·z,  z ~ N(0, I)

    The noise coefficient of ``x'`` is ``sqrt((σ'² − s²) + s²) = σ'``, so a latent on the marginal
    ``x_σ`` stays on the marginal ``x_σ'``. η = 0 is the deterministic DDIM step, which for flow
    matching equals the Euler step ``x + (σ' − σ)·v``; η = 1 (official default) is
    "predict x0, fully re-noise": ``x' = (1 − σ')·x̂0 + σ'·z``.

    Computed in fp32 from up-cast inputs. Gradients flow from ``v`` into ``mean`` (and into a freshly
    sampled ``next_latent``). Pass ``next_latent`` (a stored rollout sample) to only recompute
    ``mean``/``std`` for the training log-probability; then no noise is drawn and it is returned as is.
    ``noise`` overrides sampling ``z`` (fp32 ``randn`` from ``generator`` otherwise).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    xf = x_t.float()
    vf = v.float()
    s_cur = _bcast(sigma, xf)
    s_next = _bcast(sigma_next, xf)
    x0_hat = xf - s_cur * vf
    x1_hat = xf + (1.0 - s_cur) * vf
    std = cps_std(s_next, eta)
    # clamp: σ'² − s² is exactly 0 for η = 1 but may round below 0 for η close to 1
    det_coef = torch.sqrt(torch.clamp(s_next * s_next - std * std, min=0.0))
    mean = (1.0 - s_next) * x0_hat + det_coef * x1_hat
    if next_latent is None:
        if noise is None:
            noise = torch.randn(xf.shape, generator=generator, device=xf.device, dtype=torch.float32)
        next_latent = (mean + std * noise.float()).to(x_t.dtype)
    return CPSStep(next_latent, mean, std)


def euler_step(x_t: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Deterministic flow-matching Euler (ODE) step ``x + (σ' − σ)·v``: the CPS step with η = 0 (no noise,
    ``μ = (1 − σ')·x̂0 + σ'·x̂1``), in fp32, cast back to ``x_t.dtype``.  Evaluation samples with the diffusers
    scheduler's own ``step`` (``DeepGenPipeline.sample``); this is its tensor form for tests and analysis."""
    return cps_sde_step(x_t, v, sigma, sigma_next, eta=0.0, noise=torch.zeros(x_t.shape, device=x_t.device)).next_latent


# --------------------------------------------------------------------------------------------------
# σ grids (deepgen-reference.md §3.3; mrgrpo-reference.md §1.1, §4.2): the diffusers scheduler's


def _scheduler(shift: float, num_train_timesteps: int):
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=shift, num_train_timesteps=num_train_timesteps)


def rollout_schedule(scheduler, num_steps: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigmas (N+1,), timesteps (N,))`` of a diffusers flow-matching scheduler after
    ``set_timesteps(num_steps)`` (no dynamic-shift ``mu``, as officially), fp32 on the CPU."""
    scheduler.set_timesteps(num_steps, device=device)
    sigmas = scheduler.sigmas.detach().float().cpu()
    timesteps = scheduler.timesteps.detach().float().cpu()
    if sigmas.numel() != num_steps + 1 or float(sigmas[-1]) != 0.0:
        raise ValueError(f"expected {num_steps + 1} sigmas ending in 0, got {sigmas.tolist()}")
    return sigmas, timesteps


def flow_sigmas(num_steps: int = 50, shift: float = 3.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """Inference σ grid of ``FlowMatchEulerDiscreteScheduler(shift).set_timesteps(num_steps)`` without dynamic
    shifting: ``num_steps + 1`` values, 1.0 … σ_last, 0 (the "double shift" grid, ref §1.1).
    DiT timesteps are ``σ[:-1]·1000``.  The trainer reads the model's own scheduler (:func:`rollout_schedule`).
    """
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    return rollout_schedule(_scheduler(shift, num_train_timesteps), num_steps)[0]


def train_sigmas(shift: float = 3.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The training scheduler's ``sigmas`` (length T, descending 1 … shift(1/T)), the SFT loss's grid
    (``deepgen.train.losses.TrainingGrid`` reads the same table from the model's scheduler config)."""
    scheduler = _scheduler(shift, num_train_timesteps)
    return scheduler.sigmas[: len(scheduler.timesteps)].float().clone()


# --------------------------------------------------------------------------------------------------
# which rollout steps are trained (mrgrpo-reference.md §1.4)


def num_train_steps(num_steps: int = 50, timestep_fraction: float = 0.6, include_last: bool = False) -> int:
    """K = ``int(num_steps·timestep_fraction)`` (Python ``int`` as in the official code), capped to the pool
    size (``num_steps − 1`` unless ``include_last``) and at least 1."""
    pool = num_steps if include_last else num_steps - 1
    if pool < 1:
        raise ValueError(f"no trainable step with num_steps={num_steps}, include_last={include_last}")
    return max(1, min(int(num_steps * timestep_fraction), pool))


def select_train_steps(
    num_steps: int = 50,
    timestep_fraction: float = 0.6,
    *,
    include_last: bool = False,
    rng: "int | random.Random | None" = None,
) -> list[int]:
    """Sorted step indices that carry gradients for one trainer step.

    K = :func:`num_train_steps` indices drawn uniformly **without replacement** from
    ``{0, …, num_steps − 2}`` (the last, σ' = 0 step is excluded unless ``include_last``;
    ``ATRAIN_INCLUDE_LAST_DENOISE_STEP``), sorted ascending, shared by every sample of the rank.
    Every rollout step is stochastic (CPS); there is no ODE window in MR-GRPO.
    ``rng``: an int seed, a ``random.Random``, or None for the global ``random`` module.
    """
    k = num_train_steps(num_steps, timestep_fraction, include_last)
    pool = range(num_steps if include_last else num_steps - 1)
    if rng is None:
        return sorted(random.sample(pool, k))
    r = rng if isinstance(rng, random.Random) else random.Random(rng)
    return sorted(r.sample(pool, k))
