"""DeepGenSpeed: the DiT speed switches (deepgen.model.speed) as a model patch, like ComfyUI's TorchCompileModel.

It returns a new DEEPGEN_MODEL handle on the same weights whose DeepGenSampler / DeepGenEdit runs use the
switches; the input handle, and every graph branch that samples from it, runs as before. The switches are put on
the DiT for the sample stage only and taken off after it (DeepGenModelHandle.sampling). Compiled blocks are kept
with the DiT (deepgen.model.speed._COMPILED), so a new seed or a re-queue compiles nothing again.
"""

from __future__ import annotations

import logging

from . import comfy_services as cs
from .types import DEEPGEN_MODEL, category, display_name

log = logging.getLogger(__name__)

SDPA_BACKENDS = ["auto", "flash", "efficient", "math"]  # deepgen.model.speed.SDPA_BACKENDS (no torch import here)

# Costs quoted from benchmarks/README.md ("DiT speed switches"): the tiny random fixture, 64², 50 steps, CPU.
COMPILE_TIP = (
    "on: torch.compile each DiT block (regional: the repeated blocks share compiled code; inductor). The first "
    "image at each new size, batch or reference count compiles first (about 85 s for the tiny model's 4 blocks "
    "on a 2-core CPU; not measured for the real model); the compiled blocks stay with the loaded model, so later "
    "queues and seeds reuse them. Same images up to float rounding (max 1e-6, PSNR >= 127 dB). The GPU speed-up "
    "is not measured yet. Needs a working torch.compile (a C compiler on the CPU, Triton on NVIDIA GPUs)."
)
SDPA_TIP = (
    "The DiT's attention kernel. auto: torch picks one that can run (or what the loader forced). flash: "
    "FlashAttention (CUDA fp16/bf16 on Ampere or newer, no mask: not with references of different sizes). "
    "efficient: memory-efficient attention (CUDA only). math: the plain reference (usually the slowest). "
    "A kernel that cannot run the inputs stops the run with an error that says so. Images match auto up to "
    "float rounding (math: max 1e-6, PSNR 128 dB on the tiny fixture); speed not measured yet."
)
STEP_CACHE_TIP = (
    "First Block Cache threshold, 0 = off. Every step runs the DiT's first block; when its output changed by "
    "less than this fraction since the last fully computed step, the other blocks (but the last) are skipped "
    "and their last change is reused: faster, slightly different images. Measured on the tiny random model "
    "(50 steps): 0.1 skipped no step, 0.2 skipped 5 (PSNR 72 dB against off), 0.3 skipped 19 (62 dB), 0.5 "
    "skipped 44 (48 dB); the right value for the real weights is not measured yet. The sampler shows which "
    "steps were reused."
)


def report_step_cache(stats, node_id=None) -> str | None:
    """After a sampling run: which steps reused the step cache, in the log and under the sampling node."""
    if stats is None:
        return None
    reused = [i + 1 for i, hit in enumerate(stats.reused) if hit]
    text = f"DeepGen step cache {stats.threshold:g}: {len(reused)} of {len(stats.reused)} steps reused"
    if reused:
        text += " (steps " + ", ".join(map(str, reused)) + ")"
    log.info(text)
    cs.send_progress_text(text, node_id)
    return text


class DeepGenSpeed:
    DESCRIPTION = (
        "Speed switches for the DeepGen DiT: torch.compile of its blocks, the attention kernel, and a step cache "
        "that skips most of the DiT on steps that change little. Returns a new model for DeepGenSampler and "
        "DeepGenEdit; the input model, and other branches that sample from it, stay as they were. Every switch "
        "is off by default. For KSampler on the loader's MODEL use ComfyUI's own TorchCompileModel and "
        "LazyCache nodes instead."
    )
    CATEGORY = category("loaders")
    RETURN_TYPES = (DEEPGEN_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model whose DeepGenSampler and DeepGenEdit runs use these switches.",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (DEEPGEN_MODEL, {"tooltip": "The model from DeepGenLoader (or a LoRA loader)."}),
                "compile": (
                    "BOOLEAN",
                    {"default": False, "label_on": "on", "label_off": "off", "tooltip": COMPILE_TIP},
                ),
                "sdpa_backend": (SDPA_BACKENDS, {"default": "auto", "tooltip": SDPA_TIP}),
                "step_cache": (
                    "FLOAT",
                    {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": STEP_CACHE_TIP},
                ),
            },
        }

    def patch(self, model, compile=False, sdpa_backend="auto", step_cache=0.0):
        from deepgen.model.speed import Switches

        switches = Switches(compile=bool(compile), sdpa_backend=sdpa_backend, step_cache=float(step_cache))
        return (model.with_speed(switches),)


NODE_CLASS_MAPPINGS = {"DeepGenSpeed": DeepGenSpeed}
NODE_DISPLAY_NAME_MAPPINGS = {"DeepGenSpeed": display_name("DeepGen Speed (compile, attention, step cache)")}
