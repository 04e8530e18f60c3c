"""Reward mixture: presets, per-image weights, NaN renormalisation (real OCR), registry errors."""

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from deepgen.rewards import (
    PRESET_SAMPLE_WEIGHTS,
    PRESETS,
    OCRReward,
    Reward,
    RewardMix,
    available_rewards,
    create_reward,
    register_reward,
    resolve_weights,
    unregister_reward,
)


def const(value):
    """A stand-in reward returning a fixed score per image (the mixture is under test here)."""
    calls = []

    def fn(images, prompts, group_ids=None):
        calls.append((len(images), list(prompts), group_ids))
        return torch.full((len(images),), float(value))

    fn.calls = calls
    return fn


def test_presets_are_the_official_ones():
    assert PRESETS == {
        "general": {"preference": 0.7, "clip": 0.3},
        "text_rendering": {"preference": 0.2, "clip": 0.1, "ocr": 0.7},
    }
    assert PRESET_SAMPLE_WEIGHTS == {"general": 1.0, "text_rendering": 3.0}
    for w in PRESETS.values():
        assert sum(w.values()) == pytest.approx(1.0)
    assert {"clip", "ocr", "preference"} <= set(available_rewards())
    # official reward names are accepted as aliases
    assert resolve_weights({"unifiedreward_think": 0.2, "clip_sim": 0.1, "ocr": 0.7}) == PRESETS["text_rendering"]
    assert resolve_weights("text") == PRESETS["text_rendering"]


def test_unknown_names_give_clear_errors():
    with pytest.raises(ValueError) as e:
        RewardMix({"clip": 0.5, "aesthetics": 0.5})
    msg = str(e.value)
    assert "aesthetics" in msg and "clip" in msg and "ocr" in msg and "preference" in msg
    with pytest.raises(ValueError, match="general"):
        RewardMix("photorealism")
    with pytest.raises(ValueError, match="twice"):
        resolve_weights({"clip": 0.5, "clip_sim": 0.5})
    with pytest.raises(ValueError, match="finite"):
        resolve_weights({"clip": float("nan")})
    with pytest.raises(ValueError, match="unknown reward"):
        create_reward("nope")


def test_general_preset_weighted_total_and_table():
    pref, clip = const(0.8), const(0.25)
    mix = RewardMix("general", rewards={"preference": pref, "clip": clip})
    imgs = torch.rand(4, 16, 16, 3)  # ComfyUI IMAGE batch
    res = mix(imgs, "a prompt", group_ids=[0, 0, 1, 1])
    assert set(res.scores) == {"preference", "clip"}
    assert res.scores["preference"].tolist() == pytest.approx([0.8] * 4)
    assert res.total.tolist() == pytest.approx([0.7 * 0.8 + 0.3 * 0.25] * 4)
    assert res.weights["clip"].tolist() == pytest.approx([0.3] * 4)
    assert pref.calls[0][2] == [0, 0, 1, 1]  # group ids reach the reward
    scores, total, weights = res  # a NamedTuple
    assert total is res.total


@pytest.fixture(scope="module")
def hello():
    font = ImageFont.load_default(size=56)  # Pillow >= 10.1 (a dependency): a real scalable font
    im = Image.new("RGB", (512, 512), "white")
    ImageDraw.Draw(im).text((40, 200), "Hello World", fill="black", font=font)
    return im


def test_text_rendering_renormalises_when_ocr_does_not_apply(hello):
    mix = RewardMix("text_rendering", rewards={"preference": const(0.9), "clip": const(0.3)})
    prompts = ['A sign reading "Hello World"', "A sign on a wall"]  # second: no quotes
    res = mix([hello, hello], prompts)
    ocr = res.scores["ocr"]
    assert ocr[0] >= 0.9 and math.isnan(ocr[1])
    # quoted prompt: official weights
    assert res.weights["ocr"][0] == pytest.approx(0.7)
    assert res.total[0] == pytest.approx(0.2 * 0.9 + 0.1 * 0.3 + 0.7 * ocr[0].item())
    # no quote: OCR drops out, 0.2/0.1 are rescaled to 2/3 and 1/3
    assert res.weights["ocr"][1] == 0
    assert res.weights["preference"][1] == pytest.approx(2 / 3)
    assert res.weights["clip"][1] == pytest.approx(1 / 3)
    assert res.total[1] == pytest.approx(2 / 3 * 0.9 + 1 / 3 * 0.3)


def test_per_image_weights_compute_each_reward_only_where_needed():
    ocr = const(1.0)
    mix = RewardMix("general", rewards={"preference": const(0.5), "clip": const(0.2), "ocr": ocr})
    imgs = [Image.new("RGB", (8, 8))] * 4
    prompts = ['say "A"', 'say "A"', "plain", "plain"]
    res = mix(
        imgs,
        prompts,
        group_ids=["g1", "g1", "g2", "g2"],
        weights=["text_rendering", "text_rendering", "general", "general"],
    )
    assert ocr.calls == [(2, ['say "A"', 'say "A"'], ["g1", "g1"])]
    assert res.scores["ocr"][:2].tolist() == [1.0, 1.0] and torch.isnan(res.scores["ocr"][2:]).all()
    assert res.total.tolist() == pytest.approx([0.2 * 0.5 + 0.1 * 0.2 + 0.7] * 2 + [0.7 * 0.5 + 0.3 * 0.2] * 2)


def test_no_applicable_reward_gives_nan_total_and_skips_engine():
    ocr = OCRReward()
    mix = RewardMix({"ocr": 1.0}, rewards={"ocr": ocr})
    res = mix([Image.new("RGB", (8, 8))], ["no quotes at all"])
    assert math.isnan(res.total[0]) and math.isnan(res.scores["ocr"][0])
    assert res.weights["ocr"][0] == 0


def test_custom_reward_registration():
    class Brightness(Reward):
        name = "brightness"

        def __init__(self, scale=1.0):
            self.scale = scale

        def score(self, images, prompts, group_ids=None):
            return [self.scale * float(np.asarray(im).mean()) / 255.0 for im in images]

    try:
        register_reward("brightness", Brightness)

        @register_reward("always_one")
        def always_one(images, prompts):
            return [1.0] * len(images)

        assert {"brightness", "always_one"} <= set(available_rewards())
        assert create_reward("brightness", scale=2.0).scale == 2.0
        mix = RewardMix({"brightness": 0.5, "always_one": 0.5}, reward_kwargs={"brightness": {"scale": 2.0}})
        imgs = [Image.new("RGB", (4, 4), (255, 255, 255)), Image.new("RGB", (4, 4), (0, 0, 0))]
        res = mix(imgs, ["a", "b"])
        assert res.scores["brightness"].tolist() == pytest.approx([2.0, 0.0])
        assert res.total.tolist() == pytest.approx([1.5, 0.5])
        # a reward returning the wrong number of scores is an error, not a silent broadcast
        bad = RewardMix({"x": 1.0}, rewards={"x": lambda images, prompts: [0.0]})
        with pytest.raises(ValueError, match="returned 1 scores for 2 images"):
            bad(imgs, ["a", "b"])
    finally:
        unregister_reward("brightness")
        unregister_reward("always_one")
    assert "brightness" not in available_rewards()
