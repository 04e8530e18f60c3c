"""`deepgen train --plan`: the memory plan counts exactly what the trainer trains, scales with sharding as
documented, prints a table for every shipped config without loading weights, and rejects bad input in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepgen.cli import main
from deepgen.tiny import build_tiny_model
from deepgen.train.cli import load_train_config
from deepgen.train.plan import GIB, count_model, model_configs, plan_for_config
from deepgen.train.trainable import TrainableSpec, setup_trainable

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "train" / "tiny.toml"
SHIPPED = sorted((ROOT / "configs" / "train").glob("*.toml"))
ACCELERATE = ROOT / "configs" / "accelerate"


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # stage 2: SCB + full DiT + VLM LoRA
        ["train_dit=lora", "dit_lora_rank=4"],
        ["train_dit=frozen", "vlm_lora=false"],  # stage-1 policy
        ["train_connector=false", "train_projectors=false", "train_dit=lora", "vlm_lora=false"],
    ],
)
def test_plan_counts_exactly_what_the_trainer_trains(overrides):
    cfg = load_train_config(str(TINY), None, overrides)
    plan = plan_for_config(cfg)
    model = build_tiny_model()
    before = sum(p.numel() for p in model.parameters())
    trainable = setup_trainable(model, TrainableSpec.from_config(cfg), seed=cfg.seed)
    by_part: dict[str, int] = {}
    for name, p in trainable.items():
        by_part[name.split(".", 1)[0]] = by_part.get(name.split(".", 1)[0], 0) + p.numel()
    assert plan.count.trainable_params == sum(p.numel() for p in trainable.values())
    assert plan.count.trainable_by_part == by_part
    assert plan.count.total_params == sum(p.numel() for p in model.parameters())
    assert plan.count.added_params == plan.count.total_params - before
    # the bytes are those of the real model as the trainer holds it (fp32 here: mixed_precision = "no")
    real = count_model(model, next(p for p in model.parameters() if not p.requires_grad).dtype)
    assert plan.count.weights == real.weights


def test_sharding_divides_what_it_shards():
    plan = plan_for_config(load_train_config(str(TINY), None, []))
    one = plan.per_device(1)
    ddp = plan.per_device(8, "none")
    zero2 = plan.per_device(8, "zero2")
    zero3 = plan.per_device(8, "zero3")
    fsdp = plan.per_device(8, "fsdp")
    trainable = 4 * plan.count.trainable_params
    assert (one.gradients, one.optimizer, one.step_temp) == (trainable, 2 * trainable, trainable)
    assert ddp.weights == one.weights and ddp.gradients == 2 * trainable  # DDP: + the bucket copy
    assert zero2.weights == one.weights and zero2.gathered == 0
    for row in (zero2, zero3):
        assert row.gradients == -(-trainable // 8)
        assert row.optimizer == -(-2 * trainable // 8)
    assert zero3.weights == {k: -(-v // 8) for k, v in one.weights.items()}
    assert zero3.gathered == 2 * plan.count.largest_layer_bytes > 0
    assert fsdp == zero3.__class__(**{**zero3.__dict__, "sharding": "fsdp"})
    # activations are per micro-batch and not sharded; checkpointing never costs more
    assert zero3.activations == one.activations >= one.activations_ckpt > 0
    assert zero2.total(False) == one.total(False) - (trainable - zero2.gradients) - (2 * trainable - zero2.optimizer)


def test_activations_scale_with_batch_and_resolution():
    base = plan_for_config(load_train_config(str(TINY), None, ["micro_batch_size=2"])).acts["stored"]
    double = plan_for_config(load_train_config(str(TINY), None, ["micro_batch_size=4"])).acts["stored"]
    bigger = plan_for_config(load_train_config(str(TINY), None, ["micro_batch_size=2", "resolution=128"])).acts[
        "stored"
    ]
    assert double == 2 * base
    assert bigger > base


def test_real_sizes_match_the_reference():
    """deepgen-reference §1.1: DiT 2,243,171,520; SCB 432,449,532; VLM LoRA 185,163,776 (r 64, every module)."""
    cfg = load_train_config(str(ROOT / "configs" / "train" / "stage2.toml"), None, [])
    plan = plan_for_config(cfg, model_configs("no/such/folder"))
    parts = plan.count.trainable_by_part
    assert parts["transformer"] == 2_243_171_520
    scb = ("meta_queries", "projector_1", "projector_2", "projector_3", "connector")
    assert sum(parts[k] for k in scb) == 432_449_532
    assert parts["lmm"] == 185_163_776
    assert plan.per_device(1).total(False) > 24 * GIB


@pytest.mark.parametrize("config", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_cli_plans_every_shipped_config_without_loading(config, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("--plan must not load a model")

    monkeypatch.setattr("deepgen.train.model_source.load_model_for_training", refuse)
    monkeypatch.setattr("deepgen.loading.load_model", refuse)
    code = main(["train", "--plan", "--config", str(config), "--num-processes", "1", "8", "--sharding", "zero2"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("total (peak)") == 2
    assert "1 process (ZERO2)" in out and "8 processes (ZERO2)" in out
    assert "fits a 24 GB card" in out and "fits a 80 GB card" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "no/such.toml"], "not found"),
        (["--config", str(TINY), "--num-processes", "0"], "--num-processes must be ≥ 1"),
        (["--config", str(TINY), "--set", "train_dit=half"], "train_dit must be one of"),
        (["--config", str(TINY), "--accelerate-config", "no/such.yaml"], "no/such.yaml does not exist"),
        (["--config", str(TINY), "--accelerate-config", str(TINY)], "is not an accelerate config"),
    ],
)
def test_bad_input_is_one_line(argv, message, capsys):
    code = main(["train", "--plan", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:") and message in err


@pytest.mark.parametrize(
    "name, sharding, header",
    [("fsdp", "fsdp", "8 processes (FSDP)"), ("zero2", "zero2", "8 processes (ZERO2)"), ("zero3", "zero3", "(ZERO3)")],
)
def test_shipped_accelerate_configs_parse_and_set_the_plans_sharding(name, sharding, header, capsys):
    from accelerate.commands.config.config_args import load_config_from_file

    from deepgen.train.plan import sharding_from_accelerate_config

    path = ACCELERATE / f"{name}.yaml"
    cfg = load_config_from_file(str(path))  # accelerate's own loader: what `accelerate launch` reads
    assert cfg.num_processes == 8 and cfg.mixed_precision == "bf16"
    if name == "fsdp":
        assert cfg.fsdp_config["fsdp_version"] == 2 and cfg.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    else:
        assert cfg.deepspeed_config["zero_stage"] == int(name[-1])
    assert sharding_from_accelerate_config(str(path)) == (sharding, 8)
    assert main(["train", "--plan", "--config", str(TINY), "--accelerate-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"sharding {sharding}" in out and header in out and out.count("total (peak)") == 1


def test_a_deepspeed_launch_without_deepspeed_names_the_package(monkeypatch):
    import importlib.util

    from deepgen.errors import TrainingError
    from deepgen.train.accelerate_setup import build_accelerator

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` with zero2.yaml sets
    with pytest.raises(TrainingError, match="not installed: pip install deepspeed"):
        build_accelerator("no", cpu=True)


@pytest.mark.parametrize("stage", [2, 3])
def test_the_training_config_sets_deepspeeds_accumulation_clipping_and_batch(monkeypatch, stage):
    """What the trainers write into DeepSpeed's config before prepare (the runs themselves:
    tests/test_trainer_deepspeed.py, which needs deepspeed)."""
    from types import SimpleNamespace

    from accelerate.utils import DeepSpeedPlugin

    from deepgen.errors import TrainingError
    from deepgen.train import zero

    def accelerator(**env):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        plugin = DeepSpeedPlugin(zero_stage=stage)  # as the launcher's environment describes it
        acc = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=2)
        return acc, plugin.deepspeed_config

    acc, config = accelerator()
    zero.configure(acc, micro_batch_size=3, grad_accumulation=4, max_grad_norm=1.0)
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (3, 4)
    assert (config["gradient_clipping"], config["train_batch_size"]) == (1.0, 3 * 4 * 2)
    assert acc.gradient_accumulation_steps == 4
    # a launch config that sets them otherwise is refused, not overridden; the same values pass
    acc, _ = accelerator(ACCELERATE_GRADIENT_ACCUMULATION_STEPS="2")
    with pytest.raises(TrainingError, match="gradient_accumulation_steps to 2, the training config to 4"):
        zero.configure(acc, micro_batch_size=1, grad_accumulation=4, max_grad_norm=1.0)
    acc, _ = accelerator(ACCELERATE_GRADIENT_ACCUMULATION_STEPS="4", ACCELERATE_GRADIENT_CLIPPING="0.5")
    with pytest.raises(TrainingError, match="gradient_clipping to 0.5, the training config to 1.0"):
        zero.configure(acc, micro_batch_size=1, grad_accumulation=4, max_grad_norm=1.0)


def test_deepspeed_zero_1_and_fp16_are_refused():
    """Never run here: refused at start rather than trained unproven."""
    from types import SimpleNamespace

    from accelerate.utils import DeepSpeedPlugin

    from deepgen.errors import TrainingError
    from deepgen.train import zero

    def configure(plugin):
        acc = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=2)
        zero.configure(acc, micro_batch_size=1, grad_accumulation=1, max_grad_norm=1.0)

    with pytest.raises(TrainingError, match="ZeRO stage 2 or 3 only"):
        configure(DeepSpeedPlugin(zero_stage=1))
    fp16 = DeepSpeedPlugin(zero_stage=2)
    fp16.set_mixed_precision("fp16")
    with pytest.raises(TrainingError, match="DeepSpeed's fp16"):
        configure(fp16)
