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

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from .. import tiny
from ..errors import ConfigError
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
PROMPT_TOKENS = 128  # text tokens of a prompt with its chat template (an assumption: long captions are 100-200)
GIB = 1024**3

# Qwen2.5-VL-3B-Instruct's config.json (deepgen-reference §1.2): the tiny model's config (same special tokens,
# vocabulary, 36 text layers) at the real sizes; with the SFT LoRA merged the sizes are the same.
REAL_VLM: dict[str, Any] = {
    **tiny.TINY_VLM,
    "text_config": {
        **cast(dict, tiny.TINY_VLM["text_config"]),
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "rope_scaling": {"type": "default", "rope_type": "default", "mrope_section": [16, 24, 24]},
    },
    "vision_config": {
        **cast(dict, tiny.TINY_VLM["vision_config"]),
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 2048,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
}
# SD3.5-Medium's transformer config, which UniPic2-SD3.5M-Kontext-2B inherits (deepgen-reference §1.7).
REAL_DIT: dict[str, Any] = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "dual_attention_layers": list(range(13)),
    "qk_norm": "rms_norm",
}
# The SD3.5 VAE (16 latent channels, /8): the tiny model's config at the real widths.
REAL_VAE: dict[str, Any] = {
    **tiny.TINY_VAE,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
}


@dataclass
class ModelConfigs:
    """The configs the meta model is built from, and where they came from (for the printout)."""

    vlm: dict
    dit: dict
    vae: dict
    connector: dict
    num_queries: int
    where: str


def _official(where: str) -> ModelConfigs:
    from ..model.connector import ConnectorConfig

    return ModelConfigs(REAL_VLM, REAL_DIT, REAL_VAE, ConnectorConfig().to_dict(), 128, where)


def model_configs(spec: str) -> ModelConfigs:
    """The configs for a config's ``model``: ``tiny``; a release or base folders that exist (their config.json
    files are read, no weights); anything else (a path not on this machine, a converted file) gets the official
    DeepGen 1.0 sizes."""
    from ..errors import DeepGenError
    from .model_source import describe_model_source

    text = str(spec).strip()
    if text == "tiny" or text.startswith("tiny:"):
        return ModelConfigs(
            tiny.TINY_VLM,
            tiny.TINY_TRANSFORMER,
            tiny.TINY_VAE,
            tiny.TINY_CONNECTOR.to_dict(),
            tiny.TINY_NUM_QUERIES,
            "the tiny model",
        )
    try:
        src = describe_model_source(text)
    except DeepGenError:
        return _official(f"official DeepGen 1.0 sizes ({text!r} is not on this machine)")
    if src.layout == "diffusers":
        root = Path(src.path_of("checkpoint"))
        vlm, dit, vae = root / "vlm", root / "transformer", root / "vae"
    elif src.vlm and src.diffusion:
        vlm, dit, vae = Path(src.vlm), Path(src.diffusion) / "transformer", Path(src.diffusion) / "vae"
    else:
        return _official(f"official DeepGen 1.0 sizes (configs of {text!r} not read: {src.layout} layout)")
    try:
        configs = [json.loads((p / "config.json").read_text(encoding="utf-8")) for p in (vlm, dit, vae)]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model {text!r}: cannot read its config.json files ({exc})") from exc
    official = _official("")
    connector = {**official.connector, **(src.connector_config or {})}
    return ModelConfigs(configs[0], configs[1], configs[2], connector, 128, f"the configs in {text}")


def build_meta_model(configs: ModelConfigs):
    """A DeepGenModel of these sizes on the meta device (fp32, nothing allocated)."""
    from diffusers import AutoencoderKL
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

    from ..model.connector import ConnectorConfig
    from ..model.deepgen import DeepGenModel
    from ..model.dit import DeepGenTransformer2DModel
    from ..tokenizer import demo_tokenizer

    tokenizer = demo_tokenizer()
    fields = ConnectorConfig.__dataclass_fields__
    connector = ConnectorConfig(**{k: v for k, v in configs.connector.items() if k in fields})
    vlm_config = Qwen2_5_VLConfig.from_dict({k: v for k, v in configs.vlm.items() if not k.startswith("_")})
    with torch.device("meta"):
        lmm = AutoModelForImageTextToText.from_config(vlm_config, attn_implementation="sdpa")
        # diffusers types from_config as "model or (model, unused kwargs)"; without return_unused_kwargs: the model
        dit = cast(DeepGenTransformer2DModel, DeepGenTransformer2DModel.from_config(configs.dit))
        vae = AutoencoderKL.from_config(configs.vae)
        model = DeepGenModel(lmm, tokenizer, dit, vae, connector, num_queries=configs.num_queries, scheduler_config={})
    return model.float()


# ---- counting -------------------------------------------------------------------------------------------


_LAYER = re.compile(r"^(.*?\.(?:layers|blocks|transformer_blocks)\.\d+)\.")


@dataclass
class ModelCount:
    """Parameter and byte counts of a meta model after the policy was applied (whole model, one copy)."""

    weights: dict[str, int]  # dtype name -> bytes (parameters and buffers)
    total_params: int
    trainable_params: int
    trainable_by_part: dict[str, int]
    largest_layer_bytes: int  # the biggest decoder layer / block / other module, as stored (ZeRO-3 gathers it)
    added_params: int = 0  # parameters the policy added (LoRA adapters)

    @property
    def trainable_bytes(self) -> int:
        return 4 * self.trainable_params


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def count_model(model, weight_dtype: torch.dtype, extra_fp32_params: int = 0, added_params: int = 0) -> ModelCount:
    """Bytes of ``model`` as the trainer holds it: trainable parameters as they are (fp32 masters), frozen
    parameters and floating-point buffers in ``weight_dtype``."""
    weights: dict[str, int] = {}
    layers: dict[str, int] = {}
    by_part: dict[str, int] = {}
    total = trainable = 0

    def add(name: str, t: torch.Tensor, dtype: torch.dtype) -> None:
        size = t.numel() * torch.empty((), dtype=dtype).element_size()
        key = _dtype_name(dtype)
        weights[key] = weights.get(key, 0) + size
        m = _LAYER.match(name)
        unit = m.group(1) if m else name.rsplit(".", 1)[0]
        layers[unit] = layers.get(unit, 0) + size

    for name, p in model.named_parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            part = name.split(".", 1)[0]
            by_part[part] = by_part.get(part, 0) + p.numel()
            add(name, p, p.dtype)
        else:
            add(name, p, weight_dtype if p.is_floating_point() else p.dtype)
    for name, b in model.named_buffers():
        add(name, b, weight_dtype if b.is_floating_point() else b.dtype)
    if extra_fp32_params:
        weights["fp32"] = weights.get("fp32", 0) + 4 * extra_fp32_params
    return ModelCount(weights, total, trainable, by_part, max(layers.values(), default=0), added_params)


# ---- activations ----------------------------------------------------------------------------------------


def layer_elements(kind: str, cfg: dict, *, lora_dropout_inputs: bool = False, dual: bool = False) -> int:
    """Activation elements one token keeps per layer for the backward pass (no checkpointing).

    * ``vlm`` (Qwen2 decoder layer, SwiGLU, grouped-query attention; d hidden, kv = KV heads × head dim,
      I MLP width): the layer input, norm-1 output, q, k, v, attention output, the residual, norm-2 output,
      gate, up, SiLU(gate) and their product = 6d + 2kv + 4I.  A VLM LoRA with dropout keeps the dropped-out
      input of each adapted linear too: q, k, v, o, gate, up (d each) and down (I) = + 6d + I.
    * ``connector`` (SigLIP encoder layer, GELU MLP): input, LN1 output, q, k, v, attention output, residual,
      LN2 output, fc1 output, GELU output = 8d + 2I.
    * ``dit`` (SD3 joint block, one stream; the context stream is the same): norm-1 input and output, the
      modulated output, q, k, v, normed q and k, attention output, gated output, residual, norm-2 output,
      modulated output, fc1 output (4d), GELU output (4d), gated fc2 output = 21d; a dual-attention block adds
      the image stream's second attention (modulated input, q, k, v, normed q and k, output, gate) = + 8d.
    Attention runs in the fused SDPA kernels (no L² matrix is kept: training batches are unpadded).
    """
    if kind == "vlm":
        d, inter = cfg["hidden_size"], cfg["intermediate_size"]
        kv = cfg["num_key_value_heads"] * (d // cfg["num_attention_heads"])
        return 6 * d + 2 * kv + 4 * inter + ((6 * d + inter) if lora_dropout_inputs else 0)
    if kind == "connector":
        return 8 * cfg["hidden_size"] + 2 * cfg["intermediate_size"]
    if kind == "dit":
        d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        return 21 * d + (8 * d if dual else 0)
    raise ValueError(f"unknown layer kind {kind!r}")


@dataclass
class Workload:
    """What one micro-batch of one process runs with gradients (the largest task of the config)."""

    batch: int
    resolution: int
    references: int  # reference images per sample (edits); 0 = text-to-image only
    vlm_grad: bool  # the VLM forward keeps activations (think tokens or a VLM LoRA train)
    connector_grad: bool
    projector_1_grad: bool
    lora_dropout: bool  # VLM LoRA with dropout > 0
    activation_bytes: int  # 2 under bf16/fp16 autocast, 4 in fp32
    vae_images: int  # images VAE-encoded per micro-batch (no gradient)
    extra_bytes_per_process: Any = None  # callable N -> bytes held besides activations (stage-3 rollout buffers)
    label: str = ""

    def vlm_tokens(self, num_queries: int) -> int:
        vision = self.references * (self.resolution // 32) ** 2  # ×28/32 resize, 14-px patches, 2×2 merge
        return PROMPT_TOKENS + num_queries + vision

    def dit_image_tokens(self) -> int:
        return (1 + self.references) * (self.resolution // 16) ** 2


def activation_bytes(configs: ModelConfigs, work: Workload) -> dict[str, int]:
    """``{"stored": …, "stored_ckpt": …, "working_ckpt": …, "vae": …}`` for one micro-batch (bytes)."""
    text = configs.vlm.get("text_config", configs.vlm)
    b, nb = work.batch, work.activation_bytes
    length = work.vlm_tokens(configs.num_queries)
    image = work.dit_image_tokens()
    stored = ckpt = 0
    working = 0
    # VLM text tower
    if work.vlm_grad:
        n_layers, d = text["num_hidden_layers"], text["hidden_size"]
        per = layer_elements("vlm", text, lora_dropout_inputs=work.lora_dropout) * b * length * nb
        stored += n_layers * per
        ckpt += n_layers * d * b * length * nb
        working = max(working, per)
    # SCB: the six taps (projector_1's input), the connector layers, the heads' outputs
    con = configs.connector
    d_vlm = text["hidden_size"]
    scb_in = 6 * d_vlm * b * length * nb if work.projector_1_grad else 0
    heads = (con["hidden_size"] + configs.dit["joint_attention_dim"]) * b * length * nb
    stored += scb_in + heads
    ckpt += scb_in + heads
    if work.connector_grad or work.vlm_grad:
        per = layer_elements("connector", con) * b * length * nb
        stored += con["num_hidden_layers"] * per
        ckpt += con["num_hidden_layers"] * con["hidden_size"] * b * length * nb
        working = max(working, per)
    # DiT: every block, image stream (target + references) and context stream
    dit = configs.dit
    d = dit["num_attention_heads"] * dit["attention_head_dim"]
    dual = set(dit.get("dual_attention_layers") or ())
    for i in range(dit["num_layers"]):
        img = layer_elements("dit", dit, dual=i in dual) * b * image * nb
        ctx = layer_elements("dit", dit) * b * length * nb
        stored += img + ctx
        ckpt += d * b * (image + length) * nb
        working = max(working, img + ctx)
    out = (2 * d + 2 * dit["in_channels"] * dit["patch_size"] ** 2) * b * image * 4  # norm_out, proj_out, loss
    stored += out
    ckpt += out
    # VAE encode: about three full-resolution feature maps of the first block width per image, no gradient
    vae = 3 * configs.vae["block_out_channels"][0] * work.resolution**2 * work.vae_images * nb
    return {"stored": stored, "stored_ckpt": ckpt, "working_ckpt": working, "vae": vae}


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
        stored = self.acts["stored"]
        ckpt = self.acts["stored_ckpt"] + self.acts["working_ckpt"]
        return DeviceRow(
            n,
            sharding,
            weights,
            gathered,
            grads,
            opt,
            temp,
            max(stored, self.acts["vae"]),
            max(ckpt, self.acts["vae"]),
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
        # the SFT-Aux micro-batch is a second forward/backward; plan for the larger of the two
        sft = Workload(
            g.sft_batch_size if cfg.sft_data else 0, cfg.sft_resolution, 0, False, False, False, False, nbytes, 0
        )
        acts = activation_bytes(configs, work)
        if sft.batch:
            sft_acts = activation_bytes(configs, sft)
            if sft_acts["stored"] > acts["stored"]:
                acts = {**sft_acts, "vae": acts["vae"]}
                notes.append(f"activations: the SFT-Aux batch ({sft.batch} at {sft.resolution} px) is the larger")
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
