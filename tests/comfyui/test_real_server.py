"""The extension inside a real ComfyUI server (main.py --cpu): node specs, every shipped workflow, interrupt,
templates and the web extension's files."""

from __future__ import annotations

import json
import sys

import pytest
import workflow_api as wa
from server_kit import REPO, PromptRejected

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
PACK = "ComfyUI-DeepGen"  # the folder name under custom_nodes/ (server_kit.make_base_directory)
SPEED_OVERRIDES = wa.harness.TRAINING_SPEED_OVERRIDES


def _repo_nodes():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    return NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS


def _kind(spec) -> str:
    return "COMBO" if isinstance(spec[0], (list, tuple)) else spec[0]


def test_object_info_lists_every_node_with_its_types(server):
    classes, display = _repo_nodes()
    info = server.object_info()
    missing = sorted(set(classes) - set(info))
    assert not missing, f"the server does not list {missing}\n{server.log_tail()}"
    for name, cls in classes.items():
        served = info[name]
        types = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            ours = {k: _kind(v) for k, v in types.get(section, {}).items()}
            theirs = {k: _kind(v) for k, v in served["input"].get(section, {}).items()}
            assert theirs == ours, f"{name} {section} inputs"
        assert served["output"] == list(cls.RETURN_TYPES), name
        names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
        assert served["output_name"] == list(names), name
        is_list = getattr(cls, "OUTPUT_IS_LIST", (False,) * len(cls.RETURN_TYPES))
        assert served["output_is_list"] == list(is_list), name
        assert served["output_node"] == bool(getattr(cls, "OUTPUT_NODE", False)), name
        assert served["display_name"] == display.get(name, name), name
        assert served["category"] == cls.CATEGORY, name


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_to_success(server, path, timings):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    prompt = wa.to_api(workflow, server.object_info())
    for class_type, values in SPEED_OVERRIDES.items():
        wa.set_inputs(prompt, class_type, **values)
    result = server.run(prompt, timeout=900, extra_data={"extra_pnginfo": {"workflow": workflow}})
    timings[f"workflow {path.stem}"] = result.seconds
    print(f"{path.stem}: {result.status} in {result.seconds:.2f} s")
    assert result.status == "success", f"{path.name}: {result.error}\n{server.log_tail()}"

    executed = {m["node"] for m in result.of_type("executed")}
    outputs = server.history(result.prompt_id).get("outputs", {})
    images = [img for out in outputs.values() for img in out.get("images", [])]
    assert images, f"{path.name} produced no image (executed nodes: {sorted(executed)})"
    for img in images:
        folder = server.base_dir / img["type"] / img["subfolder"]
        assert (folder / img["filename"]).is_file(), img


def _sampling_prompt(server, steps: int, size: int) -> tuple[dict, str]:
    workflow = json.loads((REPO / "workflows" / "deepgen_text_to_image.json").read_text(encoding="utf-8"))
    prompt = wa.to_api(workflow, server.object_info())
    wa.set_inputs(prompt, "DeepGenSampler", steps=steps, width=size, height=size)
    sampler = next(nid for nid, n in prompt.items() if n["class_type"] == "DeepGenSampler")
    return prompt, sampler


def test_interrupt_is_acknowledged_within_one_step(server, timings):
    steps, interrupt_after = 100, 3
    prompt, sampler = _sampling_prompt(server, steps=steps, size=768)
    seen = {"at_interrupt": None}

    def on_message(message):
        data = message["data"]
        if (
            message["type"] == "progress"
            and data.get("node") == sampler
            and data["value"] >= interrupt_after
            and seen["at_interrupt"] is None
        ):
            server.interrupt()  # returns once the server has set its interrupt flag
            seen["at_interrupt"] = data["value"]

    result = server.run(prompt, timeout=600, on_message=on_message)
    progress = [m for m in result.messages if m["type"] == "progress" and m["data"].get("node") == sampler]
    values = [m["data"]["value"] for m in progress]
    assert seen["at_interrupt"] is not None, f"no progress from the sampler: {result.messages[-5:]}"
    assert result.status == "interrupted", f"{result.status}: {result.error}"
    step_s = (progress[interrupt_after - 1]["t"] - progress[0]["t"]) / max(1, interrupt_after - 1)
    timings["interrupt: seconds per step (768 px, tiny)"] = step_s
    timings["interrupt: steps done after the request"] = values[-1] - seen["at_interrupt"]
    print(f"interrupt sent after step {seen['at_interrupt']}, last step {values[-1]} of {steps}; {step_s:.3f} s/step")
    assert values[-1] - seen["at_interrupt"] <= 1, f"steps after the interrupt: {values[seen['at_interrupt'] :]}"

    # the server is usable afterwards
    after = server.run(_sampling_prompt(server, steps=2, size=64)[0], timeout=300)
    assert after.status == "success", after.error


def _refused(server, prompt) -> dict:
    with pytest.raises(PromptRejected) as info:
        server.queue(prompt)
    return info.value.body.get("node_errors", {})


def test_bad_widgets_are_refused_when_queued(server):
    """Issue 12 section 4: a width of 13 and an empty prompt are refused by POST /prompt, before any node runs."""
    prompt, sampler = _sampling_prompt(server, steps=2, size=64)
    wa.set_inputs(prompt, "DeepGenSampler", width=13)
    errors = _refused(server, prompt)[sampler]["errors"]
    details = [e["details"] for e in errors]
    # ComfyUI files the one message under every input VALIDATE_INPUTS takes; the message names only width
    assert all("width 13 is not a multiple of 16 (try 16)" in d for d in details), details
    assert not any("16 or 16" in d or "height 64" in d for d in details), details

    prompt, _ = _sampling_prompt(server, steps=2, size=64)
    wa.set_inputs(prompt, "ThinkTokenEncode", prompt="  ")
    node_errors = _refused(server, prompt)
    encode = next(nid for nid, n in prompt.items() if n["class_type"] == "ThinkTokenEncode")
    assert set(node_errors) == {encode}, node_errors
    assert "prompt is empty" in node_errors[encode]["errors"][0]["details"]
    assert server.get_json("/queue") == {"queue_running": [], "queue_pending": []}


def test_missing_reward_model_is_refused_when_queued(server):
    """Issue 16: DeepGenTrainRL with a reward whose model is not installed is refused by POST /prompt, with a
    message naming the folder it looked in, before any model loads."""
    workflow = json.loads((REPO / "workflows" / "deepgen_rl_finetune.json").read_text(encoding="utf-8"))
    prompt = wa.to_api(workflow, server.object_info())
    wa.set_inputs(prompt, "DeepGenTrainRL", rewards="clip=0.3, brightness=0.7")
    train = next(nid for nid, n in prompt.items() if n["class_type"] == "DeepGenTrainRL")
    node_errors = _refused(server, prompt)
    assert set(node_errors) == {train}, node_errors
    details = node_errors[train]["errors"][0]["details"]
    assert "CLIP model folder" in details and "clip" in details, details
    wa.set_inputs(prompt, "DeepGenTrainRL", rewards="sharpness=1")
    assert "unknown reward sharpness" in _refused(server, prompt)[train]["errors"][0]["details"]
    assert server.get_json("/queue") == {"queue_running": [], "queue_pending": []}


def test_templates_and_web_extension_are_served(server):
    listed = server.get_json("/api/workflow_templates")
    assert sorted(listed.get(PACK, [])) == sorted(p.stem for p in WORKFLOWS)
    for path in WORKFLOWS:
        served = server.get_bytes(f"/api/workflow_templates/{PACK}/{path.name}")
        assert json.loads(served) == json.loads(path.read_text(encoding="utf-8")), path.name
    extensions = server.get_json("/extensions")
    ours = sorted(e for e in extensions if e.startswith(f"/extensions/{PACK}/"))
    shipped = sorted(f"/extensions/{PACK}/{p.name}" for p in (REPO / "web").glob("*.js"))
    assert set(shipped) <= set(ours), (shipped, ours)
    for url in shipped:
        assert server.get_bytes(url) == (REPO / "web" / url.rsplit("/", 1)[1]).read_bytes()
