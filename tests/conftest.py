"""Shared test fixtures (session-scoped: models are loaded once)."""

from __future__ import annotations

import json

import pytest
import torch
from official_fixture import OFFICIAL, load_official

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def official_model():
    return load_official()


@pytest.fixture(scope="session")
def reference():
    from safetensors.torch import load_file

    return load_file(str(OFFICIAL / "reference.safetensors"))


@pytest.fixture(scope="session")
def reference_meta():
    return json.loads((OFFICIAL / "reference.json").read_text())


@pytest.fixture(scope="session")
def tiny_model():
    from deepgen.tiny import build_tiny_model

    return build_tiny_model(seed=0)
