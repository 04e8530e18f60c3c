"""Two processes (accelerate launch, torchrun + gloo on the CPU) train the same weights as one process with
the same global batch.

On a CPU machine accelerate 1.15 starts several processes only through its torchrun path (``--multi_gpu``);
``accelerate launch --cpu --num_processes 2`` runs one process unless MPI is set up.  ``deepgen train --cpu``
makes each process use the CPU, so accelerate picks gloo (MULTI_CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from trainer_kit import base_config, one_thread, two_process_command, weight_differences, write_dataset

from deepgen.train.checkpointing import load_checkpoint
from deepgen.train.trainer import SFTTrainer

ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    data = write_dataset(tmp_path / "data", n_t2i=4, n_edit=2)
    common = dict(
        stage=2,
        max_steps=2,
        grad_accumulation=2,
        lr=3e-3,
        train_dit="lora",
        vlm_lora=True,
        vlm_lora_rank=2,
        vlm_lora_alpha=4.0,
        vlm_lora_dropout=0.0,
        dit_lora_rank=2,
        dit_lora_alpha=2.0,
        adam_eps=1e-6,
        val_loss_every=1,
        val_loss_samples=3,  # odd: rank 0 scores two samples, rank 1 one; the mean is over all three
    )  # see the bound below
    stage = common.pop("stage")
    # two processes, micro batch 1 each
    two = base_config(data, tmp_path / "two", stage=stage, micro_batch_size=1, **common)
    config = tmp_path / "two.toml"
    config.write_text(two.to_toml(), encoding="utf-8")
    cmd = two_process_command(
        "train",
        "--cpu",
        "--config",
        str(config),
        "--no-export",
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # meanwhile, one process in this process, with the same global batch made of the same micro-batches of one
    # sample (so every sample's forward and backward runs the same kernels on the same shapes as on the ranks)
    with one_thread():
        one = SFTTrainer(
            base_config(
                data,
                tmp_path / "one",
                stage=stage,
                micro_batch_size=1,
                **{**common, "grad_accumulation": 4},
                export_checkpoint=False,
                export_lora=False,
            ),
            cpu=True,
        ).run()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    assert "2 process(es)" in out, out[-2000:]
    log = [json.loads(line) for line in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in log] == [4, 8]  # 2 processes x 1 sample x 2 micro-batches per update
    assert [r["loss"] for r in log] == pytest.approx(one.losses, rel=1e-5, abs=1e-6)
    # the fixed-noise validation loss: split over the ranks, then averaged, it is the one-process value
    assert [r["val_loss"] for r in log] == pytest.approx([h["val_loss"] for h in one.history], rel=1e-5)
    a = load_checkpoint(tmp_path / "two").trainable
    b = load_checkpoint(one.checkpoint).trainable
    assert set(a) == set(b) and len(a) > 10
    # Both runs compute every sample with the same kernels on the same shapes (micro-batches of one), so their
    # gradients differ only by the order in which fp32 adds the four per-sample gradients (an ulp or two).
    # AdamW's update g/(|g| + eps) has slope at most 1/eps in g: with the default eps 1e-8, parameters whose true
    # gradient is zero (attention key biases: softmax ignores a shift common to all keys) turn rounding noise of
    # ~1e-9 into updates of a sizeable fraction of lr, which differ between machines. eps = 1e-6 bounds that
    # slope, so rounding differences stay ~1e-5 of lr (measured 2e-5 * lr) where the gradient is real, while a
    # wrong batch split, a missing all-reduce or a doubled LR step would be off by a whole update (~lr). The key
    # biases' noise is still ~1e-3·lr and machine-dependent, so it is checked apart (trainer_kit.weight_differences).
    diffs = weight_differences(a, b, common["lr"])
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < 1e-3 * common["lr"], (worst, diffs[worst])
    assert any((a[k] != 0).any() for k in a if "lora_B" in k)
