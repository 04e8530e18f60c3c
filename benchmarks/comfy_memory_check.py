"""Check, in a real ComfyUI (CPU), that DeepGen's weight sets are ComfyUI-managed models.

    python benchmarks/comfy_memory_check.py /path/to/comfyui

Imports ComfyUI's comfy package (--cpu), loads this repo as a custom-node package by path (ComfyUI's own top-level
nodes.py would shadow our nodes/ package), runs one stage of the tiny model with a LoRA, and prints ComfyUI's
current_loaded_models with sizes before and after unload_all_models().
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(comfy_root: str) -> int:
    sys.path.insert(0, comfy_root)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management as mmg
    import folder_paths  # noqa: F401 - in_comfyui() looks for it

    name = "deepgen_ext"
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    ext = importlib.util.module_from_spec(spec)
    sys.modules[name] = ext
    spec.loader.exec_module(ext)
    sys.path.insert(0, str(ROOT))  # deepgen/ itself
    import torch

    from deepgen.lora import LoraFile, LoraModule
    from deepgen.tiny import build_tiny_model

    handle_mod = sys.modules[f"{name}.nodes.model_handle"]
    mm = sys.modules[f"{name}.nodes.comfy_services.managed_models"]
    model = build_tiny_model(seed=0)
    base = handle_mod.DeepGenModelHandle(model, name="tiny", memory_mode="offload_vlm_after_encode")
    print("patcher types:", {k: type(p).__name__ for k, p in base.patchers.items()})
    key = "transformer.transformer_blocks.0.attn.to_q"
    w = model.get_submodule(key).weight
    lora = LoraFile("x", {key: LoraModule(torch.ones(2, w.shape[1]), torch.ones(w.shape[0], 2), 2.0)})
    before = w.detach().clone()
    patched = base.with_loras([(lora, 0.5)])
    with patched.stage("sample"):
        rows = [(type(m.model.model).__name__, m.model.model_size()) for m in mmg.current_loaded_models]
        print("during sample:", rows)
        delta = (model.get_submodule(key).weight - before).abs().max().item()
        print("LoRA delta on the DiT weight while loaded:", delta, "(expected", 0.5 * 1.0 * 2, ")")
    with base.stage("sample"):
        print("base weights back under the base handle:", torch.equal(model.get_submodule(key).weight, before))
    with base.stage("encode"):
        print("during encode:", [type(m.model.model).__name__ for m in mmg.current_loaded_models])
    print("after encode (VLM unloaded):", mm.loaded_model_names())
    mmg.unload_all_models()
    print(
        "after unload_all_models:",
        [(type(m.model.model).__name__, m.model.loaded_size()) for m in mmg.current_loaded_models],
    )
    mmg.cleanup_models_gc()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/comfy/comfyui"))
