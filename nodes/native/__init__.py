"""Native ComfyUI outputs of DeepGenLoader: a MODEL (DeepGen's DiT) and a VAE.

Only this package imports ComfyUI (`comfy.*`), and only when called inside ComfyUI: the node tests and the
library run without it, and then the loader's MODEL and VAE outputs are None.
"""

from __future__ import annotations

from .. import comfy_services as cs


def native_outputs(handle) -> tuple[object | None, object | None]:
    """(MODEL ModelPatcher, VAE) over the handle's DiT and VAE, sharing their weights; (None, None) outside
    ComfyUI."""
    if not cs.in_comfyui():
        return None, None
    from . import lora_keys
    from .vae import native_vae

    lora_keys.install()
    # inside ComfyUI the handle's DiT patcher is already the native MODEL's (model_handle._make_dit_patcher): one
    # patcher per weight set, whichever path samples
    return handle.patchers["dit"], native_vae(handle.model.vae)
