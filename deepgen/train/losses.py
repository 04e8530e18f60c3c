"""The official flow-matching training loss (`diff_loss`, reference §5.3), shared by stages 1–3.

- u ~ U(0, 1) per sample, index = floor(u·1000), and (t, σ) = the training scheduler's timesteps/sigmas at
  that index: a uniform draw over the shift-3 grid (`TrainingGrid`), with no loss weighting
  (`loss_weighting(σ, "none")` = 1);
- x_σ = (1 − σ)·x₀ + σ·ε (`noisy_latents`), the DiT predicts v, the target is ε − x₀ (`flow_matching_target`);
- the loss is mean(w·(v − (ε − x₀))²) per sample in fp32 (target tokens only; `weighted_mse`), then the mean
  over samples, so each image counts equally whatever its size.

`flow_matching_loss` is built from these public pieces; docs/api.md shows the loss computed by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

from ..model.deepgen import DeepGenModel

WEIGHTING_SCHEMES = ("none", "sigma_sqrt", "cosmap")  # the SD3 paper's; the official training uses "none"


@dataclass
class TrainingGrid:
    """The 1000-step training schedule: already shift-warped sigmas and their DiT timesteps (σ·1000)."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    @classmethod
    def from_model(cls, model: DeepGenModel) -> "TrainingGrid":
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config)
        return cls(
            sigmas=scheduler.sigmas[:-1].clone()
            if len(scheduler.sigmas) > len(scheduler.timesteps)
            else scheduler.sigmas.clone(),
            timesteps=scheduler.timesteps.clone(),
        )

    def __len__(self) -> int:
        return len(self.timesteps)

    def draw(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, index) for n samples, as the official `compute_density_for_timestep_sampling('none')`."""
        u = torch.rand(n, generator=generator)
        return u, (u * len(self)).long().clamp_max(len(self) - 1)


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """x_σ = (1 − σ)·x₀ + σ·ε for one sample (σ a number or a 0-d tensor, applied as a Python float)."""
    sigma = float(sigma)
    return (1 - sigma) * x0 + sigma * noise


def flow_matching_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity the DiT regresses: ε − x₀ (d x_σ / dσ), any shape."""
    return noise - x0


def loss_weighting(sigmas: torch.Tensor, scheme: str = "none") -> torch.Tensor:
    """Per-sample loss weights (B,) for the σ of each sample. "none" (the official setting) gives ones;
    "sigma_sqrt" (σ⁻²) and "cosmap" are diffusers' SD3 alternatives, for experiments."""
    sigmas = sigmas.float()
    if scheme == "none":
        return torch.ones_like(sigmas)
    if scheme == "sigma_sqrt":
        return sigmas**-2.0
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    raise ValueError(f"unknown loss weighting {scheme!r}; expected one of {', '.join(WEIGHTING_SCHEMES)}")


def weighted_mse(velocity: torch.Tensor, target: torch.Tensor, weight: float | torch.Tensor = 1.0) -> torch.Tensor:
    """One sample's loss: mean(w·(v − target)²) over all its elements, in fp32."""
    return (weight * (velocity.float() - target) ** 2).mean()


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar
    per_sample: torch.Tensor  # (B,)
    sigmas: torch.Tensor
    timesteps: torch.Tensor
    velocities: list[torch.Tensor]
    targets: list[torch.Tensor] | None = None  # per sample: flow_matching_target(x0, noise)
    weights: torch.Tensor | None = None  # (B,): loss_weighting(sigmas, weighting)


def flow_matching_loss(
    model: DeepGenModel,
    prompts: Sequence[str],
    target_latents: Sequence[torch.Tensor],
    *,
    grid: TrainingGrid,
    reference_images: Sequence[Sequence[torch.Tensor]] | None = None,
    reference_latents: Sequence[Sequence[torch.Tensor]] | None = None,
    noise: Sequence[torch.Tensor] | None = None,
    timestep_index: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    weighting: str = "none",
) -> LossOutput:
    """Loss for one single-task micro-batch.

    prompts: captions (text-to-image, caption dropout already applied) or edit instructions.
    target_latents: per sample (16, h, w) clean DiT-space latents (sizes may differ).
    reference_images / reference_latents: per sample, the [-1, 1] references (for the VLM) and their latents
    (for the DiT) of an edit; None for text-to-image.
    noise / timestep_index: fixed draws (tests, exact resume); otherwise drawn from `generator`.
    weighting: `loss_weighting` scheme; "none" (the official one) weighs every sample 1.
    """
    n = len(target_latents)
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} targets")
    think = model.think(list(prompts), reference_images)
    context, pooled = model.bridge(think.scb_input)
    if timestep_index is None:
        _, timestep_index = grid.draw(n, generator)
    sigmas = grid.sigmas[timestep_index].float()
    timesteps = grid.timesteps[timestep_index].to(model.device)
    if noise is None:
        noise = [torch.randn(x.shape, generator=generator) for x in target_latents]
    x0 = [x.float().to(model.device) for x in target_latents]
    eps = [e.float().to(model.device) for e in noise]
    noisy = [noisy_latents(x, e, s) for x, e, s in zip(x0, eps, sigmas.tolist())]
    velocity = model.velocity(noisy, timesteps, context, pooled, reference_latents)
    velocity = list(velocity) if isinstance(velocity, torch.Tensor) else velocity
    targets = [flow_matching_target(x, e) for x, e in zip(x0, eps)]
    weights = loss_weighting(sigmas, weighting).to(model.device)
    per_sample = torch.stack([weighted_mse(v, y, w) for v, y, w in zip(velocity, targets, weights)])
    return LossOutput(per_sample.mean(), per_sample, sigmas, timesteps, velocity, targets, weights)
