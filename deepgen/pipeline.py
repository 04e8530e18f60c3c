"""Text-to-image and editing with DeepGen 1.0: encode once (VLM → SCB), sample many times (DiT), decode (VAE).

`DeepGenPipeline.encode` returns a `Conditioning`; `sample` never touches the VLM, so changing the seed, the
steps or the CFG scale costs only DiT forwards. Defaults are the official ones: 50 steps, CFG 4.0 with the
official negatives co-batched with the prompts, 512x512, the scheduler's own shift.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

# Imported from its module: the top-level name is, to a type checker, diffusers' placeholder for a missing torch.
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from PIL import Image

from . import constants as C
from .images import ImageLike, prepare_reference, to_pil
from .model import speed
from .model.deepgen import DeepGenModel, ThinkOutput
from .sizes import check_output_size, check_reference_size

StepCallback = Callable[[int, int, torch.Tensor], None]  # (step index, total steps, current latents)


def _optional(fn: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else fn(t)


def guide(velocity_uncond: torch.Tensor, velocity_cond: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance as the official code and diffusers write it: v_uncond + s·(v_cond − v_uncond)."""
    return velocity_uncond + cfg_scale * (velocity_cond - velocity_uncond)


@dataclass
class StepOutput:
    """One denoising step, as `sample(..., on_step=...)` reports it (the tensors are the loop's own: don't
    modify them in place; `.clone()` what you keep if you change them later).

    The Euler update is `next_latents = latents + (sigma_next - sigma) * velocity` (computed by the diffusers
    scheduler, in fp32). With guidance, `velocity = velocity_uncond + cfg_scale * (velocity_cond - velocity_uncond)`;
    without, `velocity_uncond` is None and `velocity` is `velocity_cond`.
    """

    step: int  # 0-based index among the steps run
    num_steps: int  # steps run (fewer than asked for with init_latents and strength < 1)
    timestep: torch.Tensor  # scalar: the DiT's timestep input, sigma * 1000
    sigma: float  # noise level of `latents`
    sigma_next: float  # noise level of `next_latents`
    latents: torch.Tensor  # (B, 16, h, w): what the DiT saw at this step
    velocity_cond: torch.Tensor  # (B, 16, h, w): raw DiT output for the prompts
    velocity_uncond: torch.Tensor | None  # (B, 16, h, w): raw DiT output for the negatives; None without guidance
    velocity: torch.Tensor  # (B, 16, h, w): the guided velocity the Euler step used
    next_latents: torch.Tensor  # (B, 16, h, w): after the Euler step (what `callback` receives)
    cfg_scale: float  # the guidance scale used (1.0 when the step ran without guidance)
    cache_reused: bool = False  # the step cache skipped the DiT's inner blocks this step (sample(step_cache=...))

    @property
    def guided(self) -> bool:
        return self.velocity_uncond is not None


StepHook = Callable[[StepOutput], None]


@dataclass
class Conditioning:
    """The DiT's conditioning for B images: SCB context + pooled vector, negatives, reference latents."""

    context: torch.Tensor  # (B, L, joint_dim)
    pooled: torch.Tensor  # (B, pooled_dim)
    negative_context: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None
    reference_latents: list[list[torch.Tensor]] | None = None  # per image: (16, h, w) latents
    prompts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.context.shape[0]

    @property
    def has_negative(self) -> bool:
        return self.negative_context is not None

    @property
    def reference_size(self) -> tuple[int, int] | None:
        """Pixel size of the first image's first reference, the natural output size of an edit."""
        if not self.reference_latents or not self.reference_latents[0]:
            return None
        h, w = self.reference_latents[0][0].shape[-2:]
        return h * 8, w * 8

    def repeat(self, n: int) -> "Conditioning":
        """Each prompt n times in a row (n images per prompt)."""
        if n == 1:
            return self

        def rep(t: torch.Tensor) -> torch.Tensor:
            return t.repeat_interleave(n, dim=0)

        refs = None if self.reference_latents is None else [r for r in self.reference_latents for _ in range(n)]
        return replace(
            self,
            context=rep(self.context),
            pooled=rep(self.pooled),
            negative_context=_optional(rep, self.negative_context),
            negative_pooled=_optional(rep, self.negative_pooled),
            reference_latents=refs,
            prompts=[p for p in self.prompts for _ in range(n)],
        )

    def to(self, device=None, dtype=None) -> "Conditioning":
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype)

        refs = None if self.reference_latents is None else [[move(r) for r in rs] for rs in self.reference_latents]
        return replace(
            self,
            context=move(self.context),
            pooled=move(self.pooled),
            negative_context=_optional(move, self.negative_context),
            negative_pooled=_optional(move, self.negative_pooled),
            reference_latents=refs,
        )


@dataclass
class Think:
    """Stacked VLM hidden states (think tokens included) for B prompts and, after them, their B negatives."""

    scb_input: torch.Tensor  # (rows, L + num_queries, 6 * vlm_hidden); rows = B prompts [+ B negatives]
    prompts: list[str]
    negative_prompts: list[str] | None  # None: no guidance rows were encoded
    references: list[list[torch.Tensor]]  # per prompt: the (3, H, W) [-1, 1] references the VLM saw
    reference_seed: int = 0  # the VAE posterior draw of the reference latents (made by `bridge`)
    vlm: ThinkOutput | None = None  # the VLM's inputs (token ids, masks, M-RoPE positions) for the same rows

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def has_negative(self) -> bool:
        return self.negative_prompts is not None

    @property
    def has_references(self) -> bool:
        return any(self.references)

    def to(self, device=None) -> "Think":
        return replace(
            self,
            scb_input=self.scb_input.to(device),
            references=[[r.to(device) for r in row] for row in self.references],
            vlm=None if self.vlm is None else self.vlm.to(device),
        )


@dataclass
class DeepGenOutput:
    images: list[Image.Image] | torch.Tensor  # PIL images, or a (B, 3, H, W) tensor in [-1, 1] with output_type="pt"
    latents: torch.Tensor


def seeds_for(seed: int | Sequence[int], batch_size: int) -> list[int]:
    """One seed per image: an int gives seed, seed+1, …; a list is used as is."""
    if isinstance(seed, int):
        return [seed + i for i in range(batch_size)]
    seeds = list(seed)
    if len(seeds) != batch_size:
        raise ValueError(f"{len(seeds)} seeds for {batch_size} images")
    return seeds


def initial_noise(seeds: Sequence[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """Device-independent noise: each image from its own CPU generator, in float32."""
    return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds])


class DeepGenPipeline:
    def __init__(self, model: DeepGenModel):
        self.model = model
        self.last_step_cache: speed.StepCacheStats | None = None  # what the step cache did in the last sample()

    @classmethod
    def from_pretrained(cls, checkpoint, vlm=None, diffusion=None, **kwargs) -> "DeepGenPipeline":
        from .loading import load_model

        return cls(load_model(checkpoint, vlm, diffusion, **kwargs))

    @property
    def device(self) -> torch.device:
        return self.model.device

    def make_scheduler(self, shift: float | None = None) -> FlowMatchEulerDiscreteScheduler:
        overrides = {"shift": shift} if shift is not None else {}
        return FlowMatchEulerDiscreteScheduler.from_config(self.model.scheduler_config, **overrides)

    # ---- encode: think (VLM) then bridge (SCB + reference latents) ------------------------------------
    @torch.no_grad()
    def think(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str] | None = None,
        references: Sequence[Sequence[ImageLike]] | None = None,
        *,
        guidance: bool = True,
        reference_resize: str = "fix_pixels",
        reference_target: int | None = None,
        reference_seed: int = 0,
    ) -> Think:
        """Run the VLM (think tokens appended) on the prompts and, co-batched after them, their negatives.

        negative_prompts: default '' for text-to-image and the model's edit negative for edits (the official quality
        negative; the demo model's is '').
        guidance: also encode the negatives, in the same VLM batch as the prompts (as the official code does:
        left pads leak into SCB, so encoding them apart would change the result).
        reference_resize / reference_target: how references are brought to multiples of 32 (deepgen.sizes;
        'keep' refuses other sizes; the target defaults to the model's own size, 512 but for the demo).
        reference_seed: the VAE posterior draw made later by `bridge`.
        """
        prompts = list(prompts)
        if not prompts:
            raise ValueError("No prompts given: pass at least one prompt")
        given: list[list[ImageLike]] = [[] for _ in prompts] if references is None else [list(r) for r in references]
        if len(given) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(given)} reference lists")
        target = reference_target or self.default_size
        refs = [[prepare_reference(image, reference_resize, target) for image in row] for row in given]
        for row in refs:
            for image in row:
                check_reference_size(*image.shape[-2:])
        negatives: list[str] | None = None
        if guidance:
            if negative_prompts is None:
                edit_negative = getattr(self.model, "edit_negative_prompt", C.EDIT_NEGATIVE_PROMPT)
                negative_prompts = [edit_negative if row else C.T2I_NEGATIVE_PROMPT for row in refs]
            negatives = list(negative_prompts)
            if len(negatives) != len(prompts):
                raise ValueError(f"{len(prompts)} prompts but {len(negatives)} negative prompts")
        rows = prompts + negatives if negatives is not None else prompts
        out = self.model.think(rows, refs + refs if negatives is not None else refs)
        return Think(out.scb_input, prompts, negatives, refs, reference_seed, vlm=out)

    @torch.no_grad()
    def bridge(self, think: Think, reference_noise: Sequence[Sequence[torch.Tensor]] | None = None) -> Conditioning:
        """Think -> Conditioning: SCB on every row, then the reference latents (VAE posterior samples, as
        officially; `reference_noise` fixes the standard-normal draws)."""
        b = len(think)
        context, pooled = self.model.bridge(think.scb_input.to(self.device))
        ref_latents = (
            self.encode_references(think.references, reference_noise, think.reference_seed)
            if think.has_references
            else None
        )
        return Conditioning(
            context=context[:b],
            pooled=pooled[:b],
            negative_context=context[b:] if think.has_negative else None,
            negative_pooled=pooled[b:] if think.has_negative else None,
            reference_latents=ref_latents,
            prompts=list(think.prompts),
        )

    def encode(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str] | None = None,
        references: Sequence[Sequence[ImageLike]] | None = None,
        *,
        guidance: bool = True,
        reference_resize: str = "fix_pixels",
        reference_target: int | None = None,
        reference_noise: Sequence[Sequence[torch.Tensor]] | None = None,
        seed: int = 0,
    ) -> Conditioning:
        """Prompts (and per-prompt reference images) -> Conditioning: `bridge(think(...))`."""
        think = self.think(
            prompts,
            negative_prompts,
            references,
            guidance=guidance,
            reference_resize=reference_resize,
            reference_target=reference_target,
            reference_seed=seed,
        )
        return self.bridge(think, reference_noise)

    def encode_references(self, refs, noise=None, seed: int = 0) -> list[list[torch.Tensor]]:
        generator = torch.Generator("cpu").manual_seed(seed)
        latents = []
        for i, row in enumerate(refs):
            row_latents = []
            for j, image in enumerate(row):
                eps = noise[i][j][None] if noise is not None else None
                z = self.model.encode_image(image[None].to(self.device), noise=eps, generator=generator)
                row_latents.append(z[0])
            latents.append(row_latents)
        return latents

    # ---- sample -----------------------------------------------------------------------------------------
    @property
    def default_size(self) -> int:
        """The side of a picture when none is asked for: the official 512, or the size a model was trained at
        when it says so (the embedded demo: 64)."""
        return getattr(self.model, "default_size", None) or C.DEFAULT_HEIGHT

    @torch.no_grad()
    def sample(
        self,
        cond: Conditioning,
        height: int | None = None,
        width: int | None = None,
        *,
        num_steps: int = C.DEFAULT_STEPS,
        cfg_scale: float = C.DEFAULT_CFG,
        seed: int | Sequence[int] = 0,
        latents: torch.Tensor | None = None,
        init_latents: torch.Tensor | None = None,
        strength: float = 1.0,
        shift: float | None = None,
        callback: StepCallback | None = None,
        on_step: StepHook | None = None,
        step_cache: float = 0.0,
    ) -> torch.Tensor:
        """Denoise B latents from noise (or from `init_latents` at `strength`) and return them (B, 16, H/8, W/8).

        latents: the initial noise (as in diffusers); otherwise drawn per image from `seed`.
        cfg_scale <= 1 or a Conditioning without negatives runs the conditional branch alone.
        callback(step, total, latents) runs after every step; raising from it interrupts the run.
        on_step(StepOutput) runs after every step too, before `callback`, with the step's raw (conditional and
        unconditional) and guided velocities, sigmas and latents (docs/api.md); raising from it interrupts too.
        step_cache: 0 (off, the default) or a First Block Cache threshold such as 0.1: a step whose first DiT block
        changed relatively less than that reuses the other blocks' last residual (`deepgen.model.speed`; faster,
        slightly different images). `self.last_step_cache` then says which steps reused it.
        """
        if height is None or width is None:
            height, width = cond.reference_size or (self.default_size, self.default_size)
        check_output_size(height, width)
        if num_steps < 1:
            raise ValueError("num_steps must be at least 1")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        b, model = len(cond), self.model
        shape = (model.transformer.config.in_channels, height // 8, width // 8)
        noise = latents if latents is not None else initial_noise(seeds_for(seed, b), shape)
        if tuple(noise.shape) != (b, *shape):
            raise ValueError(f"latents must have shape {(b, *shape)}, got {tuple(noise.shape)}")
        noise = noise.to(self.device, model.transformer.dtype)

        scheduler = self.make_scheduler(shift)
        scheduler.set_timesteps(num_steps, device=self.device)
        timesteps = scheduler.timesteps
        x: torch.Tensor
        # diffusers annotates the scheduler's tensors as the legacy torch.FloatTensor; any float tensor is meant
        if init_latents is not None and strength < 1.0:
            start = num_steps - min(int(num_steps * strength), num_steps)
            timesteps = timesteps[start:]
            scheduler.set_begin_index(start)
            x = scheduler.scale_noise(init_latents.to(noise), timesteps[:1].repeat(b), noise)  # type: ignore[arg-type]
        elif init_latents is not None:
            x = noise  # strength 1 ignores the starting image, as in diffusers
        else:
            x = noise

        guided = cond.has_negative and cfg_scale > 1.0
        if guided:  # diffusers' CFG order: [negative; positive]
            if cond.negative_context is None or cond.negative_pooled is None:
                raise ValueError("a Conditioning with negatives needs both negative_context and negative_pooled")
            context = torch.cat([cond.negative_context, cond.context])
            pooled = torch.cat([cond.negative_pooled, cond.pooled])
            refs = None if cond.reference_latents is None else cond.reference_latents * 2
        else:
            context, pooled, refs = cond.context, cond.pooled, cond.reference_latents

        first = num_steps - len(timesteps)  # index of timesteps[0] in scheduler.sigmas
        sigmas = scheduler.sigmas.tolist() if on_step is not None else []  # one device read, not one a step
        if step_cache < 0:
            raise ValueError(f"step_cache must be 0 (off) or a positive threshold, got {step_cache}")
        cache = speed.step_cache(model.transformer, step_cache) if step_cache > 0 else contextlib.nullcontext()
        # each reference is patch-embedded once a run
        with model.transformer.reference_tokens_once(), cache as stats:
            self.last_step_cache = stats
            for i, t in enumerate(timesteps):
                model_in = torch.cat([x, x]) if guided else x
                v_pos = model.velocity(model_in, t.expand(model_in.shape[0]), context, pooled, refs)
                reused = speed.record(stats)
                v_neg = None
                if guided:
                    v_neg, v_pos = v_pos.chunk(2)
                    v = guide(v_neg, v_pos, cfg_scale)
                else:
                    v = v_pos
                x_in, x = x, scheduler.step(v, t, x, return_dict=False)[0]  # type: ignore[arg-type]
                if on_step is not None:
                    on_step(
                        StepOutput(
                            step=i,
                            num_steps=len(timesteps),
                            timestep=t,
                            sigma=sigmas[first + i],
                            sigma_next=sigmas[first + i + 1],
                            latents=x_in,
                            velocity_cond=v_pos,
                            velocity_uncond=v_neg,
                            velocity=v,
                            next_latents=x,
                            cfg_scale=cfg_scale if guided else 1.0,
                            cache_reused=reused,
                        )
                    )
                if callback is not None:
                    callback(i, len(timesteps), x)
        return x

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode_latents(latents.to(self.device))

    # ---- all at once ----------------------------------------------------------------------------------
    def __call__(
        self,
        prompts: str | Sequence[str],
        references: Sequence[Sequence[ImageLike]] | None = None,
        negative_prompts: Sequence[str] | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
        num_steps: int = C.DEFAULT_STEPS,
        cfg_scale: float = C.DEFAULT_CFG,
        seed: int | Sequence[int] = 0,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        callback: StepCallback | None = None,
        reference_resize: str = "fix_pixels",
        on_step: StepHook | None = None,
        step_cache: float = 0.0,
    ) -> DeepGenOutput:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        cond = self.encode(
            prompts, negative_prompts, references, guidance=cfg_scale > 1.0, reference_resize=reference_resize
        ).repeat(num_images_per_prompt)
        latents = self.sample(
            cond,
            height,
            width,
            num_steps=num_steps,
            cfg_scale=cfg_scale,
            seed=seed,
            callback=callback,
            on_step=on_step,
            step_cache=step_cache,
        )
        if output_type == "latent":
            return DeepGenOutput(images=[], latents=latents)
        pixels = self.decode(latents)
        return DeepGenOutput(images=to_pil(pixels) if output_type == "pil" else pixels, latents=latents)
