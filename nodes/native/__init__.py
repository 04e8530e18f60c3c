"""Native ComfyUI outputs of DeepGenLoader: a MODEL (DeepGen's DiT) and a VAE.

Only this package imports ComfyUI (`comfy.*`), and only when called inside ComfyUI: the node tests and the
library run without it, and then the loader's MODEL and VAE outputs are None.
"""

from __future__ import annotations

import importlib.util


def comfy_available() -> bool:
    try:
        return importlib.util.find_spec("comfy.model_patcher") is not None
    except (ImportError, ValueError, AttributeError):  # absent, or a test's stand-in module
        return False


def native_outputs(handle) -> tuple[object | None, object | None]:
    """(MODEL ModelPatcher, VAE) over the handle's DiT and VAE, sharing their weights; (None, None) outside
    ComfyUI."""
    if not comfy_available():
        return None, None
    from . import lora_keys
    from .model import native_model_patcher
    from .vae import native_vae

    lora_keys.install()
    dit = handle.patchers.get("dit")
    if not hasattr(getattr(dit, "model", None), "diffusion_model"):  # a handle made outside ComfyUI
        dit = native_model_patcher(handle.model.transformer)
    # the MODEL is the handle's own DiT patcher: one patcher per weight set, whichever path samples
    return dit, native_vae(handle.model.vae)
