"""DeepGen LoRA adapters: add them for training (PEFT), save them to one file, apply them with a strength.

File format (safetensors, metadata format "deepgen-lora"): PEFT names without the adapter name, under the
part they adapt, plus a scalar `.alpha` per module:
  transformer.<module>.lora_A.weight (r, in) / .lora_B.weight (out, r) / .alpha   -- SD3 diffusers keys
  lmm.<module>.lora_A.weight / .lora_B.weight / .alpha                           -- Linear layers of the VLM
  lmm.<module>.lora_embedding_A (r, V) / .lora_embedding_B (d, r) / .alpha       -- the VLM's embedding
  <scb parameter>.diff                                                          -- full-weight changes of the
                                                                                   think tokens/projectors/connector
The LoRA scale alpha/r is folded into B when saving and `.alpha` is written as r, so every loader gets the same
update whether it reads `.alpha` (ComfyUI, kohya: alpha/r = 1) or ignores it (diffusers' `load_lora_adapter`,
which would otherwise apply a LoRA trained at alpha 32 / rank 4 eight times too weakly). The trained alpha and
rank are kept in the metadata. Files from other tools load too: PEFT names with an adapter name
(`lora_A.default.weight`), and kohya/OneTrainer names (`lora_unet_<module_with_underscores>` as kohya names the
diffusers SD3 transformer's modules, `lora_transformer_<...>` as OneTrainer does; `.lora_down.weight` /
`.lora_up.weight` / `.alpha`), resolved against the model's module names when applied.

Applying merges W + strength·(alpha/r)·B·A into the weights (the embedding takes (B·A)ᵀ) and W + strength·ΔW for
`.diff` tensors, keeping a CPU backup of every touched weight so the base can be restored exactly.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import CheckpointError

LORA_FORMAT = "deepgen-lora"
PARTS = ("lmm", "transformer")
DIFF_SUFFIX = ".diff"
SCB_PREFIXES = ("meta_queries", "projector_1.", "projector_2.", "projector_3.", "connector.")
_LORA_KEY = re.compile(
    r"^((?:lmm|transformer)\..+)\.(lora_A(?:\.default)?\.weight|lora_B(?:\.default)?\.weight|"
    r"lora_embedding_A(?:\.default)?|lora_embedding_B(?:\.default)?|alpha)$"
)
# kohya / OneTrainer: the module path with "." -> "_", under lora_unet_ (kohya) or lora_transformer_ (OneTrainer)
# for the DiT, lora_lmm_ for the VLM
_KOHYA_KEY = re.compile(r"^lora_(unet|transformer|lmm)_(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_KOHYA_PARTS = {"unet": "transformer", "transformer": "transformer", "lmm": "lmm"}
_KOHYA_PART = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight", "alpha": "alpha"}
FLAT_PREFIX = "flat:"  # a module named with underscores (kohya), resolved against the model when applied
# DiT targets: attention projections of every joint block (image and context streams, and attn2).
DIT_TARGET_PRESETS = {
    "attn": r"transformer_blocks\.\d+\.attn2?\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)$",
    "attn_ff": r"transformer_blocks\.\d+\.(attn2?\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj"
    r"|to_add_out)|ff(_context)?\.net\.(0\.proj|2))$",
}


class LoraError(CheckpointError):
    """A LoRA file or setting that cannot be used."""


# VLM targets: "auto" is the official `find_target_linear_names` (every Linear and Embedding); "linear" leaves
# the token embedding, and the LM head tied to it, alone (the demo model: its embedding is seeded, not stored).
VLM_TARGET_PRESETS = {"auto": (nn.Linear, nn.Embedding), "linear": (nn.Linear,)}


def vlm_lora_targets(lmm: nn.Module, targets: str | list[str] = "auto") -> list[str]:
    """The VLM module names a LoRA adapts: a preset name ("auto", "linear"), or a list of module names."""
    if isinstance(targets, list):
        if len(targets) == 1 and targets[0] in VLM_TARGET_PRESETS:
            return vlm_lora_targets(lmm, targets[0])
        return targets
    if targets not in VLM_TARGET_PRESETS:
        raise LoraError(f"Unknown VLM LoRA targets {targets!r}: use one of {sorted(VLM_TARGET_PRESETS)} or a list")
    kinds = VLM_TARGET_PRESETS[targets]
    names = [name for name, module in lmm.named_modules() if isinstance(module, kinds) and name]
    if nn.Embedding not in kinds:  # a Linear tied to an embedding (the LM head) is that embedding: leave it too
        embeddings = {id(m.weight) for m in lmm.modules() if isinstance(m, nn.Embedding)}
        names = [n for n in names if id(lmm.get_submodule(n).weight) not in embeddings]
    return names


def dit_lora_targets(transformer: nn.Module, targets: str | list[str] = "attn") -> list[str]:
    """The DiT module names a LoRA adapts: a preset name, or a list of module names in which preset names expand."""
    if isinstance(targets, list):
        if not any(t in DIT_TARGET_PRESETS for t in targets):
            return targets
        names = [n for t in targets for n in (dit_lora_targets(transformer, t) if t in DIT_TARGET_PRESETS else [t])]
        return list(dict.fromkeys(names))
    if targets not in DIT_TARGET_PRESETS:
        raise LoraError(f"Unknown DiT LoRA targets {targets!r}: use one of {sorted(DIT_TARGET_PRESETS)} or a list")
    pattern = re.compile(DIT_TARGET_PRESETS[targets])
    return [
        name for name, module in transformer.named_modules() if isinstance(module, nn.Linear) and pattern.search(name)
    ]


def add_lora(
    module: nn.Module,
    targets: list[str],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    init: str | bool = "gaussian",
    adapter_name: str = "default",
) -> nn.Module:
    """Inject a trainable PEFT LoRA into `module` (in place) on exactly `targets`."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise LoraError(f"LoRA rank must be at least 1, got {rank}")
    if not targets:
        raise LoraError("No LoRA target modules")
    # peft annotates lora_alpha as int (any number works: scale = alpha / r) and init_lora_weights as a Literal
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]
        lora_dropout=dropout,
        target_modules=targets,
        init_lora_weights=init,  # type: ignore[arg-type]
    )
    inject_adapter_in_model(config, module, adapter_name=adapter_name)
    return module


def _peft_modules(module: nn.Module):
    """(name, peft layer) for every LoRA-wrapped layer of `module`."""
    from peft.tuners.lora import LoraLayer

    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, LoraLayer)]


def lora_tensors(model: nn.Module, part: str, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter of `model.<part>` in file layout: the scale alpha/r folded into B, `.alpha` = r."""
    tensors = {}
    for name, layer in _peft_modules(getattr(model, part)):
        if adapter_name in getattr(layer, "lora_A", {}):
            keys = (f"{part}.{name}.lora_A.weight", f"{part}.{name}.lora_B.weight")
            a, b = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
        elif adapter_name in getattr(layer, "lora_embedding_A", {}):
            keys = (f"{part}.{name}.lora_embedding_A", f"{part}.{name}.lora_embedding_B")
            a, b = layer.lora_embedding_A[adapter_name], layer.lora_embedding_B[adapter_name]
        else:
            continue
        rank = a.shape[0]
        tensors[keys[0]] = a.detach()
        tensors[keys[1]] = b.detach() * (float(layer.lora_alpha[adapter_name]) / rank)
        tensors[f"{part}.{name}.alpha"] = torch.tensor(float(rank))
    return tensors


def adapter_settings(model: nn.Module, adapter_name: str = "default") -> dict[str, dict]:
    """{part: {"rank": r, "alpha": alpha}} of the adapters a model carries, for a LoRA file's metadata."""
    settings = {}
    for part in PARTS:
        for _, layer in _peft_modules(getattr(model, part)):
            if adapter_name in getattr(layer, "r", {}):
                settings[part] = {"rank": int(layer.r[adapter_name]), "alpha": float(layer.lora_alpha[adapter_name])}
                break
    return settings


def save_lora(
    model: nn.Module,
    path: str | os.PathLike,
    metadata: dict | None = None,
    diffs: dict[str, torch.Tensor] | None = None,
    adapter_name: str = "default",
) -> Path:
    """Write the model's LoRA adapters (VLM and/or DiT), plus optional SCB `diffs` ({parameter name: trained −
    initial}), to one safetensors file, atomically."""
    tensors = {}
    for part in PARTS:
        tensors.update(lora_tensors(model, part, adapter_name))
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}
    for name, diff in (diffs or {}).items():
        if not name.startswith(SCB_PREFIXES):
            raise LoraError(f"Only think-token/projector/connector changes are stored as .diff, not {name!r}")
        tensors[name + DIFF_SUFFIX] = diff.detach().float().contiguous().cpu()
    if not tensors:
        raise LoraError("The model carries no LoRA adapter to save")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": LORA_FORMAT,
        "format_version": "2",
        "deepgen": json.dumps(metadata or {}, default=str),
        "trained_adapters": json.dumps(adapter_settings(model, adapter_name)),
    }
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=meta)
    os.replace(partial, path)
    return path


@dataclass
class LoraModule:
    a: torch.Tensor
    b: torch.Tensor
    alpha: float
    embedding: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / self.a.shape[0]

    @property
    def delta_shape(self) -> tuple[int, int]:
        return (self.a.shape[1], self.b.shape[0]) if self.embedding else (self.b.shape[0], self.a.shape[1])

    def delta(self) -> torch.Tensor:
        product = self.b.float() @ self.a.float()
        return product.T if self.embedding else product


@dataclass
class LoraFile:
    path: str
    modules: dict[str, LoraModule]  # "lmm.<module>" / "transformer.<module>"
    metadata: dict = field(default_factory=dict)
    diffs: dict[str, torch.Tensor] = field(default_factory=dict)  # SCB parameter name -> trained − initial

    @property
    def parts(self) -> list[str]:
        """Which parts the file changes: lmm, transformer, scb."""
        names = {name.removeprefix(FLAT_PREFIX).split(".", 1)[0] for name in self.modules}
        return sorted(names) + (["scb"] if self.diffs else [])

    def bind(self, model: nn.Module) -> LoraFile:
        """Give kohya-style (underscore) module names their dotted names in `model`; returns self."""
        flat = [name for name in self.modules if name.startswith(FLAT_PREFIX)]
        if flat:
            dotted = {
                f"{part}.{name}".replace(".", "_"): f"{part}.{name}"
                for part in PARTS
                for name, _ in getattr(model, part).named_modules()
                if name
            }
            for name in flat:
                key = name[len(FLAT_PREFIX) :]
                if key.replace(".", "_") not in dotted:
                    raise LoraError(
                        f"{self.path}: the model has no module for the LoRA key {key!r}; is this LoRA for DeepGen 1.0?"
                    )
                self.modules[dotted[key.replace(".", "_")]] = self.modules.pop(name)
        return self

    def check(self, model: nn.Module) -> None:
        """Raise LoraError unless every module and parameter the file changes exists in `model` with its shape."""
        self.bind(model)
        for name, module in self.modules.items():
            want = tuple(_weight(model, name, self.path).shape)
            got = tuple(module.delta_shape)
            if got != want:
                raise LoraError(
                    f"{self.path}: {name} gives a {got} update for a {want} weight; the LoRA was trained "
                    "for another model size"
                )
        params = dict(model.named_parameters())
        for name, diff in self.diffs.items():
            if name not in params or tuple(params[name].shape) != tuple(diff.shape):
                raise LoraError(f"{self.path}: {name} does not fit this model; the LoRA was trained on another model")


def _module_and_kind(key: str) -> tuple[str | None, str]:
    """("transformer.<module>" or "flat:transformer.<module_with_underscores>", tensor kind) of a file key."""
    match = _LORA_KEY.match(key)
    if match:
        return match.group(1), match.group(2).replace(".default", "")
    match = _KOHYA_KEY.match(key)
    if match:
        return f"{FLAT_PREFIX}{_KOHYA_PARTS[match.group(1)]}.{match.group(2)}", _KOHYA_PART[match.group(3)]
    return None, ""


def load_lora(path: str | os.PathLike) -> LoraFile:
    path = Path(path)
    if not path.is_file():
        raise LoraError(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise LoraError(f"{path} is not a readable safetensors LoRA file ({exc})") from exc
    groups: dict[str, dict[str, torch.Tensor]] = {}
    diffs = {}
    for key, value in tensors.items():
        if key.endswith(DIFF_SUFFIX) and key.startswith(SCB_PREFIXES):
            diffs[key[: -len(DIFF_SUFFIX)]] = value
            continue
        name, kind = _module_and_kind(key)
        if name is None:
            raise LoraError(
                f"{path}: unrecognised LoRA key {key!r} (expected lmm.* or transformer.* LoRA tensors, "
                "kohya lora_unet_*/lora_transformer_* names, or think-token/connector .diff tensors): is this a "
                "DeepGen LoRA?"
            )
        groups.setdefault(name, {})[kind] = value
    modules = {}
    for name, parts in groups.items():
        embedding = "lora_embedding_A" in parts
        a = parts.get("lora_embedding_A" if embedding else "lora_A.weight")
        b = parts.get("lora_embedding_B" if embedding else "lora_B.weight")
        if a is None or b is None:
            raise LoraError(f"{path}: {name} has only one of its two LoRA matrices")
        alpha = float(parts["alpha"]) if "alpha" in parts else float(a.shape[0])
        modules[name] = LoraModule(a, b, alpha, embedding)
    if not modules and not diffs:
        raise LoraError(f"{path} holds no LoRA tensors")
    try:
        metadata = json.loads(meta.get("deepgen", "{}"))
    except ValueError:
        metadata = {}
    return LoraFile(str(path), modules, metadata, diffs)


def check_mergeable(model: nn.Module, lora: LoraFile) -> None:
    """Raise LoraError unless `lora` fits `model` and every weight it changes can take a merged update (not fp8)."""
    lora.check(model)
    stored_fp8 = sorted(name for name in lora.modules if _weight(model, name, lora.path).element_size() == 1)
    if stored_fp8:
        raise LoraError(
            f"{lora.path}: the model's weights are stored in fp8 ({stored_fp8[0]}, …), which a LoRA "
            "cannot be merged into; load the model with the default weight dtype to use LoRAs"
        )


def patch_factors(lora: LoraFile) -> dict[str, object]:
    """{model parameter name: (up, down, alpha) or a full-weight diff}: the file as weight patches, in the layout
    of ComfyUI's LoRA adapter (W + strength·alpha/rank·up@down).  The embedding's update (B·A)ᵀ = Aᵀ·Bᵀ."""
    out: dict[str, object] = {}
    for name, module in lora.modules.items():
        up, down = (module.a.T, module.b.T) if module.embedding else (module.b, module.a)
        out[name + ".weight"] = (up.float().contiguous(), down.float().contiguous(), float(module.alpha))
    for name, diff in lora.diffs.items():
        out[name] = diff.float()
    return out


class LoraPatcher:
    """Merges LoRA files into a model with strengths, and restores the exact base weights afterwards.

    Backups of the touched weights live on the CPU, so patching a model on the GPU costs no GPU memory."""

    def __init__(self):
        self._backup: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def apply(self, model: nn.Module, loras: list[tuple[LoraFile, float]]) -> None:
        self.restore(model)
        for lora, _ in loras:
            check_mergeable(model, lora)  # all or nothing: never leave the model half patched
        params = dict(model.named_parameters())
        for lora, strength in loras:
            for name, module in lora.modules.items():
                weight = _weight(model, name, lora.path)
                self._keep(name + ".weight", weight)
                weight.add_((strength * module.scale * module.delta()).to(device=weight.device, dtype=weight.dtype))
            for name, diff in lora.diffs.items():
                self._keep(name, params[name])
                params[name].add_((strength * diff.float()).to(device=params[name].device, dtype=params[name].dtype))

    def _keep(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self._backup:
            self._backup[name] = tensor.detach().to("cpu", copy=True)

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        for name, original in self._backup.items():
            module_name, _, attr = name.rpartition(".")
            owner = _resolve(model, module_name, "backup") if module_name else model
            getattr(owner, attr).copy_(original)
        self._backup.clear()


def _resolve(model: nn.Module, name: str, source: str) -> nn.Module:
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        raise LoraError(f"{source}: the model has no module {name!r}; is this LoRA for DeepGen 1.0?") from None
    if hasattr(layer, "base_layer"):  # a live PEFT layer: patch its base weight
        layer = cast(nn.Module, layer.base_layer)
    return layer


def _weight(model: nn.Module, name: str, source: str) -> torch.Tensor:
    """The weight of the (base) layer ``name``; torch types a module's attributes as ``Tensor | Module``."""
    return cast(torch.Tensor, _resolve(model, name, source).weight)
