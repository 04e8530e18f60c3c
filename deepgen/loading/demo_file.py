"""The demo model's file: a converted single file (`deepgen.loading.convert`) without the two parts that would make
it 40 MB instead of a few: the tokenizer (the package ships it, deepgen.tokenizer) and the VLM's token embedding
(151 936 x 64 numbers the demo never trained: it is drawn again from a seeded generator on load).

`model="tiny"` (the CLI's default, DeepGenLoader's demo choice) loads deepgen/assets/demo/deepgen_demo.safetensors,
written by scripts/train_demo_model.py. Its header is checked like a converted file's: format and version, JSON,
known config keys, sane sizes, before any tensor is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .errors import CheckpointError

DEMO_FORMAT = "deepgen-demo"
DEMO_VERSION = "1"
DEMO_FILE = Path(__file__).resolve().parents[1] / "assets" / "demo" / "deepgen_demo.safetensors"
EMBED_KEY = "lmm.model.language_model.embed_tokens.weight"
# Unit scale, not transformers' 0.02: the token then dominates the residual stream of the random 36-layer VLM, so
# the prompt reaches SCB's taps clearly (at 0.02 the random layers' sums drown it and the demo ignores its prompt).
EMBED_STD = 1.0


def is_demo_file(metadata: dict | None) -> bool:
    return (metadata or {}).get("format") == DEMO_FORMAT


def seeded_embedding(seed: int, vocab: int, width: int) -> torch.Tensor:
    """The demo VLM's token embedding: N(0, EMBED_STD²) from torch's CPU generator, the same on every machine."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, width, generator=generator) * EMBED_STD


def set_seeded_embedding(model, seed: int) -> None:
    """Give ``model``'s VLM the seeded embedding (before training, so the trained model matches the file)."""
    embed = model.lmm.get_input_embeddings().weight
    with torch.no_grad():
        embed.copy_(seeded_embedding(seed, *embed.shape).to(embed.dtype))


def write_demo_file(
    model, output: str | os.PathLike, *, embed_seed: int, default_size: int, dtype: torch.dtype = torch.float16
) -> Path:
    """Write ``model`` (whose VLM embedding is ``seeded_embedding(embed_seed)``, untrained) as a demo file."""
    from .convert import model_configs, model_tensors

    tensors = model_tensors(model)
    embed = tensors.pop(EMBED_KEY)
    if not torch.allclose(embed.float(), seeded_embedding(embed_seed, *embed.shape), atol=1e-3):
        raise CheckpointError(
            f"The VLM's token embedding is not the seeded one (seed {embed_seed}); the demo file cannot rebuild it"
        )
    metadata = {
        "format": DEMO_FORMAT,
        "format_version": DEMO_VERSION,
        "configs": json.dumps(model_configs(model), default=str),
        "embed_seed": str(embed_seed),
        "default_size": str(default_size),
    }
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}, str(partial), metadata)
    os.replace(partial, output)
    return output


def read_demo_header(metadata: dict, source: str) -> tuple[dict, int, int]:
    """(configs, embed_seed, default_size) of a demo file's header, each checked."""
    from .single_file import CONFIG_PARTS, _json_object, check_config_sizes, check_known_keys

    if metadata.get("format_version") != DEMO_VERSION:
        raise CheckpointError(
            f"{source}: unsupported demo-file version {metadata.get('format_version')!r} (this version reads "
            f"{DEMO_VERSION!r}); run scripts/train_demo_model.py again"
        )
    configs = _json_object(metadata.get("configs"), "configs", source)
    if sorted(configs) != sorted(CONFIG_PARTS) or not all(isinstance(configs[p], dict) for p in CONFIG_PARTS):
        raise CheckpointError(f"{source}: header configs must be exactly {', '.join(CONFIG_PARTS)}, each an object")
    for part in CONFIG_PARTS:
        check_config_sizes(configs[part], f"{source}: config {part}")
    check_known_keys(configs, source)
    numbers = []
    for field in ("embed_seed", "default_size"):
        text = str(metadata.get(field, ""))
        if not text.isdigit() or int(text) > 1 << 31:
            raise CheckpointError(f"{source}: header field {field!r} must be a whole number, not {text!r}")
        numbers.append(int(text))
    return configs, numbers[0], numbers[1]


def demo_state(configs: dict, state: dict[str, torch.Tensor], embed_seed: int, source: str) -> dict:
    """The file's tensors plus the seeded embedding, sized from the VLM config."""
    text = configs["vlm"].get("text_config") or configs["vlm"]
    vocab, width = text.get("vocab_size"), text.get("hidden_size")
    if not isinstance(vocab, int) or not isinstance(width, int):
        raise CheckpointError(f"{source}: the VLM config lacks vocab_size / hidden_size")
    if EMBED_KEY in state:
        raise CheckpointError(f"{source}: a demo file must not hold {EMBED_KEY} (it is rebuilt from the seed)")
    return {**state, EMBED_KEY: seeded_embedding(embed_seed, vocab, width)}
