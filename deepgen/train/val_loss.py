"""The fixed-noise validation loss that every stage logs beside its training loss (key ``val_loss``).

The training loss of a flow-matching run is a poor sign of learning: every update draws new timesteps, new noise
and a new VAE posterior sample, so its spread hides the trend (on a small VAE the posterior noise alone sets a
floor the model cannot go under).  This loss removes every draw: a fixed set of validation samples (the first
``n`` of the data set, text-to-image rows first, then edits), their VAE posterior *mean*, seeded noise and
:data:`VAL_TIMESTEP_INDICES` (four fixed points of the 1000-step training grid), scored with the training's own
:func:`~deepgen.train.losses.flow_matching_loss` under ``no_grad``.  Two evaluations differ only by the weights.

Under several processes sample ``i`` is scored by rank ``i % world`` and one all-reduce
(:func:`~deepgen.train.accelerate_setup.global_mean`) averages them, so every rank takes part and gets the same
number.  Under FSDP every rank scores every sample (inside ``sharding.full_weights``), since a sharded block's
forward is itself a collective.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .accelerate_setup import global_mean
from .data import derive_seed
from .sharding import is_fsdp

__all__ = ["VAL_TIMESTEP_INDICES", "FixedNoiseValidation", "ValSample"]

VAL_TIMESTEP_INDICES = (150, 450, 750, 950)  # indices into the 1000-step shifted training grid


@dataclass
class ValSample:
    """One validation sample: its text, target and (edits) reference images, ``(3, H, W)`` in [-1, 1]."""

    prompt: str
    target: torch.Tensor
    references: list[torch.Tensor]


class FixedNoiseValidation:
    """A fixed validation set and its seeded draws; :meth:`compute` gives the mean flow-matching loss."""

    def __init__(self, samples: list[ValSample], *, seed: int = 0, timestep_indices=VAL_TIMESTEP_INDICES):
        if not samples:
            raise ValueError("a fixed-noise validation needs at least one sample")
        self.samples = samples
        self.seed = seed
        self.timestep_indices = tuple(int(i) for i in timestep_indices)
        self._latents: dict[int, tuple[torch.Tensor, list[torch.Tensor] | None]] = {}

    @classmethod
    def from_datasets(cls, datasets, n: int, *, seed: int = 0) -> FixedNoiseValidation:
        """The first ``n`` samples of ``datasets`` (a :class:`~deepgen.train.data.TaskDatasets`): text-to-image
        rows first, then edits.  Samples are decoded here, once."""
        out: list[ValSample] = []
        for i in range(min(n, len(datasets.text2image))):
            s = datasets.text2image[i]
            out.append(ValSample(s.caption, s.image, []))
        for i in range(min(n - len(out), len(datasets.image2image))):
            e = datasets.image2image[i]
            out.append(ValSample(e.instruction, e.target, list(e.references)))
        return cls(out, seed=seed)

    def _encoded(self, model, i: int):
        """Sample ``i``'s target latent and reference latents: the VAE posterior mean, computed once."""
        if i not in self._latents:
            s = self.samples[i]
            target = model.encode_image(s.target[None].to(model.device), sample=False)[0].cpu()
            refs = [model.encode_image(r[None].to(model.device), sample=False)[0].cpu() for r in s.references]
            self._latents[i] = (target, refs or None)
        return self._latents[i]

    @torch.no_grad()
    def compute(self, model, grid, *, accelerator=None, autocast=None) -> float:
        """The mean loss over samples × timesteps (the same value on every rank).

        model: the plain DeepGenModel (not a DDP wrapper: nothing here needs gradients or DDP's hooks).
        grid: the run's :class:`~deepgen.train.losses.TrainingGrid`.  autocast: the run's autocast context
        factory (``accelerator.autocast``), so the loss is computed in the precision the model trains in.
        """
        from .losses import flow_matching_loss

        rank = accelerator.process_index if accelerator is not None else 0
        world = accelerator.num_processes if accelerator is not None else 1
        if is_fsdp(accelerator):
            # FSDP's hooks all-gather inside each block's forward: every rank must run the same forwards, so each
            # scores every sample (the all-reduce below then averages equal values)
            rank, world = 0, 1
        k = len(self.timestep_indices)
        index = torch.tensor(self.timestep_indices, dtype=torch.long).clamp_max(len(grid) - 1)
        was_training = model.training
        model.eval()  # no LoRA dropout
        total, count = 0.0, 0
        mine = range(rank, len(self.samples), world)
        try:
            # one batch per task (edits carry references): every sample × every timestep in one forward
            for group in (
                [i for i in mine if not self.samples[i].references],
                [i for i in mine if self.samples[i].references],
            ):
                if not group:
                    continue
                prompts, targets, noise, refs, ref_latents = [], [], [], [], []
                for i in group:
                    target, latents = self._encoded(model, i)
                    for j in range(k):
                        prompts.append(self.samples[i].prompt)
                        targets.append(target)
                        generator = torch.Generator().manual_seed(derive_seed(self.seed, "val", i, j))
                        noise.append(torch.randn(target.shape, generator=generator))
                        if latents is not None:
                            refs.append([r.to(model.device) for r in self.samples[i].references])
                            ref_latents.append([r.to(model.device) for r in latents])
                with autocast() if autocast is not None else contextlib.nullcontext():
                    out = flow_matching_loss(
                        model,
                        prompts,
                        targets,
                        grid=grid,
                        reference_images=refs or None,
                        reference_latents=ref_latents or None,
                        noise=noise,
                        timestep_index=index.repeat(len(group)),
                    )
                total += float(out.per_sample.float().sum())
                count += len(prompts)
        finally:
            if was_training:
                model.train()
                model.vae.eval()
        return global_mean(accelerator, {"val": total}, {"val": count})["val"]
