"""``GRPOConfig``: MR-GRPO hyper-parameters with the official defaults.

"ref §x" = /work/shared/docs/mrgrpo-reference.md section x (code defaults of
``deepgenteam/deepgen_rl@c4d5dc2``, ``deepgen_rl/grpo_deepgen.py`` argparse, unless noted).
The two as-run quirks default to the *corrected* behaviour; :meth:`GRPOConfig.official` turns them on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..optim import SCHEDULES
from ..schema import ConfigSchema
from .logprob import LOGPROB_KINDS
from .sde import num_train_steps as _num_train_steps

__all__ = ["GRPOConfig", "DEFAULT_CATEGORY_WEIGHTS", "DEFAULT_CATEGORY_SAMPLE_WEIGHTS"]

# ref §2.1: deepgen_rl assets/rl_datasets/deepgen/deepgen_train.yaml (per prompt file → category)
DEFAULT_CATEGORY_WEIGHTS: dict[str, dict[str, float]] = {
    "text_render": {"unifiedreward_think": 0.2, "clip_sim": 0.1, "ocr": 0.7},
    "general": {"unifiedreward_think": 0.7, "clip_sim": 0.3},
}
# ref §2.1: sample_weight of the prompt files (sample_proportional)
DEFAULT_CATEGORY_SAMPLE_WEIGHTS: dict[str, float] = {"text_render": 3.0, "general": 1.0}


@dataclass
class GRPOConfig(ConfigSchema):
    """The algorithm's settings; a group of :class:`~deepgen.train.grpo.run_config.Stage3Config` (its keys sit at
    the top level of a stage-3 file).  Names shared with stages 1-2 (``max_steps``, ``lr``, ``betas``,
    ``lr_schedule``, ``warmup_steps``, ``save_every``, ``seed``, …) mean the same there."""

    TITLE = "MR-GRPO config"

    # --- rollouts (ref §1) ---
    group_size: int = 8  # ref §4.3 `rollout_n` G = 8
    prompts_per_step: int = 32  # global; ref §4.3 rollout_global_batch_size 256 = 32 prompts × 8 (8 GPUs)
    rollout_micro_batch_size: int = 32  # ref §4.3 `rollout_micro_batch_size` (images per forward)
    num_steps: int = 50  # ref §1.1 set_timesteps(50)
    resolution: int = 512  # ref §1.1 512×512 → latent 16×64×64
    shift: float = 3.0  # ref §1.1 SD3.5-M scheduler shift, no dynamic shifting
    sampler: str = "cps_sde"  # ref §1.2 `--atrain_sde_sampler cps_sde` (only CPS implemented here)
    eta: float = 1.0  # ref §1.2 `--sde_eta` 1.0; 0.8 = Flow-GRPO CPS configs / MixGRPO
    init_same_noise: bool = True  # ref §1.1 `--init_same_noise`: one x_T per group
    cfg_scale: float = 0.0  # ref §1.5 `--cfg_scale 0`: no CFG in rollouts and training
    # --- trained timesteps (ref §1.4) ---
    timestep_fraction: float = 0.6  # ref §1.4 K = int(50·0.6) = 30
    include_last_step: bool = False  # ref §1.4 ATRAIN_INCLUDE_LAST_DENOISE_STEP=0 (σ'=0 step excluded)
    logprob: str = "simplified"  # ref §1.3 −‖x'−μ‖²/D for cps_sde; "exact" = Gaussian (option)
    # --- advantages (ref §3) ---
    adv_type: str = "gdpo"  # ref §3 `--atrain_adv_type gdpo` (only gdpo implemented here)
    adv_eps: float = 1e-4  # ref §3 ε added to both unbiased stds
    adv_clip: float = 5.0  # ref §3 ATRAIN_ADV_CLIP_MAX 5.0
    nan_policy: str = "exclude"  # not official (no NaN guard there); see advantage.py
    category_weights: dict[str, dict[str, float]] = field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_CATEGORY_WEIGHTS.items()}
    )  # ref §2.1 per-dataset reward weights
    category_sample_weights: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_CATEGORY_SAMPLE_WEIGHTS)
    )  # ref §2.1 per-dataset sample_weight
    # --- loss (ref §4.1, §4.2) ---
    clip_range: float = 1e-4  # ref §4.1 `clip_range` ε = 1e-4
    kl_type: str = "v-based"  # ref §4.1 `--atrain_kl_type v-based`
    kl_beta: float = 5e-7  # ref §4.1 β = 5e-7
    kl_eps: float = 1e-7  # ref §4.1 ‖Δv‖²/D/(2s² + 1e-7)
    sft_lambda: float = 1e-4  # ref §4.2 `sftaux_coef` λ = 1e-4
    sft_every_n_steps: int = 1  # ref §4.2 `sftaux_every_n_steps` 1
    # global, like prompts_per_step: each of N processes takes sft_batch_size / N (N must divide it); the
    # per-forward chunk sizes rollout_/train_micro_batch_size are per process and only trade memory for speed
    sft_batch_size: int = 256  # global; ref §4.2 one SFT batch of 32 images per rank × 8 GPUs
    sft_caption_drop: float = 0.1  # ref §4.2 caption → "" with p = 0.1
    num_actor_update_steps: int = 1  # ref §4.1/§4.3 `atrain_num_actor_update_steps` U = 1
    train_micro_batch_size: int = 32  # ref §4.3 `atrain_micro_batch_size` 32
    # --- optimiser (ref §4.3) ---
    lr: float = 2e-6  # ref §4.3 AdamW lr
    betas: tuple[float, float] = (0.9, 0.999)  # ref §4.3 HF defaults
    adam_eps: float = 1e-8  # ref §4.3 HF default
    weight_decay: float = 0.0  # ref §4.3 HF default
    lr_schedule: str = "constant"  # ref §4.3 launcher flag constant_with_warmup: constant after the warm-up
    warmup_steps: int = 20  # ref §4.3 warmup_steps 20 (linear; update 1 at lr/20, not 0)
    max_grad_norm: float = 1.0  # ref §4.3 max_grad_norm 1.0
    max_steps: int = 1500  # ref §4.3 paper: 1,500 trainer steps (= rollouts)
    ema_decay: float = 0.0  # ref §0 `--ema_diffusion 0.0` (off)
    # --- schedule of evaluation / saving (ref §4.3, §6) ---
    eval_every: int = 10  # ref §6 eval_freq 10
    eval_cfg_scale: float = 4.0  # ref §6 UniGenBench eval CFG 4.0 (ODE, 50 steps)
    save_every: int = 50  # ref §4.3 save every 50 steps
    seed: int = 42  # ref §2.1 sampler seed epoch·world + rank + 42
    # --- the two as-run quirks (ref §8.1), corrected by default ---
    optimizer_step_per_timestep: bool = False  # ref §4.4 as run: True (≈31 AdamW steps per rollout)
    bf16_old_logprob: bool = False  # ref §4.1 as run: True (old log-probs cast to bf16)

    def __post_init__(self) -> None:
        self.validate()  # ConfigError (a ValueError) listing every problem

    def problems(self) -> list[str]:
        p: list[str] = []

        def need(cond: bool, msg: str) -> None:
            if not cond:
                p.append(msg)

        need(
            self.group_size >= 2,
            f"group_size must be ≥ 2 (got {self.group_size}): GRPO advantages compare the images of one prompt, "
            "so with G = 1 every advantage is 0 and nothing but the KL/SFT terms would train",
        )
        need(self.prompts_per_step >= 1, f"prompts_per_step must be ≥ 1 (got {self.prompts_per_step})")
        need(self.rollout_micro_batch_size >= 1, "rollout_micro_batch_size must be ≥ 1")
        need(self.num_steps >= 2, f"num_steps must be ≥ 2 (got {self.num_steps})")
        need(
            self.resolution >= 16 and self.resolution % 16 == 0,
            f"resolution must be a multiple of 16, ≥ 16 (got {self.resolution})",
        )
        need(0.0 <= self.eta <= 1.0, f"eta must be in [0, 1] (got {self.eta})")
        need(0.0 < self.timestep_fraction <= 1.0, f"timestep_fraction must be in (0, 1] (got {self.timestep_fraction})")
        need(self.logprob in LOGPROB_KINDS, f"logprob must be one of {LOGPROB_KINDS} (got {self.logprob!r})")
        need(self.sampler == "cps_sde", f"only sampler = 'cps_sde' is implemented (got {self.sampler!r})")
        need(self.adv_type == "gdpo", f"only adv_type = 'gdpo' is implemented (got {self.adv_type!r})")
        need(self.kl_type == "v-based", f"only kl_type = 'v-based' is implemented (got {self.kl_type!r})")
        need(
            self.nan_policy in ("exclude", "raise"),
            f"nan_policy must be 'exclude' or 'raise' (got {self.nan_policy!r})",
        )
        need(0.0 <= self.sft_lambda <= 1.0, f"sft_lambda must be in [0, 1] (got {self.sft_lambda})")
        need(self.sft_every_n_steps >= 1, "sft_every_n_steps must be ≥ 1")
        need(self.sft_batch_size >= 1, "sft_batch_size must be ≥ 1")
        need(0.0 <= self.sft_caption_drop <= 1.0, "sft_caption_drop must be in [0, 1]")
        need(self.num_actor_update_steps >= 1, "num_actor_update_steps must be ≥ 1")
        need(self.train_micro_batch_size >= 1, "train_micro_batch_size must be ≥ 1")
        need(self.lr > 0, f"lr must be > 0 (got {self.lr})")
        need(
            len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
            f"betas must be two numbers in [0, 1) (got {list(self.betas)})",
        )
        need(self.lr_schedule in SCHEDULES, f"lr_schedule must be one of {SCHEDULES} (got {self.lr_schedule!r})")
        need(self.warmup_steps >= 0, f"warmup_steps must be ≥ 0 (got {self.warmup_steps})")
        need(self.max_grad_norm >= 0, f"max_grad_norm must be ≥ 0 (0 = no clipping) (got {self.max_grad_norm})")
        need(self.max_steps >= 1, f"max_steps must be ≥ 1 (got {self.max_steps})")
        need(self.ema_decay == 0.0, "ema_decay is not implemented (official: off)")
        need(self.save_every >= 0, f"save_every must be ≥ 0 (0 = only at the end) (got {self.save_every})")
        need(self.eval_every >= 0, f"eval_every must be ≥ 0 (got {self.eval_every})")
        need(self.seed >= 0, f"seed must be ≥ 0 (got {self.seed})")
        if not self.category_weights:
            p.append("category_weights must define at least one category")
        for cat, w in self.category_weights.items():
            if not w or not any(v != 0 for v in w.values()):
                p.append(f"category_weights.{cat}: needs at least one non-zero reward weight")
        return p

    @property
    def update_every(self) -> str:
        """``"timestep"`` (official as-run) or ``"rollout"`` (as designed, default)."""
        return "timestep" if self.optimizer_step_per_timestep else "rollout"

    @property
    def num_train_timesteps(self) -> int:
        """K, trained timesteps per rollout (30 by default)."""
        return _num_train_steps(self.num_steps, self.timestep_fraction, self.include_last_step)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the SD3.5 latent at ``resolution`` (16 channels, /8)."""
        return (16, self.resolution // 8, self.resolution // 8)

    @classmethod
    def official(cls, **overrides) -> "GRPOConfig":
        """The as-run official behaviour: both quirks on (ref §4.1, §4.4)."""
        kw: dict[str, Any] = {"optimizer_step_per_timestep": True, "bf16_old_logprob": True}
        kw.update(overrides)
        return cls(**kw)
