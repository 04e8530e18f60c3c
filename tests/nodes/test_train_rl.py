"""DeepGenTrainRL on the tiny model: the node and the headless ``deepgen train --stage 3`` with the same settings
give the same per-step rewards; an interrupt checkpoints and the next queue resumes to the same curve; the
per-reward events; bad input and a missing reward model fail when the prompt is queued."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _p in (str(ROOT / "tests"), str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from trainer_kit import one_thread  # noqa: E402

from nodes import comfy_services as cs  # noqa: E402
from nodes.train_rl import REWARDS_EVENT, DeepGenTrainRL  # noqa: E402
from nodes.train_rl_inputs import (  # noqa: E402
    category_weights,
    model_keys,
    parse_prompt_lines,
    parse_reward_weights,
    training_prompts,
)

PROMPTS = ["a red apple on a table", "a small house in a field", "a blue car on a road"]
FAST = dict(
    prompts="\n".join(PROMPTS),
    rewards="brightness=1\ntext_rendering: brightness=0.3, saturation=0.7",
    lora_name="rl_test",
    steps=3,
    learning_rate=3e-3,
    rank=4,
    group_size=2,
    prompts_per_step=2,
    kl_beta=5e-7,
    sft_lambda=0.0,
    sft_images="",
    eval_prompts="",
    save_every=0,
    eval_every=0,
    resume=True,
    seed=0,
    resolution=32,
    sampling_steps=4,
)

# the same run as a stage-3 config file (docs/nodes.md: the node's inputs → these keys)
HEADLESS_TOML = """
stage = 3
model = "tiny"
seed = 0
cpu = true
mixed_precision = "no"
gradient_checkpointing = true
policy = "lora"
dit_lora_rank = 4
dit_lora_alpha = 8.0
dit_lora_targets = ["attn"]
reference = "disable_adapter"
reward_modules = ["deepgen.train.grpo.toy_rewards"]
group_size = 2
prompts_per_step = 2
rollout_micro_batch_size = 4
train_micro_batch_size = 4
num_steps = 4
resolution = 32
kl_beta = 5e-7
sft_lambda = 0.0
sft_batch_size = 2
lr = 3e-3
warmup_steps = 0
max_steps = 3
output_dir = "{out}"
save_every = 0
keep_last = 2
trackers = ["none"]
val_loss_every = 0
eval_prompts = "{evals}"
eval_every = 0
eval_num_steps = 4
eval_before_training = true

[[prompts]]
path = "{prompts}"
category = "general"

[category_weights]
general = {{ brightness = 1.0 }}
"""


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPGEN_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("DEEPGEN_OUTPUT_DIR", str(tmp_path / "output"))
    monkeypatch.setenv("DEEPGEN_INPUT_DIR", str(tmp_path))
    with one_thread():
        yield


@pytest.fixture(scope="module")
def headless_model():
    """The model ``model = "tiny"`` gives the headless trainer, built once; each run gets a fresh copy."""
    from deepgen.train.runtime import load_model_for_training

    return load_model_for_training("tiny")[0]


def node_handle(model):
    """A DEEPGEN_MODEL over a copy of ``model`` whose weights are inference tensors, as ComfyUI's loader makes them."""
    import copy

    from nodes.model_handle import DeepGenModelHandle

    with torch.inference_mode():
        clone = copy.deepcopy(model)
    return DeepGenModelHandle(clone, name="tiny", memory_mode="keep_all_on_gpu")


def run_node(handle, **kw):
    with torch.inference_mode():  # ComfyUI runs every node like this
        return DeepGenTrainRL().train(handle, **{**FAST, **kw})


def rewards_of(curve: dict) -> list[tuple]:
    b = curve["rewards"]["brightness"]
    return list(zip(curve["steps"], b["mean"], b["std"], curve["total"]["mean"], curve["kl"]))


def test_node_matches_headless_stage3(tmp_path, headless_model):
    from deepgen.train.grpo.cli import run_grpo_from_config_file
    from deepgen.train.grpo.output import read_log

    handle = node_handle(headless_model)
    handle.model.default_size = 32  # as a demo file's header sets it: resolution 0 (the default) means this size
    assert DeepGenTrainRL.INPUT_TYPES()["required"]["resolution"][1]["default"] == 0
    before = {k: v.clone() for k, v in handle.model.state_dict().items()}
    events = []
    listener = lambda event, payload: events.append((event, payload))  # noqa: E731
    cs.add_event_listener(listener)
    try:
        trained, lora_path, curve_json, images = run_node(handle, unique_id="7", resolution=0)
    finally:
        cs.remove_event_listener(listener)
    after = handle.model.state_dict()  # the cached base model is as before: no adapter, same weights
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    curve = json.loads(curve_json)
    assert curve["steps"] == [1, 2, 3]
    assert Path(lora_path) == tmp_path / "models" / "loras" / "deepgen" / "rl_test.safetensors"
    assert Path(lora_path).is_file()
    assert images.shape == (1, 32, 32, 3)  # the eval before training
    sent = [p for e, p in events if e == REWARDS_EVENT]
    assert [p["step"] for p in sent] == [1, 2, 3] and {p["node"] for p in sent} == {"7"}
    assert [(p["rewards"]["brightness"]["mean"], p["kl"]) for p in sent] == [
        (m, k) for _, m, _, _, k in rewards_of(curve)
    ]
    assert all(p["total"]["mean"] == p["rewards"]["brightness"]["mean"] for p in sent)  # weight 1
    assert sent[0]["kl"] == 0.0 and sent[-1]["kl"] > 0  # the policy left the reference

    # headless: the same settings as a config file, run by the `deepgen train --stage 3` entry point
    (tmp_path / "h").mkdir()
    prompts = tmp_path / "h" / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    evals = tmp_path / "h" / "eval.txt"
    evals.write_text(PROMPTS[0] + "\n", encoding="utf-8")
    out = tmp_path / "h" / "out"
    toml = tmp_path / "h" / "stage3.toml"
    toml.write_text(HEADLESS_TOML.format(out=out, evals=evals, prompts=prompts), encoding="utf-8")
    run_grpo_from_config_file(toml)
    log = [r for r in read_log(out) if not r.get("eval")]
    headless = [
        (r["step"], r["reward/brightness/mean"], r["reward/brightness/std"], r["reward/weighted/mean"], r["kl"])
        for r in log
    ]
    assert headless == rewards_of(curve)
    # the config the node wrote for `deepgen train --stage 3` holds the same algorithm settings as the TOML
    from deepgen.train.grpo.run_config import load_stage3_config

    written_file = tmp_path / "output" / "deepgen_training" / "rl_test" / "stage3_config.json"
    written = load_stage3_config(written_file)
    by_hand = load_stage3_config(toml)
    assert written.grpo == by_hand.grpo and written.trainable_spec() == by_hand.trainable_spec()
    assert written.model == "tiny"  # the loader's checkpoint
    assert json.loads(written_file.read_text())["resolution"] == 32  # 0 written as the size it meant
    # ...and run as it is (another output folder), it gives the same curve again
    run_grpo_from_config_file(written_file, [f'output_dir="{tmp_path / "again"}"'])
    again = [r for r in read_log(tmp_path / "again") if not r.get("eval")]
    assert [(r["step"], r["reward/brightness/mean"], r["kl"]) for r in again] == [
        (s, m, k) for s, m, _, _, k in rewards_of(curve)
    ]


def test_interrupt_then_resume_gives_the_same_curve(tmp_path, headless_model):
    _, _, full, _ = run_node(node_handle(headless_model), lora_name="full")

    def stop_after_first_step(event, payload):
        if event == REWARDS_EVENT and payload["step"] == 1:
            cs.request_interrupt()

    cs.add_event_listener(stop_after_first_step)
    try:
        with pytest.raises(cs.DeepGenInterrupted):
            run_node(node_handle(headless_model), lora_name="cut")
    finally:
        cs.remove_event_listener(stop_after_first_step)
    cs.clear_interrupt()
    run = tmp_path / "output" / "deepgen_training" / "cut"
    assert (run / "latest").read_text().strip() == "checkpoint-00000001"
    events = []
    listener = lambda event, payload: events.append((event, payload))  # noqa: E731
    cs.add_event_listener(listener)
    try:
        _, _, resumed, _ = run_node(node_handle(headless_model), lora_name="cut")
    finally:
        cs.remove_event_listener(listener)
    # the chart gets step 1 again (from the log), then the new steps
    assert [p["step"] for e, p in events if e == REWARDS_EVENT] == [1, 2, 3]
    full, resumed = json.loads(full), json.loads(resumed)
    assert resumed["steps"] == [1, 2, 3]
    assert rewards_of(resumed) == rewards_of(full)


def test_bad_input_fails_when_queued(tmp_path):
    v = DeepGenTrainRL.VALIDATE_INPUTS
    assert v(lora_name="ok", rewards="brightness=1", prompts="a cat", group_size=2) is True
    assert "plain file name" in v(lora_name="../x")
    assert "not 'name=weight'" in v(rewards="brightness")
    assert "unknown reward sharpness" in v(rewards="sharpness=1")
    assert "rewards is empty" in v(rewards="  \n# nothing")
    assert "prompts is empty" in v(prompts="\n# only a comment\n")
    missing = v(rewards="clip=0.3, brightness=0.7")
    assert "CLIP model folder" in missing and str(tmp_path / "models") in missing
    assert "preference judge" in v(rewards="preference=1")
    assert v(rewards="preference=1", judge_url="http://127.0.0.1:18087") is True
    with pytest.raises(ValueError, match="no reward weights"):
        category_weights(parse_prompt_lines("text\ta sign"), *parse_reward_weights("general: brightness=1"))
    src = {"checkpoint": "/m/deepgen.safetensors", "vlm": "/m/Qwen2.5-VL-3B", "diffusion": "", "layout": "x"}
    assert model_keys(SimpleNamespace(sources=src, name="deepgen.safetensors")) == {
        "model": "/m/deepgen.safetensors",
        "vlm": "/m/Qwen2.5-VL-3B",
    }
    # a prompt file in the input folder (the stage-3 formats), after the written prompts; inside the folder only
    (tmp_path / "p.jsonl").write_text('{"prompt": "a sign", "category": "text"}\n"a dog"\n', encoding="utf-8")
    assert v(prompts="", prompts_file="p.jsonl", rewards="brightness=1") is True
    assert training_prompts("a cat", "p.jsonl") == [
        {"prompt": "a cat", "category": "general"},
        {"prompt": "a sign", "category": "text_rendering"},
        {"prompt": "a dog", "category": "general"},
    ]
    assert training_prompts("# only a comment", "p.jsonl")[0]["prompt"] == "a sign"
    assert "prompts_file 'nope.txt' not found" in v(prompts="a cat", prompts_file="nope.txt")
    assert "'..'" in v(prompts="a cat", prompts_file="../outside.txt")
    assert "or name a prompt file in prompts_file" in v(prompts="", prompts_file="")
    assert parse_prompt_lines("text_rendering\ta sign that says 'OPEN'\n# c\nplain") == [
        {"prompt": "a sign that says 'OPEN'", "category": "text_rendering"},
        {"prompt": "plain", "category": "general"},
    ]


def test_the_models_own_vlm_as_judge(tmp_path, headless_model, monkeypatch):
    """judge = this model's VLM: no judge folder or server needed; the run's config says judge = "deepgen", and the
    trainer judges with the very model it trains (the random tiny VLM answers nothing readable: all ties)."""
    from deepgen.rewards import DeepGenVLMJudge
    from nodes.reward_sources import JUDGE_VLM

    judged_with = []
    real = DeepGenVLMJudge.generate

    def spy(self, text, images):
        judged_with.append(self.model)
        return real(self, text, images)

    monkeypatch.setattr(DeepGenVLMJudge, "generate", spy)
    v = DeepGenTrainRL.VALIDATE_INPUTS
    assert "preference judge" in v(rewards="preference=1")  # the folder is missing...
    assert v(rewards="preference=1", judge=JUDGE_VLM) is True  # ...and not needed
    handle = node_handle(headless_model)
    _, _, curve_json, _ = run_node(
        handle, rewards="preference=1", judge=JUDGE_VLM, lora_name="vlm_judge", steps=1, prompts_per_step=1
    )
    curve = json.loads(curve_json)
    assert curve["rewards"]["preference"]["mean"] == [0.5] and curve["rewards"]["preference"]["std"] == [0.0]
    assert len(judged_with) == 1 and judged_with[0] is handle.model  # one pair (G = 2), judged by the trained model
    written = json.loads((tmp_path / "output" / "deepgen_training" / "vlm_judge" / "stage3_config.json").read_text())
    assert written["rewards"] == {"preference": {"judge": "deepgen"}}
