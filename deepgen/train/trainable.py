"""What trains: :class:`TrainableSpec` (think tokens, projectors, connector, DiT ``full|lora|frozen``, VLM LoRA) and
:func:`setup_trainable`, which freezes everything else, injects the PEFT LoRAs and keeps fp32 master copies of what
trains; activation checkpointing (:func:`enable_gradient_checkpointing`); and :func:`preserve_model`, which gives a
model other code holds (a ComfyUI cached model) back unchanged after training on it."""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import TrainingError
from .draws import seeded_step

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..model.deepgen import DeepGenModel

__all__ = [
    "SCB_PARTS",
    "TrainableSpec",
    "setup_trainable",
    "trainable_named_parameters",
    "count_parameters",
    "enable_gradient_checkpointing",
    "remove_lora_adapters",
    "preserve_model",
]


SCB_PARTS = ("meta_queries", "projector_1", "projector_2", "projector_3", "connector")


@dataclass
class TrainableSpec:
    """Which parts of a DeepGenModel train.  ``from_config`` reads a ``TrainConfig``'s ``train_*`` keys."""

    meta_queries: bool = True
    projectors: bool = True
    connector: bool = True
    dit: str = "frozen"  # full | lora | frozen
    dit_lora_rank: int = 32
    dit_lora_alpha: float = 32.0
    dit_lora_targets: list[str] | str = "attn"  # preset name ("attn", "attn_ff") or module-name suffixes
    vlm_lora: bool = False
    vlm_lora_rank: int = 64
    vlm_lora_alpha: float = 128.0
    vlm_lora_dropout: float = 0.05
    vlm_lora_targets: list[str] | str = "auto"  # preset ("auto": every Linear and Embedding, official; "linear")
    #                                              or module names

    @classmethod
    def from_config(cls, cfg) -> TrainableSpec:
        targets: list[str] | str = list(cfg.dit_lora_targets)
        from ..lora import DIT_TARGET_PRESETS

        if len(targets) == 1 and targets[0] in DIT_TARGET_PRESETS:
            targets = targets[0]
        return cls(
            meta_queries=cfg.train_meta_queries,
            projectors=cfg.train_projectors,
            connector=cfg.train_connector,
            dit=cfg.train_dit,
            dit_lora_rank=cfg.dit_lora_rank,
            dit_lora_alpha=cfg.dit_lora_alpha,
            dit_lora_targets=targets,
            vlm_lora=cfg.vlm_lora,
            vlm_lora_rank=cfg.vlm_lora_rank,
            vlm_lora_alpha=cfg.vlm_lora_alpha,
            vlm_lora_dropout=cfg.vlm_lora_dropout,
            vlm_lora_targets=list(cfg.vlm_lora_targets),
        )

    def problems(self) -> list[str]:
        p = []
        if self.dit not in ("full", "lora", "frozen"):
            p.append(f"dit must be full, lora or frozen (got {self.dit!r})")
        if self.dit == "lora" and self.dit_lora_rank < 1:
            p.append(f"DiT LoRA rank must be ≥ 1 (got {self.dit_lora_rank})")
        if self.vlm_lora and self.vlm_lora_rank < 1:
            p.append(f"VLM LoRA rank must be ≥ 1 (got {self.vlm_lora_rank})")
        if not (self.meta_queries or self.projectors or self.connector or self.dit != "frozen" or self.vlm_lora):
            p.append("nothing to train")
        return p

    @property
    def has_lora(self) -> bool:
        return self.vlm_lora or self.dit == "lora"

    @property
    def trains_scb(self) -> bool:
        return self.meta_queries or self.projectors or self.connector

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _has_peft(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in module.modules())


def setup_trainable(
    model: DeepGenModel, spec: TrainableSpec, *, master_dtype: torch.dtype = torch.float32, seed: int = 0
) -> OrderedDict[str, nn.Parameter]:
    """Freeze everything, add the LoRAs ``spec`` asks for, unfreeze what trains; returns ``{name: parameter}``.

    Trainable parameters are cast to ``master_dtype`` (fp32 masters; the frozen weights keep their dtype).
    LoRAs are PEFT adapters named ``default`` with Gaussian init (B = 0, so the model is unchanged at step 0);
    the VLM LoRA covers every Linear and Embedding of the VLM unless ``vlm_lora_targets`` says otherwise (the
    official 'auto'; the vision tower and lm_head never receive gradients, as officially).  The random A
    matrices are drawn from ``seed`` (the caller's RNG is left alone), so runs with one seed start alike.  Raises
    :class:`TrainingError` if the model already carries PEFT layers where a new LoRA would go.
    """
    from ..lora import add_lora, dit_lora_targets, vlm_lora_targets

    problems = spec.problems()
    if problems:
        raise TrainingError("Invalid trainable-parameter selection: " + "; ".join(problems))
    model.requires_grad_(False)
    if spec.vlm_lora:
        if _has_peft(model.lmm):
            raise TrainingError("the VLM already carries a PEFT LoRA; load the model with its LoRA merged")
        targets = vlm_lora_targets(model.lmm, spec.vlm_lora_targets)
        with warnings.catch_warnings(), seeded_step(seed, "lora-init", "lmm"):
            warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")  # lm_head is tied, as officially
            add_lora(
                model.lmm, targets, spec.vlm_lora_rank, spec.vlm_lora_alpha, spec.vlm_lora_dropout, init="gaussian"
            )
    if spec.dit == "lora":
        if _has_peft(model.transformer):
            raise TrainingError("the DiT already carries a PEFT LoRA")
        targets = dit_lora_targets(model.transformer, spec.dit_lora_targets)
        with seeded_step(seed, "lora-init", "transformer"):
            add_lora(model.transformer, targets, spec.dit_lora_rank, spec.dit_lora_alpha, 0.0, init="gaussian")
    model.requires_grad_(False)  # PEFT marks adapters trainable per module; decide everything here
    for name, param in model.named_parameters():
        if ".lora_" in name:
            part = name.split(".", 1)[0]
            param.requires_grad_((part == "lmm" and spec.vlm_lora) or (part == "transformer" and spec.dit == "lora"))
        elif name == "meta_queries":
            param.requires_grad_(spec.meta_queries)
        elif name.startswith(("projector_1.", "projector_2.", "projector_3.")):
            param.requires_grad_(spec.projectors)
        elif name.startswith("connector."):
            param.requires_grad_(spec.connector)
        elif name.startswith("transformer."):
            param.requires_grad_(spec.dit == "full")
    trainable = trainable_named_parameters(model)
    with torch.no_grad():
        for param in trainable.values():
            if param.dtype != master_dtype and param.is_floating_point():
                param.data = param.data.to(master_dtype)
    return trainable


def trainable_named_parameters(model: nn.Module) -> OrderedDict[str, nn.Parameter]:
    """``{name: parameter}`` of the parameters with ``requires_grad``, in module order."""
    return OrderedDict((n, p) for n, p in model.named_parameters() if p.requires_grad)


def count_parameters(params: Mapping[str, torch.Tensor] | Iterable[torch.Tensor]) -> int:
    values = params.values() if isinstance(params, Mapping) else params
    # a ZeRO-3 parameter is an empty local tensor; DeepSpeed keeps its whole size in ds_numel
    return int(sum(getattr(p, "ds_numel", p.numel()) for p in values))


def enable_gradient_checkpointing(
    model: DeepGenModel, parts: Sequence[str] = ("lmm", "connector", "transformer"), enable: bool = True
) -> None:
    """Activation checkpointing of the VLM text tower (HF), the connector layers and the DiT blocks (diffusers)."""
    if "transformer" in parts:
        if enable:
            model.transformer.enable_gradient_checkpointing()
        else:
            model.transformer.disable_gradient_checkpointing()
    if "connector" in parts:
        model.connector.gradient_checkpointing = enable
    if "lmm" in parts:
        _vlm_checkpointing(model.lmm, enable)


def _vlm_checkpointing_on(lmm: PreTrainedModel) -> bool:
    name = (
        "is_activation_checkpointing"
        if hasattr(type(lmm), "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    return bool(getattr(lmm, name, False))


def _vlm_checkpointing(lmm: PreTrainedModel, enable: bool) -> None:
    """HF activation checkpointing (transformers ≥ 5 names it activation_checkpointing_*; older: gradient_*)."""
    kwargs = {"use_reentrant": False}
    if hasattr(lmm, "activation_checkpointing_enable"):
        if enable:
            lmm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            lmm.activation_checkpointing_disable()
    elif enable:
        lmm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        lmm.gradient_checkpointing_disable()


def remove_lora_adapters(module: nn.Module) -> int:
    """Replace every PEFT LoRA layer inside ``module`` by its base layer (the base weights were never changed);
    returns how many were removed."""
    from peft.tuners.lora import LoraLayer

    found = [(name, layer) for name, layer in module.named_modules() if isinstance(layer, LoraLayer)]
    for name, layer in found:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    for sub in module.modules():  # what inject_adapter_in_model leaves on the injected modules
        if "peft_config" in sub.__dict__ and not any(isinstance(m, LoraLayer) for m in sub.modules()):
            del sub.__dict__["peft_config"]
    return len(found)


@contextlib.contextmanager
def preserve_model(model: DeepGenModel, restore_values: Sequence[str] = ()):
    """Train on a model other code holds (a ComfyUI cached model) and give it back unchanged.

    On exit: PEFT adapters added inside the block are removed, ``requires_grad`` flags, train/eval modes and
    gradient checkpointing are put back, and parameters whose names start with one of ``restore_values``
    (e.g. ``("meta_queries", "projector_", "connector.")`` when the SCB trains in place) get their original
    values, dtype and device back.  Export what you trained *inside* the block.
    """
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    saved = {n: p.data for n, p in model.named_parameters() if n.startswith(tuple(restore_values))}
    saved = {n: t.detach().clone() for n, t in saved.items()}
    checkpointing = (
        getattr(model.transformer, "gradient_checkpointing", False),
        getattr(model.connector, "gradient_checkpointing", False),
        _vlm_checkpointing_on(model.lmm),
    )
    try:
        yield model
    finally:
        remove_lora_adapters(model)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in saved.items():
                if name in params:
                    params[name].data = tensor
        for name, param in params.items():
            if name in flags:
                param.requires_grad_(flags[name])
            param.grad = None
        for name, module in model.named_modules():
            if name in modes:
                module.training = modes[name]
        dit_gc, connector_gc, lmm_gc = checkpointing
        if not dit_gc and getattr(model.transformer, "gradient_checkpointing", False):
            model.transformer.disable_gradient_checkpointing()
        model.connector.gradient_checkpointing = connector_gc
        if not lmm_gc and _vlm_checkpointing_on(model.lmm):
            _vlm_checkpointing(model.lmm, False)
