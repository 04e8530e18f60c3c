"""DeepSpeed ZeRO-2 and ZeRO-3 through accelerate, on two CPU processes (gloo, DeepSpeed's CPU accelerator),
launched as a user would with the shipped configs (configs/accelerate/zero2.yaml, zero3.yaml): two processes
accumulating two micro-batches each in the engine train the same weights as one process with the same global
batch; the checkpoint (DeepSpeed's partitions in the atomic folder) resumes to the very same step; validation
and the exports run (every process gathering the weights under ZeRO-3).

Not in CI: DeepSpeed is not a test dependency.  On the CPU it compiles a C++ shared-memory op with the system
compiler at its first start (``deepspeed_shm_comm``, about 100 s on a busy 2-core machine, then cached in
~/.cache/torch_extensions), and a ZeRO-3 run takes minutes there.  By hand::

    pip install -e '.[test,train]'   # deepspeed comes with the train extra (Linux)
    OMP_NUM_THREADS=1 python -m pytest tests/test_trainer_deepspeed.py
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from trainer_kit import (
    SHARDED_RUN,
    base_config,
    check_exact_resume,
    check_sharded_outputs,
    finish,
    launch,
    one_thread,
    read_log,
    two_process_command,
    weight_differences,
    write_dataset,
)

from deepgen.train.checkpointing import load_checkpoint
from deepgen.train.trainer import SFTTrainer

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("deepspeed") is None,
        reason="deepspeed is not installed (pip install -e '.[train]' on Linux; it is not a test dependency)",
    ),
    pytest.mark.skipif(
        shutil.which("c++") is None or shutil.which("ninja") is None and importlib.util.find_spec("ninja") is None,
        reason="DeepSpeed's CPU accelerator compiles its shared-memory op at start: needs a C++ compiler and ninja",
    ),
]


def command(name: str, config: Path, *extra: str) -> list[str]:
    accelerate_config = ROOT / "configs" / "accelerate" / f"{name}.yaml"
    return two_process_command("train", "--cpu", "--config", str(config), *extra, config_file=accelerate_config)


@pytest.mark.parametrize("name, stage_name", [("zero2", "ZeRO-2"), ("zero3", "ZeRO-3")])
def test_deepspeed_two_processes_match_one_process_and_resume_exactly(tmp_path, name, stage_name):
    data = write_dataset(tmp_path / "data", n_t2i=4, n_edit=0)
    common = SHARDED_RUN
    # two processes, two micro-batches of one sample each per update (global batch 4), accumulated by the engine;
    # a checkpoint after every update
    two = base_config(data, tmp_path / "two", stage=2, grad_accumulation=2, save_every=1, **common)
    (tmp_path / "two.toml").write_text(two.to_toml(), encoding="utf-8")
    proc = launch(command(name, tmp_path / "two.toml"), tmp_path)
    # meanwhile one process here: the same four samples per update, as four micro-batches of one
    with one_thread():
        one = SFTTrainer(
            base_config(data, tmp_path / "one", stage=2, grad_accumulation=4, export_lora=False, **common),
            cpu=True,
        ).run()
    out = finish(proc, timeout=600)
    assert f"2 process(es), sharded: {stage_name}" in out, out[-2000:]
    log = read_log(tmp_path / "two")
    assert [r["samples"] for r in log] == [4, 8]  # 2 processes x 1 sample x 2 micro-batches, one update each
    # the same four per-sample losses summed in another order (per process, then across): a few ulps
    assert [r["loss"] for r in log] == pytest.approx([h["loss"] for h in one.history], rel=1e-6)
    # the engine's norm of the averaged gradient: a missing average would double it (AdamW, scale-free, would
    # hide it in the weights), a step per micro-batch would change it
    assert [r["grad_norm"] for r in log] == pytest.approx([h["grad_norm"] for h in one.history], rel=1e-5)
    assert log[1]["val_loss"] == pytest.approx(one.history[1]["val_loss"], rel=1e-5)

    ckpt = load_checkpoint(tmp_path / "two")
    partitions = sorted(p.name for p in (ckpt.path / "optimizer_shards" / "zero").glob("*optim_states.pt"))
    assert len(partitions) == 2, partitions  # one optimizer partition per process, inside the atomic folder
    assert not [p for p in (tmp_path / "two").iterdir() if p.name.startswith((".shards-", ".tmp-"))]
    a, b = ckpt.trainable, load_checkpoint(one.checkpoint).trainable
    assert set(a) == set(b) and len(a) > 50
    assert all(t.dtype == torch.float32 and t.numel() > 0 for t in a.values())  # whole fp32 masters (ZeRO-3 too)
    # Each sample's forward and backward run the same kernels on the same shapes in both runs (with one
    # micro-batch per process, ZeRO-2 here ends bit-identical to one process: measured by hand).  What differs is
    # the association of the fp32 gradient sums: one process adds g1/4, g2/4, g3/4, g4/4 in turn, the engine adds
    # the two processes' averaged micro-batches, (g1/4 + g2/4) + (g3/4 + g4/4): the last rounding of a sum differs.
    # AdamW's step g/(sqrt(v) + eps) is scale-free where |g| >> eps, so a relative rounding of the gradient (2^-24)
    # stays a relative change of the update, and where |g| <~ eps the change is at most lr·2^-24·|g|/eps: either way
    # below lr·2^-22 per step.  What is left is the rounding of θ itself, an ulp per step (2^-23 for |θ| < 2).  So
    # per step ≤ 2^-23 + lr·2^-22, i.e. 2.4e-7 (8e-5·lr) over the two steps.  The attention key biases differ:
    # softmax ignores a shift common to all keys, so their true gradient is 0 and what autograd returns is
    # rounding noise (~1e-9), which AdamW scales by up to lr/eps into differences up to ~1e-3·lr between any two
    # summation orders (trainer_kit.weight_differences checks them apart).  A wrong batch split, a missing reduction, an update
    # per micro-batch or a lost update moves parameters by about lr (and changes the losses and norms above).
    assert max(t.abs().max().item() for t in a.values()) < 2
    real = weight_differences(a, b, common["lr"])
    assert len(a) - len(real) == 2  # the two connector layers' key biases
    worst = max(real, key=real.get)
    print(f"\n{stage_name} vs one process: max |Δθ| {real[worst]:.2e} ({worst}), lr {common['lr']}")
    assert real[worst] <= common["max_steps"] * (2**-23 + common["lr"] * 2**-22), (worst, real[worst])
    assert any((a[k] != 0).any() for k in a if "lora_B" in k)

    # validation ran (under ZeRO-3 on both processes, gathering the weights) and shows the 1-process image; the
    # exports saw whole weights
    check_sharded_outputs(tmp_path, a)
    # the checkpoint of step 1 (DeepSpeed's partitions), resumed in a new folder: step 2 again, bit for bit
    check_exact_resume(tmp_path, data, lambda config: command(name, config), grad_accumulation=2, timeout=600)
