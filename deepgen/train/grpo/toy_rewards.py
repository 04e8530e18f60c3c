"""Toy rewards for smoke runs and tests of the RL stage (no model, no download).

``import deepgen.train.grpo.toy_rewards`` (or list it in a stage-3 config's ``reward_modules``) registers:

* ``brightness``: mean luma of the image in [0, 1] (ITU-R BT.601 weights) — the classic "does RL move the
  reward at all" check: a policy that learns makes its images brighter;
* ``saturation``: mean HSV saturation in [0, 1].

They also show how to plug in your own reward: a function ``fn(images, prompts) -> list[float]`` registered
with :func:`deepgen.rewards.register_reward`.
"""

from __future__ import annotations

import numpy as np

from ...rewards import register_reward

__all__ = ["brightness", "saturation"]


def brightness(images, prompts) -> list[float]:
    out = []
    for im in images:
        a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        out.append(float((a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).mean()))
    return out


def saturation(images, prompts) -> list[float]:
    return [float(np.asarray(im.convert("HSV"), dtype=np.float32)[..., 1].mean() / 255.0) for im in images]


register_reward("brightness", brightness)
register_reward("saturation", saturation)
