"""DeepGenTrainLoRA and DeepGenLoRALoader on the tiny model: training under ComfyUI's inference mode leaves the
cached base untouched, the LoRA round trip reproduces the trained model (strength 1) and the base (strength 0),
interrupts checkpoint first and resume continues, bad input fails clearly, and the shipped LoRA fine-tuning
workflow runs.

Regenerate the shipped workflow after changing the node's inputs:  python tests/nodes/test_training_nodes.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _p in (str(ROOT / "tests"), str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from trainer_kit import assert_same_outputs, one_thread, outputs, write_folder_dataset  # noqa: E402

from nodes import comfy_services as cs  # noqa: E402
from nodes.lora_loader import NO_LORAS, DeepGenLoRALoader  # noqa: E402
from nodes.training import DeepGenTrainLoRA  # noqa: E402

WORKFLOW = "deepgen_lora_finetune.json"
FAST = dict(
    steps=3,
    learning_rate=1e-2,
    rank=4,
    validation_prompt="",
    save_every=2,
    resume=True,
    seed=0,
    batch_size=1,
    resolution=64,
    gradient_checkpointing=True,
    validation_steps=2,
)


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPGEN_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("DEEPGEN_OUTPUT_DIR", str(tmp_path / "output"))
    monkeypatch.setenv("DEEPGEN_INPUT_DIR", str(tmp_path))  # datasets are read from the input folder only
    with one_thread():
        yield


@pytest.fixture
def dataset(tmp_path):
    return write_folder_dataset(tmp_path / "my images", n=3)


def fresh_handle(inference: bool = True):
    """A DEEPGEN_MODEL whose weights were created under torch.inference_mode(), as ComfyUI's loader makes them."""
    from deepgen.tiny import build_tiny_model
    from nodes.model_handle import DeepGenModelHandle

    with torch.inference_mode(inference):
        model = build_tiny_model(seed=0)
    return DeepGenModelHandle(model, name="tiny", memory_mode="keep_all_on_gpu")


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def train_node(handle, dataset, **kw):
    args = {**FAST, **kw}
    with torch.inference_mode():  # ComfyUI runs every node like this
        return DeepGenTrainLoRA().train(
            handle,
            str(dataset),
            args.pop("lora_name", "test_lora"),
            args.pop("steps"),
            args.pop("learning_rate"),
            args.pop("rank"),
            args.pop("train_dit_lora", True),
            args.pop("train_vlm_lora", False),
            args.pop("train_connector", False),
            **args,
        )


def test_train_lora_node_round_trip(dataset, tmp_path):
    from deepgen.train.checkpointing import load_checkpoint, load_trainable_into
    from deepgen.train.config import config_from_dict
    from deepgen.train.runtime import TrainableSpec, setup_trainable

    handle = fresh_handle()
    base_state, base_out = state(handle.model), outputs(handle.model)
    flags = {n: p.requires_grad for n, p in handle.model.named_parameters()}
    events = []
    listener = lambda event, payload: events.append((event, payload))  # noqa: E731
    cs.add_event_listener(listener)
    try:
        trained, lora_path, loss, images = train_node(
            handle, dataset, train_vlm_lora=True, train_connector=True, unique_id="12"
        )
    finally:
        cs.remove_event_listener(listener)

    # the cached base model is exactly as before: no adapter left, same weights, same flags and modes
    assert same_state(state(handle.model), base_state)
    assert not any("lora" in n for n, _ in handle.model.named_modules())
    assert {n: p.requires_grad for n, p in handle.model.named_parameters()} == flags
    assert not handle.model.training
    # files, outputs and front-end events
    lora_dir = tmp_path / "models" / "loras" / "deepgen"
    assert Path(lora_path) == lora_dir / "test_lora.safetensors"
    assert (lora_dir / "test_lora_000002_steps.safetensors").is_file()
    assert len(loss["loss"]) == 3 and loss["steps"] == [1, 2, 3] and all(x == x for x in loss["loss"])
    assert images.shape == (2, 64, 64, 3) and 0 <= images.min() and images.max() <= 1  # step 2 and the end
    losses = [p for e, p in events if e == "deepgen1.train_loss" and p["task"] != "val_loss"]
    assert [p["step"] for p in losses] == [1, 2, 3]
    # the fixed-noise validation loss: a second series of the chart, every step of a 3-step run
    val = [p for e, p in events if e == "deepgen1.train_loss" and p["task"] == "val_loss"]
    assert [p["step"] for p in val] == loss["val_loss_steps"] == [1, 2, 3]
    assert [p["loss"] for p in val] == loss["val_loss"] and all(v > 0 for v in loss["val_loss"])
    assert {p["node"] for p in losses} == {"12"} and {p["task"] for p in losses} == {"text2image"}
    assert all(p["total_steps"] == 3 and p["lr"] > 0 and p["loss"] > 0 for p in losses)
    assert events[-1] == ("deepgen1.train_done", {"node": "12", "lora_path": lora_path})

    # the trained model, rebuilt independently from the run's last checkpoint (PEFT adapters + bridge tensors)
    from deepgen.tiny import build_tiny_model

    ckpt = load_checkpoint(tmp_path / "output" / "deepgen_training" / "test_lora")
    reference = build_tiny_model(seed=0)
    setup_trainable(reference, TrainableSpec.from_config(config_from_dict(ckpt.config)))
    load_trainable_into(reference, ckpt.trainable)
    expected = outputs(reference)

    # the node's output model = base + LoRA file at strength 1
    trained.activate()
    assert_same_outputs(outputs(trained.model), expected)
    # the LoRA loader: strength 1 reproduces the trained model, strength 0 the base; the base handle stays base
    name = "deepgen/test_lora.safetensors"
    assert name in DeepGenLoRALoader.INPUT_TYPES()["required"]["lora_name"][0]
    (one,) = DeepGenLoRALoader().load(handle, name, 1.0)
    (zero,) = DeepGenLoRALoader().load(handle, name, 0.0)
    one.activate()
    assert_same_outputs(outputs(one.model), expected)
    zero.activate()
    assert_same_outputs(outputs(zero.model), base_out, atol=1e-6)
    handle.activate()
    assert same_state(state(handle.model), base_state)
    # chained loaders stack; handles on the shared model take turns (keep_all_on_gpu: a stage loads every part)
    (twice,) = DeepGenLoRALoader().load(one, name, 1.0)
    with twice.stage("encode"):
        assert not torch.allclose(outputs(twice.model)[1], expected[1], atol=1e-4)
    with one.stage("sample"):
        assert_same_outputs(outputs(one.model), expected)
    with handle.stage("decode"):
        assert same_state(state(handle.model), base_state)


def test_resolution_0_trains_and_validates_at_the_models_own_size(dataset):
    """0 (the default) is the size the model draws at: the demo's 64, not the official 512 it would draw texture at."""
    handle = fresh_handle()
    handle.model.default_size = 32  # as a demo file's header sets it
    *_, images = train_node(handle, dataset, steps=1, save_every=0, resolution=0)
    assert tuple(images.shape[1:3]) == (32, 32)
    assert DeepGenTrainLoRA.INPUT_TYPES()["required"]["resolution"][1]["default"] == 0


def test_interrupt_saves_a_checkpoint_first_then_resume_continues(dataset, tmp_path):
    handle = fresh_handle(inference=False)
    base_state = state(handle.model)

    def stop_after_first_step(event, payload):
        if event == "deepgen1.train_loss" and payload["step"] == 1:
            cs.request_interrupt()

    cs.add_event_listener(stop_after_first_step)
    try:
        with pytest.raises(cs.DeepGenInterrupted):
            train_node(handle, dataset, save_every=0)
    finally:
        cs.remove_event_listener(stop_after_first_step)
    run = tmp_path / "output" / "deepgen_training" / "test_lora"
    assert (run / "latest").read_text().strip() == "checkpoint-00000001"
    assert same_state(state(handle.model), base_state)  # restored on the way out, too
    _, _, loss, _ = train_node(handle, dataset, save_every=0)
    assert loss["steps"] == [2, 3]
    # resume off starts over and keeps the old run folder
    _, _, loss, _ = train_node(handle, dataset, save_every=0, steps=1, resume=False)
    assert loss["steps"] == [1]
    assert any(p.name.startswith("test_lora.previous-") for p in run.parent.iterdir())


def test_bad_input_fails_clearly(dataset, tmp_path, monkeypatch):
    from deepgen.lora import LoraError
    from deepgen.train.data import EmptyDatasetError

    v = DeepGenTrainLoRA.VALIDATE_INPUTS
    assert "rank must be" in v(rank=0)
    assert "nothing to train" in v(train_dit_lora=False, train_vlm_lora=False, train_connector=False)
    assert "plain file name" in v(lora_name="../escape")
    assert v(lora_name="my lora v2", rank=8, train_dit_lora=True, train_vlm_lora=False, train_connector=False)
    handle = fresh_handle(inference=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EmptyDatasetError, match="No images"):
        train_node(handle, empty)
    with pytest.raises(EmptyDatasetError, match="no captions"):
        train_node(handle, write_folder_dataset(tmp_path / "nocap", captions=False))
    with pytest.raises(FileNotFoundError, match="not found"):
        train_node(handle, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="rank must be"):
        train_node(handle, dataset, rank=0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("DEEPGEN_OUTPUT_DIR", str(blocker / "out"))
    from deepgen.train.checkpointing import CheckpointError

    with pytest.raises(CheckpointError, match="output folder"):
        train_node(handle, dataset)
    # the loader: nothing to load, and a LoRA for another model size
    assert DeepGenLoRALoader.INPUT_TYPES()["required"]["lora_name"][0] == [NO_LORAS]
    with pytest.raises(FileNotFoundError, match="train one with DeepGenTrainLoRA"):
        DeepGenLoRALoader().load(handle, NO_LORAS, 1.0)
    from safetensors.torch import save_file

    wrong = tmp_path / "models" / "loras" / "wrong.safetensors"
    wrong.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 7),
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 4),
        },
        str(wrong),
    )
    with pytest.raises(LoraError, match="another model size"):
        DeepGenLoRALoader().load(handle, "wrong.safetensors", 1.0)


# ---- the shipped workflow ------------------------------------------------------------------------------------


def test_lora_finetune_workflow_runs(tmp_path, dataset, demo_model, monkeypatch):
    import comfy_core_nodes as core
    from workflow_harness import check_workflow, execute, ui_to_api

    from nodes import NODE_CLASS_MAPPINGS

    classes = {**core.CORE_NODES, **NODE_CLASS_MAPPINGS}
    workflow = json.loads((ROOT / "workflows" / WORKFLOW).read_text(encoding="utf-8"))
    check_workflow(workflow, classes, core.UI_EXTRA_WIDGET_VALUES)
    dirs = {k: tmp_path / k for k in ("input", "output", "temp")}
    for d in dirs.values():
        d.mkdir()
    monkeypatch.setattr(core, "DIRS", {k: str(v) for k, v in dirs.items()})
    prompt = ui_to_api(workflow, classes, core.UI_EXTRA_WIDGET_VALUES)
    before = state(demo_model)
    results, ui, _ = execute(
        prompt,
        classes,
        extra_pnginfo={"workflow": workflow},
        overrides={
            "DeepGenTrainLoRA": {
                "dataset": str(dataset),
                "steps": 2,
                "resolution": 64,
                "validation_steps": 2,
                "save_every": 0,
                "rank": 2,
            },
            "DeepGenSampler": {"steps": 2, "width": 64, "height": 64},
        },
    )
    train_id = next(nid for nid, n in prompt.items() if n["class_type"] == "DeepGenTrainLoRA")
    assert Path(results[train_id][1][0]).is_file() and len(results[train_id][2][0]["loss"]) == 2
    assert sorted(dirs["output"].rglob("*.png")), "the workflow saved no image"
    loader_id = next(nid for nid, n in prompt.items() if n["class_type"] == "DeepGenLoader")
    results[loader_id][0][0].activate()  # the LoRA is on the shared weights only while its handle is in use
    assert same_state(state(demo_model), before)  # the session's cached model is untouched
