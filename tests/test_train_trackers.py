"""Trackers through accelerate: a run writes TensorBoard event files by default (tensorboard is in the test
extra) with the JSONL log's numbers under the same names, throughput included, and the validation images;
asking for a tracker that is not installed fails in one line naming the pip package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainer_kit import base_config, one_thread, write_dataset

from deepgen.errors import ConfigError
from deepgen.train.trackers import TRACKER_DIR, resolve_trackers, scalars
from deepgen.train.trainer import LOG_FILE, SFTTrainer


def read_events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.glob("*/events.out.tfevents.*"))  # <project>/; hparams go to a subfolder
    assert files, f"no TensorBoard event file under {folder}"
    acc = EventAccumulator(str(files[0].parent), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_a_run_writes_tensorboard_events_with_the_logs_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    assert resolve_trackers(["auto"]) == ["tensorboard"]
    data = write_dataset(tmp_path / "data", n_t2i=2, n_edit=1)
    cfg = base_config(
        data,
        tmp_path / "run",
        stage=2,
        max_steps=2,
        micro_batch_size=1,
        grad_accumulation=2,
        train_dit="lora",
        vlm_lora=False,
        validation_prompt="a red square",
        validation_every=1,
        validation_at_end=False,
        validation_num_steps=2,
        validation_size=32,
        export_lora=False,
    )
    assert cfg.trackers == ["auto"]  # the default
    with one_thread():
        SFTTrainer(cfg, cpu=True).run()
    lines = [json.loads(x) for x in (tmp_path / "run" / LOG_FILE).read_text().splitlines()]
    expected = set().union(*(scalars(r) for r in lines))
    assert {"loss", "lr", "grad_norm", "loss_text2image", "loss_image2image"} <= expected
    assert {"images_per_sec_per_device", "tokens_per_sec_per_device"} <= expected
    assert all(r["images_per_sec_per_device"] > 0 and r["tokens_per_sec_per_device"] > 0 for r in lines)
    # a 32 px image is a 4x4 latent, (4/2)^2 = 4 DiT tokens of 2x2 patches
    assert lines[0]["tokens_per_sec_per_device"] == pytest.approx(4 * lines[0]["images_per_sec_per_device"], rel=1e-3)

    events = read_events(tmp_path / "run" / TRACKER_DIR)
    tags = events.Tags()
    assert set(tags["scalars"]) == expected
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in lines], rel=1e-6)
    assert any(t.startswith("validation") for t in tags["images"]), tags["images"]


@pytest.mark.parametrize(
    "value, message",
    [(["mlflow"], "unknown 'mlflow'"), (["tensorboard", "nope"], "unknown 'nope'")],
)
def test_bad_tracker_names_are_one_line(value, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        resolve_trackers(value)
    with pytest.raises(ConfigError, match=message):  # the config check, before anything loads
        base_config(tmp_path / "data.jsonl", tmp_path / "out", trackers=value)


def test_an_asked_for_tracker_that_is_missing_names_the_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="wandb is not installed: pip install wandb"):
        resolve_trackers(["wandb"])
    assert resolve_trackers("none") == [] and resolve_trackers([]) == []
