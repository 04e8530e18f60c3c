"""What a training run hands over: a LoRA file for ComfyUI, and a full checkpoint in the official layout.

LoRA file (``export_lora``)
    The ``deepgen.lora`` format (``lmm.*`` / ``transformer.*`` ``lora_A``/``lora_B``/``lora_embedding_*`` +
    ``.alpha``, metadata ``format = deepgen-lora``), written by ``deepgen.lora.save_lora`` when only LoRAs
    trained.  When the think tokens, projectors or connector (SCB) trained too, their change is stored as
    full-weight differences ``<parameter name>.diff`` (e.g. ``connector.layers.0.mlp.fc1.weight.diff``,
    ``meta_queries.diff``) in the same file, so the file still holds the whole change of the run.
    ``deepgen.lora.load_lora`` reads both kinds and ``deepgen.lora.LoraPatcher`` applies them with a strength
    (W + s·ΔW) and restores the exact base weights; the DeepGenLoRALoader node uses them.

Official-layout checkpoint (``export_official_checkpoint``)
    One safetensors with the keys of the official ``model.pt``: ``meta_queries``, ``projector_{1,2,3}.*``,
    ``connector.*``, ``transformer.*`` (a DiT LoRA is merged into these weights) and the VLM LoRA as PEFT keys
    ``lmm.model.language_model.….lora_A.default.weight`` / ``….embed_tokens.lora_embedding_A.default``.
    ``deepgen.loading.load_model(path, vlm, diffusion)`` reads it back (with ``allow_pretrain_checkpoint=True``
    when no VLM LoRA trained, as after stage 1).  The loader assumes alpha = 2·rank (the release's 64/128), so
    the B matrices are rescaled to that convention: any trained alpha loads exactly, with no extra argument.
    When the run started from an official checkpoint whose VLM LoRA was merged at load time, that LoRA and the
    new one are concatenated (rank r_release + r_new), so the file applies to the plain Qwen2.5-VL folder like
    the release does.  From a diffusers or converted release (whose VLM is already merged) the LoRA is relative
    to that release's VLM: load with ``vlm=<release>/vlm``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..lora import SCB_PREFIXES, LoraError, save_lora

if TYPE_CHECKING:
    from ..model.deepgen import DeepGenModel

__all__ = [
    "export_lora",
    "export_official_checkpoint",
    "official_state_dict",
    "merged_dit_state_dict",
    "vlm_lora_pairs",
    "combine_lora_pairs",
]


def _peft_layers(module: nn.Module):
    from peft.tuners.lora import LoraLayer

    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, LoraLayer)]


# ---- the LoRA file -----------------------------------------------------------------------------------------


def scb_diffs(model: nn.Module, initial: Mapping[str, Tensor], dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """``{name: trained − initial}`` for the SCB parameters in ``initial`` (stored as ``<name>.diff``)."""
    params = dict(model.named_parameters())
    return {
        name: (params[name].detach().float().cpu() - start.float()).to(dtype or torch.float32)
        for name, start in initial.items()
    }


def export_lora(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    metadata: dict | None = None,
    scb_initial: Mapping[str, Tensor] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the model's LoRA adapters (and, with ``scb_initial``, the SCB changes as ``.diff``) to one file."""
    diffs = scb_diffs(model, scb_initial, dtype) if scb_initial else None
    return save_lora(model, path, metadata, diffs=diffs)


# ---- the official-layout checkpoint ------------------------------------------------------------------------


def merged_dit_state_dict(transformer: nn.Module) -> dict[str, Tensor]:
    """The DiT's state dict with any PEFT LoRA merged into its base weights (W + alpha/r·B·A), plain keys."""
    merged = {}
    for name, layer in _peft_layers(transformer):
        if "default" not in getattr(layer, "lora_A", {}):
            continue
        base = layer.get_base_layer()
        a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
        merged[f"{name}.weight"] = (base.weight.float() + layer.scaling["default"] * (b @ a)).to(base.weight.dtype)
    out = {}
    for key, value in transformer.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        out[key] = merged.get(key, value)
    return out


def vlm_lora_pairs(lmm: nn.Module) -> dict[str, dict]:
    """The VLM's PEFT LoRA: ``{module path: {"A", "B", "scale", "embedding"}}`` (scale = alpha / r)."""
    pairs = {}
    for name, layer in _peft_layers(lmm):
        if "default" in getattr(layer, "lora_A", {}):
            a, b, emb = layer.lora_A["default"].weight, layer.lora_B["default"].weight, False
        elif "default" in getattr(layer, "lora_embedding_A", {}):
            a, b, emb = layer.lora_embedding_A["default"], layer.lora_embedding_B["default"], True
        else:
            continue
        pairs[name] = {"A": a.detach(), "B": b.detach(), "scale": float(layer.scaling["default"]), "embedding": emb}
    return pairs


def combine_lora_pairs(*sets: Mapping[str, dict]) -> dict[str, dict]:
    """Several LoRAs on (subsets of) the same modules → one LoRA of rank Σr and scale 2 (the loader's alpha = 2r).

    Each entry is ``{"A": (r, in), "B": (out, r), "scale": s, "embedding": bool}``; the result satisfies
    2·B·A = Σ s_i·B_i·A_i for every module; modules missing from a set get zero blocks, so every module has the
    same rank (the loader needs one rank).
    """
    sets = tuple(s for s in sets if s)
    if not sets:
        return {}
    rank_sets = [{int(p["A"].shape[0]) for p in s.values()} for s in sets]
    for rs in rank_sets:
        if len(rs) != 1:
            raise LoraError(f"a LoRA with mixed ranks {sorted(rs)} cannot be exported in the official layout")
    ranks = [r.pop() for r in rank_sets]
    modules = sorted(set().union(*[s.keys() for s in sets]))
    out = {}
    for m in modules:
        ref = next(s[m] for s in sets if m in s)
        d_in, d_out = ref["A"].shape[1], ref["B"].shape[0]
        a_parts, b_parts = [], []
        for s, r in zip(sets, ranks):
            if m in s:
                a_parts.append(s[m]["A"].float().cpu())
                b_parts.append(s[m]["B"].float().cpu() * (s[m]["scale"] / 2.0))
            else:
                a_parts.append(torch.zeros(r, d_in))
                b_parts.append(torch.zeros(d_out, r))
        out[m] = {"A": torch.cat(a_parts, 0), "B": torch.cat(b_parts, 1), "scale": 2.0, "embedding": ref["embedding"]}
    return out


def _release_lora_pairs(source, lmm: nn.Module) -> dict[str, dict]:
    """The VLM LoRA of the official checkpoint the run started from (merged at load), scale 2 (loader default)."""
    if source is None or getattr(source, "layout", None) != "official" or not source.checkpoint:
        return {}
    from ..loading.keys import group_keys
    from ..loading.lora import collect_lora
    from ..loading.state_dict_io import read_state_dict

    state, _ = read_state_dict(source.checkpoint)
    groups = group_keys(state)
    if not groups["lora"]:
        return {}
    pairs = collect_lora({k: state[k] for k in groups["lora"]})
    out = {}
    for module, halves in pairs.items():
        layer = lmm.get_submodule(module)
        # a PEFT layer's method, found by hasattr (torch types unknown module attributes as Tensor | Module)
        layer = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer  # type: ignore[operator]
        out[module] = {"A": halves["A"], "B": halves["B"], "scale": 2.0, "embedding": isinstance(layer, nn.Embedding)}
    return out


def official_state_dict(model: DeepGenModel, *, source=None, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """The official ``model.pt`` tensors of a (trained) DeepGenModel; see the module doc."""
    state: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith(SCB_PREFIXES):
            state[key] = value
    for key, value in merged_dit_state_dict(model.transformer).items():
        state["transformer." + key] = value
    combined = combine_lora_pairs(_release_lora_pairs(source, model.lmm), vlm_lora_pairs(model.lmm))
    for module, p in combined.items():
        if p["embedding"]:
            state[f"lmm.{module}.lora_embedding_A.default"] = p["A"]
            state[f"lmm.{module}.lora_embedding_B.default"] = p["B"]
        else:
            state[f"lmm.{module}.lora_A.default.weight"] = p["A"]
            state[f"lmm.{module}.lora_B.default.weight"] = p["B"]
    out = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous()
    return out


def export_official_checkpoint(
    model: DeepGenModel,
    path: str | os.PathLike,
    *,
    source=None,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write :func:`official_state_dict` to ``path`` (safetensors, atomically); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = official_state_dict(model, source=source, dtype=dtype)
    seen: dict[int, str] = {}
    for key, value in list(state.items()):  # safetensors refuses shared storage (tied tensors)
        ptr = value.untyped_storage().data_ptr()
        if ptr in seen:
            state[key] = value.clone()
        seen[ptr] = key
    meta = {"format": "deepgen-official", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    partial = path.with_name(path.name + ".partial")
    save_file(state, str(partial), metadata=meta)
    os.replace(partial, path)
    return path
