"""DeepSpeed ZeRO-2/3 on one GPU: the check to run when a GPU is at hand (the CPU tests cover two processes).

    pip install -e '.[train]'
    python scripts/check_deepspeed_gpu.py [--stages zero2 zero3] [--out DIR] [--cpu]

For each ZeRO stage, with the tiny model (stage 2, DiT LoRA + SCB, 2 updates of 2 accumulated micro-batches):

1. one plain process (``deepgen train``) and one DeepSpeed process (``accelerate launch --config_file
   configs/accelerate/<stage>.yaml --num_processes 1``), fp32: the same arithmetic (one process accumulates in the
   same order either way), so the losses, grad norms and weights must agree;
2. the DeepSpeed checkpoint of step 1 resumed: step 2 again;
3. DeepSpeed's bf16 (the shipped configs' precision): trains, finite losses, fp32 masters in the checkpoint.

One process per GPU: NCCL refuses two ranks on one device.  ``--cpu`` runs the same on the CPU (gloo), which is
how this script itself was checked.  Exits 1 and says what failed when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUN = dict(
    model="tiny",
    resolution=32,
    micro_batch_size=1,
    grad_accumulation=2,
    max_steps=2,
    lr=3e-3,
    warmup_steps=0,
    num_workers=0,
    caption_dropout=0.0,
    data_verify="exists",
    resume="no",
    save_every=1,
    keep_last=0,
    train_dit="lora",
    vlm_lora=False,
    dit_lora_rank=2,
    dit_lora_alpha=2.0,
    adam_eps=1e-6,
    max_grad_norm=1e3,
    task_pattern={"text2image": 1},
    export_lora=False,
    export_checkpoint=False,
)


def write_config(path: Path, data: Path, out: Path, **over) -> Path:
    from deepgen.train.config import TrainConfig

    cfg = TrainConfig.for_stage(2, **{**RUN, "data": [str(data)], "output_dir": str(out), **over})
    path.write_text(cfg.to_toml(), encoding="utf-8")
    return path


def run(cmd: list[str], cpu: bool) -> None:
    env = {
        **os.environ,
        "TQDM_DISABLE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    if cpu:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    proc = subprocess.run([*cmd, *(["--cpu"] if cpu else [])], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"FAIL: {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-3000:]}")


def launch(stage: str, config: Path, precision: str, cpu: bool) -> None:
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    yaml = ROOT / "configs" / "accelerate" / f"{stage}.yaml"
    run(
        [accelerate, "launch", "--config_file", str(yaml), "--num_processes", "1", "--mixed_precision", precision]
        + ["-m", "deepgen", "train", "--config", str(config)],
        cpu,
    )


def log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def check_stage(stage: str, root: Path, data: Path, cpu: bool) -> dict:
    from deepgen.train.checkpointing import load_checkpoint

    folder = root / stage
    folder.mkdir(parents=True)
    run(
        [
            sys.executable,
            "-m",
            "deepgen",
            "train",
            "--config",
            str(write_config(folder / "plain.toml", data, folder / "plain")),
        ],
        cpu,
    )
    launch(stage, write_config(folder / "ds.toml", data, folder / "ds"), "no", cpu)
    plain, ds = log(folder / "plain"), log(folder / "ds")
    a, b = load_checkpoint(folder / "ds").trainable, load_checkpoint(folder / "plain").trainable
    result = {
        "loss": [r["loss"] for r in ds],
        "loss_plain": [r["loss"] for r in plain],
        "grad_norm": [r["grad_norm"] for r in ds],
        "grad_norm_plain": [r["grad_norm"] for r in plain],
        "max_weight_diff": max((a[k] - b[k]).abs().max().item() for k in b),
        "partitions": len(
            list((load_checkpoint(folder / "ds").path / "optimizer_shards" / "zero").glob("*optim_states.pt"))
        ),
    }
    resumed = folder / "resumed"
    resumed.mkdir()
    shutil.copytree(folder / "ds" / "checkpoint-00000001", resumed / "checkpoint-00000001")
    (resumed / "latest").write_text("checkpoint-00000001\n", encoding="utf-8")
    launch(stage, write_config(folder / "resume.toml", data, resumed, resume="auto"), "no", cpu)
    (step2,) = log(resumed)
    c = load_checkpoint(resumed).trainable
    result.update(resumed_loss=step2["loss"], resumed_grad_norm=step2["grad_norm"])
    result["resumed_max_weight_diff"] = max((a[k] - c[k]).abs().max().item() for k in a)
    launch(stage, write_config(folder / "bf16.toml", data, folder / "bf16", mixed_precision="bf16"), "bf16", cpu)
    result["bf16_loss"] = [r["loss"] for r in log(folder / "bf16")]
    result["bf16_masters_fp32"] = all(
        str(t.dtype) == "torch.float32" for t in load_checkpoint(folder / "bf16").trainable.values()
    )
    return result


def failures(r: dict) -> list[str]:
    """The bounds: fp32 in one process does the same sums in the same order with or without DeepSpeed; a GPU may
    still pick other kernels for DeepSpeed's flat buffers, hence relative bounds rather than equality."""
    close = lambda x, y, rel: all(abs(p - q) <= rel * abs(q) for p, q in zip(x, y))  # noqa: E731
    bad = []
    if not close(r["loss"], r["loss_plain"], 1e-5):
        bad.append("losses differ from the plain process")
    if not close(r["grad_norm"], r["grad_norm_plain"], 1e-4):
        bad.append("grad norms differ from the plain process")
    if r["max_weight_diff"] > 1e-2 * RUN["lr"]:
        bad.append("weights differ from the plain process")
    if r["partitions"] != 1:
        bad.append("no DeepSpeed optimizer partition in the checkpoint")
    if not close([r["resumed_loss"], r["resumed_grad_norm"]], [r["loss"][1], r["grad_norm"][1]], 1e-6):
        bad.append("the resumed step 2 differs")
    if r["resumed_max_weight_diff"] > 1e-2 * RUN["lr"]:
        bad.append("the resumed weights differ")
    if not (all(math.isfinite(x) for x in r["bf16_loss"]) and r["bf16_masters_fp32"]):
        bad.append("bf16 run: non-finite loss or no fp32 masters")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", default=["zero2", "zero3"], choices=["zero2", "zero3"])
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (gloo) instead of the GPU")
    args = parser.parse_args(argv)
    from deepgen.train.data import write_synthetic_dataset

    root = args.out or Path(tempfile.mkdtemp(prefix="deepgen-ds-check-"))
    data = write_synthetic_dataset(root / "data", n_text2image=4, n_edit=0, sizes=((96, 96),))
    failed = False
    for stage in args.stages:
        result = check_stage(stage, root, data, args.cpu)
        bad = failures(result)
        failed |= bool(bad)
        print(json.dumps({"stage": stage, **result}))
        print(f"{stage}: " + ("PASS" if not bad else "FAIL: " + "; ".join(bad)))
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
