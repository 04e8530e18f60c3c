"""OCR reward: pure scoring rules plus the real offline rapidocr engine on PIL-rendered text."""

import math

import numpy as np
import pytest
import rapidocr_onnxruntime  # noqa: E402,F401  (a dependency: fail, never skip, when it is broken)
import torch
from PIL import Image, ImageDraw, ImageFont

from deepgen.rewards import OCRReward, levenshtein, quoted_targets
from deepgen.rewards.ocr import score_new, score_old


def _font(size=56):
    return ImageFont.load_default(size=size)  # Pillow >= 10.1 (a dependency): a real scalable font


def render(*lines, size=512):
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    for k, text in enumerate(lines):
        d.text((40, 140 + 150 * k), text, fill="black", font=_font())
    return im


@pytest.fixture(scope="module")
def hello():
    return render("Hello World")


@pytest.fixture(scope="module")
def poster():
    return render("Hello World", "DeepGen 2025")


# ------------------------------------------------------------------ pure rules


def test_quoted_targets_and_levenshtein():
    assert quoted_targets('a sign saying "OPEN" and "24/7"') == ["OPEN", "24/7"]
    assert quoted_targets("no quotes here") == []
    assert quoted_targets('one dangling " quote') == []
    assert quoted_targets("curly \u201cHi\u201d") == []
    assert quoted_targets("curly \u201cHi\u201d", smart_quotes=True) == ["Hi"]
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("same", "same") == 0


def test_old_rule_substring_cap_and_normalisation():
    assert score_old([("Big SALE today", 0.9)], "sale") == 1.0  # substring, case/space-insensitive
    assert score_old([("Hel1o World", 0.9)], "Hello World") == pytest.approx(1 - 1 / 10)
    assert score_old([("completely unrelated words", 0.9)], "Hi") == 0.0  # distance capped at len
    assert score_old([("Hello", 0.0)], "Hello") == 0.0  # conf must be > 0
    assert score_old([], "Hello") == 0.0


def test_new_rule_spans_ngrams_and_folding():
    lines = [("Hello", 0.9), ("World", 0.9), ("DEEPGEN", 0.8)]
    assert score_new(lines, ["Hello World"]) == 1.0  # 2-token candidate
    assert score_new([("hell0", 0.9)], ["hello"]) == 1.0  # 0 -> o folding
    assert score_new([("hell0", 0.9)], ["hello"], confusion_fold=False) == pytest.approx(0.8)
    # as in the official code the fold table is lower-case only, so it is case-sensitive too
    assert score_new([("HELL0", 0.9)], ["HELLO"]) == pytest.approx(0.8)
    assert score_new(lines, ["HELLO"]) == pytest.approx(0.2)  # case-sensitive by default
    # length-weighted mean over spans: "Hello"(5) perfect, "xyz"(3) absent
    assert score_new(lines, ["Hello", "xyz"]) == pytest.approx(5 / 8)


def test_applicability():
    old, new = OCRReward(), OCRReward(impl="new")
    assert old.targets('a "Hello" sign') == ["Hello"]
    assert old.targets('two "A" and "B"') == ["A"]
    assert new.targets('two "A" and "B"') == ["A", "B"]
    for r in (old, new):
        assert r.targets("a cat") is None
        assert r.targets('empty "" quote') is None
    assert new.targets('only punctuation "!!!"') is None
    with pytest.raises(ValueError):
        OCRReward(impl="paddle")


# ------------------------------------------------------------------ real engine


def test_real_ocr_scores_rendered_text(hello, poster):
    reward = OCRReward()
    prompts = [
        'A neon sign that says "Hello World"',
        'A poster with the word "Sunflower"',
        "A cat sitting on a sofa",  # no quotes: not applicable
        'A banner reading "DeepGen 2025" under "Hello World"',  # old rule: first span only
    ]
    s = reward([hello, hello, hello, poster], prompts)
    assert s.shape == (4,) and s.dtype == torch.float32
    assert s[0] >= 0.9
    assert s[1] <= 0.3
    assert math.isnan(s[2])
    assert s[3] >= 0.9


def test_real_ocr_new_impl_all_spans_and_comfy_tensor(hello, poster):
    reward = OCRReward(impl="new")
    batch = torch.from_numpy(np.stack([np.asarray(poster), np.asarray(hello)]).astype(np.float32) / 255.0)
    prompt = 'Poster with "Hello World" on top and "DeepGen 2025" below'
    s = reward(batch, [prompt, prompt])  # ComfyUI IMAGE format (B,H,W,3) in 0..1
    assert s[0] >= 0.9  # both spans present
    assert 0.3 <= s[1] <= 0.7  # only "HelloWorld" (10 of 21 chars) present


def test_read_returns_lines_with_confidence(hello):
    lines = OCRReward().read(hello)
    assert [t.replace(" ", "") for t, _ in lines] == ["HelloWorld"]
    assert all(0.5 <= c <= 1.0 for _, c in lines)
