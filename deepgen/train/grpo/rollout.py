"""MR-GRPO rollouts: the noise-preserving Flow-CPS SDE sampler over a whole trajectory, recording every
transition and its old log-probability (mrgrpo-reference.md §1, §5 step 2).

The per-step math is the colleague's core (:func:`~deepgen.train.grpo.sde.cps_sde_step`,
:func:`~deepgen.train.grpo.logprob.step_logprob`); this module only loops over steps and micro-batches, draws
the noise, and applies CFG when asked.

* **Schedule**: the diffusers ``FlowMatchEulerDiscreteScheduler`` of the model (``pipeline.make_scheduler``),
  ``set_timesteps(num_steps)`` without ``mu`` (:func:`~deepgen.train.grpo.sde.rollout_schedule`, re-exported
  here): σ_0 = 1 … σ_{N-1}, σ_N = 0; the DiT gets ``σ·1000``.
* **Noise**: device-independent, from per-image CPU generators.  ``x_T`` is one draw per *group* (official
  ``init_same_noise``; re-implemented as one tensor per group, ref §1.1 caveat) or per image; the SDE noise z of
  step i of image b is its own draw.  So a trajectory does not depend on the micro-batch size or on how the
  images are split over processes (only on the seeds).
* **Every step is stochastic** (CPS, no ODE window); the last step has σ' = 0, so s = 0 and x_N = x̂0.
* **Storage**: ``latents`` holds x_0 … x_N for every image (``(B, N+1, C, H, W)``, the sampler's dtype —
  bf16 under bf16 mixed precision, as officially) on ``storage_device`` (CPU, as officially, by default);
  ``logprobs`` the old log-probs ``(B, N)`` in fp32.
* **CFG**: off by default (official ``cfg_scale 0``).  With ``cfg_scale > 1`` and negatives, the velocity is
  ``v_neg + s·(v_pos − v_neg)`` with the two branches co-batched ``[neg; pos]`` (diffusers order), and the
  trainer uses the same guided velocity (both branches with gradients, as Flow-GRPO) for the new log-prob and KL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ...pipeline import guide
from ..data import derive_seed
from .logprob import step_logprob
from .sde import cps_sde_step, rollout_schedule

__all__ = [
    "Trajectory",
    "VelocityFn",
    "cps_rollout",
    "guided_velocity",
    "initial_group_noise",
    "rollout_schedule",
]

# velocity_fn(latents (B,C,H,W), timesteps (B,), context (B,L,D), pooled (B,P)) -> v (B,C,H,W)
VelocityFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass
class Trajectory:
    """A batch of CPS trajectories (B images, N steps)."""

    latents: Tensor  # (B, N+1, C, H, W): x_0 = x_T (noise) … x_N (final), sampler dtype, storage device
    logprobs: Tensor  # (B, N) fp32: log p_old(x_{i+1} | x_i)
    sigmas: Tensor  # (N+1,) fp32, σ_0 = 1 … σ_N = 0
    timesteps: Tensor  # (N,) DiT timesteps σ_i·1000

    @property
    def final(self) -> Tensor:
        return self.latents[:, -1]

    def transition(self, index: Tensor | Sequence[int] | slice, step: int) -> tuple[Tensor, Tensor]:
        """``(x_i, x_{i+1})`` of step ``step`` for the images ``index``."""
        return self.latents[index, step], self.latents[index, step + 1]


def initial_group_noise(
    num_groups: int,
    group_size: int,
    shape: Sequence[int],
    *,
    seed: int,
    tag: Sequence = (),
    same_noise: bool = True,
    first_group: int = 0,
) -> Tensor:
    """``x_T`` for ``num_groups × group_size`` images (group-major), fp32 on the CPU.

    ``same_noise``: one draw per group, repeated for its G images (official ``init_same_noise``), seeded with
    ``derive_seed(seed, "x_T", *tag, "group", first_group + k)`` for group k; otherwise one draw per image,
    keyed by its global image index ``first_group·G + i``.  Keys are global, so the noise of a group does not
    depend on which process samples it.
    """

    def draw(*key) -> Tensor:
        g = torch.Generator().manual_seed(derive_seed(int(seed), "x_T", *tag, *key))
        return torch.randn(tuple(shape), generator=g)

    if same_noise:
        return torch.stack([draw("group", first_group + k) for k in range(num_groups)]).repeat_interleave(
            group_size, dim=0
        )
    start = first_group * group_size
    return torch.stack([draw("image", start + i) for i in range(num_groups * group_size)])


def guided_velocity(
    velocity_fn: VelocityFn,
    x: Tensor,
    t: Tensor,
    context: Tensor,
    pooled: Tensor,
    negative_context: Tensor | None = None,
    negative_pooled: Tensor | None = None,
    cfg_scale: float = 0.0,
) -> Tensor:
    """The conditional velocity, or the CFG velocity ``v_neg + s·(v_pos − v_neg)`` when ``cfg_scale > 1`` and
    negatives are given (branches co-batched ``[neg; pos]``)."""
    if cfg_scale > 1.0 and negative_context is not None:
        assert negative_pooled is not None, "negative_context needs negative_pooled"
        v = velocity_fn(
            torch.cat([x, x]),
            torch.cat([t, t]),
            torch.cat([negative_context, context]),
            torch.cat([negative_pooled, pooled]),
        )
        v_neg, v_pos = v.chunk(2)
        return guide(v_neg, v_pos, cfg_scale)
    return velocity_fn(x, t, context, pooled)


@torch.no_grad()
def cps_rollout(
    velocity_fn: VelocityFn,
    x_T: Tensor,
    context: Tensor,
    pooled: Tensor,
    *,
    sigmas: Tensor,
    timesteps: Tensor,
    eta: float = 1.0,
    logprob: str = "simplified",
    seed: int = 0,
    noise_tag: Sequence = (),
    image_ids: Sequence[int] | None = None,
    micro_batch_size: int | None = None,
    negative_context: Tensor | None = None,
    negative_pooled: Tensor | None = None,
    cfg_scale: float = 0.0,
    dtype: torch.dtype | None = None,
    storage_device="cpu",
    callback: Callable[[int, int], None] | None = None,
) -> Trajectory:
    """Sample B trajectories with the CPS SDE and record every transition and its old log-prob.

    ``x_T``: ``(B, C, H, W)`` initial noise (see :func:`initial_group_noise`); ``context``/``pooled``: the
    (frozen) conditioning of each image.  The SDE noise of image b at step i is drawn from
    ``derive_seed(seed, "sde", *noise_tag, image_ids[b], i)`` (``image_ids`` default ``range(B)``).
    ``micro_batch_size``: images per DiT forward (default: all B; the trajectory does not depend on it).
    ``dtype``: the sampler's latent dtype (default ``x_T``'s); ``storage_device``: where the trajectory is kept.
    ``callback(step, num_steps)`` runs after every step.
    """
    B = x_T.shape[0]
    N = timesteps.numel()
    if sigmas.numel() != N + 1:
        raise ValueError(f"{sigmas.numel()} sigmas for {N} steps")
    device = context.device
    dtype = dtype or x_T.dtype
    mb = int(micro_batch_size or B)
    if mb < 1:
        raise ValueError("micro_batch_size must be ≥ 1")
    ids = list(range(B)) if image_ids is None else [int(i) for i in image_ids]
    if len(ids) != B:
        raise ValueError(f"{len(ids)} image ids for {B} images")
    gens = [torch.Generator().manual_seed(derive_seed(int(seed), "sde", *noise_tag, i)) for i in ids]
    shape = tuple(x_T.shape[1:])

    latents = torch.empty((B, N + 1, *shape), dtype=dtype, device=storage_device)
    logprobs = torch.empty((B, N), dtype=torch.float32, device=storage_device)
    x = x_T.to(device=device, dtype=dtype)
    latents[:, 0] = x.to(storage_device)
    sig = sigmas.tolist()
    for i in range(N):
        z = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)
        t = timesteps[i].to(device=device).expand(B)
        nxt = torch.empty_like(x)
        for s in range(0, B, mb):
            sl = slice(s, s + mb)
            v = guided_velocity(
                velocity_fn,
                x[sl],
                t[sl],
                context[sl],
                pooled[sl],
                None if negative_context is None else negative_context[sl],
                None if negative_pooled is None else negative_pooled[sl],
                cfg_scale,
            )
            step = cps_sde_step(x[sl], v, sig[i], sig[i + 1], eta=eta, noise=z[sl])
            nxt[sl] = step.next_latent
            logprobs[sl, i] = step_logprob(step.next_latent, step.mean, step.std, logprob).to(storage_device)
        x = nxt
        latents[:, i + 1] = x.to(storage_device)
        if callback is not None:
            callback(i, N)
    return Trajectory(
        latents=latents, logprobs=logprobs, sigmas=sigmas.float().cpu(), timesteps=timesteps.float().cpu()
    )
