"""The VLM LoRA of the official checkpoint: merged into the weights (default) or kept as a PEFT adapter.

The adapter is attached with PEFT on exactly the checkpoint's modules and loaded strictly. Merging
(W' = W + (alpha/r)·B·A) is done directly for Linear layers (`merge_linear`) and for an embedding ((B·A)ᵀ,
`merge_embedding`); any other layer type goes through PEFT's own merge, and its LoRA layer is then unwrapped.
Alpha is not stored in checkpoints; the release uses r=64, alpha=128, i.e. a scaling of 2.0, our default.
`lm_head`'s LoRA is accounted for but not merged: generation never calls lm_head, and in the base model it
shares its tensor with the embedding, which a merge would corrupt.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from .errors import CheckpointError, format_keys
from .keys import split_lora_key

SKIPPED_MODULES = ("lm_head",)
EMBEDDING_BLOCK = 1 << 20  # elements of the embedding delta built at a time (4 MB in fp32)


def collect_lora(lora_state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{module path: {"A": tensor, "B": tensor}}, checking that every module has both halves."""
    pairs: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in lora_state.items():
        module, half = split_lora_key(key)
        pairs[module][half] = value
    incomplete = [m for m, p in pairs.items() if set(p) != {"A", "B"}]
    if incomplete:
        raise CheckpointError(f"LoRA modules with only one of A/B: {format_keys(incomplete)}")
    return dict(pairs)


def lora_rank(pairs: dict[str, dict[str, torch.Tensor]]) -> int:
    ranks = {p["A"].shape[0] for p in pairs.values()}
    if len(ranks) != 1:
        raise CheckpointError(f"LoRA tensors have mixed ranks {sorted(ranks)}")
    return ranks.pop()


def _resolve(lmm: nn.Module, pairs) -> dict[str, nn.Module]:
    modules, unknown = {}, []
    for name in pairs:
        try:
            modules[name] = lmm.get_submodule(name)
        except AttributeError:
            unknown.append(name)
    if unknown:
        raise CheckpointError(
            f"LoRA keys for modules the VLM does not have: {format_keys(unknown)}. "
            "Is this checkpoint for Qwen2.5-VL-3B-Instruct (the DeepGen 1.0 base)?"
        )
    return modules


@torch.no_grad()
def merge_lora(lmm: nn.Module, pairs: dict[str, dict[str, torch.Tensor]], scaling: float) -> list[str]:
    """Merge in place; returns the modules deliberately left unmerged (lm_head).

    Linear and Embedding layers are merged directly (`merge_linear`, `merge_embedding`: PEFT's arithmetic, or
    within rounding of it); anything else goes through PEFT (attach, merge, unwrap). At the real size PEFT's route
    took 85 s of a 100 s load: it builds and randomly initialises 0.19 B adapter parameters only to overwrite them."""
    from peft.tuners.lora import LoraLayer

    modules = _resolve(lmm, pairs)
    skipped = sorted(name for name in modules if name.endswith(SKIPPED_MODULES))
    rank = lora_rank(pairs)
    rest = {}
    for name, halves in pairs.items():
        if name in skipped:
            continue
        layer = modules[name]
        if type(layer) is nn.Linear:  # not a subclass with its own weight handling
            merge_linear(layer, halves["A"], halves["B"], scaling)
        elif type(layer) is nn.Embedding:
            merge_embedding(layer, halves["A"], halves["B"], scaling)
        else:
            rest[name] = halves
    if not rest:
        return skipped
    attach_lora_adapter(lmm, rest, alpha=scaling * rank, adapter_name="deepgen_merge")
    for name in rest:
        layer = lmm.get_submodule(name)
        if not isinstance(layer, LoraLayer):
            raise CheckpointError(f"LoRA on {name}, a {type(layer).__name__}; only Linear and Embedding are supported")
        layer.merge(adapter_names=["deepgen_merge"])
        parent, _, leaf = name.rpartition(".")
        setattr(lmm.get_submodule(parent) if parent else lmm, leaf, layer.get_base_layer())
    return skipped


@torch.no_grad()
def merge_linear(layer: nn.Linear, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> None:
    """W += (B·A)·scaling. In fp32 (and on a GPU) exactly PEFT's arithmetic. For fp16/bf16 on a CPU, where PEFT
    builds the whole delta in fp32 and casts it back (6.6× slower at the real size), one fused `addmm_`
    accumulating in fp32 with a single rounding: within one ulp of PEFT's result."""
    weight = layer.weight
    if lora_a.shape != (lora_a.shape[0], layer.in_features) or lora_b.shape != (layer.out_features, lora_a.shape[0]):
        raise CheckpointError(
            f"LoRA halves {tuple(lora_a.shape)} / {tuple(lora_b.shape)} do not fit a Linear "
            f"{layer.in_features} -> {layer.out_features}"
        )
    a, b = lora_a.to(weight.device, weight.dtype), lora_b.to(weight.device, weight.dtype)
    if weight.device.type == "cpu" and weight.dtype in (torch.float16, torch.bfloat16):
        weight.data.addmm_(b, a, alpha=scaling)
    else:
        weight.data += (b @ a) * scaling


@torch.no_grad()
def merge_embedding(layer: nn.Embedding, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> None:
    """W += (B·A)ᵀ·scaling with PEFT's arithmetic (the delta in fp32 for fp16/bf16 on a CPU, then cast), a block of
    rows at a time. PEFT's merge builds the whole delta and a scaled copy first, each as large as the 151936-row
    table (39 MB each on the tiny fixture in fp32): a transient that the official load, which keeps the adapter,
    does not have, and 2.5 GB at the real width in bf16. Within rounding of PEFT's result (bit-identical in the checks here;
    the BLAS may round a narrow last block differently). One bf16 `addmm_` would avoid the transient too, but took
    twice PEFT's time at the real width on this CPU (32 s against 16 s; this loop: 2 s)."""
    weight, rank = layer.weight, lora_a.shape[0]
    if lora_a.shape != (rank, layer.num_embeddings) or lora_b.shape != (layer.embedding_dim, rank):
        raise CheckpointError(
            f"LoRA halves {tuple(lora_a.shape)} / {tuple(lora_b.shape)} do not fit an Embedding "
            f"{layer.num_embeddings} x {layer.embedding_dim}"
        )
    half_on_cpu = weight.device.type == "cpu" and weight.dtype in (torch.float16, torch.bfloat16)
    compute = torch.float32 if half_on_cpu else weight.dtype
    # the halves in the weight's dtype first, as PEFT's adapter holds them
    a, b = (t.to(weight.device, weight.dtype).to(compute) for t in (lora_a, lora_b))
    rows = max(1, EMBEDDING_BLOCK // layer.embedding_dim)
    for start in range(0, layer.num_embeddings, rows):
        block = slice(start, start + rows)
        weight.data[block] += (b @ a[:, block]).mul_(scaling).T.to(weight.dtype)


def attach_lora_adapter(
    lmm: nn.Module,
    pairs: dict[str, dict[str, torch.Tensor]],
    alpha: float,
    dropout: float = 0.0,
    adapter_name: str = "default",
) -> nn.Module:
    """Inject a PEFT LoRA adapter on exactly the checkpoint's modules and load its tensors (strictly)."""
    from peft import LoraConfig, inject_adapter_in_model

    modules = _resolve(lmm, pairs)
    rank = lora_rank(pairs)
    # peft annotates lora_alpha as int; any number works (scale = alpha / r)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]
        lora_dropout=dropout,
        target_modules=sorted(modules),
        init_lora_weights="gaussian",
    )
    inject_adapter_in_model(config, lmm, adapter_name=adapter_name)
    own = {k: v for k, v in lmm.state_dict().items() if ".lora_" in k}
    given = {}
    for name, halves in pairs.items():
        for half, tensor in halves.items():
            embedding = isinstance(modules[name], nn.Embedding)
            key = (
                f"{name}.lora_embedding_{half}.{adapter_name}"
                if embedding
                else f"{name}.lora_{half}.{adapter_name}.weight"
            )
            given[key] = tensor
    missing, unexpected = set(own) - set(given), set(given) - set(own)
    if missing or unexpected:
        raise CheckpointError(
            f"LoRA adapter keys do not match: missing {format_keys(missing)}; unexpected {format_keys(unexpected)}"
        )
    with torch.no_grad():
        for key, tensor in given.items():
            own[key].copy_(tensor)
    return lmm
