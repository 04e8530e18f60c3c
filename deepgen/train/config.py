"""``TrainConfig``: the settings of a stage-1 (alignment pre-training) or stage-2 (joint SFT) run.

Config files are **TOML** (read with the standard library's ``tomllib``, or its backport ``tomli`` on
Python 3.10; comments allowed).  ``.json`` files are read too, and ``.yaml``/``.yml`` if PyYAML is
installed.  Keys are flat (one ``key = value`` per field below; ``task_pattern`` is an inline table).
A file is applied on top of the preset of its ``stage`` (1 if absent), so it only needs the keys it
changes.  Unknown keys and bad values raise :class:`ConfigError` listing every problem on one line; old key names
(stage 3's ``max_train_steps``, ``lr_scheduler``, ``adam_betas``, ``lora_rank``, …) still load, with a
deprecation warning naming the new one.  TOML has no null: leave an optional key out to get its default.

The schema (type checks, unknown and old keys, one-line errors) is shared with stage 3:
:mod:`deepgen.train.schema` (plain dataclasses, not pydantic; the reason is in that module's doc).

Stage presets (from the official configs, deepgen-reference §5.2; ``max_steps`` counts optimizer
updates — official 200k / 400k micro-iterations at accumulation 4 / 3):

=====================  ======================  =====================================
key                    stage 1                 stage 2
=====================  ======================  =====================================
lr                     1e-4                    5e-5
grad_accumulation      4                       3
task_pattern           image2image 1 : t2i 3   image2image 1 : t2i 2
max_steps              50 000                  133 333
save_every             10 000                  13 333
train_dit              "frozen"                "full"
vlm_lora               false                   true (r 64, α 128, dropout 0.05)
=====================  ======================  =====================================

Both: AdamW betas (0.9, 0.95), weight decay 0.05 (ndim ≥ 2 only), 1 % warm-up from 1e-5 then cosine,
grad clip 1.0, micro batch 4, 10 % T2I caption drop, fix_pixels 512, meta_queries + projectors +
connector trained, keep 5 checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import VERIFY_LEVELS, TaskPattern
from .optim import SCHEDULES
from .schema import ConfigSchema, build_config, drop_replaced

__all__ = [
    "ConfigError",
    "TrainConfig",
    "STAGES",
    "MIXED_PRECISION",
    "TRAIN_DIT_MODES",
    "DEFAULT_DIT_LORA_TARGETS",
    "EXPORT_DTYPES",
    "stage_preset",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "resolve_mixed_precision",
]

STAGES = (1, 2)
MIXED_PRECISION = ("no", "bf16", "fp16", "auto")
TRAIN_DIT_MODES = ("full", "lora", "frozen")
VAE_LATENTS = ("sample", "mean")  # the training target: a VAE posterior sample (official) or its mean
# diffusers' SD3 LoRA targets (attention projections of both streams), matched as module-name suffixes
# The DiT LoRA targets are defined once, as presets in deepgen.lora (DIT_TARGET_PRESETS): "attn" adapts every
# attention projection of every block, SD3.5's second (image) attention attn2 included, which diffusers' SD3
# training script leaves out (its ".attn.to_q"-style suffixes do not match attn2).
DEFAULT_DIT_LORA_TARGETS = ("attn",)
EXPORT_DTYPES = {"auto": None, "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # name -> torch attribute


from ..errors import ConfigError  # noqa: E402 - invalid training configuration; the message lists every problem


@dataclass
class TrainConfig(ConfigSchema):
    """All settings of a training run (defaults = the stage-1 preset).  See the module doc and docs/training.md."""

    TITLE = "training config"

    # --- run ---
    stage: int = 1  # 1 = alignment pre-training, 2 = joint SFT
    model: str = ""  # what the model loader builds from: "tiny", a release folder or repo id
    init_from: str = ""  # optional training checkpoint whose trainable tensors are loaded first
    seed: int = 0
    # --- data ---
    data: list[str] = field(default_factory=list)  # JSON/JSONL lists and/or image folders (+ .txt captions)
    data_root: str = ""  # base of relative paths in JSON rows ("" = each JSON file's folder)
    cap_source: str = "caption"  # annotation key of the caption format
    recursive: bool = False  # image folders: include sub-folders
    max_references: int = 0  # edits: use at most this many input images (0 = all; official = 1)
    data_verify: str = "header"  # none | exists | header | full (see deepgen.train.data)
    task_pattern: dict[str, int] = field(default_factory=lambda: {"image2image": 1, "text2image": 3})
    resolution: int = 512  # fix_pixels target: about resolution² pixels, sides multiples of 32
    caption_dropout: float = 0.1  # T2I only; edits never drop their instruction
    vae_latents: str = "sample"  # sample (official: a VAE posterior sample) | mean (the posterior mean)
    num_workers: int = 2  # image-decoding processes per rank
    # --- optimisation ---
    micro_batch_size: int = 4  # samples per micro-batch per process (one task per micro-batch)
    grad_accumulation: int = 4  # micro-batches per optimizer update (official = pattern cycle length)
    max_steps: int = 50_000  # optimizer updates
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05  # on parameters with ndim >= 2 only
    adam_eps: float = 1e-8
    lr_schedule: str = "cosine"  # cosine (stages 1, 2) | constant (after warm-up)
    warmup_ratio: float = 0.01  # warm-up = int(warmup_ratio * max_steps) updates ...
    warmup_steps: int | None = None  # ... unless given here
    lr_start_factor: float = 1e-5  # warm-up starts at lr * lr_start_factor
    max_grad_norm: float = 1.0  # 0 = no clipping
    mixed_precision: str = "auto"  # no | bf16 | fp16 | auto (bf16 where supported, else fp16 on CUDA, else no)
    gradient_checkpointing: bool = False
    # --- output ---
    output_dir: str = "outputs/train/stage1"
    save_every: int = 10_000  # updates between checkpoints (0 = only at the end)
    keep_last: int = 5  # checkpoints kept (0 = all)
    resume: str = "auto"  # auto (latest in output_dir if any) | no | path of a checkpoint folder
    log_every: int = 10
    log_file: bool = True  # write output_dir/train_log.jsonl (one JSON line per update)
    trackers: list[str] = field(default_factory=lambda: ["auto"])  # auto (TensorBoard if installed) | none |
    #                                                                 tensorboard, wandb (accelerate log_with)
    tracker_project: str = "deepgen"  # the run/project name the trackers get
    strict_resume_data: bool = True  # refuse to resume when the data set changed size (false: warn, continue)
    val_loss_every: int = 100  # updates between fixed-noise validation losses (log key val_loss; 0 = off)
    val_loss_samples: int = 4  # samples of that validation set (the data set's first ones, T2I first)
    # --- validation images ---
    validation_prompt: str = ""
    validation_every: int = 0  # updates between validation images (0 = off)
    validation_num_steps: int = 30  # sampling steps of a validation image
    validation_cfg_scale: float = 4.0
    validation_size: int | None = None  # side in pixels (default: resolution)
    validation_at_end: bool = True  # also one after the last update (when validation_prompt is set)
    # --- export at the end ---
    export_lora: bool | None = None  # write a LoRA file (default: when a LoRA trained)
    export_lora_path: str = ""  # "" = output_dir/export/deepgen_lora.safetensors
    export_lora_scb: bool | None = None  # also store meta-query/projector/connector changes as .diff tensors
    #                                     (default: when they trained and the DiT did not train in full)
    save_lora_every_checkpoint: bool = False  # also <lora stem>_<step>_steps.safetensors at each periodic checkpoint
    export_lora_metadata: dict[str, Any] = field(default_factory=dict)  # extra metadata of the LoRA file
    export_checkpoint: bool = True  # write the official-layout checkpoint
    export_checkpoint_path: str = ""  # "" = output_dir/export/model.safetensors
    export_dtype: str = "auto"  # auto (as trained) | fp32 | bf16 | fp16
    # --- what to train ---
    train_meta_queries: bool = True
    train_connector: bool = True
    train_projectors: bool = True
    train_dit: str = "frozen"  # full | lora | frozen
    dit_lora_rank: int = 32
    dit_lora_alpha: float = 32.0
    dit_lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_DIT_LORA_TARGETS))
    vlm_lora: bool = False  # PEFT LoRA on the VLM's language model (official stage 2)
    vlm_lora_rank: int = 64
    vlm_lora_alpha: float = 128.0
    vlm_lora_dropout: float = 0.05
    vlm_lora_targets: list[str] = field(default_factory=lambda: ["auto"])  # "auto" (official), "linear" or names

    # ------------------------------------------------------------------------------------------------

    @classmethod
    def for_stage(cls, stage: int, **overrides: Any) -> TrainConfig:
        """The stage preset with ``overrides`` applied and validated."""
        return config_from_dict({"stage": stage, **overrides})

    @property
    def pattern(self) -> TaskPattern:
        return TaskPattern(self.task_pattern)

    @property
    def effective_warmup_steps(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else int(self.warmup_ratio * self.max_steps)

    def problems(self) -> list[str]:
        """Every validation problem (empty list = valid)."""
        p: list[str] = []

        def need(cond: bool, msg: str) -> None:
            if not cond:
                p.append(msg)

        need(self.stage in STAGES, f"stage must be 1 or 2 (got {self.stage})")
        need(bool(self.model.strip()), 'model must be set ("tiny", a DeepGen release folder or repo id)')
        need(len(self.data) > 0, "data must list at least one JSON/JSONL file or image folder")
        need(all(isinstance(d, str) and d.strip() for d in self.data), "data entries must be non-empty paths")
        need(self.max_references >= 0, f"max_references must be ≥ 0 (0 = all) (got {self.max_references})")
        need(
            self.data_verify in VERIFY_LEVELS, f"data_verify must be one of {VERIFY_LEVELS} (got {self.data_verify!r})"
        )
        try:
            TaskPattern(self.task_pattern)
        except ValueError as e:
            p.append(f"task_pattern: {e}")
        need(
            self.resolution >= 32 and self.resolution % 32 == 0,
            f"resolution must be a multiple of 32, ≥ 32 (got {self.resolution})",
        )
        need(self.vae_latents in VAE_LATENTS, f"vae_latents must be one of {VAE_LATENTS} (got {self.vae_latents!r})")
        need(0.0 <= self.caption_dropout <= 1.0, f"caption_dropout must be in [0, 1] (got {self.caption_dropout})")
        need(self.num_workers >= 0, f"num_workers must be ≥ 0 (got {self.num_workers})")
        need(self.micro_batch_size >= 1, f"micro_batch_size must be ≥ 1 (got {self.micro_batch_size})")
        need(self.grad_accumulation >= 1, f"grad_accumulation must be ≥ 1 (got {self.grad_accumulation})")
        need(self.max_steps >= 1, f"max_steps must be ≥ 1 (got {self.max_steps})")
        need(math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0 (got {self.lr})")
        need(
            len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
            f"betas must be two numbers in [0, 1) (got {list(self.betas)})",
        )
        need(self.weight_decay >= 0, f"weight_decay must be ≥ 0 (got {self.weight_decay})")
        need(self.adam_eps > 0, f"adam_eps must be > 0 (got {self.adam_eps})")
        need(self.lr_schedule in SCHEDULES, f"lr_schedule must be one of {SCHEDULES} (got {self.lr_schedule!r})")
        need(0.0 <= self.warmup_ratio < 1.0, f"warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.warmup_steps is not None:
            need(
                0 <= self.warmup_steps < max(self.max_steps, 1),
                f"warmup_steps must be in [0, max_steps) (got {self.warmup_steps}, max_steps {self.max_steps})",
            )
        need(0.0 <= self.lr_start_factor <= 1.0, f"lr_start_factor must be in [0, 1] (got {self.lr_start_factor})")
        need(self.max_grad_norm >= 0, f"max_grad_norm must be ≥ 0 (0 = no clipping) (got {self.max_grad_norm})")
        need(
            self.mixed_precision in MIXED_PRECISION,
            f"mixed_precision must be one of {MIXED_PRECISION} (got {self.mixed_precision!r})",
        )
        need(self.seed >= 0, f"seed must be ≥ 0 (got {self.seed})")
        need(bool(self.output_dir.strip()), "output_dir must be set")
        need(self.save_every >= 0, f"save_every must be ≥ 0 (0 = only at the end) (got {self.save_every})")
        need(self.keep_last >= 0, f"keep_last must be ≥ 0 (0 = keep all) (got {self.keep_last})")
        need(bool(self.resume.strip()), 'resume must be "auto", "no" or a checkpoint folder')
        need(self.log_every >= 1, f"log_every must be ≥ 1 (got {self.log_every})")
        need(self.val_loss_every >= 0, f"val_loss_every must be ≥ 0 (0 = off) (got {self.val_loss_every})")
        need(self.val_loss_samples >= 1, f"val_loss_samples must be ≥ 1 (got {self.val_loss_samples})")
        from .trackers import tracker_problem

        tracker = tracker_problem(self.trackers)
        need(tracker is None, tracker or "")
        need(self.validation_every >= 0, f"validation_every must be ≥ 0 (0 = off) (got {self.validation_every})")
        if self.validation_every > 0:
            need(bool(self.validation_prompt.strip()), "validation_every > 0 needs a validation_prompt")
        need(self.validation_num_steps >= 1, f"validation_num_steps must be ≥ 1 (got {self.validation_num_steps})")
        need(self.validation_cfg_scale >= 0, f"validation_cfg_scale must be ≥ 0 (got {self.validation_cfg_scale})")
        if self.validation_size is not None:
            need(self.validation_size >= 16, f"validation_size must be ≥ 16 (got {self.validation_size})")
        need(
            self.export_dtype in EXPORT_DTYPES,
            f"export_dtype must be one of {tuple(EXPORT_DTYPES)} (got {self.export_dtype!r})",
        )
        need(self.train_dit in TRAIN_DIT_MODES, f"train_dit must be one of {TRAIN_DIT_MODES} (got {self.train_dit!r})")
        need(
            self.dit_lora_rank >= 1,
            f"dit_lora_rank: rank must be ≥ 1 (got {self.dit_lora_rank}); "
            'to train no DiT LoRA set train_dit = "frozen"',
        )
        need(self.dit_lora_alpha > 0, f"dit_lora_alpha must be > 0 (got {self.dit_lora_alpha})")
        if self.train_dit == "lora":
            need(len(self.dit_lora_targets) > 0, 'train_dit = "lora" needs at least one dit_lora_targets entry')
        need(
            self.vlm_lora_rank >= 1,
            f"vlm_lora_rank: rank must be ≥ 1 (got {self.vlm_lora_rank}); to train no VLM LoRA set vlm_lora = false",
        )
        need(self.vlm_lora_alpha > 0, f"vlm_lora_alpha must be > 0 (got {self.vlm_lora_alpha})")
        need(0.0 <= self.vlm_lora_dropout < 1.0, f"vlm_lora_dropout must be in [0, 1) (got {self.vlm_lora_dropout})")
        need(len(self.vlm_lora_targets) > 0, 'vlm_lora_targets needs at least one entry ("auto", "linear" or names)')
        need(
            any(
                [
                    self.train_meta_queries,
                    self.train_connector,
                    self.train_projectors,
                    self.train_dit != "frozen",
                    self.vlm_lora,
                ]
            ),
            "nothing to train: enable train_meta_queries / train_connector / train_projectors, train_dit or vlm_lora",
        )
        return p

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` listing every problem; warn about unusual but valid choices."""
        super().validate()
        cycle = len(self.pattern.cycle())
        if self.grad_accumulation % cycle:
            warnings.warn(
                f"grad_accumulation {self.grad_accumulation} is not a multiple of the task-pattern cycle "
                f"({cycle} micro-batches), so updates see different task mixes",
                stacklevel=2,
            )
        return self

    @property
    def export_torch_dtype(self):
        """``export_dtype`` as a torch dtype (None = as trained)."""
        import torch

        name = EXPORT_DTYPES[self.export_dtype]
        return getattr(torch, name) if name else None


# ----------------------------------------------------------------------------------------------------
# presets, parsing


def stage_preset(stage: int) -> dict[str, Any]:
    """The keys a stage changes relative to the dataclass defaults (which are stage 1)."""
    if stage == 1:
        return {"stage": 1}
    if stage == 2:
        return {
            "stage": 2,
            "lr": 5e-5,
            "grad_accumulation": 3,
            "task_pattern": {"image2image": 1, "text2image": 2},
            "max_steps": 133_333,
            "save_every": 13_333,
            "train_dit": "full",
            "vlm_lora": True,
            "output_dir": "outputs/train/stage2",
        }
    raise ConfigError(f"Invalid training config: stage must be 1 or 2 (got {stage!r})")


def _preset_of(values: Mapping[str, Any]) -> dict[str, Any]:
    stage = values.get("stage", 1)
    if isinstance(stage, bool) or stage not in STAGES:
        raise ValueError(f"stage must be 1 or 2 (got {stage!r})")
    return stage_preset(stage)


def config_from_dict(values: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
    """Stage preset (``values["stage"]``, default 1) + ``values``, type-checked and validated (old names accepted
    with a deprecation warning; see :func:`deepgen.train.schema.build_config`)."""
    return build_config(TrainConfig, values, source=source, preset=_preset_of).validate()


def _tomllib():
    """``tomllib`` (Python ≥ 3.11) or its backport ``tomli`` (Python 3.10)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError as e:
            raise ConfigError(
                "reading TOML on Python 3.10 needs the tomli package (pip install tomli), or write the config as .json"
            ) from e
    return tomllib


def read_config_file(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".toml":
        tomllib = _tomllib()
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from e
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON: {e}") from e
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ConfigError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or use TOML") from e
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
    else:
        raise ConfigError(f"{path}: unknown config format {suffix!r}; use .toml (or .json / .yaml)")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table of key = value settings")
    return data


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> TrainConfig:
    """Read a TOML (or JSON/YAML) config file, apply ``key=value`` ``overrides``, validate.

    Relative paths in the file (``data``, ``data_root``, ``output_dir``, ``init_from``) are kept as
    written: they are relative to the working directory the trainer runs in.
    """
    return config_from_dict(read_config_values(path, overrides), source=str(path))


def read_config_values(path, overrides=()) -> dict:
    """A config file's values with `key=value` overrides applied (shared by stages 1-2 and 3)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} not found")
    new = parse_overrides(overrides)
    return {**drop_replaced(read_config_file(path), new), **new}


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    overrides = list(overrides)
    if not overrides:
        return {}
    tomllib = _tomllib()
    out = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. lr=5e-5)")
        try:
            out[key] = tomllib.loads(f"v = {raw.strip()}")["v"]  # numbers, booleans, lists, "strings"
        except tomllib.TOMLDecodeError:
            out[key] = raw.strip()  # bare words are strings: train_dit=lora
    return out


def apply_overrides(cfg: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """A new validated config with ``key=value`` overrides (values parsed as TOML, else strings).

    Changing ``stage`` here does *not* re-apply the other stage's preset; set ``stage`` in the file.
    """
    new = parse_overrides(overrides)
    values = {k: v for k, v in cfg.to_dict().items() if v is not None}
    return config_from_dict({**drop_replaced(values, new), **new}, source="overrides")


def resolve_mixed_precision(value: str) -> str:
    """``auto`` → ``bf16`` on a CUDA device that supports it, ``fp16`` on other CUDA devices, else ``no``."""
    if value not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision must be one of {MIXED_PRECISION} (got {value!r})")
    if value != "auto":
        return value
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"
