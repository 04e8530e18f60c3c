"""Every stage learns, on the tiny model, measured by the fixed-noise validation loss the trainer logs (``val_loss``).

- stage 1: the think tokens, projectors and connector (a fresh SCB) learn against a frozen DiT that reads the
  SCB's context (:func:`conditioned_model`);
- stage 2: ``configs/train/tiny.toml`` itself, from random weights, on its synthetic data (an overfit set);
- stage 3: in test_grpo_trainer.py (``test_learning_with_kl_and_sft_aux``).

Bounds come from repeated runs over seeds (the numbers are in each test); every run here is deterministic (fixed
seeds, one torch thread).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_kit import base_config, one_thread, write_dataset

from deepgen.train.config import load_config
from deepgen.train.trainer import SFTTrainer

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "train" / "tiny.toml"


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def fall(values) -> float:
    """The relative fall from the mean of the first five values to the mean of the last five."""
    return 1.0 - float(np.mean(values[-5:])) / float(np.mean(values[:5]))


def val_losses(result) -> list[float]:
    return [h["val_loss"] for h in result.history if "val_loss" in h]


def conditioned_model():
    """The model whose frozen DiT stage 1 trains against: the trained demo model (the embedded default "tiny",
    scripts/train_demo_model.py), whose DiT learned to read the SCB's context, with its stage-1 parts trained
    again from where the demo left them."""
    from deepgen.train.runtime import load_model_for_training

    return load_model_for_training("tiny")[0]


def test_stage1_scb_learns_against_a_frozen_dit(tmp_path):
    data = write_dataset(tmp_path / "data", n_t2i=4, n_edit=0)
    model = conditioned_model()
    dit = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    cfg = base_config(
        data,
        tmp_path / "s1",
        stage=1,
        max_steps=30,
        lr=1e-2,
        lr_schedule="constant",
        micro_batch_size=4,
        task_pattern={"text2image": 1},
        vae_latents="mean",
        val_loss_every=1,
        export_lora=False,
        export_checkpoint=False,
    )
    result = SFTTrainer(cfg, model=model, cpu=True).run()
    val = val_losses(result)
    print(f"\nstage 1: val_loss {np.mean(val[:5]):.4f} -> {np.mean(val[-5:]):.4f} (fall {fall(val):.1%})")
    assert len(val) == 30
    assert all(torch.equal(dit[k], v) for k, v in model.transformer.state_dict().items())  # the DiT stayed frozen
    # measured against the shipped demo model: a fall of 28.6 % (deterministic: fixed weights, data and draws; the
    # 10000-step demo before its VLM LoRA gave 27.9 %, the 5000-step one 5.7 %); the random tiny model (seeds 0-4)
    # gave 6.1-14.3 %, a frozen DiT that ignores its context gives none
    assert fall(val) > 0.15


def test_stage2_tiny_config_learns_in_its_own_run(tmp_path, monkeypatch):
    """configs/train/tiny.toml as shipped, run in a temporary folder (its relative data and output paths land
    there; validation images and exports off): val_loss falls ≥ 25 % in its own run."""
    from deepgen.train.data import write_synthetic_dataset

    monkeypatch.chdir(tmp_path)
    write_synthetic_dataset("outputs/tiny-data")
    cfg = load_config(
        TINY_CONFIG,
        ["validation_every=0", "validation_at_end=false", "export_lora=false", "export_checkpoint=false"],
    )
    result = SFTTrainer(cfg, cpu=True).run()
    logged = [json.loads(line) for line in Path(cfg.output_dir, "train_log.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in logged]
    loss = [r["loss"] for r in logged]
    print(
        f"\ntiny.toml: val_loss {np.mean(val[:5]):.4f} -> {np.mean(val[-5:]):.4f} (fall {fall(val):.1%}), "
        f"loss {np.mean(loss[:5]):.4f} -> {np.mean(loss[-5:]):.4f} (fall {fall(loss):.1%})"
    )
    assert len(val) == cfg.max_steps == result.step
    # measured (seeds 0-4): val_loss falls 30.2, 29.9, 29.2, 30.1, 29.7 %; the training loss 36.4, 30.3, 35.7,
    # 33.6, 34.5 %.  25 % is the issue's bar (the seeds' whole spread is 1 %)
    assert fall(val) >= 0.25
