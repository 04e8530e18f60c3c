"""Tests of nodes/comfy_services' events: listeners and payload checks standalone, and ComfyUI's PromptServer
through the test doubles of tests/comfy_doubles.py (fixture ``fake_comfy``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from nodes import comfy_services as cs

pytestmark = pytest.mark.usefixtures("clean_comfy_services")


def test_send_event_outside_reaches_listeners_only():
    import torch

    got = []

    def listener(event, payload):
        got.append((event, payload))

    def broken(event, payload):
        raise RuntimeError("listener bug")

    cs.add_event_listener(broken)
    cs.add_event_listener(listener)
    cs.add_event_listener(listener)  # registered once
    cs.send_event(
        "deepgen1.train_loss",
        {
            "node": "7",
            "step": torch.tensor(3),
            "loss": float("nan"),
            "lr": torch.tensor(1e-4),
            "extra": (1, float("inf")),
            "path": Path("a/b"),
        },
    )
    assert len(got) == 1
    event, payload = got[0]
    assert event == "deepgen1.train_loss"
    assert payload["step"] == 3 and payload["loss"] is None and payload["extra"] == [1, None]
    assert math.isclose(payload["lr"], 1e-4, rel_tol=1e-6) and payload["path"] == os.path.join("a", "b")
    cs.remove_event_listener(listener)
    cs.send_event("deepgen1.train_done", {"node": "7"})
    assert len(got) == 1
    cs.send_progress_text("hello", "7")  # no-op outside


@pytest.mark.parametrize("event", ["train_loss", "deepgen.train_loss", "deepgen1.", None])
def test_send_event_requires_namespace(event):
    with pytest.raises(ValueError, match="deepgen1"):
        cs.send_event(event, {})  # type: ignore[arg-type]


def test_send_event_payload_checks():
    with pytest.raises(TypeError):
        cs.send_event("deepgen1.x", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cs.send_event("deepgen1.x", {"obj": object()})


def test_send_event_inside_uses_prompt_server(fake_comfy):
    got = []
    cs.add_event_listener(lambda e, p: got.append(e))
    cs.send_event("deepgen1.train_loss", {"node": "5", "step": 1, "loss": float("nan")})
    cs.send_event("deepgen1.train_done", {"node": "5", "lora_path": "x.safetensors"}, broadcast=True)
    assert fake_comfy.sent == [
        ("deepgen1.train_loss", {"node": "5", "step": 1, "loss": None}, "tab-1"),
        ("deepgen1.train_done", {"node": "5", "lora_path": "x.safetensors"}, None),
    ]
    assert got == ["deepgen1.train_loss", "deepgen1.train_done"]
    cs.send_progress_text("step 1/10", 5)
    assert fake_comfy.texts == [("step 1/10", "5", "tab-1")]

    fake_comfy.PromptServer.instance = None  # in-process / headless use: no server
    cs.send_event("deepgen1.train_loss", {"node": "5"})
    cs.send_progress_text("x", "5")
    assert len(fake_comfy.sent) == 2
