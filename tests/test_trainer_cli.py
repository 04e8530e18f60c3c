"""`deepgen train`: a tiny run end to end (logs, validation images, exports), the shipped configs, stage-3
dispatch, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainer_kit import one_thread, write_dataset, write_folder_dataset

from deepgen.cli import main
from deepgen.lora import load_lora
from deepgen.train.cli import load_train_config

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--set",
    "resolution=32",
    "--set",
    "micro_batch_size=1",
    "--set",
    "grad_accumulation=1",
    "--set",
    "num_workers=0",
    "--set",
    "data_verify='exists'",
    "--set",
    "vlm_lora_rank=2",
    "--set",
    "mixed_precision='no'",
]


def tiny_config(tmp_path: Path, data: Path, **values) -> Path:
    lines = [
        "stage = 2",
        'model = "tiny"',
        f'data = ["{data}"]',
        f'output_dir = "{tmp_path / "out"}"',
        'resume = "no"',
        "max_steps = 2",
        "log_every = 1",
        "save_every = 0",
        'train_dit = "lora"',
        "dit_lora_rank = 2",
        "dit_lora_alpha = 2.0",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = tmp_path / "run.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_tiny_run_logs_validates_and_exports(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", n_t2i=2, n_edit=1)
    config = tiny_config(tmp_path, data, validation_prompt="a red square", validation_every=1)
    with one_thread():
        code = main(["train", "--stage", "2", "--config", str(config), *TINY, "--validation-steps", "2", "--cpu"])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    out = tmp_path / "out"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert {"loss", "lr", "grad_norm", "samples", "step_time"} <= set(log[0])
    assert "step 1/2 loss" in err and "step 2/2 loss" in err  # console lines (log_every = 1)
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-00000001.png", "step-00000002.png"]
    assert (out / "checkpoint-00000002" / "trainable.safetensors").is_file()
    adapter = load_lora(out / "export" / "deepgen_lora.safetensors")
    assert adapter.metadata["steps"] == 2 and "transformer" in adapter.parts and "lmm" in adapter.parts
    assert (out / "export" / "model.safetensors").is_file()
    assert "exported lora" in err and "exported checkpoint" in err


def test_shipped_configs_parse():
    from deepgen.train.config import read_config_file

    for path in sorted((ROOT / "configs" / "train").glob("*.toml")):
        if read_config_file(path).get("stage") == 3:
            continue  # MR-GRPO configs belong to deepgen.train.grpo
        cfg = load_train_config(str(path), None, [])
        assert cfg.stage in (1, 2), path
    s1 = load_train_config(str(ROOT / "configs/train/stage1.toml"), 1, [])
    assert (s1.lr, s1.grad_accumulation, s1.task_pattern, s1.train_dit, s1.vlm_lora) == (
        1e-4,
        4,
        {"image2image": 1, "text2image": 3},
        "frozen",
        False,
    )
    s2 = load_train_config(str(ROOT / "configs/train/stage2.toml"), 2, [])
    assert (
        s2.lr,
        s2.grad_accumulation,
        s2.task_pattern,
        s2.train_dit,
        s2.vlm_lora,
        s2.vlm_lora_rank,
        s2.vlm_lora_alpha,
        s2.vlm_lora_dropout,
    ) == (5e-5, 3, {"image2image": 1, "text2image": 2}, "full", True, 64, 128.0, 0.05)
    consumer = load_train_config(str(ROOT / "configs/train/stage2_consumer_dit_lora.toml"), None, [])
    assert consumer.train_dit == "lora" and consumer.gradient_checkpointing
    tiny = load_train_config(str(ROOT / "configs/train/tiny.toml"), None, ["max_steps=3"])
    assert tiny.model == "tiny-random" and tiny.max_steps == 3


def test_print_config_and_stage_conflict(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", n_t2i=1, n_edit=0)
    config = tiny_config(tmp_path, data)
    assert main(["train", "--config", str(config), "--set", "lr=2e-4", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "lr = 0.0002" in printed and 'train_dit = "lora"' in printed
    assert main(["train", "--stage", "1", "--config", str(config)]) == 2
    assert "stage-2 config but --stage 1" in capsys.readouterr().err
    # --set stage=1 on a stage-2 file: the file's own keys of what trains still apply, and a warning names them
    with pytest.warns(UserWarning, match=r"train_dit = 'lora'.*stage1_tiny.toml"):
        cfg = load_train_config(str(config), None, ["stage=1"])
    assert cfg.stage == 1 and cfg.train_dit == "lora"
    stage1 = load_train_config(str(ROOT / "configs/train/stage1_tiny.toml"), 1, [])
    assert (stage1.stage, stage1.train_dit, stage1.vlm_lora, stage1.vae_latents) == (1, "frozen", False, "mean")


def test_stage3_dispatch(tmp_path, capsys, monkeypatch):
    from deepgen.train.grpo import trainer as grpo

    calls = []
    monkeypatch.setattr(
        grpo, "run_grpo_from_config_file", lambda path, overrides, resume: calls.append((path, overrides, resume))
    )
    assert main(["train", "--stage", "3", "--config", "rl.toml", "--set", "lr=1e-6", "--resume", "auto", "--cpu"]) == 0
    assert calls == [("rl.toml", ["lr=1e-6", "cpu=true"], "auto")]
    rl = tmp_path / "rl.toml"
    rl.write_text('stage = 3\nmodel = "tiny"\n', encoding="utf-8")
    assert main(["train", "--config", str(rl)]) == 0  # the file's stage picks the trainer
    assert calls[-1] == (str(rl), [], None)

    # the real stage-3 trainer: a prompt file without prompts is a clean error (exit 2), not a traceback
    monkeypatch.undo()
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n", encoding="utf-8")
    rl.write_text(
        f'stage = 3\nmodel = "tiny"\noutput_dir = "{tmp_path / "out"}"\n[[prompts]]\npath = "{empty}"\n'
        'category = "general"\n',
        encoding="utf-8",
    )
    assert main(["train", "--config", str(rl)]) == 2
    assert "holds no prompts" in capsys.readouterr().err


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "No images"),
        ("no_captions", "no captions: each image needs a same-named .txt"),
        ("corrupt", "unreadable_image"),
        ("rank0", "dit_lora_rank: rank must be ≥ 1"),
        ("unwritable", "Cannot create the output folder"),
        ("missing", "does not exist"),
    ],
)
def test_bad_input_gives_a_clear_error(tmp_path, capsys, case, message):
    data = tmp_path / "data"
    extra = []
    if case == "empty":
        data.mkdir()
    elif case == "no_captions":
        write_folder_dataset(data, captions=False)
    elif case == "corrupt":
        data.mkdir()
        (data / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        (data / "cat.txt").write_text("a cat", encoding="utf-8")
    elif case == "rank0":
        write_folder_dataset(data)
        extra = ["--set", "dit_lora_rank=0"]
    elif case == "unwritable":
        write_folder_dataset(data)
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        extra = ["--set", f"output_dir='{blocker / 'out'}'"]
    elif case == "missing":
        data = tmp_path / "nowhere"
    config = tiny_config(tmp_path, data, data_verify="header")
    assert main(["train", "--config", str(config), "--cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
