"""``deepgen train --plan``: how much memory a training config needs per GPU, before a GPU is rented.

The model is built on the ``meta`` device (no weights read, no memory used) from the real configs — the
Qwen2.5-VL-3B-Instruct, SD3.5-Medium DiT, SD3.5 VAE and SCB connector of DeepGen 1.0 (deepgen-reference §1),
or the configs in the folders the training config's ``model`` points at, or the tiny model's — and the config's
policy is applied with the trainer's own :func:`~deepgen.train.trainable.setup_trainable`, so the trainable set is
exactly the trainer's.  Then, per process:

* **weights**: frozen weights and buffers in the mixed-precision dtype, trainable ones as fp32 masters (as the
  trainer keeps them), per dtype; stage 3 with ``reference = "copy"`` adds the fp32 reference DiT;
* **gradients**: fp32, one per trainable parameter (plain DDP over N > 1 processes adds its fp32 bucket copy);
* **optimizer**: AdamW's two fp32 moments per trainable parameter, plus one fp32 temporary of the same size
  during ``step()`` (torch's multi-tensor AdamW);
* **activations** of one micro-batch, from token counts (:class:`Workload`): per layer, ``elements per token``
  (:func:`layer_elements`, derived from the layer's shapes and listed there) × tokens × batch × bytes; with
  gradient checkpointing only each layer's input is kept, plus one layer's working set while it is recomputed.
  The VAE encode (no gradient) is a transient before the forward.

Sharding over N processes: ``none`` (DDP: everything replicated), ``zero2`` (gradients and optimizer states
divided by N), ``zero3`` / ``fsdp`` (weights too, plus the largest layer gathered twice: one in use, one
prefetched).  The peak is ``weights + optimizer states + gradients + max(activations, step temporary)``: the
states live from the first update on, and the gradients of one update build up while activations are alive.

Not counted: the CUDA context and allocator slack (the fit test keeps :data:`RESERVE_GIB` free for them),
the vision tower's no-grad forward, data-loader workers (host memory), NCCL buffers.  The estimate is a plan,
not a measurement: docs/training.md compares it with measured peaks on the small model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError
from .plan_model import (
    PROMPT_TOKENS,
    REAL_DIT,
    REAL_VAE,
    REAL_VLM,
    ModelConfigs,
    ModelCount,
    Workload,
    activation_bytes,
    build_meta_model,
    count_model,
    layer_elements,
    model_configs,
)
from .trainable import TrainableSpec

__all__ = [
    "SHARDINGS",
    "GPU_SIZES_GIB",
    "RESERVE_GIB",
    "REAL_VLM",
    "REAL_DIT",
    "REAL_VAE",
    "ModelConfigs",
    "Workload",
    "ModelCount",
    "MemoryPlan",
    "model_configs",
    "build_meta_model",
    "count_model",
    "layer_elements",
    "plan_for_config",
    "plan_config_file",
    "format_plan",
]

SHARDINGS = ("none", "zero2", "zero3", "fsdp")
GPU_SIZES_GIB = (24.0, 80.0)  # the cards the table answers "fits?" for (memory as sold: 24 GB, 80 GB)
RESERVE_GIB = 1.5  # CUDA context + allocator slack kept free in the fit test
GIB = 1024**3

# ---- the plan -------------------------------------------------------------------------------------------


@dataclass
class DeviceRow:
    """Bytes per process for one device count and sharding."""

    num_processes: int
    sharding: str
    weights: dict[str, int]
    gathered: int
    gradients: int
    optimizer: int
    step_temp: int
    activations: int  # gradient checkpointing off
    activations_ckpt: int  # on
    extra: int

    def total(self, checkpointing: bool) -> int:
        acts = self.activations_ckpt if checkpointing else self.activations
        base = sum(self.weights.values()) + self.gathered + self.extra + self.optimizer + self.gradients
        return base + max(acts, self.step_temp)

    def fits(self, checkpointing: bool, gib: float) -> bool:
        return self.total(checkpointing) <= (gib - RESERVE_GIB) * GIB


@dataclass
class MemoryPlan:
    """Counts for one config; :meth:`per_device` splits them over N processes."""

    title: str
    model_where: str
    policy: str
    precision: str
    gradient_checkpointing: bool
    count: ModelCount
    work: Workload
    acts: dict[str, int]
    notes: list[str] = field(default_factory=list)
    vlm_tokens: int = 0
    # stage 3: the SFT-Aux batch's activations for N processes (its size is global); a row takes the larger
    sft_acts: Callable[[int], dict[str, int]] | None = None

    def per_device(self, num_processes: int, sharding: str = "none") -> DeviceRow:
        if sharding not in SHARDINGS:
            raise ConfigError(f"sharding must be one of {SHARDINGS} (got {sharding!r})")
        if num_processes < 1:
            raise ConfigError(f"--num-processes must be ≥ 1 (got {num_processes})")
        n = num_processes
        grads = opt = self.count.trainable_bytes
        opt = 2 * self.count.trainable_bytes
        temp = self.count.trainable_bytes
        weights = dict(self.count.weights)
        gathered = 0
        if sharding == "none":
            if n > 1:
                grads *= 2  # DDP's fp32 bucket copy of the gradients
        else:
            grads, opt, temp = math.ceil(grads / n), math.ceil(opt / n), math.ceil(temp / n)
            if sharding in ("zero3", "fsdp") and n > 1:
                weights = {k: math.ceil(v / n) for k, v in weights.items()}
                gathered = 2 * self.count.largest_layer_bytes
        extra = self.work.extra_bytes_per_process(n) if self.work.extra_bytes_per_process else 0
        acts = self.acts
        if self.sft_acts is not None:
            sft = self.sft_acts(n)
            acts = sft if sft["stored"] > acts["stored"] else acts
        stored = acts["stored"]
        ckpt = acts["stored_ckpt"] + acts["working_ckpt"]
        return DeviceRow(
            n,
            sharding,
            weights,
            gathered,
            grads,
            opt,
            temp,
            max(stored, acts["vae"]),
            max(ckpt, acts["vae"]),
            extra,
        )


def _precision(value: str) -> tuple[str, torch.dtype, int]:
    """``mixed_precision`` as planned on a GPU: auto → bf16."""
    name = "bf16" if value == "auto" else value
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name, torch.float32)
    return name, dtype, 2 if name in ("bf16", "fp16") else 4


def _policy_text(spec: TrainableSpec) -> str:
    parts = []
    if spec.trains_scb:
        parts.append("SCB" if (spec.meta_queries and spec.projectors and spec.connector) else "part of the SCB")
    if spec.dit == "full":
        parts.append("full DiT")
    elif spec.dit == "lora":
        parts.append(f"DiT LoRA r{spec.dit_lora_rank}")
    if spec.vlm_lora:
        parts.append(f"VLM LoRA r{spec.vlm_lora_rank}")
    return " + ".join(parts) or "nothing"


def _meta_model_with_policy(configs: ModelConfigs, spec: TrainableSpec, weight_dtype: torch.dtype):
    from .trainable import setup_trainable

    model = build_meta_model(configs)
    model.to(weight_dtype)  # as the loader does; setup_trainable then makes fp32 masters of what trains
    before = sum(p.numel() for p in model.parameters())
    with torch.device("meta"):
        setup_trainable(model, spec)
    return model, sum(p.numel() for p in model.parameters()) - before


def plan_for_config(cfg, configs: ModelConfigs | None = None, title: str = "") -> MemoryPlan:
    """The plan of a stage 1-2 :class:`~deepgen.train.config.TrainConfig` or a stage-3
    :class:`~deepgen.train.grpo.run_config.Stage3Config` (``configs`` default: from ``cfg.model``)."""
    configs = configs or model_configs(cfg.model)
    precision, weight_dtype, nbytes = _precision(cfg.mixed_precision)
    notes = []
    larger_acts = None
    if cfg.mixed_precision == "auto":
        notes.append("mixed_precision auto: planned as bf16 (a GPU with bf16)")
    if getattr(cfg, "stage", 1) == 3:
        spec = cfg.trainable_spec()  # exactly what the stage-3 trainer trains
        reference = cfg.reference_mode
        model, added = _meta_model_with_policy(configs, spec, weight_dtype)
        ref_params = 0
        if reference == "copy":
            ref_params = sum(t.numel() for t in model.transformer.parameters())
            ref_params += sum(t.numel() for t in model.transformer.buffers())
            notes.append("reference = copy: a frozen fp32 copy of the DiT is in the fp32 weights")
        count = count_model(model, weight_dtype, extra_fp32_params=ref_params, added_params=added)
        g = cfg.grpo
        work = _stage3_workload(cfg, configs, nbytes)
        acts = activation_bytes(configs, work)
        if cfg.sft_data:
            # the SFT-Aux batch is a second forward/backward of sft_batch_size / N per process (global size);
            # each device count plans for the larger of the two
            def sft_acts(n: int) -> dict[str, int]:
                batch = math.ceil(g.sft_batch_size / n)
                sft = Workload(batch, cfg.sft_resolution, 0, False, False, False, False, nbytes, 0)
                return {**activation_bytes(configs, sft), "vae": acts["vae"]}

            larger_acts = sft_acts
            notes.append(
                f"activations: the larger of the DiT micro-batch and the SFT-Aux batch ({g.sft_batch_size} at "
                f"{cfg.sft_resolution} px over all processes, {g.sft_batch_size} / N per process)"
            )
        policy = ("full DiT" if cfg.policy == "full" else f"DiT LoRA r{cfg.dit_lora_rank}") + f", reference {reference}"
        title = title or "stage 3 (MR-GRPO)"
    else:
        spec = TrainableSpec.from_config(cfg)
        model, added = _meta_model_with_policy(configs, spec, weight_dtype)
        count = count_model(model, weight_dtype, added_params=added)
        edits = cfg.pattern.repeats.get("image2image", 0) > 0
        refs = max(1, cfg.max_references) if edits else 0
        vlm_grad = spec.meta_queries or spec.vlm_lora
        work = Workload(
            batch=cfg.micro_batch_size,
            resolution=cfg.resolution,
            references=refs,
            vlm_grad=vlm_grad,
            connector_grad=spec.connector,
            projector_1_grad=spec.projectors,
            lora_dropout=spec.vlm_lora and spec.vlm_lora_dropout > 0,
            activation_bytes=nbytes,
            vae_images=cfg.micro_batch_size * (1 + refs),
            label=f"{'edit' if edits else 'T2I'} micro-batch of {cfg.micro_batch_size} at {cfg.resolution} px"
            + (f", {refs} reference" if refs else ""),
        )
        acts = activation_bytes(configs, work)
        policy = _policy_text(spec)
        title = title or f"stage {cfg.stage}"
    return MemoryPlan(
        title,
        configs.where,
        policy,
        precision,
        bool(cfg.gradient_checkpointing),
        count,
        work,
        acts,
        notes,
        work.vlm_tokens(configs.num_queries),
        sft_acts=larger_acts,
    )


def _stage3_workload(cfg, configs: ModelConfigs, nbytes: int) -> Workload:
    g = cfg.grpo
    latent = configs.dit["in_channels"] * (cfg.grpo.resolution // 8) ** 2
    length = PROMPT_TOKENS + configs.num_queries
    joint = configs.dit["joint_attention_dim"]

    def rollout_buffers(n: int) -> int:
        images = math.ceil(g.prompts_per_step * g.group_size / n)  # this process's share of a step's images
        return images * ((g.num_steps + 1) * latent * 4 + length * joint * nbytes)  # fp32 trajectory + context

    return Workload(
        batch=g.train_micro_batch_size,
        resolution=g.resolution,
        references=0,
        vlm_grad=False,
        connector_grad=False,
        projector_1_grad=False,
        lora_dropout=False,
        activation_bytes=nbytes,
        vae_images=0,
        extra_bytes_per_process=rollout_buffers,
        label=f"DiT micro-batch of {g.train_micro_batch_size} at {g.resolution} px (VLM and rollouts without grad)",
    )


def plan_config_file(path: str, overrides: Sequence[str] = (), stage: int | None = None) -> MemoryPlan:
    """Read a training config (any stage) and plan it; nothing is loaded, no data is needed."""
    from .config import read_config_file

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"Config file {file} not found")
    values = read_config_file(file)
    if stage is None:
        stage = values.get("stage", 1)
    if stage == 3:
        from .grpo.run_config import load_stage3_config

        return plan_for_config(load_stage3_config(file, overrides), title=f"{file.name} (stage 3)")
    from .cli import load_train_config

    cfg = load_train_config(str(file), stage, list(overrides))
    return plan_for_config(cfg, title=f"{file.name} (stage {cfg.stage})")


# ---- printing -------------------------------------------------------------------------------------------


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def _params(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def sharding_from_accelerate_config(path: str) -> tuple[str, int]:
    """``(sharding, num_processes)`` of an accelerate config file (``accelerate config`` / configs/accelerate):
    FSDP → ``fsdp``, DeepSpeed → ``zero<stage>`` (ZeRO-1 counts as ``zero2``'s optimizer sharding without the
    gradients': planned as ``zero2``, an upper bound), anything else → ``none``."""
    from pathlib import Path

    if not Path(path).is_file():
        raise ConfigError(f"--accelerate-config: {path} does not exist")
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        cfg = load_config_from_file(str(path))
    except Exception as e:  # noqa: BLE001 - yaml / json / field errors of accelerate's loader
        raise ConfigError(f"--accelerate-config: {path} is not an accelerate config ({e})") from e
    kind = str(cfg.distributed_type).rsplit(".", 1)[-1]
    n = int(cfg.num_processes or 1)
    if kind == "FSDP":
        return "fsdp", n
    if kind == "DEEPSPEED":
        stage = int((cfg.deepspeed_config or {}).get("zero_stage", 2))
        if stage not in (1, 2, 3):
            raise ConfigError(f"--accelerate-config: {path} has zero_stage {stage}; deepgen plans ZeRO 1-3")
        return ("zero3" if stage == 3 else "zero2"), n
    return "none", n


def format_plan(plan: MemoryPlan, num_processes: Iterable[int] = (1, 8), sharding: str = "none") -> str:
    """The printout: what is counted, then one table per device count (GiB per process)."""
    c, w = plan.count, plan.work
    lines = [
        f"memory plan: {plan.title}",
        f"  model: {plan.model_where}",
        f"  policy: {plan.policy}; {plan.precision}; gradient checkpointing "
        f"{'on' if plan.gradient_checkpointing else 'off'} in the config",
        f"  parameters: {_params(c.total_params)} in the model, {_params(c.trainable_params)} trainable ("
        + ", ".join(f"{k} {_params(v)}" for k, v in c.trainable_by_part.items())
        + ")",
        f"  activations for: {w.label}; per sample VLM {plan.vlm_tokens} tokens ({PROMPT_TOKENS} prompt + think"
        f" + vision), DiT {w.dit_image_tokens()} image + {plan.vlm_tokens} context tokens",
    ]
    lines += [f"  note: {n}" for n in plan.notes]
    mark = {False: " *" if not plan.gradient_checkpointing else "", True: " *" if plan.gradient_checkpointing else ""}
    for n in num_processes:
        row = plan.per_device(n, sharding)
        shard = "no sharding" if sharding == "none" else sharding.upper() if sharding != "fsdp" else "FSDP"
        if sharding == "none" and n > 1:
            shard = "DDP, no sharding"
        lines += ["", f"{n} process{'es' if n > 1 else ''} ({shard}), GiB per device"]
        table = [("", f"ckpt off{mark[False]}", f"ckpt on{mark[True]}")]
        for dtype, size in sorted(row.weights.items()):
            what = "frozen + buffers" if dtype != "fp32" else "trainable masters"
            if dtype == "fp32" and plan.precision == "no":
                what = "all"
            table.append((f"weights {dtype} ({what})", _gib(size), _gib(size)))
        if row.gathered:
            table.append(("gathered layers (ZeRO-3/FSDP)", _gib(row.gathered), _gib(row.gathered)))
        table.append(("gradients fp32", _gib(row.gradients), _gib(row.gradients)))
        table.append(("AdamW states (2 x fp32)", _gib(row.optimizer), _gib(row.optimizer)))
        table.append(("AdamW step temporary", _gib(row.step_temp), _gib(row.step_temp)))
        table.append(("activations (peak)", _gib(row.activations), _gib(row.activations_ckpt)))
        if row.extra:
            table.append(("rollout buffers", _gib(row.extra), _gib(row.extra)))
        table.append(("total (peak)", _gib(row.total(False)), _gib(row.total(True))))
        for gib in GPU_SIZES_GIB:
            off, on = ("yes" if row.fits(ck, gib) else "no" for ck in (False, True))
            table.append((f"fits a {gib:.0f} GB card", off, on))
        width = max(len(r[0]) for r in table)
        for r in table:
            lines.append(f"  {r[0]:<{width}}  {r[1]:>11}  {r[2]:>11}")
    lines += [
        "",
        "  peak = weights + AdamW states + gradients + max(activations, step temporary);"
        f" 'fits' keeps {RESERVE_GIB} GiB free for the CUDA context; * = the config's setting",
    ]
    return "\n".join(lines)
