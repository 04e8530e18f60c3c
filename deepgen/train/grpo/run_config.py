"""``Stage3Config``: the settings of an MR-GRPO run (``deepgen train --stage 3 --config FILE``).

A config file is flat TOML like stages 1–2 (``.json``/``.yaml`` too; read by :mod:`deepgen.train.config`'s
reader).  Every key is either

* a field of :class:`~deepgen.train.grpo.config.GRPOConfig` (the algorithm: ``group_size``, ``eta``,
  ``timestep_fraction``, ``logprob``, ``clip_range``, ``kl_beta``, ``sft_lambda``, ``lr``, ``betas``,
  ``lr_schedule``, ``warmup_steps``, ``max_steps``, ``save_every``, ``eval_every``, ``seed``, the two quirk flags,
  …; defaults = official), or
* a field of :class:`Stage3Config` below (model, policy, prompts, rewards, SFT data, output, evaluation).

Tables: ``[[prompts]]`` (prompt datasets, see :mod:`.prompts`), ``[category_weights]`` (category → preset name
or ``{reward = weight}``), ``[category_sample_weights]``, ``[rewards.<name>]`` (constructor kwargs of a reward).
Parsed by the schema shared with stages 1-2 (:func:`deepgen.train.schema.build_config`): unknown keys and bad
values raise :class:`~deepgen.errors.ConfigError` listing every problem on one line; a key shared with stages
1-2 has their name (``max_steps``, ``betas``, ``lr_schedule``, ``dit_lora_rank``/``_alpha``/``_targets``); the
old names (``max_train_steps``, ``adam_betas``, ``lr_scheduler = "constant_with_warmup"``, ``lora_rank``, …)
still load, with a deprecation warning.  The SFT-Aux data keys are stage 2's data keys with an ``sft_`` prefix.
See docs/mrgrpo.md and configs/train/stage3_*.toml.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import DEFAULT_DIT_LORA_TARGETS, MIXED_PRECISION, read_config_values
from ..schema import ConfigSchema, build_config, coerce_value
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
class Stage3Config(ConfigSchema):
    """Run settings of stage 3 besides the algorithm (``grpo``, a group: its keys sit at the top level)."""

    TITLE = "stage-3 config"

    stage: int = 3
    # --- model ---
    model: str = ""  # "tiny", a release folder/checkpoint (deepgen.loading.load_model)
    vlm: str = ""  # release layout: the Qwen2.5-VL folder (if the loader needs it)
    diffusion: str = ""  # release layout: the UniPic2/SD3.5 folder
    init_from: str = ""  # a stage-1/2/3 training checkpoint whose tensors are loaded first (by name)
    mixed_precision: str = "auto"  # no | bf16 | fp16 | auto (bf16 on CUDA where supported, else no)
    cpu: bool = False  # train on the CPU even when a GPU is there (always on without CUDA)
    gradient_checkpointing: bool = False
    # --- policy / reference ---
    policy: str = "full"  # full (official: the whole DiT) | lora (DiT LoRA, single-GPU)
    dit_lora_rank: int = 32
    dit_lora_alpha: float = 64.0  # Flow-GRPO: α = 2r
    # deepgen.lora presets ("attn", "attn_ff") and/or module-name suffixes, as in stages 1-2
    dit_lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_DIT_LORA_TARGETS))
    reference: str = "auto"  # auto | copy (frozen DiT copy) | disable_adapter (LoRA off; no memory)
    # --- prompts and rewards ---
    prompts: Any = field(default_factory=list)  # prompt datasets (see deepgen.train.grpo.prompts)
    rewards: dict[str, dict[str, Any]] = field(default_factory=dict)  # reward name -> constructor kwargs
    reward_modules: list[str] = field(default_factory=list)  # modules/.py files that register custom rewards
    preflight_rewards: bool = True  # load every reward model before the first rollout (fail early)
    # --- SFT-Aux data (a stage-2 dataset) ---
    sft_data: list[str] = field(default_factory=list)  # JSON/JSONL lists and/or image folders; [] = no SFT term
    sft_data_root: str = ""
    sft_resolution: int = 512
    sft_task_pattern: dict[str, int] = field(default_factory=lambda: {"text2image": 1})
    sft_num_workers: int = 0
    sft_data_verify: str = "header"
    val_loss_every: int = 10  # steps between fixed-noise validation losses on sft_data (log key val_loss; 0 = off)
    val_loss_samples: int = 4  # samples of that validation set (sft_data's first ones)
    # --- output ---
    output_dir: str = "outputs/train/stage3"
    keep_last: int = 3
    resume: str = "auto"  # auto | no | a checkpoint folder
    log_every: int = 1  # console; the JSONL log gets every step
    trackers: list[str] = field(default_factory=lambda: ["auto"])  # auto (TensorBoard if installed) | none |
    #                                                                 tensorboard, wandb (accelerate log_with)
    tracker_project: str = "deepgen"
    save_lora_every_checkpoint: bool = True  # LoRA policy: also write a ComfyUI-loadable lora.safetensors
    # --- evaluation ---
    eval_prompts: str = ""  # a prompt file/set; "" = no evaluation
    eval_num_steps: int = 50  # ODE (Euler) steps, official 50
    eval_images_per_prompt: int = 1  # official UniGenBench: 4
    eval_seed: int = 42
    eval_before_training: bool = False
    eval_save_images: bool = True
    # --- the algorithm ---
    grpo: GRPOConfig = field(default_factory=GRPOConfig)

    # ------------------------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return self.grpo.num_steps

    @property
    def reference_mode(self) -> str:
        """``reference`` with ``auto`` resolved: ``disable_adapter`` for a LoRA policy, else ``copy``."""
        if self.reference != "auto":
            return self.reference
        return "disable_adapter" if self.policy == "lora" else "copy"

    def trainable_spec(self):
        """The :class:`~deepgen.train.trainable.TrainableSpec` of the policy: the DiT (full or LoRA), nothing else."""
        from ..trainable import TrainableSpec

        return TrainableSpec(
            meta_queries=False,
            projectors=False,
            connector=False,
            dit=self.policy,
            dit_lora_rank=self.dit_lora_rank,
            dit_lora_alpha=self.dit_lora_alpha,
            dit_lora_targets=list(self.dit_lora_targets),
            vlm_lora=False,
        )

    def problems(self) -> list[str]:
        p: list[str] = []

        def need(cond: object, msg: str) -> None:  # cond: tested for truth
            if not cond:
                p.append(msg)

        need(self.stage == 3, f"stage must be 3 for an MR-GRPO config (got {self.stage})")
        need(bool(self.model.strip()), 'model must be set ("tiny" or a DeepGen release folder / checkpoint)')
        need(
            self.mixed_precision in MIXED_PRECISION,
            f"mixed_precision must be one of {MIXED_PRECISION} (got {self.mixed_precision!r})",
        )
        need(self.policy in POLICIES, f"policy must be one of {POLICIES} (got {self.policy!r})")
        need(self.reference in REFERENCES, f"reference must be one of {REFERENCES} (got {self.reference!r})")
        if self.policy == "full":
            need(
                self.reference != "disable_adapter",
                'reference = "disable_adapter" needs policy = "lora" (a full-DiT policy has no adapter to disable)',
            )
        need(self.dit_lora_rank >= 1, f"dit_lora_rank must be ≥ 1 (got {self.dit_lora_rank})")
        need(self.dit_lora_alpha > 0, f"dit_lora_alpha must be > 0 (got {self.dit_lora_alpha})")
        need(len(self.dit_lora_targets) > 0, "dit_lora_targets must name a preset (attn, attn_ff) or list module names")
        need(bool(self.prompts), "prompts must list at least one prompt file (or name a prompt-set file)")
        for name, kw in self.rewards.items():
            need(isinstance(kw, Mapping), f"rewards.{name} must be a table of constructor arguments")
        need(
            self.sft_resolution >= 32 and self.sft_resolution % 32 == 0,
            f"sft_resolution must be a multiple of 32 (got {self.sft_resolution})",
        )
        need(self.keep_last >= 0, "keep_last must be ≥ 0 (0 = keep all)")
        need(bool(self.resume.strip()), 'resume must be "auto", "no" or a checkpoint folder')
        need(self.log_every >= 1, "log_every must be ≥ 1")
        need(self.val_loss_every >= 0, f"val_loss_every must be ≥ 0 (0 = off) (got {self.val_loss_every})")
        need(self.val_loss_samples >= 1, f"val_loss_samples must be ≥ 1 (got {self.val_loss_samples})")
        from ..trackers import tracker_problem

        tracker = tracker_problem(self.trackers)
        need(tracker is None, tracker or "")
        need(bool(self.output_dir.strip()), "output_dir must be set")
        need(self.eval_num_steps >= 1, "eval_num_steps must be ≥ 1")
        need(self.eval_images_per_prompt >= 1, "eval_images_per_prompt must be ≥ 1")
        return p + self.grpo.problems()


# ----------------------------------------------------------------------------------------------------


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
                raise ValueError(
                    f"category_weights.{cat}: reward {n!r} given twice (aliases clip_sim/"
                    "unifiedreward_think count as clip/preference)"
                )
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise ValueError(f"category_weights.{cat}.{name}: weight must be a number (got {v!r})")
            d[n] = float(v)
        out[c] = d
    return out


def _category_weights(value: Any) -> dict[str, dict[str, float]]:
    if not isinstance(value, Mapping):
        raise ValueError("category_weights must be a table {category = preset | {reward = w}}")
    return normalise_category_weights(value)


def _category_sample_weights(value: Any) -> dict[str, float]:
    weights = coerce_value("category_sample_weights", value, dict[str, float])
    return {canonical_category(c): w for c, w in weights.items()}


# given or default, the category and reward names are made canonical (the defaults use the official names)
Stage3Config.CONVERT = {"category_weights": _category_weights, "category_sample_weights": _category_sample_weights}


def stage3_config_from_dict(values: Mapping[str, Any], *, source: str = "config") -> Stage3Config:
    """Defaults + ``values`` (flat; GRPOConfig keys at the top level), type-checked and validated (old names
    accepted with a deprecation warning; see :func:`deepgen.train.schema.build_config`)."""
    return build_config(Stage3Config, values, source=source)


def load_stage3_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Stage3Config:
    """Read a stage-3 TOML (JSON/YAML) file, apply ``key=value`` overrides (TOML values), validate.

    Relative paths inside the file are relative to the working directory, as in stages 1–2.
    """
    return stage3_config_from_dict(read_config_values(path, overrides), source=str(path))
