"""DeepGenLoRALoader: apply a DeepGen LoRA file (from DeepGenTrainLoRA or `deepgen train`) with a strength."""

from __future__ import annotations

import os

from deepgen.errors import NotFoundError

from . import comfy_services as cs
from .training_files import LORA_SUBFOLDER, load_adapter_cached
from .types import DEEPGEN_MODEL, category, display_name

NO_LORAS = "(no LoRA files found)"


def lora_choices() -> list[str]:
    names = [n for n in cs.list_models("loras") if n.lower().endswith((".safetensors", ".sft"))]
    ours = sorted(n for n in names if n.startswith(LORA_SUBFOLDER + "/"))
    return (ours + sorted(n for n in names if n not in ours)) or [NO_LORAS]


class DeepGenLoRALoader:
    DESCRIPTION = (
        "Applies a DeepGen LoRA (from DeepGenTrainLoRA or `deepgen train`) with a strength. Chain several "
        "to combine LoRAs. Returns a new model; the cached base model and other workflows keep the "
        "original weights. Handles VLM LoRAs, DiT LoRAs and trained-bridge (connector) differences."
    )
    CATEGORY = category("loaders")
    RETURN_TYPES = (DEEPGEN_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the LoRA applied (while nodes use this output).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (DEEPGEN_MODEL, {"tooltip": "The model from DeepGenLoader (or another LoRA loader)."}),
                "lora_name": (
                    lora_choices(),
                    {"tooltip": "A DeepGen LoRA file from the loras folders (trained LoRAs are in loras/deepgen/)."},
                ),
                "strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": -10.0,
                        "max": 10.0,
                        "step": 0.01,
                        "tooltip": "1 = as trained, 0 = off; between blends, above exaggerates.",
                    },
                ),
            },
        }

    @classmethod
    def IS_CHANGED(cls, lora_name, strength=1.0, **_):
        try:
            st = os.stat(cs.resolve_model_path("loras", lora_name))
            return f"{lora_name}:{st.st_size}:{st.st_mtime_ns}:{strength}"
        except (OSError, ValueError) as exc:
            return f"missing:{exc}"

    def load(self, model, lora_name, strength=1.0):
        if lora_name == NO_LORAS:
            raise NotFoundError(
                "No LoRA files in the loras folders: train one with DeepGenTrainLoRA (it saves "
                "to output/loras/deepgen/), then refresh"
            )
        path = cs.resolve_model_path("loras", lora_name)
        adapter = load_adapter_cached(path)
        adapter.check(model.model)
        return (model.with_loras([(adapter, float(strength))]),)


NODE_CLASS_MAPPINGS = {"DeepGenLoRALoader": DeepGenLoRALoader}
NODE_DISPLAY_NAME_MAPPINGS = {"DeepGenLoRALoader": display_name("DeepGen LoRA Loader")}
