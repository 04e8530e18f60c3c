"""Every bad checkpoint of the training surface ends in one clear line: truncated or foreign files, a full
disk, a SIGKILL mid-save.  Part of the training surface's table (tests/bad_inputs_training_kit.py).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from bad_inputs_training_kit import CLEAN, ROOT, WARNING, Built, case_table, png_bytes, run_case
from trainer_kit import base_config, write_dataset

from deepgen.errors import CheckpointError, ResourceError
from deepgen.train import checkpointing as ck

CASES, case = case_table()


# ---- checkpoints: truncated or foreign files, full disk, SIGKILL


def _small_run_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt


def _save(out: Path, step: int, model, opt) -> Path:
    return ck.save_checkpoint(
        out,
        step,
        trainable=dict(model.named_parameters()),
        optimizer=opt,
        data_position={"micro_step": step},
        config={"lr": 1e-3},
    )


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _resume(out_or_path, model, opt, resume: str):
    from deepgen.train.runtime import CheckpointManager

    return CheckpointManager(None, out_or_path, config={}).resume(
        resume, trainable=dict(model.named_parameters()), optimizer=opt
    )


def _make_truncated(name: str, keep: float):
    def build(tmp, mp):
        model, opt = _small_run_state()
        path = _save(tmp / "out", 1, model, opt)
        _truncate(path / name, keep)
        return Built(lambda: _resume(tmp / "out", model, opt, str(path)), [name, "checkpoint-00000001", "resume"])

    return build


for _name, _keep in ((ck.TRAINABLE_FILE, 0.5), (ck.OPTIMIZER_FILE, 0.6), (ck.RNG_FILE, 0.3), (ck.STATE_FILE, 0.5)):
    case(f"truncated-{_name}-explicit-resume", CheckpointError)(_make_truncated(_name, _keep))


@case("foreign-trainable-safetensors", CheckpointError)
def _(tmp, mp):
    model, opt = _small_run_state()
    path = _save(tmp / "out", 1, model, opt)
    (path / ck.TRAINABLE_FILE).write_bytes(png_bytes())  # someone's image under the checkpoint's name
    return Built(lambda: ck.load_checkpoint(path), [ck.TRAINABLE_FILE, str(path), "not a DeepGen"])


@case("foreign-state-json", CheckpointError)
def _(tmp, mp):
    model, opt = _small_run_state()
    path = _save(tmp / "out", 1, model, opt)
    (path / ck.STATE_FILE).write_text(json.dumps({"format": "someone-else", "step": 3}), encoding="utf-8")
    return Built(lambda: _resume(tmp / "out", model, opt, str(path)), [str(path), "someone-else", "resume"])


@case("auto-resume-skips-broken-latest", WARNING)
def _(tmp, mp):
    model, opt = _small_run_state()
    _save(tmp / "out", 1, model, opt)
    second = _save(tmp / "out", 2, model, opt)
    _truncate(second / ck.TRAINABLE_FILE)

    def run():
        ckpt = _resume(tmp / "out", model, opt, "auto")
        assert ckpt is not None and ckpt.step == 1

    return Built(run, ["checkpoint-00000002", ck.TRAINABLE_FILE, "checkpoint-00000001"])


@case("auto-resume-every-checkpoint-broken", CheckpointError)
def _(tmp, mp):
    model, opt = _small_run_state()
    for step in (1, 2):
        _truncate(_save(tmp / "out", step, model, opt) / ck.OPTIMIZER_FILE)
    return Built(
        lambda: _resume(tmp / "out", model, opt, "auto"),
        ["checkpoint-00000001", "checkpoint-00000002", str(tmp / "out"), "resume = 'no'"],
    )


@case("disk-full-while-saving", ResourceError)
def _(tmp, mp):
    model, opt = _small_run_state()
    out = tmp / "out"
    _save(out, 1, model, opt)

    def full(path):
        if path.name == ck.OPTIMIZER_FILE:
            raise OSError(errno.ENOSPC, "No space left on device")

    mp.setattr(ck, "_after_file_hook", full)

    def after():
        assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # temp folder removed
        assert (out / ck.LATEST_FILE).read_text().strip() == "checkpoint-00000001"
        assert [s for s, _ in ck.list_checkpoints(out)] == [1]
        assert ck.load_checkpoint(out).step == 1

    return Built(
        lambda: _save(out, 2, model, opt),
        ["disk full", "checkpoint-00000002", str(out), "checkpoint-00000001 is intact", "free space"],
        after,
    )


@case("sigkill-mid-save-then-resume", CLEAN)
def _(tmp, mp):
    data = write_dataset(tmp / "data", n_t2i=2, n_edit=0)
    out = tmp / "out"
    script = textwrap.dedent(f"""
        import dataclasses, os, signal, sys
        from pathlib import Path
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
        import torch
        torch.set_num_threads(1)
        from trainer_kit import base_config
        from deepgen.train import checkpointing as ck
        from deepgen.train.trainer import SFTTrainer

        def kill(path):  # SIGKILL in the middle of writing the step-2 checkpoint
            if path.parent.name.startswith(".tmp-checkpoint-00000002") and path.name == ck.OPTIMIZER_FILE:
                os.kill(os.getpid(), signal.SIGKILL)

        ck._after_file_hook = kill
        cfg = base_config(Path({str(data)!r}), Path({str(out)!r}), max_steps=2, save_every=1, micro_batch_size=1,
                          task_pattern={{"text2image": 1}})
        SFTTrainer(dataclasses.replace(cfg, export_checkpoint=False, export_lora=False), cpu=True).run()
    """)

    def run():
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert [s for s, _ in ck.list_checkpoints(out)] == [1]
        assert any(p.name.startswith(".tmp-checkpoint-00000002") for p in out.iterdir())  # the killed write
        from deepgen.train.trainer import SFTTrainer

        cfg = base_config(
            data, out, max_steps=2, save_every=1, micro_batch_size=1, resume="auto", task_pattern={"text2image": 1}
        )
        result = SFTTrainer(dataclasses.replace(cfg, export_checkpoint=False, export_lora=False), cpu=True).run()
        assert [h["step"] for h in result.history] == [2]  # resumed from checkpoint 1
        assert ck.find_latest_checkpoint(out).name == "checkpoint-00000002"
        assert not any(p.name.startswith(".tmp-") for p in out.iterdir())

    return Built(run, [])


@pytest.mark.parametrize("build, expect", CASES)
def test_bad_input_gives_one_clear_line(build, expect, request, tmp_path, monkeypatch, caplog):
    run_case(build, expect, request, tmp_path, monkeypatch, caplog)
