"""The DeepGen DiT as a native ComfyUI MODEL (imports ComfyUI; only used inside it).

`DeepGenNativeDiT` is a `comfy.model_base.BaseModel` whose `diffusion_model` IS our transformer
(deepgen/model/dit.py): no copy, so LoRA patches of ComfyUI's ModelPatcher land on the weights DeepGen uses.
- Model sampling: flow matching (CONST + ModelSamplingDiscreteFlow) with shift 3.0 and multiplier 1000, so the
  DiT's timestep input is sigma * 1000 as in the official pipeline. ComfyUI's `normal` scheduler gives the
  official (diffusers FlowMatchEuler, double-shifted) sigmas; `simple`/`sgm_uniform` do not (docs/nodes.md).
- Conditioning: SCBBridge's CONDITIONING [[context (B, L, 4096), {"pooled_output", "reference_latents"}]];
  reference latents are raw VAE latents (as ComfyUI's ReferenceLatent stores them) and enter the DiT in model
  space, appended after each target's tokens (Kontext-style).
"""

from __future__ import annotations

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base
import torch

SHIFT = 3.0
MULTIPLIER = 1000  # DiT timestep = sigma * 1000 (official scheduler.timesteps)


class DeepGenModelConfig(comfy.supported_models_base.BASE):
    """ComfyUI's model description for DeepGen's DiT: SD3 latents, flow matching, shift 3."""

    unet_config = {"disable_unet_model_creation": True}
    unet_extra_config: dict = {}
    sampling_settings = {"shift": SHIFT, "multiplier": MULTIPLIER}
    latent_format = comfy.latent_formats.SD3
    memory_usage_factor = 1.6  # ComfyUI's SD3 value: activation memory per latent pixel

    def __init__(self, in_channels: int):
        super().__init__({"disable_unet_model_creation": True, "in_channels": in_channels})


class DeepGenNativeDiT(comfy.model_base.BaseModel):
    """BaseModel over DeepGen's `DeepGenTransformer2DModel` (flow matching, reference latents)."""

    def __init__(self, transformer: torch.nn.Module, device=None):
        config = DeepGenModelConfig(transformer.config.in_channels)
        super().__init__(config, comfy.model_base.ModelType.FLOW, device=device)
        self.diffusion_model = transformer
        self.memory_usage_factor_conds = ("ref_latents",)  # reference tokens cost as much as target tokens

    def encode_adm(self, **kwargs):
        return kwargs.get("pooled_output")

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)  # 'y' = pooled_output (encode_adm)
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            out["c_crossattn"] = comfy.conds.CONDRegular(cross_attn)
        refs = kwargs.get("reference_latents")
        if refs:
            out["ref_latents"] = comfy.conds.CONDList([self.process_latent_in(r) for r in refs])
        return out

    def extra_conds_shapes(self, **kwargs):
        refs = kwargs.get("reference_latents")
        # Flux's form: one (1, C, tokens) shape for all references, for ComfyUI's memory estimate
        return {"ref_latents": [1, refs[0].shape[1], sum(r.shape[-2] * r.shape[-1] for r in refs)]} if refs else {}

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        # Our DiT's forward takes (latents, context, pooled, timestep, reference_latents): call it with those
        # names instead of ComfyUI's (x, t, context=..., y=...) convention; the rest is BaseModel._apply_model.
        if c_crossattn is None or kwargs.get("y") is None:
            raise ValueError(
                "DeepGen's MODEL needs DeepGen conditioning: connect SCBBridge's positive/negative outputs "
                "(CONDITIONING with a 4096-wide context and a pooled_output)"
            )
        sigma = t
        dtype = self.manual_cast_dtype or self.get_dtype()
        xc = self.model_sampling.calculate_input(sigma, x).to(dtype)
        device = xc.device
        timestep = self.model_sampling.timestep(t).float()
        context = comfy.model_management.cast_to_device(c_crossattn, device, dtype)
        pooled = comfy.model_management.cast_to_device(kwargs["y"], device, dtype)
        refs = kwargs.get("ref_latents") or []
        refs = [comfy.model_management.cast_to_device(r, device, dtype) for r in refs]
        per_sample = [[r[i] for r in refs] for i in range(xc.shape[0])] if refs else None
        velocity = self.diffusion_model(xc, context, pooled, timestep, reference_latents=per_sample, return_dict=False)[
            0
        ]
        return self.model_sampling.calculate_denoised(sigma, velocity.float(), x)


def native_model_patcher(transformer: torch.nn.Module, load_device, offload_device):
    """A ModelPatcher over DeepGen's transformer: `patcher.model.diffusion_model is transformer` (shared weights)."""
    model = DeepGenNativeDiT(transformer, device=load_device)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
