"""The model a run trains: :func:`describe_model_source` reads the config's ``model`` and
:func:`load_model_for_training` builds it (``"tiny"``, a release folder/file, or a folder with only the base VLM +
DiT, which gives a freshly initialised SCB for stage 1)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..loading.sources import ModelSource

__all__ = ["ModelSource", "describe_model_source", "load_model_for_training"]


def describe_model_source(spec: str | os.PathLike) -> ModelSource:
    """Interpret the config's ``model`` (deepgen.loading.resolve_source, which the CLI and the loader node use
    too): ``"tiny"`` / ``"tiny:<seed>"``, a DeepGen-1.0-diffusers folder, a ``deepgen convert`` file, an official
    checkpoint (or a folder holding one) with its Qwen2.5-VL and diffusion folders next to it, or a folder with
    only those two base folders (``bases``: stage 1 starts the think tokens, projectors and connector fresh)."""
    from ..loading import resolve_source

    return resolve_source(spec, allow_bases=True)


def load_model_for_training(
    source: str | os.PathLike | ModelSource,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    num_queries: int = 128,
    progress: Callable[[str], None] | None = None,
):
    """Build the DeepGenModel a run trains.  Returns ``(model, ModelSource)``.

    Released VLM LoRAs are merged into the VLM (the trainer adds its own fresh LoRA on top).  A pre-training
    checkpoint (no DiT / LoRA tensors) is accepted.  ``bases`` builds a fresh SCB of the official size
    (``connector_config.json`` overrides it) with ``num_queries`` think tokens.
    """
    from ..loading import load_model

    src = source if isinstance(source, ModelSource) else describe_model_source(source)
    if src.layout == "bases":
        return _fresh_model(src, dtype, device, num_queries), src
    spec = f"tiny:{src.seed}" if src.layout == "tiny" else src.path_of("checkpoint")
    return load_model(
        spec,
        src.vlm,
        src.diffusion,
        dtype=dtype,
        device=device,
        lora="merge",
        allow_pretrain_checkpoint=True,
        connector_config=src.connector_config,
        progress=progress,
    ), src


def _fresh_model(src: ModelSource, dtype, device, num_queries: int):
    from diffusers import AutoencoderKL
    from transformers import Qwen2_5_VLForConditionalGeneration

    from ..loading import load_tokenizer
    from ..model.connector import ConnectorConfig
    from ..model.deepgen import DeepGenModel
    from ..model.dit import DeepGenTransformer2DModel

    diffusion, vlm = Path(src.path_of("diffusion")), src.path_of("vlm")
    lmm = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        vlm, dtype=dtype, attn_implementation="sdpa", local_files_only=True
    )
    transformer = DeepGenTransformer2DModel.from_pretrained(
        str(diffusion / "transformer"), torch_dtype=dtype, local_files_only=True
    )
    vae = AutoencoderKL.from_pretrained(str(diffusion / "vae"), torch_dtype=dtype, local_files_only=True)
    scheduler = json.loads((diffusion / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    fields = ConnectorConfig.__dataclass_fields__
    connector = ConnectorConfig(**{k: v for k, v in (src.connector_config or {}).items() if k in fields})
    model = DeepGenModel(
        lmm, load_tokenizer(vlm), transformer, vae, connector, num_queries=num_queries, scheduler_config=scheduler
    )
    return model.to(device=device, dtype=dtype).eval()
