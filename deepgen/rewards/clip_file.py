"""CLIP from one safetensors file, as ComfyUI users keep it in ``models/clip_vision``.

Why: the clip reward needs both towers (it compares each image with its prompt). openai/clip-vit-large-patch14's
``model.safetensors`` holds both in the transformers key layout (``text_model.*``, ``vision_model.*``,
``visual_projection.weight``, ``text_projection.weight``, ``logit_scale``), but no config and no tokenizer:

* the config is ViT-L/14's, shipped in ``deepgen/assets/clip/`` (another one may be given); the file's tensor
  names and shapes are checked against it before anything loads, and a difference is an error that names it;
* the tokenizer is a folder with CLIP's ``vocab.json`` and ``merges.txt`` (``tokenizer_path``; ComfyUI ships
  exactly OpenAI's in ``comfy/sd1_tokenizer/``, which the nodes pass);
* the image preprocessing is OpenAI's (CLIPImageProcessor's defaults) at the config's image size.

Many clip_vision files hold the image tower only (``vision_model.*``, or ``visual.*`` in the OpenAI/open_clip
layout): those are refused with a message saying which file to get instead. Loading is strict: the
``position_ids`` buffers that files saved by older transformers versions carry (they were persistent then; the
OpenAI file dates from that time, so it may hold them) must be ``0..n-1`` and are then dropped; any other missing
or unexpected tensor is an error.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import torch

from ..errors import CheckpointError
from .base import RewardModelNotFound

__all__ = [
    "CLIP_FILE_SUFFIXES",
    "VIT_L14_CONFIG",
    "check_clip_file",
    "clip_config",
    "is_single_file",
    "load_clip_file",
    "require_clip_file",
    "require_tokenizer_dir",
]

CLIP_FILE_SUFFIXES = (".safetensors", ".sft")
_WEIGHT_SUFFIXES = CLIP_FILE_SUFFIXES + (".bin", ".pt", ".pth", ".ckpt")
VIT_L14_CONFIG = resources.files("deepgen") / "assets" / "clip" / "clip-vit-large-patch14.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
FULL_FILE_HINT = (
    "use openai/clip-vit-large-patch14's model.safetensors (both towers, about 1.7 GB: "
    "`hf download openai/clip-vit-large-patch14 model.safetensors --local-dir DIR`), or that repository as a "
    "transformers folder in models/deepgen/clip"
)
_POSITION_IDS = "embeddings.position_ids"  # non-persistent buffers: arange, never trained
_LISTED = 6  # names listed in an error before "... and N more"


def is_single_file(path: str | Path) -> bool:
    """Whether ``path`` means one weights file (an existing file, or a missing path with a weights suffix)."""
    p = Path(path).expanduser()
    return p.is_file() or (not p.exists() and p.suffix.lower() in _WEIGHT_SUFFIXES)


def require_clip_file(path: str | Path) -> Path:
    """The resolved path of an existing safetensors file; RewardModelNotFound / CheckpointError otherwise."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise RewardModelNotFound(f"CLIP model file '{p}' is missing: {FULL_FILE_HINT}")
    if p.suffix.lower() not in CLIP_FILE_SUFFIXES:
        raise CheckpointError(f"{p.name}: a single CLIP file must be safetensors (.safetensors); {FULL_FILE_HINT}")
    return p.resolve()


def require_tokenizer_dir(tokenizer_path: str | Path | None, model_file: Path) -> Path:
    """The folder with CLIP's vocab.json and merges.txt that a single file needs; RewardModelNotFound otherwise."""
    hint = (
        "a folder with CLIP's vocab.json and merges.txt (ComfyUI ships OpenAI's in ComfyUI/comfy/sd1_tokenizer, "
        "which the nodes use; or `hf download openai/clip-vit-large-patch14 vocab.json merges.txt --local-dir DIR`)"
    )
    if tokenizer_path is None or not str(tokenizer_path).strip():
        raise RewardModelNotFound(
            f"{model_file.name} is a single CLIP file, which holds no tokenizer: set tokenizer_path "
            f'([rewards.clip] tokenizer_path = "..." in a stage-3 config) to {hint}'
        )
    p = Path(tokenizer_path).expanduser()
    missing = [f for f in TOKENIZER_FILES if not (p / f).is_file()]
    if missing:
        state = "is missing" if not p.is_dir() else f"lacks {', '.join(missing)}"
        raise RewardModelNotFound(f"CLIP tokenizer_path '{p}' {state}: it must be {hint}")
    return p.resolve()


def clip_config(config: str | Path | Mapping | None = None):
    """A transformers CLIPConfig: ViT-L/14's (None), a config.json file, or a dict of its fields."""
    from transformers import CLIPConfig

    if config is None:
        return CLIPConfig.from_dict(json.loads(VIT_L14_CONFIG.read_text(encoding="utf-8")))
    if isinstance(config, Mapping):
        return CLIPConfig.from_dict(dict(config))
    return CLIPConfig.from_dict(json.loads(Path(config).expanduser().read_text(encoding="utf-8")))


def config_name(config: str | Path | Mapping | None) -> str:
    """How error messages name a config."""
    if config is None:
        return "the ViT-L/14 config"
    if isinstance(config, Mapping):
        return "the given config"
    return f"the config {Path(config).expanduser().resolve()}"


def config_key(config: str | Path | Mapping | None) -> str:
    """A cache key for a config (its fields, for a dict)."""
    if isinstance(config, Mapping):
        return json.dumps(dict(config), sort_keys=True, default=str)
    return config_name(config)


@functools.lru_cache(maxsize=4)
def _expected(config_json: str) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(tensor name -> shape of the state dict, position_ids buffer name -> shape) of CLIPModel(config)."""
    from transformers import CLIPConfig, CLIPModel

    with torch.device("meta"):  # shapes only: no memory, no init
        model = CLIPModel(CLIPConfig.from_dict(json.loads(config_json)))
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    buffers = {k: tuple(b.shape) for k, b in model.named_buffers() if k.endswith(_POSITION_IDS)}
    return state, buffers


def _expected_for(cfg) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    return _expected(json.dumps(cfg.to_dict(), sort_keys=True, default=str))


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors header (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # a truncated or non-safetensors file
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({e})") from None


def _listing(names) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return ", ".join(names[:_LISTED]) + more


def _layout_problem(path: Path, keys: set[str]) -> str | None:
    """None for the transformers two-tower layout, else what the file is and what to use instead."""
    text = any(k.startswith("text_model.") for k in keys)
    vision = any(k.startswith(("vision_model.", "visual.")) for k in keys)
    open_clip_text = any(k.startswith(("transformer.resblocks.", "token_embedding.")) for k in keys)
    if text and any(k.startswith("vision_model.") for k in keys):
        return None
    if text and not vision:
        return (
            f"{path.name} holds only CLIP's text tower (like ComfyUI's clip_l text encoder). The clip reward "
            f"compares each image with its prompt, so it needs the image tower too: {FULL_FILE_HINT}"
        )
    if vision and not text and not open_clip_text:
        return (
            f"{path.name} holds only CLIP's image tower (no text_model.* tensors), as many clip_vision files do. The "
            f"clip reward compares each image with its prompt, so it needs the text tower too: {FULL_FILE_HINT}"
        )
    if open_clip_text:
        return (
            f"{path.name} holds CLIP in the OpenAI/open_clip layout (visual.*, transformer.resblocks.*), not the "
            f"transformers layout (text_model.*, vision_model.*) that the clip reward reads: {FULL_FILE_HINT}"
        )
    return f"{path.name} does not look like a CLIP model (its first tensors: {_listing(keys)}): {FULL_FILE_HINT}"


def check_clip_file(path: str | Path, config: str | Path | Mapping | None = None) -> Path:
    """Check a single CLIP file against ``config`` from its header alone: layout (both towers, transformers
    names), then every tensor's name and shape.  Returns the resolved path; CheckpointError names what differs."""
    p = require_clip_file(path)
    shapes = read_shapes(p)
    problem = _layout_problem(p, set(shapes))
    if problem:
        raise CheckpointError(problem)
    state, buffers = _expected_for(clip_config(config))
    missing = set(state) - set(shapes)
    unexpected = set(shapes) - set(state) - set(buffers)
    wrong = {k: (shapes[k], want) for k, want in {**state, **buffers}.items() if k in shapes and shapes[k] != want}
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            items = [f"{k} {list(got)} (expected {list(want)})" for k, (got, want) in sorted(wrong.items())]
            parts.append(f"wrong shapes: {_listing(items)}")
        if missing:
            parts.append(f"missing: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected: {_listing(unexpected)}")
        raise CheckpointError(
            f"{p.name} does not match {config_name(config)} ({'; '.join(parts)}). A ViT-L/14 file has a "
            f"1024-wide image tower of 24 layers and a 768-wide text tower of 12; {FULL_FILE_HINT}"
        )
    return p


def load_clip_file(path: Path, config: str | Path | Mapping | None, device, dtype: torch.dtype):
    """CLIPModel from one checked safetensors file, loaded strictly, on ``device`` in ``dtype``, frozen, eval."""
    from safetensors.torch import load_file
    from transformers import CLIPModel

    path = check_clip_file(path, config)
    cfg = clip_config(config)
    state = load_file(str(path))
    _, buffers = _expected_for(cfg)
    for name, shape in buffers.items():  # a saved position_ids buffer must be what the model makes: 0..n-1
        saved = state.pop(name, None)
        if saved is not None and not torch.equal(saved.long(), _arange(shape)):
            raise CheckpointError(f"{path.name}: {name} is not 0..{shape[-1] - 1}; the file is damaged")
    with torch.device("meta"):
        model = CLIPModel(cfg)
    model.load_state_dict(state, strict=True, assign=True)  # names were checked above: this cannot be partial
    for name, shape in buffers.items():  # non-persistent: in no state dict, made here as CLIPModel makes them
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner).register_buffer(attr, _arange(shape), persistent=False)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{path.name}: no tensor for {_listing(left)}")
    # nn.Module.to: transformers types PreTrainedModel.to's first argument as the model itself
    return torch.nn.Module.to(model, device=device, dtype=dtype).eval().requires_grad_(False)


def _arange(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.arange(shape[-1]).expand(shape).clone()


def clip_processor(tokenizer_dir: Path, config: str | Path | Mapping | None = None):
    """CLIPProcessor for a single file: the tokenizer folder's CLIPTokenizer and OpenAI's image preprocessing
    (CLIPImageProcessor's defaults: shortest side, centre crop, bicubic, OpenAI mean/std) at the config's size."""
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    size = int(clip_config(config).vision_config.image_size)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    images = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer)
