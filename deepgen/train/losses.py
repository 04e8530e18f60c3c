"""The official flow-matching training loss (`diff_loss`, reference §5.3), shared by stages 1–3.

- u ~ U(0, 1) per sample, index = floor(u·1000), and (t, σ) = the training scheduler's timesteps/sigmas at
  that index: a uniform draw over the shift-3 grid, with no loss weighting;
- x_σ = (1 − σ)·x₀ + σ·ε, the DiT predicts v, the target is ε − x₀;
- the loss is mean((v − (ε − x₀))²) per sample in fp32 (target tokens only), then the mean over samples,
  so each image counts equally whatever its size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from ..model.deepgen import DeepGenModel


@dataclass
class TrainingGrid:
    """The 1000-step training schedule: already shift-warped sigmas and their DiT timesteps (σ·1000)."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    @classmethod
    def from_model(cls, model: DeepGenModel) -> "TrainingGrid":
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config)
        return cls(sigmas=scheduler.sigmas[:-1].clone() if len(scheduler.sigmas) > len(scheduler.timesteps)
                   else scheduler.sigmas.clone(), timesteps=scheduler.timesteps.clone())

    def __len__(self) -> int:
        return len(self.timesteps)

    def draw(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, index) for n samples, as the official `compute_density_for_timestep_sampling('none')`."""
        u = torch.rand(n, generator=generator)
        return u, (u * len(self)).long().clamp_max(len(self) - 1)


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar
    per_sample: torch.Tensor  # (B,)
    sigmas: torch.Tensor
    timesteps: torch.Tensor
    velocities: list[torch.Tensor]


def flow_matching_loss(model: DeepGenModel, prompts: Sequence[str], target_latents: Sequence[torch.Tensor], *,
                       grid: TrainingGrid, reference_images: Sequence[Sequence[torch.Tensor]] | None = None,
                       reference_latents: Sequence[Sequence[torch.Tensor]] | None = None,
                       noise: Sequence[torch.Tensor] | None = None, timestep_index: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> LossOutput:
    """Loss for one single-task micro-batch.

    prompts: captions (text-to-image, caption dropout already applied) or edit instructions.
    target_latents: per sample (16, h, w) clean DiT-space latents (sizes may differ).
    reference_images / reference_latents: per sample, the [-1, 1] references (for the VLM) and their latents
    (for the DiT) of an edit; None for text-to-image.
    noise / timestep_index: fixed draws (tests, exact resume); otherwise drawn from `generator`.
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
    noisy = [(1 - s) * x + s * e for x, e, s in zip(x0, eps, sigmas.tolist())]
    velocity = model.velocity(noisy, timesteps, context, pooled, reference_latents)
    velocity = list(velocity) if isinstance(velocity, torch.Tensor) else velocity
    per_sample = torch.stack([((v.float() - (e - x)) ** 2).mean() for v, e, x in zip(velocity, eps, x0)])
    return LossOutput(per_sample.mean(), per_sample, sigmas, timesteps, velocity)
