"""One small nn.Module per DeepGen weight set, so that each set is one patcher of ComfyUI's model manager.

The holders register the DeepGenModel's own submodules (no copies), under the model's names, so a patch key is the
model's own parameter name (e.g. ``transformer.transformer_blocks.0.attn.to_q.weight``) and loading a holder moves
the model's part.  Parameter objects that ComfyUI replaces while patching (its ``set_attr_param``) land on the shared
submodule; the think tokens are a bare parameter of the model, so DeepGenSCB forwards their replacement.
"""

from __future__ import annotations

import weakref

from torch import nn

SCB_MODULES = ("projector_1", "projector_2", "projector_3", "connector")


class DeepGenVLM(nn.Module):
    """The VLM (Qwen2.5-VL, ``model.lmm``): the largest part, needed only to encode."""

    def __init__(self, model):
        super().__init__()
        self.lmm = model.lmm


class DeepGenSCB(nn.Module):
    """The think tokens, projectors and connector: small, needed by every stage."""

    def __init__(self, model):
        super().__init__()
        object.__setattr__(self, "_owner", weakref.ref(model))  # not a submodule: the owner is not ours to hold
        self.meta_queries = model.meta_queries
        for name in SCB_MODULES:
            setattr(self, name, getattr(model, name))

    def sync(self) -> None:
        """Hold the owner's current think-token parameter (code that trains the model may replace it)."""
        owner = self.__dict__["_owner"]()
        if owner is not None and self.meta_queries is not owner.meta_queries:
            self.meta_queries = owner.meta_queries

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name == "meta_queries" and isinstance(value, nn.Parameter):
            owner = self.__dict__["_owner"]()
            if owner is not None:
                setattr(owner, name, value)


class DeepGenDiTWeights(nn.Module):
    """The diffusion transformer (SD3.5-style, ``model.transformer``)."""

    def __init__(self, model):
        super().__init__()
        self.transformer = model.transformer


class DeepGenVAE(nn.Module):
    """The 16-channel VAE (``model.vae``): reference latents and decoding."""

    def __init__(self, model):
        super().__init__()
        self.vae = model.vae
