"""Devices and memory: ComfyUI's ``comfy.model_management`` choices inside ComfyUI; outside, ``DEEPGEN_DEVICE``
or the best available device, and the CPU for idle weights and node outputs."""

from __future__ import annotations

import gc
import os

from .detection import comfy_module, in_comfyui

__all__ = ["torch_device", "offload_device", "intermediate_device", "free_memory", "soft_empty_cache"]


def torch_device():
    """The compute device: ComfyUI's ``get_torch_device()``; else DEEPGEN_DEVICE, cuda, mps, cpu."""
    import torch

    if in_comfyui():
        return comfy_module("comfy.model_management").get_torch_device()
    override = os.environ.get("DEEPGEN_DEVICE", "").strip()
    if override:
        return torch.device(override)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def offload_device():
    """Where idle weights live: ComfyUI's ``unet_offload_device()`` (CPU unless --highvram); else CPU."""
    import torch

    if in_comfyui():
        return comfy_module("comfy.model_management").unet_offload_device()
    return torch.device("cpu")


def intermediate_device():
    """Where node outputs (IMAGE, LATENT, CONDITIONING) should live: ComfyUI's choice; else CPU."""
    import torch

    if in_comfyui():
        return comfy_module("comfy.model_management").intermediate_device()
    return torch.device("cpu")


def soft_empty_cache() -> None:
    """Return cached allocator blocks to the driver."""
    if in_comfyui():
        comfy_module("comfy.model_management").soft_empty_cache()
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def free_memory(bytes_needed: int | None = None, device=None) -> None:
    """Make room on ``device`` (default :func:`torch_device`).

    ``bytes_needed`` given: inside ComfyUI, ``comfy.model_management.free_memory(bytes_needed,
    device)`` unloads other models until that much is free.  ``None``: only garbage-collect and
    :func:`soft_empty_cache` -- other models are never evicted without an amount (evicting the
    artist's models is what users complain about; ask for what you need).
    """
    gc.collect()
    if bytes_needed is not None and in_comfyui():
        target = device if device is not None else torch_device()
        comfy_module("comfy.model_management").free_memory(int(bytes_needed), target)
    soft_empty_cache()
