"""The loaded DeepGen model's VLM as the pairwise preference judge, on the tiny model: end to end through the real
generate path (the tiny VLM is random: every answer is unreadable, so every pair is a tie), parsed answers giving
the expected win rates (the VLM's generate replaced by a rule that reads the two images it was given), nothing
loaded twice; and in the stage-3 trainer, ``judge = "deepgen"`` judging with the policy model's frozen VLM."""

from __future__ import annotations

import gc

import pytest
import torch
from PIL import Image
from trainer_kit import one_thread, stage3_values

from deepgen import constants as C
from deepgen.rewards import DeepGenVLMJudge, PreferenceReward, create_reward
from deepgen.train.runtime import TrainingError


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def refuse_model_loading(monkeypatch) -> None:
    """From here on, building or reading any transformers model is an error: the judge must reuse the loaded VLM."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_config", classmethod(refuse))


def gray(v: int, size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), (v, v, v))


def qwen_vlms() -> int:
    from transformers import Qwen2_5_VLForConditionalGeneration

    return sum(issubclass(type(o), Qwen2_5_VLForConditionalGeneration) for o in gc.get_objects())


def test_tiny_vlm_judges_end_to_end_and_its_random_answers_are_ties(tiny_model, monkeypatch):
    refuse_model_loading(monkeypatch)
    before = {k: v.clone() for k, v in tiny_model.lmm.state_dict().items()}
    vlms = qwen_vlms()
    judge = DeepGenVLMJudge(tiny_model, image_size=64, max_new_tokens=6)
    reward = PreferenceReward(judge, seed=0)
    scores = reward([gray(v) for v in (0, 120, 250)], "a gray square")
    assert len(reward.last_comparisons) == 3
    # the random VLM generated text for every pair (no call failed), and none of it is a verdict
    assert all(isinstance(c["answer"], str) and c["answer"].strip() for c in reward.last_comparisons)
    assert all(c["verdict"] is None for c in reward.last_comparisons)
    assert scores.tolist() == [0.5, 0.5, 0.5]
    assert judge.load()[0] is tiny_model.lmm and qwen_vlms() == vlms  # the model's own VLM, no second one
    after = tiny_model.lmm.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert tiny_model.lmm.model.rope_deltas is None  # generation's cache on the model is put back


def test_parsed_answers_give_the_expected_win_rates(tiny_model, monkeypatch):
    """The VLM's generate answers from the pixels it receives ("Image N is better" for the brighter of the two),
    so the expected win rates follow from the images alone, whatever order each pair is shown in."""
    tokenizer = tiny_model.tokenizer
    seen = []

    def brighter_wins(input_ids, pixel_values, image_grid_thw, **kw):
        assert kw["do_sample"] is False and C.IM_END_TOKEN_ID in kw["eos_token_id"]
        assert int((input_ids == C.IMAGE_PAD_TOKEN_ID).sum()) == int(image_grid_thw.prod(-1).sum()) // 4
        first, second = pixel_values.float().chunk(2)  # two same-size images: image 1's patches, then image 2's
        seen.append(image_grid_thw.tolist())
        answer = "Image 1 is better" if first.mean() > second.mean() else "<answer>Image 2 is better</answer>"
        new = torch.tensor([tokenizer.encode(answer) + [C.IM_END_TOKEN_ID]])
        return torch.cat([input_ids, new], dim=1)

    monkeypatch.setattr(tiny_model.lmm, "generate", brighter_wins)
    reward = PreferenceReward(DeepGenVLMJudge(tiny_model, image_size=64), seed=3)
    images = [gray(v) for v in (250, 0, 120, 60)]
    scores = reward(images, "a bright picture")
    assert scores.tolist() == pytest.approx([1.0, 0.0, 2 / 3, 1 / 3], abs=1e-3)
    assert {c["verdict"] for c in reward.last_comparisons} <= {1, 2} and len(seen) == 6
    assert seen[0] == [[1, 4, 4], [1, 4, 4]]  # 64 px -> 56 px in the vision tower: 4x4 patches of 14
    assert {(c["first"], c["second"]) for c in reward.last_comparisons} != {
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
    }


def test_named_judge_and_unbound_judge():
    reward = create_reward("preference", judge="deepgen", max_new_tokens=4)
    assert isinstance(reward.judge, DeepGenVLMJudge) and reward.judge.max_new_tokens == 4
    with pytest.raises(Exception, match="no model was given"):
        reward([gray(0), gray(9)], "p")
    with pytest.raises(ValueError, match="the one named judge is 'deepgen'"):
        PreferenceReward(judge="unifiedreward")
    with pytest.raises(TypeError, match="takes no url"):
        PreferenceReward(judge="deepgen", url="http://127.0.0.1:1")


def test_trainer_judges_with_the_policy_models_frozen_vlm(tmp_path, monkeypatch):
    from deepgen.tiny import build_tiny_model
    from deepgen.train.grpo.run_config import stage3_config_from_dict
    from deepgen.train.grpo.trainer import GRPOTrainer

    model = build_tiny_model(0)
    refuse_model_loading(monkeypatch)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na blue circle\n", encoding="utf-8")
    values = stage3_values(
        tmp_path / "out",
        str(prompts),
        max_steps=1,
        group_size=2,
        category_weights={"general": {"preference": 1.0}},
        rewards={"preference": {"judge": "deepgen", "image_size": 64, "max_new_tokens": 4}},
    )
    before = {k: v.clone() for k, v in model.lmm.state_dict().items()}
    vlms = qwen_vlms()
    trainer = GRPOTrainer(stage3_config_from_dict(values), model=model).setup()
    judge = trainer.reward_mix.reward("preference").judge
    assert judge.model is trainer.model is model and qwen_vlms() == vlms
    (rec,) = trainer.train()
    assert rec["reward/preference/mean"] == 0.5 and rec["reward/preference/std"] == 0.0  # random VLM: all ties
    comparisons = trainer.reward_mix.reward("preference").last_comparisons
    assert len(comparisons) == 2 and all(c["verdict"] is None and c["answer"] for c in comparisons)
    after = model.lmm.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # the DiT-LoRA policy left the VLM as it was


def test_trainer_refuses_a_vlm_judge_that_would_train(tmp_path):
    from deepgen.tiny import build_tiny_model
    from deepgen.train.grpo.reward_setup import bind_policy_judges, check_policy_judge_config
    from deepgen.train.grpo.run_config import stage3_config_from_dict

    cfg = stage3_config_from_dict(stage3_values(tmp_path / "out", str(tmp_path / "p.txt")))
    with pytest.raises(TrainingError, match="not available under FSDP"):
        check_policy_judge_config(cfg, sharded=True)
    check_policy_judge_config(cfg, sharded=False)  # the stage-3 policy never trains the VLM
    model = build_tiny_model(0).requires_grad_(False)
    judge = DeepGenVLMJudge()
    next(iter(model.lmm.parameters())).requires_grad_(True)
    with pytest.raises(TrainingError, match="needs a frozen VLM"):
        bind_policy_judges([judge], model)
    assert judge.model is None
    model.requires_grad_(False)
    bind_policy_judges([judge], model)
    assert judge.model is model
