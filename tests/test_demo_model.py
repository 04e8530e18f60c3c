"""The embedded demo model (model="tiny") draws what it is asked, judged by a pixel rule (deepgen.demo_world):
the background is the median colour of a border strip, the shape's colour the median of the central tenth, and how
much of its bounding box the shape fills names it (square ~1, circle ~0.79, triangle ~0.5).

Chance is 1/6 for a colour, 1/3 for a shape, 1/18 for both; the bounds are set well under the rates measured
(README, "Demo model") and far above chance."""

from __future__ import annotations

import pytest
import torch

from deepgen import demo_world as W
from deepgen.loading import load_model
from deepgen.pipeline import DeepGenPipeline


@pytest.fixture(scope="module")
def demo():
    return DeepGenPipeline(load_model("tiny", dtype=torch.float32))


def test_the_pixel_rule_reads_the_training_pictures():
    cells = W.grid(backgrounds=2)
    seen = [W.read_picture(W.draw(shape, colour, background, 64)) for colour, shape, background in cells]
    assert [(s["colour"], s["shape"], s["background"]) for s in seen] == [(c, s, b) for c, s, b in cells]
    # and it is not fooled by a flat picture: no shape
    assert W.read_picture(W.draw("circle", "red", "red", 64))["shape"] == "none"


def test_the_demo_loads_as_the_default_at_its_own_size(demo):
    assert demo.model.default_size == demo.default_size == 64
    assert demo.model.transformer.config.num_layers == 4  # the tiny architecture (deepgen.tiny)


def test_text_to_image_draws_the_asked_colour_and_shape(demo):
    rates = W.measure(demo, backgrounds=1, steps=12)
    t2i, edit = rates["text-to-image"], rates["edit"]
    assert t2i["colour"] >= 0.6 and t2i["shape"] >= 0.5 and t2i["both"] >= 0.4, rates
    assert edit["colour"] >= 0.5 and edit["both"] >= 0.3, rates
