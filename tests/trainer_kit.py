"""Helpers shared by the trainer tests (tests/test_trainer_*.py, tests/nodes/test_training_nodes.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = [
    "a red square on a grey background",
    "a blue square on a grey background",
    "a green square on a grey background",
    "a pink square on a grey background",
]


@contextlib.contextmanager
def one_thread():
    """The tiny model is latency-bound: one thread is ~10x faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stage3_values(out: Path, prompt_path: str, **over) -> dict:
    """The settings of a tiny stage-3 run (LoRA policy, 32² images, two steps) on the prompts of ``prompt_path``,
    writing to ``out``; ``over`` replaces any of them."""
    values = dict(
        model="tiny",
        mixed_precision="no",
        policy="lora",
        dit_lora_rank=4,
        dit_lora_alpha=8.0,
        prompts=[prompt_path],
        group_size=4,
        prompts_per_step=2,
        num_steps=4,
        resolution=32,
        lr=1e-2,
        warmup_steps=0,
        max_steps=2,
        save_every=0,
        output_dir=str(out),
        resume="no",
        keep_last=0,
        seed=0,
    )
    values.update(over)
    return values


def write_dataset(root: Path, n_t2i: int = 4, n_edit: int = 2, size: int = 96, seed: int = 0) -> Path:
    """Same-size images (so batches split across processes pad alike) with equal-length captions; a JSONL list."""
    root = Path(root)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = [(220, 30, 30), (40, 60, 220), (30, 200, 60), (230, 120, 200)]

    def make(name: str, colour) -> str:
        arr = (rng.random((size, size, 3)) * 40 + 110).astype(np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        arr[y : y + size // 3, x : x + size // 3] = colour
        Image.fromarray(arr).save(root / "img" / name)
        return f"img/{name}"

    rows = []
    for i in range(n_t2i):
        rows.append({"txt": CAPTIONS[i % 4], "image_path": make(f"t{i}.png", colours[i % 4])})
    for i in range(n_edit):
        src, dst = make(f"e{i}s.png", colours[i % 4]), make(f"e{i}d.png", colours[(i + 1) % 4])
        rows.append({"input_image": [src], "output_image": dst, "instruction": "make the square another colour"})
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_folder_dataset(root: Path, n: int = 3, size: int = 96, captions: bool = True) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(root / f"img{i}.png")
        if captions:
            (root / f"img{i}.txt").write_text(CAPTIONS[i % 4], encoding="utf-8")
    return root


def base_config(data: Path, out: Path, stage: int = 1, **overrides):
    from deepgen.train.config import TrainConfig

    kw = dict(
        model="tiny",
        data=[str(data)],
        resolution=32,
        micro_batch_size=2,
        grad_accumulation=1,
        max_steps=4,
        lr=3e-3,
        warmup_steps=0,
        num_workers=0,
        caption_dropout=0.0,
        mixed_precision="no",
        data_verify="exists",
        output_dir=str(out),
        resume="no",
        save_every=0,
        keep_last=0,
        log_every=1,
        task_pattern={"image2image": 1, "text2image": 1},
        vlm_lora_rank=4,
        vlm_lora_alpha=8.0,
        dit_lora_rank=4,
        dit_lora_alpha=4.0,
    )
    kw.update(overrides)
    return TrainConfig.for_stage(stage, **kw)


@torch.no_grad()
def eval_loss(model, data_jsonl: Path, resolution: int = 32, n: int = 4) -> float:
    """The official loss on the first n T2I rows, with fixed noise and timesteps (so runs compare)."""
    from deepgen.train.data import load_training_image
    from deepgen.train.losses import TrainingGrid, flow_matching_loss

    rows = [json.loads(line) for line in Path(data_jsonl).read_text().splitlines()]
    rows = [r for r in rows if "txt" in r][:n]
    was = model.training
    model.eval()
    grid = TrainingGrid.from_model(model)
    g = torch.Generator().manual_seed(1234)
    total = []
    for idx in (150, 450, 750, 950):
        latents, prompts = [], []
        for r in rows:
            px = load_training_image(Path(data_jsonl).parent / r["image_path"], resolution=resolution)
            latents.append(model.encode_image(px[None].to(model.device), sample=False)[0])
            prompts.append(r["txt"])
        noise = [torch.randn(x.shape, generator=g) for x in latents]
        out = flow_matching_loss(
            model, prompts, latents, grid=grid, noise=noise, timestep_index=torch.full((len(rows),), idx)
        )
        total.append(out.loss.item())
    model.train(was)
    return float(np.mean(total))


def snapshot(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, by name, as a CPU copy (PEFT's base_layer names mapped back to plain ones)."""
    out = {}
    for name, t in model.state_dict().items():
        if ".lora_" in name:
            continue
        out[name.replace(".base_layer.", ".")] = t.detach().float().cpu().clone()
    return out


def changed(before: dict, after: dict, atol: float = 0.0) -> set[str]:
    return {k for k in before if k in after and not torch.allclose(before[k], after[k], atol=atol, rtol=0)}


@torch.no_grad()
def outputs(model, prompts=("a red square on a grey background", "")):
    """(SCB context, DiT velocity) for fixed prompts and latents: what a LoRA or an export must reproduce."""
    was = model.training
    model.eval()
    context, pooled = model.bridge(model.think(list(prompts)).scb_input)
    x = torch.randn(len(prompts), 16, 4, 4, generator=torch.Generator().manual_seed(0)).to(model.device)
    v = model.velocity(x, torch.full((len(prompts),), 500.0, device=model.device), context, pooled)
    model.train(was)
    return context.float().cpu(), v.float().cpu()


def assert_same_outputs(a, b, atol=1e-4):
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=atol, rtol=1e-4), (x - y).abs().max().item()


class Recorder:
    """A TrainCallback that keeps what the trainer reports (and can stop it at a given step)."""

    def __init__(self, stop_at_step: int | None = None, stop_at_micro: int | None = None, exc=KeyboardInterrupt):
        self.steps, self.checkpoints, self.events = [], [], []
        self.stop_at_step, self.stop_at_micro, self.exc = stop_at_step, stop_at_micro, exc
        self.checks = 0
        self.interrupted = None

    def on_train_start(self, run):
        self.events.append(("start", run.start_step))

    def check_interrupt(self):
        self.checks += 1
        done = self.steps[-1].step if self.steps else None
        if self.stop_at_step is not None and done == self.stop_at_step:
            if self.stop_at_micro is None or self.checks >= self.stop_at_micro:
                raise self.exc("stop requested by the test")

    def on_step_end(self, run, info):
        self.steps.append(info)
        self.checks = 0

    def on_checkpoint(self, run, step, path, reason):
        self.checkpoints.append((step, path, reason))

    def on_interrupt(self, run, step, checkpoint, exc):
        self.interrupted = (step, checkpoint, exc)

    def on_validation(self, run, step, images, paths):
        self.events.append(("validation", step, len(images)))

    def on_export(self, run, paths):
        self.events.append(("export", dict(paths)))

    def on_train_end(self, run, result):
        self.events.append(("end", result.step))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd: list[str], cwd: Path) -> subprocess.Popen:
    """Start a launcher command (``two_process_command``) on one thread per process, on the CPU, with this
    checkout's ``deepgen`` first on the path."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    """The output of a launched run that must succeed; a run past ``timeout`` (a deadlock) is killed."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # do not leave the processes behind
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the 2-process run did not finish in {timeout:.0f} s:\n" + out[-4000:]) from None
    assert proc.returncode == 0, out[-4000:]
    return out


def read_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


# a sharded 2-process run (tests/test_trainer_fsdp.py, test_trainer_deepspeed.py): stage 2, DiT LoRA + SCB, one
# T2I sample per micro-batch, a validation image per update
SHARDED_RUN = dict(
    max_steps=2,
    lr=3e-3,
    train_dit="lora",
    vlm_lora=False,
    dit_lora_rank=2,
    dit_lora_alpha=2.0,
    adam_eps=1e-5,  # bounds how far AdamW amplifies rounding in near-zero gradients (slope 1/eps): see the weight bounds
    max_grad_norm=1e3,  # the clipping path runs (and logs the norm) without scaling
    task_pattern={"text2image": 1},
    micro_batch_size=1,
    validation_prompt="a red square on a grey background",
    validation_every=1,
    validation_at_end=False,
    validation_num_steps=2,
    validation_size=32,
)


# The connector's attention key biases: softmax ignores a shift common to all keys, so their true gradient is 0
# and what autograd returns is rounding noise (~1e-9) that depends on the order of the sums. AdamW (eps 1e-6)
# scales it by up to lr/eps, so two correct runs that sum in another order differ there by up to ~1e-3·lr, and
# more on a CPU whose kernels round differently: a bound derived for real gradients cannot hold for them.
ZERO_GRADIENT_SUFFIX = "self_attn.k_proj.bias"


def weight_differences(a: dict, b: dict, lr: float) -> dict[str, float]:
    """Max |a - b| per tensor, for the tensors whose gradient is real. The zero-gradient key biases are checked
    only against what a wrong batch split or a lost update would do (about lr) and left out of the result."""
    diffs = {k: (a[k] - b[k]).abs().max().item() for k in a}
    noise = {k: v for k, v in diffs.items() if k.endswith(ZERO_GRADIENT_SUFFIX)}
    assert all(v < 0.1 * lr for v in noise.values()), noise
    real = {k: v for k, v in diffs.items() if k not in noise}
    assert sum(real.values()) / len(real) < 1e-7, "most tensors should agree to rounding"
    return real


def check_sharded_outputs(tmp_path: Path, trainable: dict) -> None:
    """A sharded run in ``tmp_path/two`` against one process in ``tmp_path/one``: the validation image of step 1
    equal up to rounding, and the exported LoRA file holding the checkpoint's LoRA tensors (whole weights)."""
    from safetensors.torch import load_file

    img_two = np.asarray(Image.open(tmp_path / "two" / "validation" / "step-00000001.png"), dtype=np.int16)
    img_one = np.asarray(Image.open(tmp_path / "one" / "validation" / "step-00000001.png"), dtype=np.int16)
    assert np.abs(img_two - img_one).max() <= 1
    exported = load_file(str(tmp_path / "two" / "export" / "deepgen_lora.safetensors"))
    lora_keys = [k for k in trainable if ".lora_" in k]
    assert lora_keys and all(
        torch.equal(exported[k.replace(".default.", ".")].float(), trainable[k].float()) for k in lora_keys
    ), sorted(exported)[:4]
    assert (tmp_path / "two" / "export" / "model.safetensors").is_file()


def check_exact_resume(tmp_path: Path, data: Path, command, grad_accumulation: int, timeout: float = 240) -> None:
    """Resume the sharded checkpoint of step 1 of ``tmp_path/two`` in a new folder with ``command(config)``
    (a launcher command): step 2 again, bit for bit (loss, grad norm, every weight)."""
    from deepgen.train.checkpointing import load_checkpoint

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "two" / "checkpoint-00000001", resumed / "checkpoint-00000001")
    (resumed / "latest").write_text("checkpoint-00000001\n", encoding="utf-8")
    settings = {**SHARDED_RUN, "validation_every": 0}
    again = base_config(data, resumed, stage=2, grad_accumulation=grad_accumulation, resume="auto", **settings)
    (tmp_path / "resumed.toml").write_text(again.to_toml(), encoding="utf-8")
    out = finish(launch([*command(tmp_path / "resumed.toml"), "--no-export"], tmp_path), timeout=timeout)
    assert "resuming at step 1" in out, out[-2000:]
    (step2,) = read_log(resumed)
    (_, step2_before) = read_log(tmp_path / "two")
    assert (step2["loss"], step2["grad_norm"]) == (step2_before["loss"], step2_before["grad_norm"])
    a, c = load_checkpoint(tmp_path / "two").trainable, load_checkpoint(resumed).trainable
    assert all(bool((a[k] == c[k]).all()) for k in a)


def two_process_command(*deepgen_args: str, config_file: Path | None = None) -> list[str]:
    """`accelerate launch` of `python -m deepgen ...` in two CPU processes (gloo). On a CPU machine accelerate
    starts several processes only through its torchrun path (--multi_gpu, or a config file's FSDP);
    `deepgen train --cpu` keeps them on the CPU.  ``config_file``: a shipped accelerate config (FSDP)."""
    launcher = Path(sys.executable).with_name("accelerate")
    return [
        str(launcher),
        "launch",
        *(["--config_file", str(config_file)] if config_file is not None else ["--multi_gpu"]),
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "deepgen",
        *deepgen_args,
    ]
