"""A tiny random CLIP with the real key layout, and its tokenizer, written by the tests themselves
(tests/test_rewards_clip*.py, tests/nodes/test_reward_sources.py): as a transformers folder and as one
safetensors file like openai/clip-vit-large-patch14's model.safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer(folder: Path) -> dict:
    """A byte-level CLIP BPE vocab (no merges): vocab.json and merges.txt in ``folder``; returns the vocab."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return vocab


def tiny_config(vocab: dict) -> dict:
    """A 2-layer CLIP config over ``vocab`` (32 px images), as the dict a config.json holds."""
    eos = vocab["<|endoftext|>"]
    return {
        "text_config": dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=eos - 1,
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        "vision_config": dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        "projection_dim": 16,
    }


def image_processor(size: int = 32):
    try:
        from transformers import CLIPImageProcessorPil as ImageProc  # transformers 5 without torchvision
    except ImportError:  # pragma: no cover - transformers 4
        from transformers import CLIPImageProcessor as ImageProc
    return ImageProc(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def tiny_clip(folder: Path, seed: int = 0):
    """A transformers folder (model, tokenizer, 32 px image processor); returns (CLIPModel, config dict)."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    cfg = tiny_config(write_tokenizer(folder))
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(**cfg))
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor(), tokenizer=tok).save_pretrained(folder)
    return model, cfg


def save_single_file(model, path: Path, *, position_ids: bool = True, edit=None) -> Path:
    """``model``'s tensors as one safetensors file; with ``position_ids`` the two buffers that files saved
    by older transformers carry (the current one saves none); ``edit(state)`` may change the dict first."""
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if position_ids:
        for name, buf in model.named_buffers():
            if name.endswith("embeddings.position_ids"):
                state[name] = buf.clone().contiguous()
    if edit is not None:
        edit(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_header_only_file(path: Path, shapes: dict, dtype: str = "F16") -> Path:
    """A valid safetensors file whose tensors are all zeros, written sparse: the header is real, the data is a
    hole, so a ViT-L/14-shaped file (1.7 GB of tensors) costs no disk and no time. Enough for checks that read
    the header only (what the nodes do when a prompt is queued); ``position_ids`` entries are stored as int64."""
    import struct

    size = {"F16": 2, "F32": 4, "I64": 8}
    header, offset = {}, 0
    for name, shape in shapes.items():
        kind = "I64" if name.endswith("position_ids") else dtype
        n = size[kind]
        for d in shape:
            n *= d
        header[name] = {"dtype": kind, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path
