"""Where RewardScore and DeepGenTrainRL find their reward models: CLIP as a models/deepgen folder or a
models/clip_vision file (with ComfyUI's own CLIP tokenizer), the judge as a folder, a URL or the DeepGen model's
own VLM; the check when the prompt is queued covers each, names stay inside their folders, and the stage-3 config
the node writes carries the file and the tokenizer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from clip_kit import write_header_only_file, write_tokenizer  # noqa: E402
from comfy_doubles import touch  # noqa: E402

from nodes import comfy_services as cs  # noqa: E402
from nodes import reward_sources as rs  # noqa: E402
from nodes import train_rl_inputs as inputs  # noqa: E402
from nodes.reward import RewardScore  # noqa: E402
from nodes.train_rl import DeepGenTrainRL  # noqa: E402

VIT_L = "clip_vision/openai-clip-vit-large-patch14.safetensors"


@pytest.fixture
def models(tmp_path, monkeypatch):
    root = tmp_path / "models"
    monkeypatch.setenv("DEEPGEN_MODELS_DIR", str(root))
    return root


def vit_l_shapes(only=None) -> dict:
    from deepgen.rewards.clip_file import _expected_for, clip_config

    state, position_ids = _expected_for(clip_config())
    shapes = {**state, **position_ids}  # with the buffers older transformers saved
    return {k: v for k, v in shapes.items() if only is None or k.startswith(only)}


@pytest.fixture
def vit_l(models) -> Path:
    """A ViT-L/14 two-tower file in the transformers layout: a real header over zero data (written sparse)."""
    return write_header_only_file(models / VIT_L, vit_l_shapes())


@pytest.fixture
def comfy_tokenizer(tmp_path, monkeypatch) -> str:
    """What the adapter finds inside ComfyUI: its comfy/sd1_tokenizer folder (tests/test_comfy_services_folders.py
    checks the lookup itself)."""
    folder = tmp_path / "ComfyUI" / "comfy" / "sd1_tokenizer"
    write_tokenizer(folder)
    monkeypatch.setattr(cs, "clip_tokenizer_dir", lambda: str(folder))
    return str(folder)


def rl_check(**kw):
    return DeepGenTrainRL.VALIDATE_INPUTS(**kw)


def test_clip_choices_list_clip_vision_files_next_to_the_folders(models, vit_l):
    touch(models / "deepgen" / "clip" / "config.json")
    touch(models / "clip_vision" / "old.bin")  # not safetensors: never offered
    want = ["auto", "clip", VIT_L]
    assert rs.clip_choices() == want
    assert RewardScore.INPUT_TYPES()["required"]["clip_model"][0] == want
    assert DeepGenTrainRL.INPUT_TYPES()["optional"]["clip_model"][0] == want
    assert RewardScore.INPUT_TYPES()["optional"]["model"][0] == "DEEPGEN_MODEL"


def test_queued_check_covers_a_clip_vision_file(models, vit_l, comfy_tokenizer):
    assert rl_check(rewards="clip=1", clip_model=VIT_L) is True
    assert RewardScore.VALIDATE_INPUTS(rewards="clip", clip_model=VIT_L) is True
    assert rs.clip_settings(VIT_L) == {"model_path": str(vit_l), "tokenizer_path": comfy_tokenizer}

    write_header_only_file(models / "clip_vision" / "clip_vision_l.safetensors", vit_l_shapes(only="vision_model."))
    for problem in (
        rl_check(rewards="clip=1", clip_model="clip_vision/clip_vision_l.safetensors"),
        RewardScore.VALIDATE_INPUTS(rewards="general", clip_model="clip_vision/clip_vision_l.safetensors"),
    ):
        assert "holds only CLIP's image tower" in problem and "openai/clip-vit-large-patch14" in problem

    narrow = {k: (s[:-1] + (s[-1] // 2,) if k == "text_projection.weight" else s) for k, s in vit_l_shapes().items()}
    write_header_only_file(models / "clip_vision" / "narrow.safetensors", narrow)
    problem = rl_check(rewards="clip=1", clip_model="clip_vision/narrow.safetensors")
    assert "does not match the ViT-L/14 config" in problem and "text_projection.weight [768, 384]" in problem

    assert "'..'" in rl_check(rewards="clip=1", clip_model="clip_vision/../deepgen/x.safetensors")
    assert "not found" in RewardScore.VALIDATE_INPUTS(rewards="clip", clip_model="clip_vision/nope.safetensors")
    assert RewardScore.VALIDATE_INPUTS(rewards="ocr", clip_model="clip_vision/nope.safetensors") is True  # unused
    assert "rewards must be one of" in RewardScore.VALIDATE_INPUTS(rewards="sharpness")
    assert "not 'name=weight'" in RewardScore.VALIDATE_INPUTS(rewards="custom", custom_weights="clip")


def test_a_clip_file_outside_comfyui_has_no_tokenizer(models, vit_l):
    problem = rl_check(rewards="clip=1", clip_model=VIT_L)
    assert "holds no tokenizer" in problem and "comfy/sd1_tokenizer" in problem
    assert "not running inside ComfyUI" in problem
    missing = RewardScore.VALIDATE_INPUTS(rewards="clip", clip_model="auto")
    assert "CLIP model folder" in missing and "models/clip_vision" in missing


def test_stage3_config_carries_the_clip_file_and_tokenizer(tmp_path, models, vit_l, comfy_tokenizer):
    """The config the node writes (stage3_config.json) names the file and ComfyUI's tokenizer folder, and
    `deepgen train --stage 3 --config` reads them into the clip reward as the node's own run does."""
    from deepgen.rewards import create_reward
    from deepgen.train.grpo.run_config import load_stage3_config, stage3_config_from_dict

    settings = inputs.reward_settings(["clip", "brightness"], clip_model=VIT_L)
    values = inputs.stage3_values(
        model={"model": "tiny"},
        run=tmp_path / "run",
        prompts_file=inputs.write_prompt_file(tmp_path / "run" / "prompts.jsonl", [{"prompt": "a", "category": "g"}]),
        eval_file="",
        weights={"general": {"clip": 1.0}},
        rewards=settings,
        steps=1,
        learning_rate=1e-4,
        rank=4,
        group_size=2,
        prompts_per_step=1,
        kl_beta=0.0,
        sft_lambda=0.0,
        sft_data="",
        save_every=0,
        eval_every=0,
        seed=0,
        resolution=64,
        sampling_steps=2,
        resume=False,
        cpu=True,
    )
    written = tmp_path / "run" / "stage3_config.json"
    written.write_text(json.dumps(values), encoding="utf-8")
    node_cfg, headless_cfg = stage3_config_from_dict(values), load_stage3_config(written)
    assert (
        node_cfg.rewards
        == headless_cfg.rewards
        == {"clip": {"model_path": str(vit_l), "tokenizer_path": comfy_tokenizer}}
    )
    reward = create_reward("clip", **headless_cfg.rewards["clip"])
    assert (reward.model_path, reward.tokenizer_path) == (str(vit_l), comfy_tokenizer)


def test_judge_sources(models):
    touch(models / "deepgen" / "unifiedreward-think" / "config.json")
    assert inputs.reward_settings(["preference"], judge=rs.JUDGE_VLM) == {"preference": {"judge": "deepgen"}}
    assert inputs.reward_problem({"preference"}, judge=rs.JUDGE_VLM) is None
    url = "http://127.0.0.1:18087"
    assert rs.judge_settings(rs.AUTO, url) == rs.judge_settings(rs.JUDGE_URL, url) == {"url": url}
    folder = str(models / "deepgen" / "unifiedreward-think")
    assert rs.judge_settings(rs.JUDGE_LOCAL, url) == rs.judge_settings(rs.AUTO, "") == {"model_path": folder}
    assert "judge_url is empty" in rl_check(rewards="preference=1", judge=rs.JUDGE_URL)
    assert "is not one of" in rl_check(rewards="preference=1", judge="the moon")
    (models / "deepgen" / "unifiedreward-think" / "config.json").unlink()
    missing = rl_check(rewards="preference=1", judge=rs.JUDGE_LOCAL, judge_url=url)
    assert "preference judge model folder" in missing and "this model's VLM" in missing


def test_reward_score_judges_with_a_connected_deepgen_model(handle, monkeypatch):
    """The connected model's own VLM judges (the random tiny one answers nothing readable: ties, said in the
    report); it is loaded for the judging and unloaded after it, as after encoding."""
    from deepgen.rewards import DeepGenVLMJudge
    from nodes.comfy_services import managed_models as mm

    loaded_while_judging = []
    real = DeepGenVLMJudge.generate

    def spy(self, text, images):
        loaded_while_judging.append(mm.loaded_model_names())
        return real(self, text, images)

    monkeypatch.setattr(DeepGenVLMJudge, "generate", spy)
    monkeypatch.setattr(DeepGenVLMJudge, "__init__", _short_judge(DeepGenVLMJudge.__init__))
    images = torch.stack([torch.full((32, 32, 3), v) for v in (0.1, 0.8)])
    out = RewardScore().score(images, "a bright picture", "preference", model=handle)
    scores, _, report, _ = out["result"]
    assert scores == [0.5, 0.5]
    assert "the DeepGen model's VLM gave no readable verdict on 1 of 1 comparisons" in report
    assert len(loaded_while_judging) == 1 and "DeepGenVLM" in loaded_while_judging[0]
    assert handle.memory_mode == "offload_vlm_after_encode" and "DeepGenVLM" not in mm.loaded_model_names()


def _short_judge(init):
    """The node's judge with few new tokens and small images (the tiny VLM never stops on its own)."""

    def short(self, model=None, **kw):
        init(self, model, **{**kw, "max_new_tokens": 4, "image_size": 64})

    return short
