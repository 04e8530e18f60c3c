"""Shared test fixtures (session-scoped: models are loaded once; `converted` once per module that uses it)."""

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


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A genuine converted single file of the tiny model: (path, tensors, metadata) (the bad-input tables)."""
    from deepgen.loading import convert_model
    from deepgen.loading.state_dict_io import read_state_dict
    from deepgen.tiny import build_tiny_model

    path = convert_model(build_tiny_model(seed=0), tmp_path_factory.mktemp("converted") / "tiny.safetensors")
    tensors, metadata = read_state_dict(path)
    return path, {k: v.contiguous() for k, v in tensors.items()}, metadata
