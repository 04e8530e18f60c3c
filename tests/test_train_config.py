"""deepgen.train.config: stage presets, TOML/JSON/YAML loading, validation messages, example configs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from deepgen.train.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    resolve_mixed_precision,
)

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
BASE = {"model": "tiny", "data": ["data.jsonl"]}


def test_stage_presets():
    s1 = TrainConfig.for_stage(1, **BASE)
    assert (s1.lr, s1.grad_accumulation, s1.task_pattern) == (1e-4, 4, {"image2image": 1, "text2image": 3})
    assert (s1.train_dit, s1.vlm_lora, s1.max_steps) == ("frozen", False, 50_000)
    s2 = TrainConfig.for_stage(2, **BASE)
    assert (s2.lr, s2.grad_accumulation, s2.task_pattern) == (5e-5, 3, {"image2image": 1, "text2image": 2})
    assert (s2.train_dit, s2.vlm_lora) == ("full", True)
    assert (s2.vlm_lora_rank, s2.vlm_lora_alpha, s2.vlm_lora_dropout) == (64, 128.0, 0.05)
    for c in (s1, s2):
        assert c.betas == (0.9, 0.95) and c.weight_decay == 0.05 and c.warmup_ratio == 0.01
        assert c.max_grad_norm == 1.0 and c.caption_dropout == 0.1 and c.micro_batch_size == 4
        assert c.lr_start_factor == 1e-5 and c.lr_schedule == "cosine" and c.keep_last == 5
    assert s2.effective_warmup_steps == 1333
    # the file's keys override the preset of its stage
    c = TrainConfig.for_stage(2, lr=1e-5, **BASE)
    assert c.lr == 1e-5 and c.grad_accumulation == 3


def test_load_toml_applies_stage_preset(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(
        'stage = 2\nmodel = "tiny"\ndata = "one/folder"   # a single path is fine\n'
        "task_pattern = { edit = 1, t2i = 2 }\nbetas = [0.9, 0.99]\nlr = 3e-5\n"
    )
    c = load_config(p)
    assert c.stage == 2 and c.lr == 3e-5 and c.data == ["one/folder"] and c.betas == (0.9, 0.99)
    assert c.grad_accumulation == 3 and c.vlm_lora  # from the stage-2 preset
    assert c.pattern.cycle() == ["image2image", "text2image", "text2image"]
    c2 = load_config(p, overrides=["lr=2e-5", "train_dit=lora", 'data=["a", "b"]', "seed=5"])
    assert (c2.lr, c2.train_dit, c2.data, c2.seed) == (2e-5, "lora", ["a", "b"], 5)


def test_load_json_and_yaml(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({**BASE, "stage": 1, "micro_batch_size": 2}))
    assert load_config(tmp_path / "c.json").micro_batch_size == 2
    pytest.importorskip("yaml")
    (tmp_path / "c.yaml").write_text("stage: 2\nmodel: tiny\ndata: [a.jsonl]\nlr: 1e-5\n")  # YAML 1.1: '1e-5' is a str
    c = load_config(tmp_path / "c.yaml")
    assert c.stage == 2 and c.lr == 1e-5


def test_rank_zero_and_other_errors_are_clear():
    with pytest.raises(ConfigError, match="rank must be ≥ 1") as ei:
        TrainConfig.for_stage(1, dit_lora_rank=0, **BASE)
    assert "dit_lora_rank" in str(ei.value)
    with pytest.raises(ConfigError, match="vlm_lora_rank: rank must be ≥ 1"):
        TrainConfig.for_stage(2, vlm_lora_rank=0, **BASE)
    with pytest.raises(ConfigError) as ei:
        config_from_dict(
            {
                **BASE,
                "lrr": 1e-4,
                "lr": -1.0,
                "train_dit": "half",
                "micro_batch_size": "4",
                "mixed_precision": "fp8",
                "caption_dropout": 1.5,
                "resolution": 500,
            }
        )
    msg = str(ei.value)
    for part in (
        "unknown key 'lrr' (did you mean 'lr'?)",
        "lr must be > 0",
        "train_dit must be one of",
        "micro_batch_size must be an integer",
        "mixed_precision must be one of",
        "caption_dropout must be in [0, 1]",
        "resolution must be a multiple of 32",
    ):
        assert part in msg, part
    with pytest.raises(ConfigError, match="stage must be 1 or 2"):
        config_from_dict({**BASE, "stage": 3})
    with pytest.raises(ConfigError, match="validation_prompt"):
        TrainConfig.for_stage(1, validation_every=100, **BASE)
    with pytest.raises(ConfigError, match="nothing to train"):
        TrainConfig.for_stage(1, train_meta_queries=False, train_connector=False, train_projectors=False, **BASE)
    with pytest.raises(ConfigError, match="task_pattern"):
        TrainConfig.for_stage(1, task_pattern={"video": 1}, **BASE)
    with pytest.raises(ConfigError, match="model must be set"):
        TrainConfig.for_stage(1, data=["x"])
    with pytest.raises(ConfigError, match="betas"):
        TrainConfig.for_stage(1, betas=[0.9, 1.0], **BASE)
    with pytest.raises(ConfigError, match="warmup_steps"):
        TrainConfig.for_stage(1, warmup_steps=10, max_steps=10, **BASE)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("lr = = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "c.ini").write_text("")
    with pytest.raises(ConfigError, match="unknown config format"):
        load_config(tmp_path / "c.ini")
    (tmp_path / "ok.toml").write_text('model = "tiny"\ndata = ["d"]\n')
    with pytest.raises(ConfigError, match="key=value"):
        load_config(tmp_path / "ok.toml", overrides=["lr"])


def test_to_toml_round_trip_and_overrides():
    c = TrainConfig.for_stage(2, warmup_steps=7, validation_prompt='a "quoted" prompt', **BASE)
    again = config_from_dict(tomllib.loads(c.to_toml()))
    assert again == c
    assert json.loads(json.dumps(c.to_dict())) == c.to_dict()
    c2 = apply_overrides(c, ["keep_last=0", "gradient_checkpointing=true"])
    assert c2.keep_last == 0 and c2.gradient_checkpointing and c2.lr == c.lr


def test_accumulation_not_multiple_of_pattern_warns():
    with pytest.warns(UserWarning, match="not a multiple"):
        TrainConfig.for_stage(1, grad_accumulation=3, **BASE)


def test_resolve_mixed_precision():
    assert resolve_mixed_precision("bf16") == "bf16"
    assert resolve_mixed_precision("auto") in ("no", "bf16", "fp16")
    with pytest.raises(ConfigError):
        resolve_mixed_precision("fp8")


@pytest.mark.parametrize("name", ["stage1", "stage2", "stage2_consumer_dit_lora", "tiny", "stage1_tiny"])
def test_example_configs_are_valid(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no accumulation/pattern mismatch in the shipped examples
        c = load_config(REPO / "configs" / "train" / f"{name}.toml")
    if name == "stage1":
        assert c.stage == 1 and c.train_dit == "frozen" and c.grad_accumulation == 4
    if name == "stage2":
        assert c.stage == 2 and c.train_dit == "full" and c.vlm_lora and c.lr == 5e-5
    if name == "stage2_consumer_dit_lora":
        assert c.train_dit == "lora" and c.gradient_checkpointing and c.micro_batch_size == 1
    if name == "tiny":
        assert c.model == "tiny-random" and c.mixed_precision == "no" and c.max_steps <= 60 and c.val_loss_every == 1
    if name == "stage1_tiny":
        assert (c.stage, c.train_dit, c.vlm_lora, c.model, c.val_loss_every) == (1, "frozen", False, "tiny-random", 1)


def test_old_names_in_a_file_still_load_with_a_deprecation_warning(tmp_path, caplog):
    from deepgen.train.grpo.run_config import load_stage3_config

    p = tmp_path / "old.toml"
    p.write_text(
        'stage = 3\nmodel = "tiny"\nprompts = ["p.txt"]\nmax_train_steps = 7\nadam_betas = [0.9, 0.99]\n'
        'lr_scheduler = "constant_with_warmup"\nlora_rank = 4\nlora_alpha = 8.0\nlora_targets = "attn_ff"\n'
    )
    with pytest.warns(DeprecationWarning, match="'max_train_steps' is now 'max_steps'") as record:
        c = load_stage3_config(p)
    message = str(record[0].message)
    for part in (
        "'adam_betas' is now 'betas'",
        "'lr_scheduler' is now 'lr_schedule'",
        "'lora_rank' is now 'dit_lora_rank'",
        "lr_schedule = 'constant_with_warmup' is now lr_schedule = 'constant'",
    ):
        assert part in message, part
    assert "\n" not in message and any("max_train_steps" in r.getMessage() for r in caplog.records)
    assert (c.grpo.max_steps, c.grpo.betas, c.grpo.lr_schedule) == (7, (0.9, 0.99), "constant")
    assert (c.dit_lora_rank, c.dit_lora_alpha, c.dit_lora_targets) == (4, 8.0, ["attn_ff"])
    # an override, old or new name, replaces the file's value of the same concept
    with pytest.warns(DeprecationWarning):
        assert load_stage3_config(p, ["max_steps=9"]).grpo.max_steps == 9
    p.write_text('stage = 3\nmodel = "tiny"\nprompts = ["p.txt"]\nmax_steps = 7\n')
    with pytest.warns(DeprecationWarning):
        assert load_stage3_config(p, ["max_train_steps=5"]).grpo.max_steps == 5
    # both names in one file: which one is meant is unclear
    with pytest.raises(ConfigError, match="'max_train_steps' and 'max_steps' both given"):
        load_stage3_config(p, ["max_train_steps=5", "max_steps=6"])
    # stages 1-2 share the table: stage 3's old DiT LoRA names map to the same dit_lora_* keys
    (tmp_path / "s2.toml").write_text('stage = 2\nmodel = "tiny"\ndata = ["d"]\ntrain_dit = "lora"\nlora_rank = 8\n')
    with pytest.warns(DeprecationWarning, match="'lora_rank' is now 'dit_lora_rank'"):
        assert load_config(tmp_path / "s2.toml").dit_lora_rank == 8


def test_one_schema_one_line_errors_for_every_stage():
    from deepgen.train.grpo.run_config import stage3_config_from_dict

    with pytest.raises(ConfigError) as ei:
        stage3_config_from_dict(
            {
                "model": "tiny",
                "prompts": ["p"],
                "max_step": 3,
                "eta": 2.0,
                "betas": [0.9],
                "lr_schedule": "linear",
                "group_size": 1,
                "dit_lora_rank": "4",
            }
        )
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("Invalid stage-3 config (config): ")
    for part in (
        "unknown key 'max_step' (did you mean 'max_steps'?)",
        "eta must be in [0, 1]",
        "betas must be a list of 2 numbers",
        "lr_schedule must be one of",
        "group_size must be ≥ 2",
        "dit_lora_rank must be an integer",
    ):
        assert part in msg, part
    with pytest.raises(ConfigError) as ei:
        config_from_dict({**BASE, "validation_size": 8, "export_dtype": "fp8", "export_lora": "yes"})
    msg = str(ei.value)
    assert "\n" not in msg
    for part in ("validation_size must be ≥ 16", "export_dtype must be one of", "export_lora must be true or false"):
        assert part in msg, part


def test_run_settings_are_config_keys(tmp_path):
    (tmp_path / "c.toml").write_text(
        'model = "tiny"\ndata = ["d"]\nvalidation_num_steps = 8\nvalidation_cfg_scale = 1.0\nvalidation_size = 256\n'
        'validation_at_end = false\nexport_lora = true\nexport_lora_path = "my.safetensors"\nexport_lora_scb = false\n'
        'save_lora_every_checkpoint = true\nexport_checkpoint = false\nexport_dtype = "bf16"\nlog_file = false\n'
        'strict_resume_data = false\nexport_lora_metadata = { author = "me" }\n'
    )
    c = load_config(tmp_path / "c.toml")
    assert (c.validation_num_steps, c.validation_cfg_scale, c.validation_size, c.validation_at_end) == (
        8,
        1.0,
        256,
        False,
    )
    assert (c.export_lora, c.export_lora_path, c.export_lora_scb, c.save_lora_every_checkpoint) == (
        True,
        "my.safetensors",
        False,
        True,
    )
    assert (c.export_checkpoint, c.export_dtype, c.log_file, c.strict_resume_data) == (False, "bf16", False, False)
    assert c.export_lora_metadata == {"author": "me"}
    import torch

    assert c.export_torch_dtype is torch.bfloat16 and TrainConfig().export_torch_dtype is None
    assert config_from_dict(tomllib.loads(c.to_toml())) == c
