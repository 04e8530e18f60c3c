"""Sharded training: two CPU processes (gloo) under FSDP2, launched as a user would with the shipped accelerate
config (configs/accelerate/fsdp.yaml), train the same weights as one process with the same global batch; the
sharded checkpoint resumes to the very same step; validation and the exports run with every process taking part.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from trainer_kit import (
    SHARDED_RUN,
    base_config,
    check_exact_resume,
    check_sharded_outputs,
    finish,
    free_port,
    launch,
    one_thread,
    read_log,
    weight_differences,
    write_dataset,
)

from deepgen.train.checkpointing import load_checkpoint
from deepgen.train.trainer import SFTTrainer

ROOT = Path(__file__).resolve().parents[1]
FSDP_CONFIG = ROOT / "configs" / "accelerate" / "fsdp.yaml"


def fsdp_command(config: Path) -> list[str]:
    launcher = Path(sys.executable).with_name("accelerate")
    return [
        str(launcher),
        "launch",
        "--config_file",
        str(FSDP_CONFIG),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "deepgen",
        "train",
        "--cpu",
        "--config",
        str(config),
    ]


def test_fsdp_two_processes_match_one_process_and_resume_exactly(tmp_path):
    data = write_dataset(tmp_path / "data", n_t2i=4, n_edit=0)
    common = SHARDED_RUN
    # two processes, one sample each per update (global batch 2); a checkpoint after every update
    two = base_config(data, tmp_path / "two", stage=2, grad_accumulation=1, save_every=1, **common)
    (tmp_path / "two.toml").write_text(two.to_toml(), encoding="utf-8")
    proc = launch(fsdp_command(tmp_path / "two.toml"), tmp_path)
    # meanwhile one process here: the same two samples per update, as two micro-batches of one
    with one_thread():
        one = SFTTrainer(
            base_config(data, tmp_path / "one", stage=2, grad_accumulation=2, export_lora=False, **common),
            cpu=True,
        ).run()
    out = finish(proc)
    assert "2 process(es), sharded: FSDP2" in out, out[-2000:]
    log = read_log(tmp_path / "two")
    assert [r["samples"] for r in log] == [2, 4]
    # step 1 starts from the same weights and sums two per-sample losses (two addends commute): equal here, bit
    # for bit; a BLAS may round a few ulps differently for the differently aligned gathered weights (MKL does
    # not promise alignment-independent results), hence 1e-6 (8 fp32 ulps) and not equality
    assert log[0]["loss"] == pytest.approx(one.history[0]["loss"], rel=1e-6)
    assert log[1]["loss"] == pytest.approx(one.history[1]["loss"], rel=1e-6)
    # a missing gradient average would double the norm (and AdamW, scale-free, would hide it in the weights)
    assert [r["grad_norm"] for r in log] == pytest.approx([h["grad_norm"] for h in one.history], rel=1e-5)
    # the fixed-noise validation loss of the last update: every process scores every sample under FSDP
    assert "val_loss" in log[1] and log[1]["val_loss"] == pytest.approx(one.history[1]["val_loss"], rel=1e-5)

    ckpt = load_checkpoint(tmp_path / "two")
    shards = sorted(p.name for p in (ckpt.path / "optimizer_shards").rglob("*.distcp"))
    assert len(shards) == 2  # one optimizer shard per process, moved into the atomic folder
    assert not [p for p in (tmp_path / "two").iterdir() if p.name.startswith((".shards-", ".tmp-"))]
    a, b = ckpt.trainable, load_checkpoint(one.checkpoint).trainable
    assert set(a) == set(b) and len(a) > 50
    # Both runs compute each sample with the same kernels on the same shapes, and the gradient average of two
    # addends is exact; what FSDP changes is the order in which autograd sums a tensor's gradient from several
    # consumers (its hooks reorder the backward graph), an ulp-level difference in the SCB's gradients (measured:
    # the DiT LoRA identical after step 1, the SCB off by ≤ 3e-7 = 1e-4·lr). AdamW's step g/(|g| + eps) turns a
    # gradient change δ into at most lr·δ/eps: with eps = 1e-5 (SHARDED_RUN) rounding stays far below lr, while a wrong batch
    # split, a missing reduction or a lost update moves parameters by about lr. (The connector's key biases have
    # no real gradient: trainer_kit.weight_differences.)
    diffs = weight_differences(a, b, common["lr"])
    worst = max(diffs, key=diffs.get)
    dit = max(v for k, v in diffs.items() if k.startswith("transformer."))
    print(f"\nFSDP vs one process: max |Δθ| {diffs[worst]:.2e} ({worst}), DiT LoRA {dit:.2e}, lr {common['lr']}")
    assert diffs[worst] < 1e-3 * common["lr"], (worst, diffs[worst])
    assert any((a[k] != 0).any() for k in a if "lora_B" in k)

    # validation ran on both processes (no deadlock) and shows the 1-process image up to rounding; the exports
    # gathered the whole weights
    check_sharded_outputs(tmp_path, a)
    # the sharded checkpoint of step 1, resumed in a new folder: step 2 again, bit for bit
    check_exact_resume(tmp_path, data, fsdp_command, grad_accumulation=1)
