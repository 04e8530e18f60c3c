"""The real-size model for the memory plan: its configs (official sizes, or read from the folders a config points
at), built on the meta device, its parameters counted by dtype and layer, and an activation estimate per
micro-batch from token counts (`deepgen train --plan`, deepgen/train/plan.py)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from .. import tiny
from ..errors import ConfigError

PROMPT_TOKENS = 128  # text tokens of a prompt with its chat template (an assumption: long captions are 100-200)


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
    if text in ("tiny", "tiny-random") or text.startswith("tiny:"):  # the demo has the tiny sizes too
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
