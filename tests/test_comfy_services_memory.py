"""Tests of nodes/comfy_services' devices and memory: standalone fallbacks, and ComfyUI's model_management
through the test doubles of tests/comfy_doubles.py (fixture ``fake_comfy``).
"""

from __future__ import annotations

import pytest

from nodes import comfy_services as cs

pytestmark = pytest.mark.usefixtures("clean_comfy_services")


def test_devices_and_memory_outside(monkeypatch):
    import torch

    monkeypatch.setenv("DEEPGEN_DEVICE", "cpu")
    assert cs.torch_device() == torch.device("cpu")
    assert cs.offload_device() == torch.device("cpu")
    assert cs.intermediate_device() == torch.device("cpu")
    cs.free_memory()
    cs.free_memory(1 << 20)
    cs.soft_empty_cache()
    monkeypatch.delenv("DEEPGEN_DEVICE")
    assert isinstance(cs.torch_device(), torch.device)


def test_devices_and_memory_inside(fake_comfy):
    assert cs.torch_device() is fake_comfy.device
    assert cs.offload_device() is fake_comfy.offload
    assert cs.intermediate_device() is fake_comfy.intermediate
    cs.free_memory()
    assert fake_comfy.calls == [("soft_empty_cache",)]  # no eviction without an amount
    fake_comfy.calls.clear()
    cs.free_memory(3 << 30)
    assert fake_comfy.calls == [("free_memory", 3 << 30, fake_comfy.device), ("soft_empty_cache",)]
    fake_comfy.calls.clear()
    marker = object()
    cs.free_memory(10, device=marker)
    assert fake_comfy.calls[0] == ("free_memory", 10, marker)
