"""``Stage3Config``: the settings of an MR-GRPO run (``deepgen train --stage 3 --config FILE``).

A config file is flat TOML like stages 1–2 (``.json``/``.yaml`` too; read by :mod:`deepgen.train.config`'s
reader).  Every key is either

* a field of :class:`~deepgen.train.grpo.config.GRPOConfig` (the algorithm: ``group_size``, ``eta``,
  ``timestep_fraction``, ``logprob``, ``clip_range``, ``kl_beta``, ``sft_lambda``, ``lr``, ``warmup_steps``,
  ``max_train_steps``, ``save_every``, ``eval_every``, ``seed``, the two quirk flags, …; defaults = official), or
* a field of :class:`Stage3Config` below (model, policy, prompts, rewards, SFT data, output, evaluation).

Tables: ``[[prompts]]`` (prompt datasets, see :mod:`.prompts`), ``[category_weights]`` (category → preset name
or ``{reward = weight}``), ``[category_sample_weights]``, ``[rewards.<name>]`` (constructor kwargs of a reward).
Unknown keys and bad values raise :class:`~deepgen.train.config.ConfigError` listing every problem.
See docs/mrgrpo.md and configs/train/stage3_*.toml.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import MIXED_PRECISION, ConfigError, coerce_value, read_config_values
from .config import GRPOConfig
from .prompts import canonical_category

__all__ = [
    "POLICIES",
    "REFERENCES",
    "Stage3Config",
    "load_stage3_config",
    "normalise_category_weights",
    "stage3_config_from_dict",
]

POLICIES = ("full", "lora")
REFERENCES = ("auto", "copy", "disable_adapter")


@dataclass
class Stage3Config:
    """Run settings of stage 3 besides the algorithm (``grpo``)."""

    stage: int = 3
    # --- model ---
    model: str = ""                     # "tiny", a release folder/checkpoint (deepgen.loading.load_model)
    vlm: str = ""                       # release layout: the Qwen2.5-VL folder (if the loader needs it)
    diffusion: str = ""                 # release layout: the UniPic2/SD3.5 folder
    init_from: str = ""                 # a stage-1/2/3 training checkpoint whose tensors are loaded first (by name)
    mixed_precision: str = "auto"       # no | bf16 | fp16 | auto (bf16 on CUDA where supported, else no)
    cpu: bool = False                   # train on the CPU even when a GPU is there (always on without CUDA)
    gradient_checkpointing: bool = False
    # --- policy / reference ---
    policy: str = "full"                # full (official: the whole DiT) | lora (DiT LoRA, single-GPU)
    lora_rank: int = 32
    lora_alpha: float = 64.0            # Flow-GRPO: α = 2r
    lora_targets: Any = "attn"          # a deepgen.lora preset ("attn", "attn_ff") or a list of module names
    reference: str = "auto"             # auto | copy (frozen DiT copy) | disable_adapter (LoRA off; no memory)
    # --- prompts and rewards ---
    prompts: Any = field(default_factory=list)        # prompt datasets (see deepgen.train.grpo.prompts)
    rewards: dict[str, dict[str, Any]] = field(default_factory=dict)   # reward name -> constructor kwargs
    reward_modules: list[str] = field(default_factory=list)  # modules/.py files that register custom rewards
    preflight_rewards: bool = True      # load every reward model before the first rollout (fail early)
    # --- SFT-Aux data (a stage-2 dataset) ---
    sft_data: list[str] = field(default_factory=list)  # JSON/JSONL lists and/or image folders; [] = no SFT term
    sft_data_root: str = ""
    sft_resolution: int = 512
    sft_task_pattern: dict[str, int] = field(default_factory=lambda: {"text2image": 1})
    sft_num_workers: int = 0
    sft_data_verify: str = "header"
    # --- output ---
    output_dir: str = "outputs/train/stage3"
    keep_last: int = 3
    resume: str = "auto"                # auto | no | a checkpoint folder
    log_every: int = 1                  # console; the JSONL log gets every step
    save_lora_every_checkpoint: bool = True  # LoRA policy: also write a ComfyUI-loadable lora.safetensors
    # --- evaluation ---
    eval_prompts: str = ""              # a prompt file/set; "" = no evaluation
    eval_num_steps: int = 50            # ODE (Euler) steps, official 50
    eval_images_per_prompt: int = 1     # official UniGenBench: 4
    eval_seed: int = 42
    eval_before_training: bool = False
    eval_save_images: bool = True
    # --- the algorithm ---
    grpo: GRPOConfig = field(default_factory=GRPOConfig)

    # ------------------------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return self.grpo.num_steps

    def problems(self) -> list[str]:
        p: list[str] = []

        def need(cond: object, msg: str) -> None:  # cond: tested for truth
            if not cond:
                p.append(msg)

        g = self.grpo
        need(self.stage == 3, f"stage must be 3 for an MR-GRPO config (got {self.stage})")
        need(bool(self.model.strip()), 'model must be set ("tiny" or a DeepGen release folder / checkpoint)')
        need(self.mixed_precision in MIXED_PRECISION,
             f"mixed_precision must be one of {MIXED_PRECISION} (got {self.mixed_precision!r})")
        need(self.policy in POLICIES, f"policy must be one of {POLICIES} (got {self.policy!r})")
        need(self.reference in REFERENCES, f"reference must be one of {REFERENCES} (got {self.reference!r})")
        if self.policy == "full":
            need(self.reference != "disable_adapter",
                 'reference = "disable_adapter" needs policy = "lora" (a full-DiT policy has no adapter to disable)')
        need(self.lora_rank >= 1, f"lora_rank must be ≥ 1 (got {self.lora_rank})")
        need(self.lora_alpha > 0, f"lora_alpha must be > 0 (got {self.lora_alpha})")
        need(isinstance(self.lora_targets, str) or (isinstance(self.lora_targets, list) and self.lora_targets
                                                     and all(isinstance(t, str) for t in self.lora_targets)),
             "lora_targets must be a preset name (attn, attn_ff) or a non-empty list of module names")
        need(bool(self.prompts), "prompts must list at least one prompt file (or name a prompt-set file)")
        need(g.group_size >= 2,
             f"group_size must be ≥ 2 (got {g.group_size}): GRPO advantages compare the images of one prompt, "
             "so with G = 1 every advantage is 0 and nothing but the KL/SFT terms would train")
        need(g.prompts_per_step >= 1, f"prompts_per_step must be ≥ 1 (got {g.prompts_per_step})")
        need(g.rollout_micro_batch_size >= 1, "rollout_micro_batch_size must be ≥ 1")
        need(g.train_micro_batch_size >= 1, "train_micro_batch_size must be ≥ 1")
        need(g.resolution >= 16 and g.resolution % 16 == 0,
             f"resolution must be a multiple of 16, ≥ 16 (got {g.resolution})")
        need(g.lr > 0, f"lr must be > 0 (got {g.lr})")
        need(g.max_train_steps >= 1, f"max_train_steps must be ≥ 1 (got {g.max_train_steps})")
        need(g.warmup_steps >= 0, f"warmup_steps must be ≥ 0 (got {g.warmup_steps})")
        need(g.lr_scheduler in ("constant_with_warmup", "constant"),
             f"lr_scheduler must be constant_with_warmup (official) (got {g.lr_scheduler!r})")
        need(g.max_grad_norm >= 0, f"max_grad_norm must be ≥ 0 (0 = no clipping) (got {g.max_grad_norm})")
        need(g.num_actor_update_steps >= 1, "num_actor_update_steps must be ≥ 1")
        need(g.sft_every_n_steps >= 1, "sft_every_n_steps must be ≥ 1")
        need(g.sft_batch_size >= 1, "sft_batch_size must be ≥ 1")
        need(0.0 <= g.sft_caption_drop <= 1.0, "sft_caption_drop must be in [0, 1]")
        need(g.ema_decay == 0.0, "ema_decay is not implemented (official: off)")
        need(g.save_every >= 0, f"save_every must be ≥ 0 (0 = only at the end) (got {g.save_every})")
        need(g.eval_every >= 0, f"eval_every must be ≥ 0 (got {g.eval_every})")
        need(g.seed >= 0, f"seed must be ≥ 0 (got {g.seed})")
        need(self.sft_resolution >= 32 and self.sft_resolution % 32 == 0,
             f"sft_resolution must be a multiple of 32 (got {self.sft_resolution})")
        need(self.keep_last >= 0, "keep_last must be ≥ 0 (0 = keep all)")
        need(bool(self.resume.strip()), 'resume must be "auto", "no" or a checkpoint folder')
        need(self.log_every >= 1, "log_every must be ≥ 1")
        need(bool(self.output_dir.strip()), "output_dir must be set")
        need(self.eval_num_steps >= 1, "eval_num_steps must be ≥ 1")
        need(self.eval_images_per_prompt >= 1, "eval_images_per_prompt must be ≥ 1")
        if not g.category_weights:
            p.append("category_weights must define at least one category")
        for cat, w in g.category_weights.items():
            if not w or not any(v != 0 for v in w.values()):
                p.append(f"category_weights.{cat}: needs at least one non-zero reward weight")
        return p

    def validate(self) -> Stage3Config:
        problems = self.problems()
        if problems:
            raise ConfigError("Invalid stage-3 config: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-able dict (the GRPOConfig fields at the top level, as in the file)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "grpo"}
        g = dataclasses.asdict(self.grpo)
        g["adam_betas"] = list(self.grpo.adam_betas)
        return {**d, **g}


# ----------------------------------------------------------------------------------------------------

_RUN_FIELDS = {f.name for f in dataclasses.fields(Stage3Config)} - {"grpo"}
_GRPO_FIELDS = {f.name for f in dataclasses.fields(GRPOConfig)}
_RUN_HINTS = typing.get_type_hints(Stage3Config)
_GRPO_HINTS = typing.get_type_hints(GRPOConfig)
assert not (_RUN_FIELDS & _GRPO_FIELDS), _RUN_FIELDS & _GRPO_FIELDS


def normalise_category_weights(spec: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{category: preset name | {reward: weight}}`` → ``{canonical category: {canonical reward: weight}}``.

    Categories go through :func:`~deepgen.train.grpo.prompts.canonical_category` (``text_render`` →
    ``text_rendering``), reward names through the rewards registry's aliases (``clip_sim`` → ``clip``,
    ``unifiedreward_think`` → ``preference``); a preset name (``general``, ``text_rendering``) expands to the
    preset of :mod:`deepgen.rewards.mix`.  Reward names are *not* checked against the registry here (custom
    rewards may be registered later); the trainer does that.
    """
    from ...rewards.base import canonical_reward_name
    from ...rewards.mix import preset_weights

    out: dict[str, dict[str, float]] = {}
    for cat, w in spec.items():
        c = canonical_category(cat)
        if isinstance(w, str):
            try:
                w = preset_weights(w)
            except ValueError as exc:
                raise ValueError(f"category_weights.{cat}: {exc}") from None
        if not isinstance(w, Mapping):
            raise ValueError(f"category_weights.{cat}: expected a preset name or a {{reward = weight}} table")
        d: dict[str, float] = {}
        for name, v in w.items():
            n = canonical_reward_name(name)
            if n in d:
                raise ValueError(f"category_weights.{cat}: reward {n!r} given twice (aliases clip_sim/"
                                 "unifiedreward_think count as clip/preference)")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise ValueError(f"category_weights.{cat}.{name}: weight must be a number (got {v!r})")
            d[n] = float(v)
        out[c] = d
    return out


def stage3_config_from_dict(values: Mapping[str, Any], *, source: str = "config") -> Stage3Config:
    """Defaults + ``values`` (flat; GRPOConfig keys at the top level), type-checked and validated."""
    values = dict(values)
    problems: list[str] = []
    for k in sorted(set(values) - _RUN_FIELDS - _GRPO_FIELDS):
        close = difflib.get_close_matches(k, _RUN_FIELDS | _GRPO_FIELDS, n=1)
        problems.append(f"unknown key {k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    run_kw: dict[str, Any] = {}
    grpo_kw: dict[str, Any] = {}
    for k, v in values.items():
        if k in _RUN_FIELDS:
            try:
                run_kw[k] = coerce_value(k, v, _RUN_HINTS[k])
            except ValueError as e:
                problems.append(str(e))
        elif k in _GRPO_FIELDS:
            try:
                if k == "category_weights":
                    if not isinstance(v, Mapping):
                        raise ValueError("category_weights must be a table {category = preset | {reward = w}}")
                    grpo_kw[k] = normalise_category_weights(v)
                elif k == "category_sample_weights":
                    grpo_kw[k] = {canonical_category(c): float(w)
                                  for c, w in coerce_value(k, v, _GRPO_HINTS[k]).items()}
                else:
                    grpo_kw[k] = coerce_value(k, v, _GRPO_HINTS[k])
            except ValueError as e:
                problems.append(str(e))
    if "rewards" in run_kw:
        for name, kw in run_kw["rewards"].items():
            if not isinstance(kw, Mapping):
                problems.append(f"rewards.{name} must be a table of constructor arguments")
    try:
        grpo = GRPOConfig(**grpo_kw)
    except (ValueError, TypeError) as e:
        problems.append(str(e))
        grpo = GRPOConfig()
    # the official defaults use the official category / reward names: normalise them too
    if "category_weights" not in grpo_kw:
        grpo.category_weights = normalise_category_weights(grpo.category_weights)
    if "category_sample_weights" not in grpo_kw:
        grpo.category_sample_weights = {canonical_category(c): float(w)
                                        for c, w in grpo.category_sample_weights.items()}
    cfg = Stage3Config(grpo=grpo, **run_kw)
    problems += cfg.problems()
    if problems:
        raise ConfigError(f"Invalid stage-3 config ({source}): " + "; ".join(problems))
    return cfg


def load_stage3_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Stage3Config:
    """Read a stage-3 TOML (JSON/YAML) file, apply ``key=value`` overrides (TOML values), validate.

    Relative paths inside the file are relative to the working directory, as in stages 1–2.
    """
    return stage3_config_from_dict(read_config_values(path, overrides), source=str(path))
