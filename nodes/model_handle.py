"""The DEEPGEN_MODEL value: a loaded DeepGenModel, its pipeline, and where its parts live.

Memory modes (the loader's `memory_mode` widget):
- keep_all_on_gpu: every part stays on the compute device.
- offload_vlm_after_encode: the VLM (Qwen2.5-VL, the largest part) moves to the offload device once the
  prompt is encoded; the DiT and VAE stay.
- sequential_offload: only the part in use (VLM, DiT or VAE) is on the compute device.
The think tokens, projectors and connector (SCB) always stay on the compute device: the model's own
device is theirs. Outside ComfyUI on a CPU-only machine every move is a no-op.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace

from deepgen.errors import InputError

from . import comfy_services as cs

MEMORY_MODES = ["keep_all_on_gpu", "offload_vlm_after_encode", "sequential_offload"]
# parts of DeepGenModel that may leave the compute device, and the stage that needs each
_PARTS = ("lmm", "transformer", "vae")
_STAGE_PARTS = {"encode": ("lmm",), "references": ("vae",), "sample": ("transformer",), "decode": ("vae",)}


# LoRA patches (nodes/training.py): handles on one model take turns; the model carries the patches of the handle
# that used it last. model -> (key, patcher, adapters)
_ACTIVE_PATCHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _module_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + sum(
        b.numel() * b.element_size() for b in module.buffers()
    )


@dataclass(eq=False)
class DeepGenModelHandle:
    model: object  # deepgen.model.deepgen.DeepGenModel
    name: str
    memory_mode: str = "offload_vlm_after_encode"
    dtype: object = None
    attention: str = "sdpa"
    sources: dict = field(default_factory=dict)  # resolved paths, for reports
    loras: tuple = ()  # ((adapter, strength), ...): deepgen.lora.LoraFile
    pipe: object = field(init=False, repr=False)
    _where: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self):
        from deepgen.pipeline import DeepGenPipeline

        if self.memory_mode not in MEMORY_MODES:
            raise InputError(f"memory_mode must be one of {', '.join(MEMORY_MODES)}, got {self.memory_mode!r}")
        self.pipe = DeepGenPipeline(self.model)
        self.dtype = self.dtype or self.model.dtype

    # ---- devices ------------------------------------------------------------------------------------------
    @property
    def compute_device(self):
        return cs.torch_device()

    @property
    def offload_device(self):
        return cs.offload_device()

    def _move(self, part, device) -> None:
        """Move a module or a bare parameter (the think tokens); a seam for tests that record moves."""
        import torch

        if isinstance(part, torch.nn.Parameter):
            part.data = part.data.to(device)
        else:
            part.to(device)

    def _place(self, part: str, device) -> None:
        import torch

        device = torch.device(device)
        if self._where.get(part) == device:
            return
        module = getattr(self.model, part)
        if device != torch.device("cpu") and device == torch.device(self.compute_device):
            cs.free_memory(_module_bytes(module), device)  # ComfyUI evicts other models only as far as needed
        self._move(module, device)
        self._where[part] = device

    def place(self) -> DeepGenModelHandle:
        """Initial placement after loading: SCB on the compute device; the rest as the memory mode says."""
        compute = self.compute_device
        for name in ("meta_queries", "projector_1", "projector_2", "projector_3", "connector"):
            self._move(getattr(self.model, name), compute)
        keep = self.memory_mode == "keep_all_on_gpu"
        for part in _PARTS:
            resident = keep or (self.memory_mode == "offload_vlm_after_encode" and part != "lmm")
            self._place(part, compute if resident else self.offload_device)
        return self

    # ---- LoRA patches --------------------------------------------------------------------------------------
    def with_loras(self, loras) -> "DeepGenModelHandle":
        """A new handle on the same model with `loras` ((adapter, strength) pairs) added after this one's."""
        new = replace(self, loras=tuple(self.loras) + tuple(loras))
        new._where = self._where  # one model, one physical placement
        return new

    def activate(self) -> None:
        """Put exactly this handle's LoRAs on the shared model weights (the previous handle's are undone first)."""
        key = tuple((id(adapter), float(strength)) for adapter, strength in self.loras)
        current = _ACTIVE_PATCHES.get(self.model)
        if (current[0] if current else ()) == key:
            return
        if current:
            current[1].restore(self.model)
            del _ACTIVE_PATCHES[self.model]
        if self.loras:
            from deepgen.lora import LoraPatcher

            patcher = LoraPatcher()
            try:
                patcher.apply(self.model, list(self.loras))
            except BaseException:
                patcher.restore(self.model)  # never leave the shared base half patched
                raise
            _ACTIVE_PATCHES[self.model] = (key, patcher, self.loras)

    def prepare(self, stage: str) -> None:
        """Bring the parts `stage` needs (encode | references | sample | decode) to the compute device."""
        self.activate()
        needed = _STAGE_PARTS[stage]
        if self.memory_mode == "sequential_offload":
            for part in _PARTS:
                if part not in needed:
                    self._place(part, self.offload_device)
        for part in needed:
            self._place(part, self.compute_device)

    def finish(self, stage: str) -> None:
        """After `stage`: in the offload modes the VLM leaves the compute device once encoding is done."""
        if stage == "encode" and self.memory_mode != "keep_all_on_gpu":
            self._place("lmm", self.offload_device)
            cs.soft_empty_cache()

    def device_of(self, part: str):
        return self._where.get(part)

    def __repr__(self) -> str:
        return f"DeepGenModelHandle({self.name!r}, {self.memory_mode}, dtype={self.dtype})"
