"""Stage 3 reward set-up: which rewards a run uses, with which weights per prompt category, loaded and probed.

:func:`build_rewards` runs before the model loads, so a missing reward model, an unknown reward name or a
category without weights fails at start-up with a message that says what to change.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import one_line
from .. import runtime as R
from .prompts import PromptSet
from .run_config import Stage3Config

__all__ = ["RewardSetup", "bind_policy_judges", "build_rewards", "policy_judges"]

_PROBE_TIMEOUT = 5.0  # seconds a remote reward judge gets to accept a connection at start-up


@dataclass
class RewardSetup:
    """The rewards of a run: ``category_weights[category] = {reward: weight ≠ 0}``, the sorted reward names,
    and the :class:`deepgen.rewards.RewardMix` that computes them."""

    category_weights: dict[str, dict[str, float]]
    reward_names: list[str]
    reward_mix: Any


def build_rewards(
    cfg: Stage3Config, prompt_set: PromptSet, eval_set: PromptSet | None, overrides: Mapping[str, Any], device
) -> RewardSetup:
    """Import ``reward_modules``, check every prompt category's weights against the registry (plus the run's
    ``overrides``), build the :class:`~deepgen.rewards.RewardMix` (in-process reward models on ``device``
    unless configured), probe remote judges and, with ``preflight_rewards``, load every reward model now."""
    from ...rewards import RewardMix, RewardModelNotFound, available_rewards
    from ...rewards.base import canonical_reward_name

    g = cfg.grpo
    for spec in cfg.reward_modules:
        _import_reward_module(spec)
    cats = prompt_set.categories + (
        [c for c in eval_set.categories if c not in prompt_set.categories] if eval_set else []
    )
    missing = [c for c in cats if c not in g.category_weights]
    if missing:
        raise R.TrainingError(
            f"prompt categories {missing} have no reward weights; add them to [category_weights] "
            f"(defined: {sorted(g.category_weights)}; presets: general, text_rendering)"
        )
    category_weights = {c: {n: w for n, w in g.category_weights[c].items() if w != 0} for c in cats}
    overrides = {canonical_reward_name(k): v for k, v in overrides.items()}
    known = set(available_rewards()) | set(overrides)
    for c, ws in category_weights.items():
        for n in ws:
            if n not in known:
                raise R.TrainingError(
                    f"category_weights.{c} names the reward {n!r}, which is not registered; available rewards: "
                    f"{', '.join(sorted(known))}. Register custom rewards with deepgen.rewards.register_reward "
                    "in a module listed in reward_modules"
                )
    reward_names = sorted({n for ws in category_weights.values() for n in ws})
    unused = sorted(set(map(canonical_reward_name, cfg.rewards)) - set(reward_names))
    if unused:
        warnings.warn(f"[rewards.*] settings for {unused}, which no prompt category uses", stacklevel=2)
    kwargs = {canonical_reward_name(k): dict(v) for k, v in cfg.rewards.items()}
    for name in reward_names:  # in-process reward models go to this process's device unless set
        if name not in overrides and _takes_device(name) and "device" not in kwargs.get(name, {}):
            kwargs.setdefault(name, {})["device"] = str(device)
    reward_mix = RewardMix({n: 1.0 for n in reward_names}, rewards=overrides, reward_kwargs=kwargs)
    for name in reward_names:  # remote judges: one cheap connect, even without preflight_rewards
        reward = reward_mix.reward(name)
        if hasattr(reward, "probe"):
            reward.probe(_PROBE_TIMEOUT)  # ResourceError naming the URL
    if cfg.preflight_rewards:
        for name in reward_names:
            users = [c for c, ws in category_weights.items() if name in ws]
            try:
                _preflight(reward_mix.reward(name))
            except (RewardModelNotFound, ImportError, OSError) as e:
                raise R.TrainingError(
                    f"reward {name!r} (used by categories {users}) cannot load its model: {one_line(e)}; "
                    f'point [rewards.{name}] at a local copy (e.g. model_path = "..." or url = "..."), '
                    "or drop the reward from category_weights."
                ) from e
    return RewardSetup(category_weights, reward_names, reward_mix)


def _import_reward_module(spec: str) -> None:
    """Import a module (``pkg.mod``) or a ``.py`` file that registers custom rewards."""
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise R.TrainingError(f"reward_modules: {path} does not exist")
        name = f"deepgen_user_rewards_{abs(hash(str(path.resolve())))}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:  # e.g. a file name without .py
            raise R.TrainingError(f"reward_modules: {path} is not an importable Python file")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        mod_spec.loader.exec_module(module)
    else:
        importlib.import_module(spec)


def _takes_device(name: str) -> bool:
    """Whether the registered reward ``name`` is a class with an explicit ``device`` argument (e.g. CLIP)."""
    import inspect

    from ...rewards.base import registered_reward

    obj = registered_reward(name)
    if not isinstance(obj, type):
        return False
    try:
        return "device" in inspect.signature(obj).parameters  # the constructor's parameters
    except (TypeError, ValueError):
        return False


def _preflight(reward) -> None:
    """Load a reward's model now (CLIP weights, a local VLM judge, the OCR engine) so a missing one fails at
    start-up with the reward's own message, not after the first rollout."""
    if hasattr(reward, "load"):
        reward.load()
    judge = getattr(reward, "judge", None)
    if judge is not None and hasattr(judge, "load") and not getattr(judge, "uses_policy_model", False):
        judge.load()  # (a judge on the policy model's VLM has nothing to load: bind_policy_judges gives it the model)
    if hasattr(reward, "engine"):
        reward.engine()


def policy_judges(reward_mix, names) -> list:
    """The judges among the run's rewards that use the policy model's own VLM (``judge = "deepgen"``)."""
    out = []
    for name in names:
        judge = getattr(reward_mix.reward(name), "judge", None)
        if getattr(judge, "uses_policy_model", False):
            out.append(judge)
    return out


def check_policy_judge_config(cfg: Stage3Config, sharded: bool) -> None:
    """Before the model loads: the policy model's VLM can judge only if this run never changes it and every
    process holds all of it (generation lengths differ between processes, so FSDP's per-layer all-gathers of
    the VLM would not line up)."""
    if cfg.trainable_spec().vlm_lora:
        raise R.TrainingError(
            '[rewards.preference] judge = "deepgen" judges with the policy model\'s VLM, which this run trains: '
            "the judge would move with the policy. Use a separate judge (url or model_path) instead"
        )
    if sharded:
        raise R.TrainingError(
            '[rewards.preference] judge = "deepgen" is not available under FSDP (the VLM is sharded and every process '
            "generates different answers): use a judge server (url) or DDP"
        )


def bind_policy_judges(judges, model) -> None:
    """Give each policy-VLM judge the loaded model, after the trainable parameters are chosen: refused if any
    VLM parameter trains (the judge must stay the model it was at step 0)."""
    if not judges:
        return
    training = [n for n, p in model.lmm.named_parameters() if p.requires_grad]
    if training:
        raise R.TrainingError(
            f'[rewards.preference] judge = "deepgen" needs a frozen VLM, but {len(training)} VLM parameters train '
            f"(e.g. {training[0]}): use a DiT policy, or a separate judge (url or model_path)"
        )
    for judge in judges:
        judge.bind(model)
