"""Seeded draws, so a run does not depend on the process count, the batch split or a resume:
:func:`sample_generator` (a CPU generator per sample and purpose, keyed by the sample's global stream position),
:func:`flow_batch_inputs` (the flow-matching draws of one micro-batch) and :func:`seeded_step` (seeds the global
RNG for one micro-step, e.g. LoRA dropout, without disturbing the caller's RNG)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .data import derive_seed

__all__ = ["sample_generator", "flow_batch_inputs", "seeded_step"]


def sample_generator(seed: int, purpose: str, *key: Any) -> torch.Generator:
    """A CPU generator for one draw, seeded from ``(seed, purpose, *key)`` (e.g. the sample's task and global
    stream position): the same sample gets the same noise whatever the process count, batch split or resume."""
    return torch.Generator().manual_seed(derive_seed(seed, purpose, *key))


@torch.no_grad()
def flow_batch_inputs(
    model,
    batch,
    *,
    seed: int,
    rank: int,
    world: int,
    device,
    purpose: str = "",
    num_timesteps: int = 1000,
    sample_latents: bool = True,
) -> dict[str, Any]:
    """The flow-matching inputs of one micro-batch (``flow_matching_loss`` keywords): VAE posterior samples of
    the targets and references, the noise and the timestep index of every sample, each drawn from a generator
    keyed by the sample's global stream position, so the draws depend neither on the number of processes nor
    on a resume. ``purpose`` keeps the streams of different users (stage-3 SFT-Aux) apart; ``sample_latents``
    False takes the posterior mean instead (config ``vae_latents = "mean"``)."""
    task = batch.task
    end = int(batch.position["consumed"][task])
    positions = [end - len(batch) * world + rank + j * world for j in range(len(batch))]
    targets = [
        model.encode_image(
            x[None].to(device), generator=sample_generator(seed, purpose + "vae", task, p), sample=sample_latents
        )[0]
        for x, p in zip(batch.targets, positions)
    ]
    noise = [
        torch.randn(t.shape, generator=sample_generator(seed, purpose + "noise", task, p))
        for t, p in zip(targets, positions)
    ]
    index = [
        int(torch.rand(1, generator=sample_generator(seed, purpose + "timestep", task, p)) * num_timesteps)
        for p in positions
    ]
    refs = [[r.to(device) for r in row] for row in batch.references]
    has_refs = any(refs)
    ref_latents = (
        [
            [
                model.encode_image(
                    r[None], generator=sample_generator(seed, purpose + "vae_ref", task, p, j), sample=sample_latents
                )[0]
                for j, r in enumerate(row)
            ]
            for row, p in zip(refs, positions)
        ]
        if has_refs
        else None
    )
    return {
        "prompts": list(batch.texts),
        "targets": targets,
        "noise": noise,
        "timestep_index": torch.tensor(index, dtype=torch.long).clamp_max(num_timesteps - 1),
        "reference_images": refs if has_refs else None,
        "reference_latents": ref_latents,
    }


@contextlib.contextmanager
def seeded_step(seed: int, *key: Any):
    """Seed torch's global RNG (CPU and the current CUDA device) for a block, then restore the caller's RNG.

    Used around each micro-step so dropout masks are a function of the step, which makes a resumed run repeat
    an uninterrupted one exactly.
    """
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(seed, "step", *key) % (2**63 - 1))
        yield
