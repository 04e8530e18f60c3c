"""One policy for where the model runs and in which dtype, shared by the CLI, the nodes and the trainer."""

from __future__ import annotations

import torch

from .errors import InputError

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pick_device(name: str = "auto") -> torch.device:
    """'auto': CUDA when available, else MPS, else the CPU; anything else as torch names it (cpu, cuda:1...)."""
    if name != "auto":
        try:
            return torch.device(name)
        except RuntimeError as exc:
            raise InputError(f"device {name!r} is not a device name (auto, cpu, cuda, cuda:1, mps...)") from exc
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name: str = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """'auto': bf16 on CUDA that has it, else fp16 on CUDA and MPS, fp32 on the CPU (where half precision is slow
    and bf16 convolutions are slower still); 'bf16' | 'fp16' | 'fp32' as named."""
    if name != "auto":
        if name not in PRECISIONS:
            raise InputError(f"precision {name!r} is not one of auto, {', '.join(PRECISIONS)}")
        return PRECISIONS[name]
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "mps":
        return torch.float16
    return torch.float32
