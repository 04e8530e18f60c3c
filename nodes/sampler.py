"""DeepGenSampler: DEEPGEN_COND -> images and an SD3 LATENT (DeepGenPipeline.sample, then .decode)."""

from __future__ import annotations

from deepgen.errors import InputError

from . import comfy_services as cs
from .speed import report_step_cache
from .types import (
    DEEPGEN_COND,
    DEEPGEN_MODEL,
    IMAGE,
    LATENT,
    SIZE_MULTIPLE,
    category,
    check_size,
    display_name,
    sampler_inputs,
)

PREVIEW_MAX_SIZE = 512


def validate_size(width=None, height=None) -> bool | str:
    """VALIDATE_INPUTS body for width/height widgets (ComfyUI then skips its own min/max check for them).

    The message names only the bad input(s). ComfyUI attaches a VALIDATE_INPUTS failure to every argument the
    function takes, so each message starts with the name of the input it is about."""
    errors = [e for e in (check_size("width", width), check_size("height", height)) if e]
    if not errors:
        return True
    text = "; ".join(errors)
    if any("multiple of" in e for e in errors):
        text += f". DeepGen needs multiples of {SIZE_MULTIPLE}, or 0 for the reference image's size"
    return text


def generate(
    handle,
    cond,
    *,
    width: int,
    height: int,
    batch_size: int,
    steps: int,
    cfg: float,
    shift: float,
    seed: int,
    latent: dict | None = None,
    denoise: float = 1.0,
    node_id=None,
):
    """Sample and decode; returns (IMAGE [B, H, W, 3] 0..1, LATENT {"samples": raw SD3 VAE latents})."""
    import torch

    from deepgen.comfy_latents import from_comfy_samples, latent_preview, to_comfy_samples
    from deepgen.images import to_comfy_image
    from deepgen.sizes import check_output_size

    pipe, model = handle.pipe, handle.model
    scale, shift_factor = model.latent_scale
    init = None
    if latent is not None:
        samples, batch_size = _latent_batch(latent, len(cond), batch_size, model.transformer.config.in_channels)
        height, width = samples.shape[-2] * 8, samples.shape[-1] * 8
        init = from_comfy_samples(samples, scale, shift_factor) if denoise < 1.0 else None
    else:
        default_h, default_w = cond.reference_size or (pipe.default_size, pipe.default_size)  # 512; the demo: 64
        height, width = height or default_h, width or default_w
    check_output_size(height, width)
    if not 0.0 < denoise <= 1.0:
        raise InputError(f"denoise must be in (0, 1], got {denoise}")
    runs = min(int(steps * denoise), steps) if init is not None else steps
    if runs < 1:
        raise InputError(f"denoise {denoise} with {steps} steps leaves no step to run; raise denoise or steps")

    cond = cond.repeat(batch_size)
    seeds = [(int(seed) + i) % (1 << 64) for i in range(len(cond))]
    cs.check_interrupt()
    preview = None
    if cs.previews_enabled():

        def preview(step, total, x):
            return ("JPEG", latent_preview(x), PREVIEW_MAX_SIZE)

    bar = cs.Progress(runs, node_id=node_id, desc="DeepGen sample")
    try:
        with handle.sampling():
            x = pipe.sample(
                cond.to(pipe.device),
                height,
                width,
                num_steps=steps,
                cfg_scale=cfg,
                seed=seeds,
                init_latents=init,
                strength=denoise if init is not None else 1.0,
                shift=shift or None,
                callback=bar.callback(preview),
                step_cache=handle.speed.step_cache,
            )
    finally:
        bar.close()
    report_step_cache(pipe.last_step_cache, node_id)

    device = cs.intermediate_device()
    bar = cs.Progress(x.shape[0], node_id=node_id, desc="DeepGen decode")
    images = []
    with handle.stage("decode"):
        for i in range(x.shape[0]):
            cs.check_interrupt()
            images.append(to_comfy_image(pipe.decode(x[i : i + 1])).to(device))
            bar.update(1)
    bar.close()
    return torch.cat(images), {"samples": to_comfy_samples(x, scale, shift_factor).to(device)}


def _latent_batch(latent, num_prompts: int, batch_size: int, channels: int):
    """The LATENT's samples with one row per image, and the batch size per prompt it implies."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise InputError("latent must be a ComfyUI LATENT (a dict with 'samples')")
    samples = latent["samples"]
    if samples.ndim != 4 or samples.shape[1] != channels:
        raise InputError(
            f"latent has shape {tuple(samples.shape)}; DeepGen needs {channels}-channel SD3 latents "
            "[B, 16, H/8, W/8] (e.g. from EmptySD3LatentImage or a DeepGen node)"
        )
    total = num_prompts * batch_size
    if samples.shape[0] == total:
        return samples, batch_size
    if samples.shape[0] == 1:
        return samples.expand(total, -1, -1, -1), batch_size
    if num_prompts == 1:
        return samples, samples.shape[0]
    raise InputError(
        f"latent holds {samples.shape[0]} images but {num_prompts} prompts x batch size {batch_size} "
        f"= {total} are asked for"
    )


class DeepGenSampler:
    DESCRIPTION = (
        "Denoises with the DeepGen DiT (flow-matching Euler, classifier-free guidance with the encoded "
        "negative, reference-image tokens for edits) and decodes with the VAE. The LATENT output is in "
        "ComfyUI's SD3 convention, so VAEDecode with the SD3.5 VAE, latent upscalers and a second "
        "DeepGenSampler (with denoise < 1) accept it."
    )
    CATEGORY = category("sampling")
    RETURN_TYPES = (IMAGE, LATENT)
    RETURN_NAMES = ("images", "latent")
    OUTPUT_TOOLTIPS = (
        "The decoded images [B, H, W, 3].",
        "The final latents (raw SD3 VAE space, like EmptySD3LatentImage).",
    )
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (DEEPGEN_MODEL, {"tooltip": "The model from DeepGenLoader."}),
                "cond": (DEEPGEN_COND, {"tooltip": "The cond output of SCBBridge."}),
                **sampler_inputs(default_size=0),  # 0: the model's own size (512; the demo: 64)
            },
            "optional": {
                "latent": (
                    LATENT,
                    {
                        "tooltip": "Optional starting latent (img2img / refine). Its size and batch "
                        "replace width, height and batch size."
                    },
                ),
                "denoise": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.01,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "With a latent: how much of it to repaint (1.0 = everything, "
                        "i.e. ignore it). Without a latent it has no effect.",
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, width, height):
        return validate_size(width, height)

    def sample(
        self, model, cond, width, height, batch_size, steps, cfg, shift, seed, latent=None, denoise=1.0, unique_id=None
    ):
        return generate(
            model,
            cond,
            width=width,
            height=height,
            batch_size=batch_size,
            steps=steps,
            cfg=cfg,
            shift=shift,
            seed=seed,
            latent=latent,
            denoise=denoise,
            node_id=unique_id,
        )


NODE_CLASS_MAPPINGS = {"DeepGenSampler": DeepGenSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"DeepGenSampler": display_name("DeepGen Sampler")}
