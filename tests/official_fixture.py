"""Paths and loader for the official tiny fixture, shared by the tests.

It is a copy of ../shared/fixtures/deepgen-official-tiny (a user's fresh clone has no ../shared), loaded
through the same public loader a user calls."""

from __future__ import annotations

from pathlib import Path

import torch

OFFICIAL = Path(__file__).parent / "fixtures" / "deepgen-official-tiny"
# The fixture's connector is 32 wide with 4 heads; heads cannot be read from tensor shapes.
OFFICIAL_CONNECTOR = {"num_attention_heads": 4}


def official_paths(checkpoint: str = "model.safetensors") -> dict:
    return {
        "checkpoint": OFFICIAL / checkpoint,
        "vlm": OFFICIAL / "Qwen2.5-VL-tiny",
        "diffusion": OFFICIAL / "UniPic2-tiny",
    }


def load_official(checkpoint: str = "model.safetensors", **kwargs):
    from deepgen.loading import load_model

    paths = official_paths(checkpoint)
    kwargs.setdefault("dtype", torch.float32)
    kwargs.setdefault("connector_config", OFFICIAL_CONNECTOR)
    return load_model(paths["checkpoint"], paths["vlm"], paths["diffusion"], **kwargs)
