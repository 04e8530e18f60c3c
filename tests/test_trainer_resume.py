"""Exact resume at trainer level: an interrupted run (mid-accumulation) and a run that crashed while writing a
checkpoint both continue to the same losses and weights as an uninterrupted run."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from trainer_kit import Recorder, base_config, one_thread, write_dataset

from deepgen.train import checkpointing
from deepgen.train.checkpointing import find_latest_checkpoint, list_checkpoints, load_checkpoint
from deepgen.train.trainer import LOG_FILE, SFTTrainer


class StopTraining(Exception):
    """Stands for ComfyUI's InterruptProcessingException."""


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("resume-data"), n_t2i=3, n_edit=2)


def config(data, out, **kw):
    # stage 2 with both LoRAs, LoRA dropout on, caption dropout on, 2 micro-batches per update: every random
    # draw must repeat on resume
    values = dict(
        stage=2,
        lr=3e-3,
        max_steps=4,
        micro_batch_size=1,
        grad_accumulation=2,
        train_dit="lora",
        vlm_lora=True,
        vlm_lora_rank=2,
        vlm_lora_alpha=4.0,
        vlm_lora_dropout=0.3,
        caption_dropout=0.5,
        dit_lora_rank=2,
        dit_lora_alpha=2.0,
    )
    values.update(kw)
    stage = values.pop("stage")
    return base_config(data, out, stage=stage, **values)


def run(cfg, *callbacks):
    return SFTTrainer(
        dataclasses.replace(cfg, export_checkpoint=False, export_lora=False), callbacks=list(callbacks), cpu=True
    ).run()


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    with one_thread():
        out = tmp_path_factory.mktemp("full")
        result = run(config(data, out))
    return result, load_checkpoint(result.checkpoint)


def logged_steps(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / LOG_FILE).read_text(encoding="utf-8").splitlines()]


def assert_same_tensors(a, b):
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k


def test_interrupt_mid_accumulation_checkpoints_then_resumes_exactly(data, tmp_path, uninterrupted):
    full, full_ckpt = uninterrupted
    assert len(full.losses) == 4
    stop = Recorder(stop_at_step=2, stop_at_micro=2, exc=StopTraining)  # inside update 3, after 1 micro-batch
    with pytest.raises(StopTraining):
        run(config(data, tmp_path), stop)
    assert [s.step for s in stop.steps] == [1, 2]
    step, path, _ = stop.interrupted
    assert step == 2 and path is not None and stop.checkpoints == [(2, path, "interrupt")]
    ckpt = load_checkpoint(path)
    assert ckpt.step == 2 and ckpt.data_position["micro_step"] == 4  # the half-done update is not counted
    resumed = Recorder()
    result = run(config(data, tmp_path, resume="auto"), resumed)
    assert resumed.events[0] == ("start", 2)
    assert [s.step for s in resumed.steps] == [3, 4]
    assert result.losses == pytest.approx(full.losses[2:], rel=1e-5, abs=1e-6)
    assert [s.loss for s in stop.steps] == pytest.approx(full.losses[:2], rel=1e-5, abs=1e-6)
    assert_same_tensors(load_checkpoint(result.checkpoint).trainable, full_ckpt.trainable)


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(data, tmp_path, uninterrupted, monkeypatch):
    full, full_ckpt = uninterrupted

    def crash(path):
        if "checkpoint-00000004" in str(path.parent) and path.name == checkpointing.TRAINABLE_FILE:
            raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(checkpointing, "_after_file_hook", crash)
    with pytest.raises(OSError, match="simulated"):
        run(config(data, tmp_path, save_every=2))
    monkeypatch.setattr(checkpointing, "_after_file_hook", None)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    assert find_latest_checkpoint(tmp_path).name == "checkpoint-00000002"
    assert logged_steps(tmp_path) == [1, 2, 3, 4]  # the crashed run logged steps 3-4 after its last checkpoint
    with open(tmp_path / LOG_FILE, "a", encoding="utf-8") as f:
        f.write('{"step": 5, "lo')  # and a kill may cut the last line short
    result = run(config(data, tmp_path, save_every=2, resume="auto"))
    assert logged_steps(tmp_path) == [1, 2, 3, 4]  # each step once: the resume dropped the stale lines
    assert result.losses == pytest.approx(full.losses[2:], rel=1e-5, abs=1e-6)
    assert_same_tensors(load_checkpoint(result.checkpoint).trainable, full_ckpt.trainable)
