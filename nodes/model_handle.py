"""The DEEPGEN_MODEL value: a loaded DeepGenModel, its pipeline, and one model-manager patcher per weight set.

ComfyUI's model manager owns the memory (nodes/comfy_services/managed_models.py): each weight set -- the VLM, the
SCB (think tokens, projectors, connector), the DiT and the VAE -- is one patcher, and a stage asks the manager to
load what it needs (ComfyUI evicts other models as far as needed, and frees ours on "Unload models").  The loader's
memory modes are what the manager is then asked to do:
- keep_all_on_gpu: every stage loads all four weight sets; nothing is unloaded by us.
- offload_vlm_after_encode: the VLM (Qwen2.5-VL, the largest part) is unloaded once the prompt is encoded (or once
  RewardScore's judging with it is done).
- sequential_offload: a stage's parts (the SCB aside: small, needed by every stage) are unloaded after it.
LoRAs are patches on clones of the patchers (with_loras): the shared weights carry exactly the patches of the handle
that loaded them last, and unloading restores the base weights.
Speed switches (DeepGenSpeed) ride on a handle too: with_speed gives a new handle on the same patchers whose sample
stage puts compile and the SDPA kernel on the shared DiT and takes them off after it (deepgen.model.speed.Switches).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from deepgen.errors import InputError

from . import comfy_services as cs
from .comfy_services import managed_models as mm

if TYPE_CHECKING:
    from deepgen.model.speed import Switches

MEMORY_MODES = ["keep_all_on_gpu", "offload_vlm_after_encode", "sequential_offload"]
PARTS = ("scb", "vlm", "dit", "vae")
STAGE_PARTS = {
    "encode": ("scb", "vlm"),
    "references": ("scb", "vae"),
    "bridge": ("scb",),
    "sample": ("scb", "dit"),
    "decode": ("scb", "vae"),
    "judge": ("vlm",),  # RewardScore: the VLM as the preference judge
}

# model -> its base patchers: every handle on one model shares them (LoRA handles hold clones), so the manager
# sees each weight set once.  Weak: the patchers hold the model's parts, never the model itself.
_BASE_PATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _make_dit_patcher(model, load_device, offload_device):
    """The DiT's patcher: the one place that decides what holds the DiT for the manager.

    Inside ComfyUI it is the native MODEL's patcher (nodes/native): DeepGenSampler and KSampler then load, patch
    and evict the DiT through one patcher, so a LoRA of one path never sits unseen under the other."""
    if cs.in_comfyui():
        from .native.model import native_model_patcher

        return native_model_patcher(model.transformer, load_device, offload_device)
    from .part_holders import DeepGenDiTWeights  # torch: not at import time

    return mm.manage(DeepGenDiTWeights(model), load_device, offload_device)


def _patch_key(patcher, key: str) -> str:
    """Our LoRA keys name the DiT `transformer.*`; the native MODEL holds it as `diffusion_model.*`."""
    if key.startswith("transformer.") and hasattr(patcher.model, "diffusion_model"):
        return "diffusion_model." + key[len("transformer.") :]
    return key


def base_patchers(model) -> dict:
    """The model's patchers by part name, made on first use."""
    patchers = _BASE_PATCHERS.get(model)
    if patchers is None:
        from .part_holders import DeepGenSCB, DeepGenVAE, DeepGenVLM

        load, offload = cs.torch_device(), cs.offload_device()
        patchers = {
            "scb": mm.manage(DeepGenSCB(model), load, offload),
            "vlm": mm.manage(DeepGenVLM(model), load, offload),
            "dit": _make_dit_patcher(model, load, offload),
            "vae": mm.manage(DeepGenVAE(model), load, offload),
        }
        _BASE_PATCHERS[model] = patchers
    return patchers


def _all_off() -> Switches:
    """No speed switch on (imported when a handle is made: the package imports without torch)."""
    from deepgen.model.speed import Switches

    return Switches()


def _part_of(key: str) -> str:
    return "vlm" if key.startswith("lmm.") else "dit" if key.startswith("transformer.") else "scb"


@dataclass(eq=False)
class DeepGenModelHandle:
    model: object  # deepgen.model.deepgen.DeepGenModel
    name: str
    memory_mode: str = "offload_vlm_after_encode"
    dtype: object = None
    attention: str = "sdpa"
    sources: dict = field(default_factory=dict)  # resolved paths, for reports
    loras: tuple = ()  # ((adapter, strength), ...): deepgen.lora.LoraFile
    patchers: dict = field(default_factory=dict, repr=False)  # part -> patcher (clones when LoRAs are patched)
    speed: Switches = field(default_factory=_all_off)  # DiT speed switches for sampling (DeepGenSpeed)
    # the handle `with_speed` was called on: same weights and LoRAs, so the same conditioning (DeepGenEdit's cache)
    speed_base: DeepGenModelHandle | None = field(default=None, repr=False)
    pipe: object = field(init=False, repr=False)

    def __post_init__(self):
        from deepgen.pipeline import DeepGenPipeline

        if self.memory_mode not in MEMORY_MODES:
            raise InputError(f"memory_mode must be one of {', '.join(MEMORY_MODES)}, got {self.memory_mode!r}")
        self.pipe = DeepGenPipeline(self.model)
        self.dtype = self.dtype or self.model.dtype
        if not self.patchers:
            self.patchers = dict(base_patchers(self.model))

    @property
    def compute_device(self):
        return self.patchers["scb"].load_device

    @property
    def offload_device(self):
        return self.patchers["scb"].offload_device

    # ---- stages ---------------------------------------------------------------------------------------------
    @contextmanager
    def stage(self, name: str):
        """Load what stage `name` (encode | references | bridge | sample | decode | judge) needs; after it, unload
        what the memory mode says."""
        parts = STAGE_PARTS[name]
        wanted = PARTS if self.memory_mode == "keep_all_on_gpu" else parts
        mm.load_models([self.patchers[p] for p in wanted])
        try:
            yield self
        finally:
            done: tuple = ()
            if self.memory_mode == "sequential_offload":
                done = tuple(p for p in parts if p != "scb")
            elif self.memory_mode == "offload_vlm_after_encode" and "vlm" in parts:
                done = ("vlm",)
            if done:
                mm.unload_models([self.patchers[p] for p in done])
                cs.soft_empty_cache()

    def activate(self) -> None:
        """Load every weight set with this handle's LoRA patches (for code that runs the model directly)."""
        mm.load_models([self.patchers[p] for p in PARTS])

    def unload(self) -> None:
        """Unload every weight set of the model (base weights restored), whichever handle loaded it."""
        mm.unload_models([self.patchers[p] for p in PARTS])

    # ---- LoRA patches --------------------------------------------------------------------------------------
    def with_loras(self, loras) -> DeepGenModelHandle:
        """A new handle on the same weights with `loras` ((adapter, strength) pairs) patched after this one's.

        The patchers are clones (they share the weights); a strength change is a new set of patches, applied
        when the manager next loads the part, never a reload from disk."""
        from deepgen.lora import LoraError, check_mergeable, patch_factors

        loras = tuple(loras)
        for adapter, _ in loras:
            check_mergeable(self.model, adapter)  # all or nothing
        patchers = {part: p.clone() for part, p in self.patchers.items()}
        for adapter, strength in loras:
            by_part: dict[str, dict] = {}
            for key, value in patch_factors(adapter).items():
                by_part.setdefault(_part_of(key), {})[key] = value
            for part, entries in by_part.items():
                entries = {_patch_key(patchers[part], k): v for k, v in entries.items()}
                done = mm.lora_patch(patchers[part], entries, float(strength))
                if len(done) != len(entries):
                    missing = sorted(set(entries) - set(done))
                    raise LoraError(f"{adapter.path}: the model has no weight {missing[0]!r} to patch")
        return replace(self, loras=tuple(self.loras) + loras, patchers=patchers, speed_base=None)

    # ---- DiT speed switches ---------------------------------------------------------------------------------
    def with_speed(self, switches) -> DeepGenModelHandle:
        """A new handle on the same weights and patchers whose sampling uses `switches` (deepgen.model.speed)."""
        return replace(self, speed=switches, speed_base=self.speed_base or self)

    @contextmanager
    def sampling(self):
        """The sample stage, with this handle's compile and SDPA switches on the DiT for its duration only."""
        with self.stage("sample"), self.speed.applied(self.model.transformer):
            yield self

    @contextmanager
    def loras_merged(self):
        """The plain model with this handle's LoRAs merged into its weights (training needs real tensors, not
        patches); every patcher is unloaded first, and the base weights come back afterwards."""
        from deepgen.lora import LoraPatcher

        self.unload()
        merged = LoraPatcher()
        try:
            merged.apply(self.model, list(self.loras))
            yield self.model
        finally:
            merged.restore(self.model)
            self.model.to(self.offload_device)  # where the manager expects an unloaded model
            self.patchers["scb"].model.sync()  # training may have swapped the think-token parameter

    def __repr__(self) -> str:
        return f"DeepGenModelHandle({self.name!r}, {self.memory_mode}, dtype={self.dtype})"
