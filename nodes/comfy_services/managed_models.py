"""Model management: ComfyUI's model manager owns every DeepGen weight set.

Inside ComfyUI a weight set (one ``nn.Module``) is wrapped in a ``comfy.model_patcher.ModelPatcher`` and brought
onto the compute device with ``comfy.model_management.load_models_gpu``: ComfyUI counts its bytes, evicts it when
another model needs room, and frees it on "Unload models" (``POST /free``).  Outside ComfyUI (unit tests, CLI,
scripts) :class:`StandalonePatcher` does the same few things by moving the module, with the same LoRA math.

Calls dispatch on the patcher's type, so a test can use both kinds in one process.

    manage(module, load_device, offload_device) -> patcher
    load_models(patchers)      bring them to their load device (ComfyUI: evicts others as needed)
    unload_models(patchers)    back to their offload device, base weights restored
    lora_patch(patcher, {key: (up, down, alpha) | diff tensor}, strength) -> keys patched
    loaded_model_names()       class names of the loaded weight sets (ComfyUI's list or ours), for tests
"""

from __future__ import annotations

import uuid
import weakref

from .detection import comfy_module, in_comfyui

__all__ = [
    "StandalonePatcher",
    "manage",
    "load_models",
    "unload_models",
    "lora_patch",
    "loaded_model_names",
]

# weak: a patcher that nobody holds any more drops out, as in ComfyUI's current_loaded_models
_LOADED: list[weakref.ref] = []
# every load/unload of a StandalonePatcher, as (action, module class name): tests read it
EVENTS: list[tuple[str, str]] = []


class StandalonePatcher:
    """The part of ComfyUI's ModelPatcher that DeepGen uses, for running outside ComfyUI.

    Clones share the module and the backup of patched weights (as ComfyUI's do), so loading a clone with other
    patches first restores the base weights and never stacks one graph's LoRA on another's."""

    def __init__(self, model, load_device, offload_device, size: int = 0):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size
        self.patches: dict[str, list] = {}
        self.patches_uuid = uuid.uuid4()
        self.backup: dict = {}  # key -> the original parameter object; shared between clones
        self.parent = None
        if not hasattr(model, "current_weight_patches_uuid"):
            model.current_weight_patches_uuid = None  # which patcher's patches are on the shared weights
            model.model_loaded_weight_memory = 0

    def clone(self) -> StandalonePatcher:
        n = StandalonePatcher(self.model, self.load_device, self.offload_device, self.model_size())
        n.patches = {k: list(v) for k, v in self.patches.items()}
        n.patches_uuid = self.patches_uuid
        n.backup = self.backup
        n.parent = self
        return n

    def is_clone(self, other) -> bool:
        return getattr(other, "model", None) is self.model

    def model_size(self) -> int:
        if self.size <= 0:
            self.size = _module_bytes(self.model)
        return self.size

    def loaded_size(self) -> int:
        return self.model.model_loaded_weight_memory

    def add_patches(self, patches: dict, strength_patch: float = 1.0) -> list[str]:
        keys = dict(self.model.state_dict(keep_vars=True))
        done = []
        for key, value in patches.items():
            if key in keys:
                self.patches.setdefault(key, []).append((float(strength_patch), value))
                done.append(key)
        self.patches_uuid = uuid.uuid4()
        return done

    def partially_load(self, device) -> None:
        """Load (all of) the module; ComfyUI's name for it.  Patches go on as it arrives."""
        import torch

        if self.model.current_weight_patches_uuid != self.patches_uuid:
            self._restore()
        self.model.to(device)
        if self.model.current_weight_patches_uuid != self.patches_uuid:
            # as ComfyUI does: a patched weight is a new parameter (tied weights get their own update each),
            # the original object is kept and put back on unload
            with torch.no_grad():
                for key, entries in self.patches.items():
                    owner, attr = _owner(self.model, key)
                    weight = getattr(owner, attr)
                    self.backup.setdefault(key, weight)
                    merged = weight.detach().float()
                    for strength, value in entries:
                        merged = merged + strength * _patch_delta(value, merged)
                    setattr(owner, attr, torch.nn.Parameter(merged.to(weight.dtype), requires_grad=False))
            self.model.current_weight_patches_uuid = self.patches_uuid
        self.model.model_loaded_weight_memory = self.model_size()

    def detach(self) -> None:
        """Unload: base weights back, module to the offload device."""
        self._restore()
        self.model.to(self.offload_device)
        self.model.model_loaded_weight_memory = 0

    def _restore(self) -> None:
        for key, original in self.backup.items():
            owner, attr = _owner(self.model, key)
            setattr(owner, attr, original)
        self.backup.clear()
        self.model.current_weight_patches_uuid = None


def _owner(module, key: str):
    """(submodule, attribute name) of a state-dict key."""
    path, _, attr = key.rpartition(".")
    return (module.get_submodule(path) if path else module), attr


def _module_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _patch_delta(value, weight):
    """W' = W + strength·delta: delta of a (up, down, alpha) LoRA entry or a full-weight diff, as ComfyUI's LoRA
    adapter computes it (alpha / rank · up @ down)."""
    if isinstance(value, tuple):
        up, down, alpha = value
        rank = down.shape[0]
        scale = (alpha / rank) if alpha is not None else 1.0
        return (scale * (up.float() @ down.float())).to(weight.device).reshape(weight.shape)
    return value.float().to(weight.device).reshape(weight.shape)


def _is_comfy(patcher) -> bool:
    return not isinstance(patcher, StandalonePatcher)


def manage(module, load_device, offload_device):
    """One weight set -> a patcher that the model manager loads and evicts."""
    if in_comfyui():
        ModelPatcher = comfy_module("comfy.model_patcher").ModelPatcher
        return ModelPatcher(module, load_device=load_device, offload_device=offload_device)
    return StandalonePatcher(module, load_device, offload_device)


def load_models(patchers) -> None:
    """Bring `patchers` onto their load device.  ComfyUI first evicts other models as far as needed.

    Loaded whole (force_full_load): DeepGen's layers are plain torch modules, not ComfyUI's casting layers, so a
    part cannot run half on the device; --lowvram still evicts every other model first."""
    comfy = [p for p in patchers if _is_comfy(p)]
    if comfy:
        comfy_module("comfy.model_management").load_models_gpu(comfy, force_full_load=True)
    for p in patchers:
        if _is_comfy(p):
            continue
        _prune()
        for ref in list(_LOADED):  # another clone of this module is loaded: it goes first (its patches off)
            other = ref()
            if other is not None and other is not p and other.is_clone(p):
                _LOADED.remove(ref)
        if not any(ref() is p for ref in _LOADED):
            _LOADED.insert(0, weakref.ref(p))
        if p.model.current_weight_patches_uuid != p.patches_uuid or p.loaded_size() == 0:
            EVENTS.append(("load", type(p.model).__name__))
        p.partially_load(p.load_device)


def unload_models(patchers) -> None:
    """Move `patchers` to their offload device with their base weights restored (ComfyUI drops them from its list)."""
    for p in patchers:
        if _is_comfy(p):
            mm = comfy_module("comfy.model_management")
            for i in range(len(mm.current_loaded_models) - 1, -1, -1):
                loaded = mm.current_loaded_models[i]
                if loaded.model is not None and loaded.model.is_clone(p):
                    mm.current_loaded_models.pop(i).model_unload()
            continue
        _prune()
        was = [ref for ref in _LOADED if (ref() is not None and ref().is_clone(p))]
        for ref in was:
            _LOADED.remove(ref)
        if was or p.loaded_size():
            EVENTS.append(("unload", type(p.model).__name__))
        p.detach()


def lora_patch(patcher, patches: dict, strength: float) -> list[str]:
    """Add LoRA patches {state-dict key: (up, down, alpha) or a full-weight diff} at `strength`.

    In ComfyUI the entries are ``comfy.weight_adapter.LoRAAdapter``s and ``("diff", (tensor,))`` tuples, which its
    ``calculate_weight`` applies when the model loads: W + strength·alpha/rank·up@down and W + strength·diff."""
    if _is_comfy(patcher):
        LoRAAdapter = comfy_module("comfy.weight_adapter").LoRAAdapter
        entries = {}
        for key, value in patches.items():
            if isinstance(value, tuple):
                up, down, alpha = value
                entries[key] = LoRAAdapter(set(), (up, down, alpha, None, None, None))
            else:
                entries[key] = ("diff", (value,))
        return patcher.add_patches(entries, strength)
    return patcher.add_patches(patches, strength)


def loaded_model_names() -> list[str]:
    """Class names of the weight sets the manager holds loaded, most recent first."""
    if in_comfyui():
        mm = comfy_module("comfy.model_management")
        return [type(m.model.model).__name__ for m in mm.current_loaded_models if m.model is not None]
    _prune()
    return [type(p.model).__name__ for p in (ref() for ref in _LOADED) if p is not None]


def _prune() -> None:
    _LOADED[:] = [ref for ref in _LOADED if ref() is not None]
