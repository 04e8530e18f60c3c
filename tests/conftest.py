"""Shared test fixtures (session-scoped: models are loaded once; `converted` once per module that uses it).

`clean_comfy_services` and `fake_comfy` serve tests/test_comfy_services_*.py (the doubles: tests/comfy_doubles.py).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from official_fixture import OFFICIAL, load_official

torch.set_num_threads(min(2, torch.get_num_threads()))

# tests/comfyui is its own pytest project, run with ComfyUI's virtual environment (see its pytest.ini)
collect_ignore = ["comfyui"]


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


@pytest.fixture
def clean_comfy_services(monkeypatch):
    """No ComfyUI modules, no DEEPGEN_* settings, no interrupt request or event listener before and after a test."""
    from comfy_doubles import COMFY_MODULES

    from nodes import comfy_services as cs

    for name in COMFY_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    for var in ("DEEPGEN_MODELS_DIR", "DEEPGEN_DEVICE", "DEEPGEN_ALLOW_EXTERNAL_SYMLINKS"):
        monkeypatch.delenv(var, raising=False)
    cs.clear_interrupt()
    cs._listeners.clear()
    yield
    cs._interrupt_flag.clear()
    cs._listeners.clear()


@pytest.fixture
def fake_comfy(tmp_path, monkeypatch):
    """ComfyUI's modules replaced by the recording doubles of tests/comfy_doubles.py."""
    from comfy_doubles import FakeComfy

    fake = FakeComfy(tmp_path)
    for name, mod in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return fake
