"""Reading checkpoint files safely: safetensors (memory-mapped) first, `.pt` only with weights_only=True."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return (tensors, metadata). Tensors from safetensors are memory-mapped, not copied.

    `.pt` files are opened with `torch.load(weights_only=True)`, which refuses pickled code or objects;
    a `state_dict` / `module` wrapper and a leading `module.` (DDP/DeepSpeed) are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint file is empty: {path}")
    if path.suffix in SAFETENSORS_SUFFIXES:
        tensors, metadata = _read_safetensors(path)
    elif path.suffix in PICKLE_SUFFIXES:
        tensors, metadata = _read_pickle(path), {}
    else:
        raise CheckpointError(f"Unsupported checkpoint type {path.suffix!r} ({path}); use .safetensors or .pt")
    return _unwrap(tensors, path), metadata


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file's header, without reading any tensor."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint file is empty: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}). It may be truncated or still "
            "downloading: compare its size with the published one and download it again."
        ) from exc


def _read_safetensors(path: Path):
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}). It may be truncated or still downloading: "
            "compare its size with the published one and download it again."
        ) from exc
    return tensors, metadata


def _read_pickle(path: Path):
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"Refused to load {path}: it contains pickled Python objects that are not plain tensors "
            f"({str(exc).splitlines()[0]}). Loading it could execute code. Convert a trusted copy to safetensors, "
            "or use the official release files."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({str(exc).splitlines()[0]}). "
            "It may be truncated: compare its size with the published one and download it again."
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return obj


def _unwrap(obj: dict, path: Path) -> dict[str, torch.Tensor]:
    for wrapper in ("state_dict", "module", "model"):
        if set(obj) == {wrapper} or (wrapper == "state_dict" and isinstance(obj.get(wrapper), dict)):
            obj = obj[wrapper]
    tensors = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        tensors[key[len("module.") :] if key.startswith("module.") else key] = value
    return tensors
