"""DeepGen's VAE as a native ComfyUI VAE (imports ComfyUI; only used inside it).

An SD3.5-shaped VAE (the real release) becomes ComfyUI's own `comfy.sd.VAE`, built from our diffusers state dict
(ComfyUI converts diffusers keys itself), so tiled decoding, its memory estimates and its dtype choices apply.
Any other shape (the tiny demo/test fixture) gets `DeepGenVAE`: ComfyUI's VAE class with our diffusers
AutoencoderKL as its first stage, so VAEEncode/VAEDecode (and the tiled variants) run their usual code on it.
Both take and give ComfyUI's raw SD3 latents z; the DiT's model space (z - shift) * scale is the MODEL's
latent format's business.
"""

from __future__ import annotations

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import torch

# diffusers AutoencoderKL config of the SD3/SD3.5 VAE (what ComfyUI's VAE class builds for SD3 weights)
SD35_SHAPE = {
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 16,
    "in_channels": 3,
    "out_channels": 3,
    "norm_num_groups": 32,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}


def is_sd35_shaped(vae) -> bool:
    config = vae.config
    return all(
        (tuple(getattr(config, k)) if isinstance(v, tuple) else getattr(config, k, None)) == v
        for k, v in SD35_SHAPE.items()
    )


class _FirstStage(torch.nn.Module):
    """diffusers AutoencoderKL -> the encode/decode pair ComfyUI's VAE calls (pixels in [-1, 1], raw z).

    Encoding takes the posterior mode, as ComfyUI's own VAEs do (the DeepGen nodes sample it for references)."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(pixels).latent_dist.mode()

    def decode(self, z: torch.Tensor, **_) -> torch.Tensor:
        return self.vae.decode(z).sample


class DeepGenVAE(comfy.sd.VAE):
    """ComfyUI's VAE interface over our diffusers AutoencoderKL (shared weights, no copy)."""

    def __init__(self, vae: torch.nn.Module, device=None):  # noqa: D107 - comfy.sd.VAE's init builds its own nets
        self.first_stage_model = _FirstStage(vae).eval()
        spatial = 2 ** (len(vae.config.block_out_channels) - 1)
        per_pixel = 64 * sum(vae.config.block_out_channels)  # rough activation bytes per latent pixel and dtype byte
        self.memory_used_encode = lambda shape, dtype: per_pixel * shape[2] * shape[3] * mm.dtype_size(dtype) // 8
        self.memory_used_decode = lambda shape, dtype: per_pixel * shape[2] * shape[3] * 64 * mm.dtype_size(dtype)
        self.downscale_ratio = self.upscale_ratio = spatial
        self.latent_channels = vae.config.latent_channels
        self.latent_dim = 2
        self.output_channels = 3
        self.process_input = lambda image: image * 2.0 - 1.0
        self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
        self.working_dtypes = [torch.bfloat16, torch.float32]
        self.disable_offload = False
        self.not_video = False
        self.size = None
        self.downscale_index_formula = self.upscale_index_formula = None
        self.extra_1d_channel = None
        self.crop_input = True
        self.device = device or mm.vae_device()
        self.vae_dtype = vae.dtype  # the weights' own dtype: converting them would change the DeepGen nodes too
        self.output_device = mm.intermediate_device()
        self.patcher = comfy.model_patcher.ModelPatcher(
            self.first_stage_model, load_device=self.device, offload_device=mm.vae_offload_device()
        )
        self.model_size()


def native_vae(vae: torch.nn.Module):
    """ComfyUI VAE for DeepGen's diffusers AutoencoderKL: comfy.sd.VAE for the SD3.5 shape, else DeepGenVAE."""
    if is_sd35_shaped(vae):
        state = {k: v.detach() for k, v in vae.state_dict().items()}
        return comfy.sd.VAE(sd=state, dtype=vae.dtype)
    return DeepGenVAE(vae)
