"""`deepgen convert`: one safetensors file that holds a whole DeepGen (VLM with LoRA merged, SCB, DiT, VAE),
with its configs and tokenizer in the metadata, so it loads with a single memory-mapped read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import InputError
from ..model.deepgen import DeepGenModel
from .fp8 import stored_fp8_parts
from .single_file import FORMAT_VERSION, SINGLE_FILE_FORMAT, tokenizer_files


def model_tensors(model: DeepGenModel) -> dict[str, torch.Tensor]:
    """Every tensor of the model, each stored once (a tied lm_head is dropped and re-tied on load)."""
    if any(".lora_" in k for k in model.lmm.state_dict()):
        raise InputError("The VLM carries a PEFT adapter; load with lora='merge' before converting")
    tensors, seen = {}, set()
    for key, value in model.state_dict().items():
        pointer = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if pointer in seen:  # tied weights (lm_head = embed_tokens)
            continue
        seen.add(pointer)
        tensors[key] = value.detach().contiguous().cpu()
    return tensors


def model_configs(model: DeepGenModel) -> dict[str, dict]:
    """The configs a whole-model file carries, by part (single_file.CONFIG_PARTS)."""
    return {
        "vlm": _without_source_paths(model.lmm.config.to_dict()),
        "transformer": _without_source_paths(dict(model.transformer.config)),
        "vae": _without_source_paths(dict(model.vae.config)),
        "scheduler": _without_source_paths(model.scheduler_config),
        "connector": _without_source_paths(model.connector.config.to_dict()),
    }


def _without_source_paths(config):
    """``config`` without transformers' and diffusers' ``_name_or_path``: the folder the part was read from, which
    would put the converting machine's paths into a file meant to be shared (and make equal weights differ)."""
    if isinstance(config, dict):
        return {k: _without_source_paths(v) for k, v in config.items() if k != "_name_or_path"}
    return config


def convert_model(model: DeepGenModel, output: str | os.PathLike, source_layout: str = "official") -> Path:
    """Write `model` to `output` (.safetensors) atomically."""
    output = Path(output)
    if output.suffix != ".safetensors":
        raise InputError(f"The converted file must end in .safetensors, not {output.name!r}")
    tensors = model_tensors(model)
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()})
    metadata = {
        "format": SINGLE_FILE_FORMAT,
        "format_version": FORMAT_VERSION,
        "source_layout": source_layout,
        "dtype": ",".join(dtypes),
        "configs": json.dumps(model_configs(model), default=str),
        "tokenizer_files": json.dumps(tokenizer_files(model.tokenizer)),
    }
    if fp8_parts := stored_fp8_parts(tensors):  # read back with the same layerwise casting (deepgen.loading.fp8)
        metadata["fp8_parts"] = json.dumps(fp8_parts)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, output)  # a crash never leaves a half-written file under the final name
    return output


def convert_checkpoint(
    checkpoint, output, vlm=None, diffusion=None, *, dtype: torch.dtype = torch.bfloat16, **load_kwargs
) -> Path:
    """Load any supported release layout and write it as one converted file."""
    from .release import load_model
    from .sources import detect_layout

    layout = detect_layout(checkpoint)
    model = load_model(checkpoint, vlm, diffusion, dtype=dtype, lora="merge", **load_kwargs)
    return convert_model(model, output, source_layout=layout)
