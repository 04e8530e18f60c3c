"""Whether ComfyUI is running, and its modules.

:func:`in_comfyui` is True when ComfyUI's own ``folder_paths`` and ``comfy.model_management`` modules are already
imported, which is always the case while ComfyUI loads custom nodes.  It is evaluated on every call and never
imports ComfyUI itself, so importing this package has no side effects and tests can inject test doubles into
``sys.modules``.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["in_comfyui", "comfy_module", "previews_enabled"]


def in_comfyui() -> bool:
    """True when running inside a ComfyUI process (its core modules are already loaded)."""
    return "folder_paths" in sys.modules and "comfy.model_management" in sys.modules


def comfy_module(name: str):
    """ComfyUI module ``name`` (already imported inside ComfyUI, so this is a dict lookup)."""
    mod = sys.modules.get(name)
    return mod if mod is not None else importlib.import_module(name)


def previews_enabled() -> bool:
    """Whether ComfyUI wants latent previews (its --preview-method; the server default is none)."""
    if not in_comfyui():
        return False
    try:
        method = comfy_module("comfy.cli_args").args.preview_method
    except (ImportError, AttributeError):
        return True  # a ComfyUI without that setting: previews as before
    return getattr(method, "value", method) != "none"
