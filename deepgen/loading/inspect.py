"""`deepgen info`: what a checkpoint holds and which release layout it is, without building the model."""

from __future__ import annotations

import json
from pathlib import Path

from . import keys as K
from . import single_file
from .demo_file import read_demo_header
from .sources import detect_layout
from .state_dict_io import read_metadata, read_state_dict


def describe(path) -> dict:
    path = Path(path)
    layout = detect_layout(path)
    info: dict = {"path": str(path), "layout": layout}
    if layout == "diffusers":
        info["folders"] = sorted(p.name for p in path.iterdir() if p.is_dir())
        return info
    if layout == "single":  # an untrusted header: validated before anything else is read
        single_file.parse_header(read_metadata(path), str(path))
    if layout == "demo":
        read_demo_header(read_metadata(path), str(path))
    state, meta = read_state_dict(path)
    groups = K.group_keys(state)
    info["tensors"] = len(state)
    info["parameters"] = sum(t.numel() for t in state.values())
    info["dtypes"] = sorted({str(t.dtype).replace("torch.", "") for t in state.values()})
    if layout in ("single", "demo"):
        info["metadata"] = {k: v for k, v in meta.items() if k not in ("configs", "tokenizer_files")}
        info["components"] = sorted({k.split(".")[0] for k in state})
        return info
    info["groups"] = {name: len(keys) for name, keys in groups.items() if keys}
    lora_layouts = {
        (
            "new (transformers >= 4.52)"
            if ".language_model." in k or ".model.visual." in k
            else "old (transformers <= 4.51)"
        )
        for k in groups["lora"]
        if not k.startswith("lmm.lm_head")
    }
    info["lora_key_layout"] = sorted(lora_layouts)
    if "meta_queries" in state:
        info["num_think_tokens"] = int(state["meta_queries"].shape[0])
    info["kind"] = (
        "pre-training (SCB only)"
        if not groups["transformer"] and not groups["lora"]
        else "SFT/RL (SCB + DiT + VLM LoRA)"
        if groups["lora"]
        else "SCB + DiT"
    )
    return info


def main(path) -> str:
    return json.dumps(describe(path), indent=2)
