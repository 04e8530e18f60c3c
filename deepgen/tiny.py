"""A random-weight DeepGen 1.0 of the real architecture at toy sizes, for tests and the README demo.

Same code paths as the 5B model: a Qwen2.5-VL with 36 text layers (so SCB taps [35, 29, 23, 17, 11, 5]),
the real vocabulary and tokenizer (shipped as package data, deepgen.tokenizer), an SD3 MMDiT with dual attention
and qk RMSNorm, a 16-channel VAE and the official scheduler config. It draws noise-like pictures: the
weights are random. `save_tiny_release` writes it in the official release layout, so the file loaders,
the CLI and the ComfyUI nodes can be exercised end to end without downloading anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

from . import constants as C
from .model.connector import ConnectorConfig
from .model.deepgen import DeepGenModel
from .model.dit import DeepGenTransformer2DModel

TINY_NUM_QUERIES = 16
TINY_CONNECTOR = ConnectorConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)

TINY_VLM = {
    "model_type": "qwen2_5_vl",
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "image_token_id": C.IMAGE_PAD_TOKEN_ID,
    "video_token_id": 151656,
    "vision_start_token_id": C.VISION_START_TOKEN_ID,
    "vision_end_token_id": C.VISION_END_TOKEN_ID,
    "bos_token_id": C.PAD_TOKEN_ID,
    "eos_token_id": C.IM_END_TOKEN_ID,
    "pad_token_id": C.PAD_TOKEN_ID,
    "tie_word_embeddings": True,
    "text_config": {
        "model_type": "qwen2_5_vl_text",
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 36,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 128000,
        "tie_word_embeddings": True,
        "rope_scaling": {"type": "default", "rope_type": "default", "mrope_section": [2, 3, 3]},
        "pad_token_id": C.PAD_TOKEN_ID,
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
        "in_channels": 3,
        "hidden_act": "silu",
        "tokens_per_second": 2,
    },
}
TINY_TRANSFORMER = {
    "sample_size": 32,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 4,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 48,
    "caption_projection_dim": 32,
    "pooled_projection_dim": 24,
    "pos_embed_max_size": 48,
    "dual_attention_layers": [0, 1],
    "qk_norm": "rms_norm",
}
TINY_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "block_out_channels": [8, 16, 16, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
}
# SD3.5-Medium's scheduler config (UniPic2 ships the same): shift 3, no dynamic shifting.
SCHEDULER_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": False,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


def build_tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> DeepGenModel:
    """A fresh random tiny DeepGen (deterministic for a given seed)."""
    from .tokenizer import demo_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vlm_config = Qwen2_5_VLConfig.from_dict(TINY_VLM)
        lmm = AutoModelForImageTextToText.from_config(vlm_config, attn_implementation="sdpa")
        # diffusers types from_config as "model or (model, unused kwargs)"; without return_unused_kwargs: the model
        transformer = cast(DeepGenTransformer2DModel, DeepGenTransformer2DModel.from_config(TINY_TRANSFORMER))
        vae = AutoencoderKL.from_config(TINY_VAE)
        model = DeepGenModel(
            lmm,
            demo_tokenizer(),
            transformer,
            vae,
            TINY_CONNECTOR,
            num_queries=TINY_NUM_QUERIES,
            scheduler_config=SCHEDULER_CONFIG,
        )
        # The official heads start at zero (a blank context); random ones make the toy model's output
        # depend on the prompt, which is what a demo and the tests want to see.
        for head in (model.projector_2, model.projector_3):
            torch.nn.init.normal_(head.weight, std=0.2)
    return model.to(dtype).eval()


def save_tiny_release(folder: str | Path, seed: int = 0, model: DeepGenModel | None = None) -> dict[str, Path]:
    """Write the tiny model in the official release layout; returns the three paths load_model takes.

    ``model``: a model of the tiny architecture to write instead of a fresh random one (the demo's starting point).

    folder/Qwen2.5-VL-tiny (transformers save_pretrained + tokenizer), folder/UniPic2-tiny/{transformer,vae,
    scheduler} (diffusers) and folder/model.safetensors (meta_queries, projector_*, connector.*, transformer.*)
    plus folder/connector_config.json for the non-official connector head count.
    """
    folder = Path(folder)
    model = model if model is not None else build_tiny_model(seed)
    vlm_dir, diffusion_dir = folder / "Qwen2.5-VL-tiny", folder / "UniPic2-tiny"
    model.lmm.save_pretrained(vlm_dir)
    model.tokenizer.save_pretrained(vlm_dir)
    model.transformer.save_pretrained(diffusion_dir / "transformer")
    model.vae.save_pretrained(diffusion_dir / "vae")
    (diffusion_dir / "scheduler").mkdir(parents=True, exist_ok=True)
    (diffusion_dir / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    checkpoint = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.trained_state_dict().items()}, str(checkpoint))
    (folder / "connector_config.json").write_text(json.dumps(TINY_CONNECTOR.to_dict(), indent=2))
    return {"checkpoint": checkpoint, "vlm": vlm_dir, "diffusion": diffusion_dir}
