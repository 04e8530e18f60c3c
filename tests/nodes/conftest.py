"""Fixtures for the node tests: no ComfyUI needed.

One random tiny DeepGen per session (the loader's demo choice returns it instead of building a new one), an
empty model root, CPU compute, and a clean interrupt flag around every test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny(request):
    """The session's random tiny DeepGen (shared with tests/conftest.py's tiny_model when it exists)."""
    try:
        return request.getfixturevalue("tiny_model")
    except pytest.FixtureLookupError:
        from deepgen.tiny import build_tiny_model

        return build_tiny_model(seed=0)


@pytest.fixture(scope="session")
def empty_models_root(tmp_path_factory):
    return tmp_path_factory.mktemp("models-empty")


@pytest.fixture(autouse=True)
def node_env(monkeypatch, empty_models_root):
    from nodes import comfy_services as cs

    monkeypatch.setenv("DEEPGEN_MODELS_DIR", str(empty_models_root))
    monkeypatch.setenv("DEEPGEN_DEVICE", os.environ.get("DEEPGEN_DEVICE", "cpu"))
    cs.clear_interrupt()
    yield
    cs.clear_interrupt()


@pytest.fixture
def demo_model(tiny, monkeypatch):
    """Make the loader's demo choice return the session's tiny model (building one costs seconds)."""
    import torch

    import deepgen.tiny

    real = deepgen.tiny.build_tiny_model

    def build(seed: int = 0, dtype=torch.float32):
        return tiny if (seed, dtype) == (0, torch.float32) else real(seed=seed, dtype=dtype)

    monkeypatch.setattr(deepgen.tiny, "build_tiny_model", build)
    return tiny


@pytest.fixture
def handle(demo_model):
    """A DEEPGEN_MODEL from the loader node's demo choice."""
    from nodes.loader import DeepGenLoader
    from nodes.types import TINY_CHOICE

    h = DeepGenLoader().load(checkpoint=TINY_CHOICE)[0]
    return h
