"""Weighted reward mixture with the official category presets.

Why: the RL stage z-scores every reward separately within its group (GDPO, reference §3)
and only then applies the category weights, so a mixture must hand back the raw
per-reward table, not just a weighted sum; the RewardScore node shows the same table.

Presets (reference §2.1; the official weights come per prompt dataset):

* ``general``:        preference 0.7, clip 0.3                (official sample_weight 1.0)
* ``text_rendering``: preference 0.2, clip 0.1, ocr 0.7       (official sample_weight 3.0)

A reward is computed only on the images where its weight is non-zero (elsewhere its
score is NaN). NaN also means "not applicable" (OCR without a quoted target): per image,
the weights of the applicable rewards are rescaled to keep the original weight sum, so a
text-rendering image without quotes is scored 0.667 preference / 0.333 clip. An image with
no applicable reward gets a NaN total.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

import torch

from ..errors import InputError
from . import clip as _clip  # noqa: F401  (registers "clip")
from . import ocr as _ocr  # noqa: F401  (registers "ocr")
from . import preference as _pref  # noqa: F401  (registers "preference")
from .base import (
    FunctionReward,
    Reward,
    _broadcast_prompts,
    _normalise_group_ids,
    available_rewards,
    canonical_reward_name,
    create_reward,
)
from .images import to_pil_images

__all__ = ["PRESETS", "PRESET_SAMPLE_WEIGHTS", "RewardMix", "RewardResult", "resolve_weights"]

PRESETS: dict[str, dict[str, float]] = {
    "general": {"preference": 0.7, "clip": 0.3},
    "text_rendering": {"preference": 0.2, "clip": 0.1, "ocr": 0.7},
}
PRESET_SAMPLE_WEIGHTS = {"general": 1.0, "text_rendering": 3.0}
_PRESET_ALIASES = {"text": "text_rendering", "text-rendering": "text_rendering", "textrender": "text_rendering"}


class RewardResult(NamedTuple):
    """``scores``: raw per-reward scores (B,) (NaN = not computed / not applicable);
    ``total``: weighted sum (B,); ``weights``: the effective per-image weights used."""

    scores: dict[str, torch.Tensor]
    total: torch.Tensor
    weights: dict[str, torch.Tensor]


def preset_weights(name: str) -> dict[str, float]:
    """The weights of a category preset (general, text_rendering; a few spellings accepted)."""
    key = _PRESET_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in PRESETS:
        raise InputError(f"unknown reward preset {name!r}; presets: {', '.join(PRESETS)}")
    return dict(PRESETS[key])


def resolve_weights(spec, available: Sequence[str] | None = None) -> dict[str, float]:
    """Preset name or {reward: weight} -> {canonical reward name: weight}; ValueError on unknown names."""
    if isinstance(spec, str):
        spec = preset_weights(spec)
    if not isinstance(spec, Mapping) or not spec:
        raise InputError("weights must be a preset name or a non-empty {reward_name: weight} dict")
    names = set(available if available is not None else available_rewards())
    out: dict[str, float] = {}
    for raw, w in spec.items():
        name = canonical_reward_name(raw)
        if name not in names:
            raise InputError(f"weight names unknown reward {raw!r}; available rewards: {', '.join(sorted(names))}")
        if name in out:
            raise InputError(f"reward {name!r} is given twice (check aliases like clip_sim/unifiedreward_think)")
        w = float(w)
        if w != w or w in (float("inf"), float("-inf")):
            raise InputError(f"weight of {name!r} must be finite, got {w}")
        out[name] = w
    return out


class RewardMix:
    """Computes several rewards and their weighted total.

    ``weights``: a preset name (``general``, ``text_rendering``) or ``{name: weight}``.
    ``rewards``: optional ``{name: Reward | callable}`` overriding or adding rewards; the
    others are built from the registry on first use with ``reward_kwargs[name]``
    (e.g. ``{"clip": {"model_path": ...}, "preference": {"url": ...}}``).
    """

    def __init__(
        self,
        weights="general",
        rewards: Mapping[str, Reward | Callable[..., object]] | None = None,
        reward_kwargs: Mapping[str, Mapping] | None = None,
    ):
        self._rewards: dict[str, Reward] = {}
        for raw, r in (rewards or {}).items():
            name = canonical_reward_name(raw)
            self._rewards[name] = r if isinstance(r, Reward) else FunctionReward(name, r)
        self.reward_kwargs = {canonical_reward_name(k): dict(v) for k, v in (reward_kwargs or {}).items()}
        self.weights = resolve_weights(weights, self.available())

    def available(self) -> list[str]:
        return sorted(set(available_rewards()) | set(self._rewards))

    def reward(self, name: str) -> Reward:
        """The reward object for ``name`` (built lazily from the registry)."""
        name = canonical_reward_name(name)
        if name not in self._rewards:
            if name not in self.available():
                raise InputError(f"unknown reward {name!r}; available rewards: {', '.join(self.available())}")
            self._rewards[name] = create_reward(name, **self.reward_kwargs.get(name, {}))
        return self._rewards[name]

    def __call__(self, images, prompts, group_ids=None, weights=None) -> RewardResult:
        """Scores a batch. ``weights`` overrides the mixture's weights for this call: one spec
        for all images, or a list of specs (preset names / dicts), one per image."""
        pil = to_pil_images(images)
        n = len(pil)
        prompts = _broadcast_prompts(prompts, n)
        gids = _normalise_group_ids(group_ids, n)
        per_image = self._per_image_weights(weights, n)

        names: list[str] = []
        for w in per_image:
            names += [k for k, v in w.items() if v != 0 and k not in names]
        W = torch.tensor([[w.get(k, 0.0) for k in names] for w in per_image], dtype=torch.float32).reshape(
            n, len(names)
        )

        scores: dict[str, torch.Tensor] = {}
        for j, name in enumerate(names):
            idx = [i for i in range(n) if W[i, j] != 0]
            col = torch.full((n,), float("nan"))
            sub = self.reward(name)(
                [pil[i] for i in idx], [prompts[i] for i in idx], None if gids is None else [gids[i] for i in idx]
            )
            col[torch.tensor(idx, dtype=torch.long)] = sub.to(torch.float32).reshape(-1)
            scores[name] = col

        S = torch.stack([scores[k] for k in names], 1) if names else torch.zeros(n, 0)
        ok = torch.isfinite(S) & (W != 0)
        Wa = torch.where(ok, W, torch.zeros_like(W))
        full, kept = W.abs().sum(1), Wa.abs().sum(1)
        scale = torch.where(kept > 0, full / kept.clamp_min(1e-12), torch.zeros_like(full))
        Weff = Wa * scale[:, None]
        total = (Weff * torch.nan_to_num(S, nan=0.0)).sum(1)
        total = torch.where(kept > 0, total, torch.full_like(total, float("nan")))
        return RewardResult(scores, total, {k: Weff[:, j] for j, k in enumerate(names)})

    def _per_image_weights(self, weights, n: int) -> list[dict[str, float]]:
        if weights is None:
            return [self.weights] * n
        if isinstance(weights, (str, Mapping)):
            return [resolve_weights(weights, self.available())] * n
        weights = list(weights)
        if len(weights) != n:
            raise ValueError(f"got {n} images but {len(weights)} weight specs")
        cache: dict = {}
        out = []
        for w in weights:
            key = w if isinstance(w, str) else id(w)
            if key not in cache:
                cache[key] = resolve_weights(w, self.available())
            out.append(cache[key])
        return out
