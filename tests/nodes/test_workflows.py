"""Every shipped workflow: a valid UI graph whose API form runs end to end on the tiny model and makes images.

Structure and every widget value are checked exactly as shipped. For execution only, a few constants are
lowered so the suite stays fast on a CPU (SPEED_OVERRIDES: 2 steps at 64x64, references kept at 64x64);
the graph, the links, the node code paths and every other value are the shipped ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import comfy_core_nodes as core
import numpy as np
import pytest
from PIL import Image
from workflow_harness import TRAINING_SPEED_OVERRIDES, check_workflow, execute, not_run, ui_to_api

from nodes import NODE_CLASS_MAPPINGS
from nodes.types import TINY_CHOICE

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
CLASSES = {**core.CORE_NODES, **NODE_CLASS_MAPPINGS}
SPEED_OVERRIDES = {
    "DeepGenSampler": {"steps": 2},
    "DeepGenEdit": {"steps": 2, "reference_resize": "keep"},
    "ThinkTokenEncode": {"reference_resize": "keep"},
    **TRAINING_SPEED_OVERRIDES,
}
SIZE_OVERRIDES = {"width": 64, "height": 64}  # applied where the shipped value is not 0 (auto)


@pytest.fixture
def comfy_dirs(tmp_path, monkeypatch):
    dirs = {k: tmp_path / k for k in ("input", "output", "temp")}
    for d in dirs.values():
        d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(dirs["input"] / "example.png")
    monkeypatch.setattr(core, "DIRS", {k: str(v) for k, v in dirs.items()})
    # DeepGenTrainLoRA (deepgen_lora_finetune.json): a captioned image folder in input/, outputs kept in tmp_path
    lora_data = dirs["input"] / "deepgen_lora_dataset"
    lora_data.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(lora_data / f"{i}.png")
        (lora_data / f"{i}.txt").write_text("a noisy square", encoding="utf-8")
    monkeypatch.chdir(dirs["input"])  # outside ComfyUI a relative dataset path is looked up in the working folder
    monkeypatch.setenv("DEEPGEN_OUTPUT_DIR", str(dirs["output"]))
    monkeypatch.setenv("DEEPGEN_MODELS_DIR", str(tmp_path / "models"))
    return dirs


def test_every_workflow_is_listed():
    names = {p.name for p in WORKFLOWS}
    assert {
        "deepgen_text_to_image.json",
        "deepgen_text_to_image_two_pass.json",
        "deepgen_edit.json",
        "deepgen_edit_multi_reference.json",
        "deepgen_edit_composed.json",
        "deepgen_best_of_n.json",
        "deepgen_text_to_image_native.json",
        "deepgen_edit_native.json",
        "deepgen_rl_finetune.json",
    } <= names


def test_every_shipped_workflow_is_what_build_workflows_writes():
    """After changing a node's inputs, regenerate: python tests/nodes/build_workflows.py"""
    from build_workflows import WORKFLOWS as BUILDERS

    assert sorted(BUILDERS) == [p.name for p in WORKFLOWS]
    for path in WORKFLOWS:
        assert json.loads(path.read_text(encoding="utf-8")) == BUILDERS[path.name]().to_json(), path.name


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_valid_and_runs(path, comfy_dirs, demo_model):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    check_workflow(workflow, CLASSES, core.UI_EXTRA_WIDGET_VALUES)

    types = {n["type"] for n in workflow["nodes"]}
    loaders = [n for n in workflow["nodes"] if n["type"] == "DeepGenLoader"]
    assert len(loaders) == 1 and loaders[0]["widgets_values"][0] == TINY_CHOICE
    assert types <= set(CLASSES)

    prompt = ui_to_api(workflow, CLASSES, core.UI_EXTRA_WIDGET_VALUES)
    assert set(prompt) == {str(n["id"]) for n in workflow["nodes"]}
    json.dumps(prompt)  # API form is plain JSON
    overrides = {k: dict(v) for k, v in SPEED_OVERRIDES.items()}
    for node in prompt.values():
        if node["class_type"] in ("DeepGenSampler", "DeepGenEdit"):
            shipped = node["inputs"]
            overrides[node["class_type"]].update({k: v for k, v in SIZE_OVERRIDES.items() if shipped.get(k)})
    skipped = not_run(prompt, CLASSES)  # ComfyUI's own sampler/VAE nodes: tests/comfyui/native runs them
    results, ui, order = execute(prompt, CLASSES, extra_pnginfo={"workflow": workflow}, overrides=overrides)
    assert set(order) == set(prompt) - set(skipped)

    # dependency order: every node after its inputs
    position = {nid: i for i, nid in enumerate(order)}
    for nid in order:
        for value in prompt[nid]["inputs"].values():
            if isinstance(value, list):
                assert position[value[0]] < position[nid]

    saved = sorted((comfy_dirs["output"]).rglob("*.png"))
    assert saved or skipped, "the workflow saved no image"
    for nid, out in ui.items():
        for item in out.get("images", []):
            folder = comfy_dirs["output" if item["type"] == "output" else "temp"]
            file = folder / item["subfolder"] / item["filename"]
            with Image.open(file) as img:
                assert img.mode == "RGB" and min(img.size) >= 64
                assert json.loads(img.text["workflow"])["nodes"] == workflow["nodes"]  # drag-and-drop metadata
    for nid, node in prompt.items():
        if node["class_type"] in ("DeepGenSampler", "DeepGenEdit"):
            images, latent = results[nid][0][0], results[nid][1][0]
            assert images.ndim == 4 and images.shape[-1] == 3 and latent["samples"].shape[1] == 16
        if node["class_type"] == "RewardScore":
            rows = ui[nid]["deepgen1_rewards"]
            assert len(rows) == len(results[nid][0]) == 4 and sum(r["best"] for r in rows) <= 1
        if node["class_type"] == "SCBBridge" and skipped:  # what the native nodes receive
            positive, negative = results[nid][1][0], results[nid][2][0]
            assert positive[0][0].shape[-1] == negative[0][0].shape[-1] and "pooled_output" in positive[0][1]
            think = prompt[node["inputs"]["think"][0]]  # the ThinkTokenEncode feeding this bridge
            assert ("reference_latents" in positive[0][1]) == ("image_1" in think["inputs"])
    if skipped:
        pytest.skip(
            f"ran {len(order)} nodes; not run here: {', '.join(sorted(set(skipped.values())))} ({core.NATIVE_REASON})"
        )


def _mutated(name: str, mutate) -> dict:
    workflow = json.loads((ROOT / "workflows" / name).read_text(encoding="utf-8"))
    mutate(workflow)
    return workflow


def _node(workflow, kind):
    return next(n for n in workflow["nodes"] if n["type"] == kind)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda w: _node(w, "DeepGenSampler")["widgets_values"].__setitem__(0, 500), "multiple of 16"),
        (lambda w: _node(w, "DeepGenSampler")["widgets_values"].__setitem__(3, 0), "min"),
        (lambda w: _node(w, "DeepGenSampler")["widgets_values"].__setitem__(7, "sometimes"), "control_after_generate"),
        (lambda w: _node(w, "DeepGenLoader")["widgets_values"].__setitem__(4, "fp8"), "not one of"),
        (lambda w: _node(w, "SaveImage").__setitem__("type", "SaveImageWebsocket"), "unknown node type"),
        (lambda w: w["links"][0].__setitem__(5, "MODEL"), "link 1"),
        (lambda w: _node(w, "SCBBridge")["inputs"][1].__setitem__("link", None), "required input 'think'"),
        (lambda w: _node(w, "SaveImage")["widgets_values"].append("extra"), "unexpected extra"),
    ],
)
def test_checker_catches_broken_workflows(comfy_dirs, mutate, message):
    from workflow_harness import WorkflowError

    workflow = _mutated("deepgen_text_to_image.json", mutate)
    with pytest.raises(WorkflowError, match=message):
        check_workflow(workflow, CLASSES, core.UI_EXTRA_WIDGET_VALUES)
