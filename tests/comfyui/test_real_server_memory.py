"""Memory in a real ComfyUI: after a run of a DeepGen whose DiT weights dominate memory (wide_model.py, ~660 MB of
fp32 at the real DiT width), `POST /free {"unload_models": true, "free_memory": true}` must give those bytes back,
and ComfyUI's model manager must be the one that loads them (its "Requested to load" / "loaded ..." log lines).

Each DeepGen weight set is a ModelPatcher that the stages load through load_models_gpu (nodes/model_handle.py); the
DiT's is the native MODEL's (DeepGenNativeDiT), so the log names it.
"""

from __future__ import annotations

import json
import re

import pytest
import workflow_api as wa
from server_kit import REPO, wait_for_rss
from wide_model import write_wide_checkpoint

MB = 1024 * 1024
WIDE_NAME = "deepgen-wide.safetensors"
LOAD_LINE = re.compile(r"loaded (?:completely|partially); [\d.]+ MB usable, ([\d.]+) MB loaded")


@pytest.fixture(scope="module")
def wide(extra_models_dir):
    return write_wide_checkpoint(extra_models_dir / "deepgen" / WIDE_NAME)


@pytest.fixture(scope="module")
def wide_run(server, wide, memory_mb):
    """One text-to-image run on the wide model, with the server's RSS before, after and after /free."""
    server.free()
    rss_idle = wait_for_rss(server, below=0, timeout=3)  # settle: just the readings after the previous tests
    workflow = json.loads((REPO / "workflows" / "deepgen_text_to_image.json").read_text(encoding="utf-8"))
    prompt = wa.to_api(workflow, server.object_info())
    wa.set_inputs(prompt, "DeepGenLoader", checkpoint=WIDE_NAME, precision="fp32")
    wa.set_inputs(prompt, "DeepGenSampler", steps=2, width=64, height=64)
    log_start = len(server.log_text())
    result = server.run(prompt, timeout=600)
    log = server.log_text()[log_start:]
    rss_loaded = server.rss()
    server.free()
    rss_freed = wait_for_rss(server, below=rss_loaded - int(0.9 * wide["dit_bytes"]), timeout=30)
    out = {
        "result": result,
        "log": log,
        "rss_idle": rss_idle,
        "rss_loaded": rss_loaded,
        "rss_freed": rss_freed,
        "dit_bytes": wide["dit_bytes"],
    }
    memory_mb.update(
        {
            "wide DiT weights (fp32)": wide["dit_bytes"] / MB,
            "server RSS before the wide run": rss_idle / MB,
            "server RSS after the wide run": rss_loaded / MB,
            "server RSS after POST /free": rss_freed / MB,
            "given back by /free": (rss_loaded - rss_freed) / MB,
        }
    )
    print({k: round(v / MB, 1) for k, v in out.items() if isinstance(v, int)})
    return out


def test_wide_model_runs_and_is_resident(wide_run):
    assert wide_run["result"].status == "success", wide_run["result"].error
    grown = wide_run["rss_loaded"] - wide_run["rss_idle"]
    # the weights were really read into the server (else the /free measurement below would mean nothing)
    assert grown >= 0.9 * wide_run["dit_bytes"], f"RSS grew {grown / MB:.0f} MB for {wide_run['dit_bytes'] / MB:.0f} MB"


def test_free_gives_the_weights_back(wide_run):
    freed = wide_run["rss_loaded"] - wide_run["rss_freed"]
    assert freed >= 0.9 * wide_run["dit_bytes"], (
        f"POST /free gave back {freed / MB:.0f} MB of RSS; the DiT alone holds {wide_run['dit_bytes'] / MB:.0f} MB"
    )


def test_comfyui_loads_deepgen_parts(wide_run):
    log = wide_run["log"]
    requested = re.findall(r"Requested to load (\S+)", log)
    loaded = sum(float(mb) for mb in LOAD_LINE.findall(log)) * MB
    assert requested, "ComfyUI's model manager loaded nothing during the DeepGen run"
    assert "DeepGenNativeDiT" in requested and "DeepGenSCB" in requested, requested
    assert loaded >= 0.9 * wide_run["dit_bytes"], (
        f"ComfyUI loaded {loaded / MB:.0f} MB ({requested}); the DiT alone holds {wide_run['dit_bytes'] / MB:.0f} MB"
    )
