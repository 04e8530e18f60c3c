"""CLIP similarity reward (official ``clip_sim``).

Why: a cheap, always-resident prompt-alignment signal. As in the official trainer
(reference §2.4) the reward is the raw cosine similarity of the L2-normalised CLIP
ViT-L/14 text and image embeddings: no x100 logit scale, no clamping (typical range
about 0.15-0.40). Text is padded/truncated to 77 tokens; the model runs in fp32 by default.

The model is read from a LOCAL folder (a transformers ``save_pretrained`` folder, ``local_files_only=True``)
or from ONE safetensors file with both towers, as ComfyUI users keep it in ``models/clip_vision``
(:mod:`.clip_file`: the ViT-L/14 config shipped with the package, a ``tokenizer_path`` folder), lazily on
first use, and cached per (path, device, dtype).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import InputError
from . import clip_file
from .base import Reward, cached_model, default_device, register_reward, require_model_dir

__all__ = ["CLIPReward", "DEFAULT_CLIP_DIR", "CLIP_REPO_ID"]

DEFAULT_CLIP_DIR = "models/deepgen/clip"
CLIP_REPO_ID = "openai/clip-vit-large-patch14"


class CLIPReward(Reward):
    """Cosine(image embedding, prompt embedding) per image, in [-1, 1].

    ``model_path``: a transformers folder, or one safetensors file holding both towers (then ``tokenizer_path``,
    a folder with CLIP's vocab.json and merges.txt, is required, and ``config`` -- a config.json path or dict,
    default ViT-L/14's -- says what the file must hold).
    """

    name = "clip"

    def __init__(
        self,
        model_path: str | Path = DEFAULT_CLIP_DIR,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
        max_length: int = 77,
        tokenizer_path: str | Path | None = None,
        config: str | Path | Mapping | None = None,
    ):
        self.model_path = model_path
        self.device = torch.device(device or default_device())
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.tokenizer_path = tokenizer_path
        self.config = config

    def load(self):
        """Returns (model, processor), loading them on first use."""
        if clip_file.is_single_file(self.model_path):
            return self._load_file()
        if self.tokenizer_path is not None or self.config is not None:
            raise InputError(
                f"CLIP: tokenizer_path and config are for a single-file model_path; the folder {self.model_path} "
                "brings its own tokenizer and config.json"
            )
        path = require_model_dir(self.model_path, "CLIP", CLIP_REPO_ID)
        key = ("clip", str(path), str(self.device), str(self.dtype))
        return cached_model(key, lambda device: _load_clip(path, device, self.dtype), self.device)

    def _load_file(self):
        path = clip_file.require_clip_file(self.model_path)
        tokenizer = clip_file.require_tokenizer_dir(self.tokenizer_path, path)
        key = (
            "clip-file",
            str(path),
            str(tokenizer),
            clip_file.config_key(self.config),
            str(self.device),
            str(self.dtype),
        )

        def build(device):
            model = clip_file.load_clip_file(path, self.config, device, self.dtype)
            return model, clip_file.clip_processor(tokenizer, self.config)

        return cached_model(key, build, self.device)

    @torch.inference_mode()
    def score(self, images, prompts, group_ids=None) -> torch.Tensor:
        model, processor = self.load()
        max_len = min(self.max_length, int(model.config.text_config.max_position_embeddings))
        out = []
        for s in range(0, len(images), self.batch_size):
            inputs = processor(
                text=prompts[s : s + self.batch_size],
                images=images[s : s + self.batch_size],
                return_tensors="pt",
                padding="max_length",
                truncation=True,
                max_length=max_len,
            )
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            res = model(**inputs, return_dict=True)
            img = torch.nn.functional.normalize(res.image_embeds.float(), dim=-1)
            txt = torch.nn.functional.normalize(res.text_embeds.float(), dim=-1)
            out.append((img * txt).sum(-1).cpu())
        return torch.cat(out) if out else torch.zeros(0)


def _load_clip(path: Path, device: torch.device, dtype: torch.dtype):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    # transformers types PreTrainedModel.to's first argument as the model itself
    model = model.to(device).eval().requires_grad_(False)  # type: ignore[arg-type]
    processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)
    return model, processor


register_reward("clip", CLIPReward)
