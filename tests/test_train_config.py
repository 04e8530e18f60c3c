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
    p.write_text('stage = 2\nmodel = "tiny"\ndata = "one/folder"   # a single path is fine\n'
                 'task_pattern = { edit = 1, t2i = 2 }\nbetas = [0.9, 0.99]\nlr = 3e-5\n')
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
        config_from_dict({**BASE, "lrr": 1e-4, "lr": -1.0, "train_dit": "half", "micro_batch_size": "4",
                          "mixed_precision": "fp8", "caption_dropout": 1.5, "resolution": 500})
    msg = str(ei.value)
    for part in ("unknown key 'lrr' (did you mean 'lr'?)", "lr must be > 0", "train_dit must be one of",
                 "micro_batch_size must be an integer", "mixed_precision must be one of",
                 "caption_dropout must be in [0, 1]", "resolution must be a multiple of 32"):
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


@pytest.mark.parametrize("name", ["stage1", "stage2", "stage2_consumer_dit_lora", "tiny"])
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
        assert c.model == "tiny" and c.mixed_precision == "no" and c.max_steps <= 50
