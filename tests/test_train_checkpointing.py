"""deepgen.train.checkpointing: layout, atomic writes under interruption, exact resume, weights_only loads."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deepgen.train import checkpointing as ck
from deepgen.train.checkpointing import (
    CheckpointError,
    capture_rng_state,
    check_output_dir_writable,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    restore_training_state,
    save_checkpoint,
    trainable_parameters,
)
from deepgen.train.optim import build_lr_scheduler, build_optimizer

REPO = Path(__file__).resolve().parents[1]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.meta_queries = nn.Parameter(torch.randn(3, 6))
        self.proj = nn.Linear(6, 6)
        self.frozen = nn.Linear(6, 6).requires_grad_(False)


def _setup(seed=0):
    torch.manual_seed(seed)
    m = Net()
    opt = build_optimizer(m, lr=1e-2)
    return m, opt, build_lr_scheduler(opt, max_steps=20, warmup_ratio=0.1)


def _train_step(m, opt, sched):
    # uses every RNG the trainer might use, so resuming must restore them all
    x = torch.randn(2, 6) + random.random() + float(np.random.rand())
    loss = (m.proj(x) @ m.meta_queries.T).pow(2).mean()
    loss.backward()
    opt.step(), sched.step(), opt.zero_grad()


def _save(out, step, m, opt, sched, **kw):
    return save_checkpoint(
        out,
        step,
        trainable=trainable_parameters(m),
        optimizer=opt,
        lr_scheduler=sched,
        data_position={"micro_step": step * 3},
        config={"lr": 1e-2},
        **kw,
    )


def test_layout_and_round_trip(tmp_path):
    m, opt, sched = _setup()
    _train_step(m, opt, sched)
    path = _save(tmp_path, 1, m, opt, sched, extra={"loss": 0.5})
    assert path == tmp_path / "checkpoint-00000001"
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "optimizer.pt",
        "rng.pt",
        "state.json",
        "trainable.safetensors",
    ]
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-00000001"
    # every torch file loads with weights_only=True
    for name in ("optimizer.pt", "rng.pt"):
        torch.load(path / name, weights_only=True)
    ckpt = load_checkpoint(tmp_path)  # an output folder resolves to its latest checkpoint
    assert ckpt.path == path and ckpt.step == 1
    assert set(ckpt.trainable) == {"meta_queries", "proj.weight", "proj.bias"}  # trainable only
    assert torch.equal(ckpt.trainable["meta_queries"], m.meta_queries.detach())
    assert ckpt.data_position == {"micro_step": 3} and ckpt.config == {"lr": 1e-2}
    assert ckpt.extra == {"loss": 0.5}
    assert ckpt.optimizer["param_groups"][0]["param_names"] == ["meta_queries", "proj.weight"]
    state = json.loads((path / "state.json").read_text())
    assert state["format"] == "deepgen-train-checkpoint" and state["num_trainable_tensors"] == 3


def test_resume_is_exact(tmp_path):
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    m, opt, sched = _setup()
    for _ in range(3):
        _train_step(m, opt, sched)
    _save(tmp_path, 3, m, opt, sched)
    for _ in range(4):
        _train_step(m, opt, sched)
    expected = {k: v.clone() for k, v in m.state_dict().items()}

    m2, opt2, sched2 = _setup(seed=99)  # different init: everything must come from the checkpoint
    m2.frozen.load_state_dict(m.frozen.state_dict())  # frozen weights come from the base model, not the ckpt
    torch.manual_seed(0), random.seed(0), np.random.seed(0)  # scrambled RNGs
    ckpt = load_checkpoint(find_latest_checkpoint(tmp_path))
    restore_training_state(ckpt, params=trainable_parameters(m2), optimizer=opt2, lr_scheduler=sched2)
    assert sched2.last_epoch == 3
    for _ in range(4):
        _train_step(m2, opt2, sched2)
    for k, v in m2.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_rng_state_round_trip_weights_only(tmp_path):
    state = capture_rng_state()
    a = (random.random(), float(np.random.rand()), torch.rand(3), np.random.randn())
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    restore_rng_state(loaded)
    b = (random.random(), float(np.random.rand()), torch.rand(3), np.random.randn())
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2]) and a[3] == b[3]


def test_interrupted_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    m, opt, sched = _setup()
    first = _save(tmp_path, 1, m, opt, sched)
    _train_step(m, opt, sched)

    def boom(path):
        raise KeyboardInterrupt(f"interrupted after {path.name}")

    monkeypatch.setattr(ck, "_after_file_hook", boom)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2, m, opt, sched)
    monkeypatch.setattr(ck, "_after_file_hook", None)
    assert (tmp_path / "latest").read_text().strip() == first.name
    assert find_latest_checkpoint(tmp_path) == first
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [first.name]  # temp folder cleaned up
    assert load_checkpoint(tmp_path).step == 1


def test_killed_process_mid_write_keeps_previous_checkpoint(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(REPO)!r})
        from deepgen.train import checkpointing as ck
        t = {{"w": torch.ones(64, 64)}}
        ck.save_checkpoint({str(tmp_path)!r}, 1, trainable=t)
        def hang(path):
            print("WRITING", path.name, flush=True)
            time.sleep(60)
        ck._after_file_hook = hang
        ck.save_checkpoint({str(tmp_path)!r}, 2, trainable={{"w": torch.zeros(64, 64)}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("WRITING trainable.safetensors"), line
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    tmp_dirs = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-checkpoint-00000002")]
    assert len(tmp_dirs) == 1  # the half-written folder is still there ...
    assert find_latest_checkpoint(tmp_path).name == "checkpoint-00000001"  # ... and ignored
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert torch.equal(load_checkpoint(tmp_path).trainable["w"], torch.ones(64, 64))
    save_checkpoint(tmp_path, 3, trainable={"w": torch.full((2,), 3.0)})  # the next save removes it
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    assert find_latest_checkpoint(tmp_path).name == "checkpoint-00000003"


def test_find_latest_ignores_temp_and_incomplete_folders(tmp_path):
    save_checkpoint(tmp_path, 5, trainable={"w": torch.ones(2)})
    save_checkpoint(tmp_path, 7, trainable={"w": torch.ones(2)})
    (tmp_path / ".tmp-checkpoint-00000009-1-abcd").mkdir()
    (tmp_path / "checkpoint-00000008").mkdir()  # no state.json: incomplete (e.g. copied by hand)
    assert find_latest_checkpoint(tmp_path).name == "checkpoint-00000007"
    (tmp_path / "latest").write_text("checkpoint-00000005\n")
    assert find_latest_checkpoint(tmp_path).name == "checkpoint-00000005"  # the pointer wins
    (tmp_path / "latest").write_text("checkpoint-00000042\n")  # dangling pointer: fall back to a scan
    assert find_latest_checkpoint(tmp_path).name == "checkpoint-00000007"
    (tmp_path / "latest").unlink()
    assert find_latest_checkpoint(tmp_path).name == "checkpoint-00000007"
    assert find_latest_checkpoint(tmp_path / "nothing") is None
    with pytest.raises(CheckpointError, match="No complete checkpoint"):
        load_checkpoint(tmp_path / "nothing")


def test_keep_last_and_resave(tmp_path):
    for step in (10, 20, 30, 40, 50):
        save_checkpoint(tmp_path, step, trainable={"w": torch.full((2,), float(step))}, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [40, 50]
    save_checkpoint(tmp_path, 50, trainable={"w": torch.full((2,), -1.0)}, keep_last=2)  # same step again
    assert [s for s, _ in list_checkpoints(tmp_path)] == [40, 50]
    assert torch.equal(load_checkpoint(tmp_path).trainable["w"], torch.full((2,), -1.0))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_shared_storage_tensors_are_saved(tmp_path):
    base = torch.arange(8.0)
    save_checkpoint(tmp_path, 1, trainable={"a": base[:4], "b": base[4:], "c": base})
    t = load_checkpoint(tmp_path).trainable
    assert torch.equal(t["b"], torch.tensor([4.0, 5, 6, 7])) and torch.equal(t["c"], base)


def test_unwritable_output_dir_errors(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        check_output_dir_writable(f)
    with pytest.raises(CheckpointError, match="Cannot create the output folder"):
        check_output_dir_writable(f / "out")
    with pytest.raises(CheckpointError):
        save_checkpoint(f / "out", 1, trainable={"w": torch.ones(1)})
    assert check_output_dir_writable(tmp_path / "new" / "dir").is_dir()
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(CheckpointError, match="not writable"):
            check_output_dir_writable(ro)


def test_restore_checks_parameter_names(tmp_path):
    m, opt, sched = _setup()
    _save(tmp_path, 1, m, opt, sched)
    ckpt = load_checkpoint(tmp_path)
    other = nn.Linear(6, 6)
    with pytest.raises(CheckpointError, match="missing"):
        restore_training_state(ckpt, params=trainable_parameters(other))
    opt2 = build_optimizer(
        {"meta_queries": m.meta_queries, "x.weight": nn.Parameter(torch.zeros(6, 6)), "proj.bias": m.proj.bias}, lr=1e-2
    )
    with pytest.raises(CheckpointError, match="optimizer's parameters differ"):
        restore_training_state(ckpt, optimizer=opt2)
    wrong_shape = {
        "meta_queries": nn.Parameter(torch.zeros(2, 6)),
        "proj.weight": m.proj.weight,
        "proj.bias": m.proj.bias,
    }
    with pytest.raises(CheckpointError, match="shape"):
        restore_training_state(ckpt, params=wrong_shape)


def test_save_with_accelerate_single_process(tmp_path):
    import accelerate

    acc = accelerate.Accelerator(cpu=True)
    m, opt, sched = _setup()
    model, opt_p = acc.prepare(m, opt)
    path = ck.save_checkpoint_accelerate(
        acc, tmp_path, 4, trainable=model, optimizer=opt_p, lr_scheduler=sched, data_position={"micro_step": 12}
    )
    ckpt = load_checkpoint(path)
    assert set(ckpt.trainable) == {"meta_queries", "proj.weight", "proj.bias"}
    assert len(ckpt.rng_states) == 1 and ckpt.data_position == {"micro_step": 12}
    restore_training_state(
        ckpt,
        params=trainable_parameters(acc.unwrap_model(model)),
        optimizer=opt_p,
        lr_scheduler=sched,
        rank=acc.process_index,
    )


def test_save_with_accelerate_two_processes(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(REPO)!r})
        import accelerate
        from deepgen.train import checkpointing as ck
        acc = accelerate.Accelerator(cpu=True)
        torch.manual_seed(100 + acc.process_index)
        model = acc.prepare(torch.nn.Linear(2, 2))
        p = ck.save_checkpoint_accelerate(acc, {str(tmp_path)!r}, 1, trainable=model)
        print("PATH", acc.process_index, p, flush=True)
    """)
    procs = []
    for rank in (0, 1):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE="2",
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE="2",
            OMP_NUM_THREADS="1",
        )
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert "PATH 1 None" in outs[1] and "checkpoint-00000001" in outs[0]  # only the main process saves
    ckpt = load_checkpoint(tmp_path)
    assert set(ckpt.trainable) == {"weight", "bias"}  # unwrapped names, no "module." prefix
    assert [int(s["torch"][0]) for s in ckpt.rng_states] == [100, 101]  # every rank's RNG, in rank order
