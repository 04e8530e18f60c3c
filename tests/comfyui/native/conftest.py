"""In-process ComfyUI for the native MODEL/VAE tests: ComfyUI's own nodes (KSampler, VAEDecode, ...) on the
MODEL and VAE that DeepGenLoader outputs.

ComfyUI is found as for the real-server tests (../comfy_source.py: DEEPGEN_COMFYUI_DIR, else ../shared/comfyui).
Without it these tests skip with a reason; when CI is set they fail instead. ComfyUI runs in this process on the
CPU (`args.cpu` is set before comfy.model_management is imported). ComfyUI's top-level `nodes.py` and this
repository's `nodes/` package share a name, so the extension is imported by path under its own package name, as
ComfyUI imports custom nodes; run these tests on their own (not in the main suite's process).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
EXTENSION = "comfyui_deepgen_ext"  # the package name the extension is imported under
TESTS = ROOT / "tests"


def _comfy_dir() -> Path:
    """The tree comfy_source.locate() finds (as for the real-server tests); skip on a user's clone, fail under CI."""
    sys.path.insert(0, str(TESTS / "comfyui"))
    import comfy_source

    try:
        return comfy_source.locate()
    except comfy_source.Missing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; CI must run the native ComfyUI tests", pytrace=False)
        pytest.skip(str(exc), allow_module_level=True)
        raise  # unreachable: skip raises


def _start_comfy(comfy_dir: Path):
    if "nodes" in sys.modules and not str(getattr(sys.modules["nodes"], "__file__", "")).startswith(str(comfy_dir)):
        pytest.fail("another `nodes` module is already imported: run tests/comfyui/native in its own process")
    sys.path.insert(0, str(comfy_dir))
    sys.path.append(str(TESTS))  # official_fixture
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management picks a device
    import comfy.model_management  # noqa: F401

    return importlib.import_module("nodes")  # ComfyUI's nodes.py (sys.path[0]), not this repository's package


def _import_extension():
    if EXTENSION in sys.modules:
        return sys.modules[EXTENSION]
    spec = importlib.util.spec_from_file_location(
        EXTENSION, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[EXTENSION] = module
    spec.loader.exec_module(module)
    return module


COMFY_DIR = _comfy_dir()
COMFY_NODES = _start_comfy(COMFY_DIR)


@pytest.fixture(scope="session")
def comfy_nodes():
    """ComfyUI's nodes.py (KSampler, VAEDecode, VAEEncode, LatentUpscale, LoraLoaderModelOnly, ...)."""
    return COMFY_NODES


@pytest.fixture(scope="session")
def ext():
    """This repository as ComfyUI imports it: NODE_CLASS_MAPPINGS and the nodes package."""
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return _import_extension()


@pytest.fixture(autouse=True)
def unload_after(tmp_path, monkeypatch):
    """Inference mode, as in ComfyUI; each test starts from unpatched weights: ComfyUI unpatches LoRA weights when it unloads a model."""
    import comfy.model_management
    import torch

    monkeypatch.setenv("DEEPGEN_OUTPUT_DIR", str(tmp_path))
    with torch.inference_mode():  # as ComfyUI's PromptExecutor runs every node
        yield

    comfy.model_management.unload_all_models()
