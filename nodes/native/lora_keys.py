"""LoRA key names ComfyUI's LoraLoaderModelOnly resolves on DeepGen's native MODEL (imports ComfyUI).

ComfyUI already maps, for any model, `diffusion_model.<module>` and kohya `lora_unet_<module_with_underscores>`
names; our DiT's modules carry diffusers names, so a kohya LoRA trained on the diffusers SD3 transformer
(`lora_unet_transformer_blocks_0_attn_to_q`) loads as is. ComfyUI maps the diffusers/PEFT names
(`transformer.<module>`, what DeepGen's trainer writes) and OneTrainer's `lora_transformer_<module>` only for its
own SD3 class, whose modules have other names. ComfyUI has no hook for a model class to add names, so
`install()` wraps `comfy.lora.model_lora_keys_unet` once: for a DeepGenNativeDiT it adds these names, for any
other model it returns exactly what ComfyUI returns.
"""

from __future__ import annotations

import functools

import comfy.lora

PREFIX = "diffusion_model."


def deepgen_lora_keys(model, key_map: dict) -> dict:
    """Add diffusers (`transformer.`, `base_model.model.`) and OneTrainer (`lora_transformer_`) names."""
    for key in model.state_dict():
        if key.startswith(PREFIX) and key.endswith(".weight"):
            module = key[len(PREFIX) : -len(".weight")]
            key_map[f"transformer.{module}"] = key
            key_map[f"base_model.model.{module}"] = key
            key_map[f"lora_transformer_{module.replace('.', '_')}"] = key
    return key_map


def install() -> None:
    """Make comfy.lora.model_lora_keys_unet know DeepGen's names (idempotent)."""
    original = comfy.lora.model_lora_keys_unet
    if getattr(original, "_deepgen", False):
        return

    @functools.wraps(original)
    def model_lora_keys_unet(model, key_map=None):
        key_map = original(model, {} if key_map is None else key_map)
        from .model import DeepGenNativeDiT

        return deepgen_lora_keys(model, key_map) if isinstance(model, DeepGenNativeDiT) else key_map

    model_lora_keys_unet._deepgen = True  # type: ignore[attr-defined]
    comfy.lora.model_lora_keys_unet = model_lora_keys_unet
