"""Every bad input of the training surface ends in one clear line (issue "Safe by construction").

One table: each case builds a bad input under ``tmp_path`` and runs the library (or, for one case, the CLI) on
it.  A case expects either a :class:`~deepgen.errors.DeepGenError` subclass or one warning line (bad rows among
good ones, a broken latest checkpoint under ``resume = "auto"``).  Every case checks that the message names the
offending thing (file, key, URL, host), is one line, and that no file appeared outside ``tmp_path``.  Cases that
must fail before the model loads run with the model loader replaced by a tripwire.

Runtime on 2 shared cores: ~30 s (the SIGKILL and CLI cases start a Python process each).
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from trainer_kit import base_config, one_thread, write_dataset, write_folder_dataset

from deepgen.errors import CheckpointError, ConfigError, DataError, DeepGenError, ResourceError, one_line
from deepgen.train import checkpointing as ck
from deepgen.train.data import DataSourceNotFoundError, EmptyDatasetError, load_datasets

ROOT = Path(__file__).resolve().parents[1]
WARNING = "warning"  # expectation of a case that must go on with one warning line
CLEAN = "clean"  # expectation of a case that must go on without any warning (its own asserts inside)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


class ModelLoaded(Exception):
    """The tripwire: the model loader was called (so the bad input was not found before it)."""


def forbid_model_load(mp) -> None:
    def tripwire(*args, **kwargs):
        raise ModelLoaded("the model loader was called")

    mp.setattr("deepgen.train.trainer.load_model_for_training", tripwire)
    mp.setattr("deepgen.train.runtime.load_model_for_training", tripwire)


def sft_run(cfg) -> None:
    from deepgen.train.trainer import SFTTrainer

    SFTTrainer(dataclasses.replace(cfg, export_checkpoint=False, export_lora=False), cpu=True).run()


def png_bytes(size: int = 96, seed: int = 0, fmt: str = "PNG") -> bytes:
    arr = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def free_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_no_proxy(mp) -> None:
    """Connections to 127.0.0.1 go direct even where a proxy is set (else the probe would test the proxy)."""
    for name in ("no_proxy", "NO_PROXY"):
        mp.setenv(name, "127.0.0.1,localhost")


def rows_file(folder: Path, rows: list, name: str = "rows.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def one_good_image(folder: Path, name: str = "good.png") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(png_bytes())
    return name


# ---------------------------------------------------------------------------------------------------- the table


@dataclass
class Built:
    run: Callable[[], object]  # raises the expected error (or logs the expected warning)
    names: list[str]  # what the message must name
    after: Callable[[], None] | None = None  # further checks once it ran


CASES = []


def case(case_id: str, expect):
    def register(build):
        CASES.append(pytest.param(build, expect, id=case_id))
        return build

    return register


# ---- data sets: found in one pass before the model loads


@case("empty-folder", EmptyDatasetError)
def _(tmp, mp):
    (tmp / "data").mkdir()
    forbid_model_load(mp)
    return Built(
        lambda: sft_run(base_config(tmp / "data", tmp / "out", data_verify="header", task_pattern={"text2image": 1})),
        [str(tmp / "data"), "No images"],
    )


@case("folder-without-captions", EmptyDatasetError)
def _(tmp, mp):
    data = write_folder_dataset(tmp / "data", n=2, captions=False)
    forbid_model_load(mp)
    return Built(
        lambda: sft_run(base_config(data, tmp / "out", data_verify="header", task_pattern={"text2image": 1})),
        [str(data), "img0.png", "img0.txt"],
    )


@case("missing-image-every-row", EmptyDatasetError)
def _(tmp, mp):
    data = rows_file(tmp / "data", [{"txt": "a cat", "image_path": "img/gone.png"}] * 2)
    forbid_model_load(mp)
    return Built(
        lambda: sft_run(base_config(data, tmp / "out", data_verify="header", task_pattern={"text2image": 1})),
        ["rows.jsonl", "missing_file: 2", "gone.png"],
    )


@case("truncated-png-alone", EmptyDatasetError)
def _(tmp, mp):
    (tmp / "data").mkdir()
    whole = png_bytes()
    (tmp / "data" / "cut.png").write_bytes(whole[: len(whole) // 2])
    data = rows_file(tmp / "data", [{"txt": "a cat", "image_path": "cut.png"}])
    forbid_model_load(mp)
    # the header of a truncated PNG reads fine: the TrainConfig default data_verify ("header") must find it
    return Built(
        lambda: sft_run(base_config(data, tmp / "out", data_verify="header", task_pattern={"text2image": 1})),
        ["cut.png", "unreadable_image: 1", "truncated"],
    )


@case("truncated-jpeg-among-good", WARNING)
def _(tmp, mp):
    data = write_folder_dataset(tmp / "data", n=3)
    whole = png_bytes(fmt="JPEG", seed=5)
    (data / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    (data / "cut.txt").write_text("a cut photo", encoding="utf-8")
    (data / "junk.png").write_bytes(b"not an image at all")
    (data / "junk.txt").write_text("junk", encoding="utf-8")
    forbid_model_load(mp)

    def run():
        with pytest.raises(ModelLoaded):  # the scan ran, warned, and only then the model was asked for
            sft_run(base_config(data, tmp / "out", data_verify="header", task_pattern={"text2image": 1}))

    return Built(run, ["skipped 2", "unreadable_image: 2", "cut.jpg", "junk.png", "usable text2image: 3"])


@case("empty-caption", EmptyDatasetError)
def _(tmp, mp):
    data = write_folder_dataset(tmp / "data", n=1)
    (data / "img0.txt").write_text("  \n", encoding="utf-8")
    return Built(lambda: load_datasets(data), ["img0.png", "missing_caption: 1", "img0.txt is empty"])


@case("non-utf8-caption", EmptyDatasetError)
def _(tmp, mp):
    data = write_folder_dataset(tmp / "data", n=1)
    (data / "img0.txt").write_bytes("un caf\u00e9 cr\u00e8me".encode("latin-1"))
    return Built(lambda: load_datasets(data), ["img0.txt", "unreadable_caption: 1", "not UTF-8"])


@case("non-utf8-manifest", DataError)
def _(tmp, mp):
    (tmp / "data").mkdir()
    (tmp / "data" / "rows.jsonl").write_bytes(
        b'{"txt": "ok", "image_path": "a.png"}\n{"txt": "caf\xe9", "image_path": "b.png"}\n'
    )
    return Built(lambda: load_datasets(tmp / "data" / "rows.jsonl"), ["rows.jsonl", "UTF-8", "line 2"])


@case("invalid-json-manifest", DataError)
def _(tmp, mp):
    (tmp / "data").mkdir()
    (tmp / "data" / "rows.json").write_text('[{"txt": "a", "image_path": "a.png"},', encoding="utf-8")
    return Built(lambda: load_datasets(tmp / "data" / "rows.json"), ["rows.json", "not valid JSON"])


@case("missing-data-source", DataSourceNotFoundError)
def _(tmp, mp):
    forbid_model_load(mp)
    return Built(
        lambda: sft_run(base_config(tmp / "nowhere.jsonl", tmp / "out", task_pattern={"text2image": 1})),
        ["nowhere.jsonl", "data"],
    )


# ---- dataset paths stay inside the chosen folder


def _outside(tmp: Path) -> Path:
    (tmp / "outside").mkdir(exist_ok=True)
    (tmp / "outside" / "secret.png").write_bytes(png_bytes(seed=9))
    return tmp / "outside" / "secret.png"


@case("absolute-path-in-row", EmptyDatasetError)
def _(tmp, mp):
    secret = _outside(tmp)
    data = rows_file(tmp / "data", [{"txt": "x", "image_path": str(secret)}])
    return Built(lambda: load_datasets(data), ["outside_root: 1", "image_path", "absolute"])


@case("dotdot-path-in-edit-row", EmptyDatasetError)
def _(tmp, mp):
    _outside(tmp)
    good = one_good_image(tmp / "data")
    data = rows_file(
        tmp / "data", [{"input_image": ["../outside/secret.png"], "output_image": good, "instruction": "make it blue"}]
    )
    return Built(lambda: load_datasets(data), ["outside_root: 1", "input_image", "../outside/secret.png"])


@case("symlink-out-in-row", WARNING)
def _(tmp, mp):
    secret = _outside(tmp)
    good = one_good_image(tmp / "data")
    (tmp / "data" / "link.png").symlink_to(secret)
    (tmp / "data" / "ann.json").write_text(json.dumps({"caption": "a caption"}), encoding="utf-8")
    (tmp / "outside" / "ann.json").write_text(json.dumps({"caption": "outside"}), encoding="utf-8")
    (tmp / "data" / "ann_link.json").symlink_to(tmp / "outside" / "ann.json")
    data = rows_file(
        tmp / "data",
        [
            {"txt": "fine", "image_path": good},
            {"txt": "x", "image_path": "link.png"},
            {"image": good, "annotation": "ann_link.json"},
        ],
    )
    forbid_model_load(mp)

    def run():
        with pytest.raises(ModelLoaded):
            sft_run(base_config(data, tmp / "out", data_verify="header", task_pattern={"text2image": 1}))

    return Built(run, ["outside_root: 2", "link.png", "ann_link.json", "symlink", "usable text2image: 1"])


@case("symlink-out-in-image-folder", EmptyDatasetError)
def _(tmp, mp):
    secret = _outside(tmp)
    (tmp / "data").mkdir()
    (tmp / "data" / "cat.png").symlink_to(secret)
    (tmp / "data" / "cat.txt").write_text("a cat", encoding="utf-8")
    return Built(lambda: load_datasets(tmp / "data"), ["outside_root: 1", "cat.png", "symlink"])


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


# ---- output folder


@case("output-dir-is-a-file-stage1", CheckpointError)
def _(tmp, mp):
    data = write_dataset(tmp / "data", n_t2i=2, n_edit=0)
    (tmp / "out").write_text("not a folder")
    forbid_model_load(mp)
    return Built(
        lambda: sft_run(base_config(data, tmp / "out", task_pattern={"text2image": 1})),
        [str(tmp / "out"), "output_dir"],
    )


def stage3_config(tmp: Path, **over):
    from deepgen.train.grpo.run_config import stage3_config_from_dict

    (tmp / "prompts.txt").write_text("a red square\na blue circle\n", encoding="utf-8")
    values = dict(
        model="tiny",
        mixed_precision="no",
        policy="lora",
        dit_lora_rank=2,
        dit_lora_alpha=2.0,
        prompts=[str(tmp / "prompts.txt")],
        category_weights={"general": {"clip_dummy": 1.0}},
        group_size=2,
        prompts_per_step=1,
        num_steps=2,
        resolution=32,
        max_steps=1,
        save_every=0,
        output_dir=str(tmp / "out"),
        resume="no",
        keep_last=0,
        seed=0,
    )
    values.update(over)
    return stage3_config_from_dict(values)


def grpo_setup(cfg, rewards=None):
    from deepgen.train.grpo.trainer import GRPOTrainer

    return GRPOTrainer(cfg, rewards=rewards).setup()


def constant_reward(images, prompts):
    return [0.5] * len(images)


@case("output-dir-is-a-file-stage3", CheckpointError)
def _(tmp, mp):
    (tmp / "out").write_text("not a folder")
    forbid_model_load(mp)
    cfg = stage3_config(tmp)
    return Built(lambda: grpo_setup(cfg, rewards={"clip_dummy": constant_reward}), [str(tmp / "out"), "output_dir"])


@case("stage3-sft-data-all-bad", EmptyDatasetError)
def _(tmp, mp):
    data = rows_file(tmp / "sft", [{"txt": "x", "image_path": "/etc/hostname"}])
    forbid_model_load(mp)
    cfg = stage3_config(tmp, sft_data=[str(data)], sft_lambda=0.1)
    return Built(lambda: grpo_setup(cfg, rewards={"clip_dummy": constant_reward}), ["rows.jsonl", "outside_root: 1"])


# ---- remote judge, download


@case("dead-judge-url-at-start", ResourceError)
def _(tmp, mp):
    local_no_proxy(mp)
    url = f"http://127.0.0.1:{free_port()}"
    forbid_model_load(mp)
    cfg = stage3_config(
        tmp,
        category_weights={"general": {"preference": 1.0}},
        rewards={"preference": {"url": url, "max_retries": 1, "timeout": 2}},
    )
    return Built(lambda: grpo_setup(cfg), [url, "cannot be reached", "judge server"])


@case("judge-dies-during-training", ResourceError)
def _(tmp, mp):
    local_no_proxy(mp)
    from deepgen.rewards.preference import PreferenceReward

    url = f"http://127.0.0.1:{free_port()}"
    reward = PreferenceReward(url=url, max_retries=1, backoff=0, timeout=2)
    images = [Image.new("RGB", (8, 8), (v, v, v)) for v in (0, 128, 255)]

    def run():
        assert reward(images, "p").tolist() == [0.5, 0.5, 0.5]  # one failed call: tolerated (a blip)
        reward(images, "p")  # the second in a row: stop

    return Built(run, [url, "2 calls in a row", "resume"])


@case("download-without-network", ResourceError)
def _(tmp, mp):
    port = free_port()
    mp.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    mp.delenv("HF_HUB_OFFLINE", raising=False)  # offline mode skips the check (huggingface_hub's local files)
    local_no_proxy(mp)

    def never(*a, **k):
        raise AssertionError("snapshot_download must not run when the host is unreachable")

    mp.setattr("huggingface_hub.snapshot_download", never)
    import socket

    from deepgen.download import download_release

    timeouts = []
    connect = socket.create_connection

    def recording_connect(address, timeout=None, *a, **k):
        timeouts.append(timeout)
        return connect(address, timeout, *a, **k)

    mp.setattr(socket, "create_connection", recording_connect)

    def run():
        try:
            download_release(tmp / "models")
        finally:
            # it cannot hang: the one connection it tries has a timeout of seconds (no wall clock measured here)
            assert timeouts and all(t is not None and t <= 5 for t in timeouts), timeouts

    return Built(
        run,
        [f"127.0.0.1:{port}", "HF_ENDPOINT", "nothing was downloaded"],
        lambda: not (tmp / "models").exists() or pytest.fail("models folder created"),
    )


@case("hub-connection-error-mapped", ResourceError)
def _(tmp, mp):
    from huggingface_hub.errors import LocalEntryNotFoundError

    mp.setenv("HF_ENDPOINT", "https://hub.example.invalid")
    mp.setattr("deepgen.download.check_hub_reachable", lambda *a, **k: "https://hub.example.invalid")

    def offline(*a, **k):
        raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub")

    mp.setattr("huggingface_hub.snapshot_download", offline)
    from deepgen.download import download_release

    return Built(
        lambda: download_release(tmp / "models", ("deepgen",)),
        ["hub.example.invalid", "deepgenteam/DeepGen-1.0", "HF_ENDPOINT"],
    )


# ---- config keys and values


@case("config-unknown-key", ConfigError)
def _(tmp, mp):
    from deepgen.train.config import config_from_dict

    return Built(
        lambda: config_from_dict({"model": "tiny", "data": ["d"], "max_step": 3}),
        ["'max_step'", "did you mean 'max_steps'"],
    )


@case("config-wrong-type", ConfigError)
def _(tmp, mp):
    from deepgen.train.config import config_from_dict

    return Built(lambda: config_from_dict({"model": "tiny", "data": ["d"], "lr": "fast"}), ["lr", "'fast'"])


@case("stage3-config-unknown-key", ConfigError)
def _(tmp, mp):
    from deepgen.train.grpo.run_config import stage3_config_from_dict

    return Built(
        lambda: stage3_config_from_dict({"model": "tiny", "prompts": ["p.txt"], "group_sise": 4}),
        ["'group_sise'", "did you mean 'group_size'"],
    )


@case("cli-stage3-dead-judge-exit-2", SystemExit)
def _(tmp, mp):
    local_no_proxy(mp)
    url = f"http://127.0.0.1:{free_port()}"
    (tmp / "prompts.txt").write_text("a red square\n", encoding="utf-8")
    config = tmp / "stage3.toml"
    config.write_text(
        "\n".join(
            [
                "stage = 3",
                'model = "tiny"',
                f'prompts = ["{tmp / "prompts.txt"}"]',
                f'output_dir = "{tmp / "out"}"',
                'resume = "no"',
                "group_size = 2",
                "prompts_per_step = 1",
                "max_steps = 1",
                "[category_weights.general]",
                "preference = 1.0",
                "[rewards.preference]",
                f'url = "{url}"',
            ]
        )
        + "\n",
        encoding="utf-8",
    )

    def run():
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-m", "deepgen", "train", "--config", str(config), "--cpu"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        raise SystemExit(errors[0])

    return Built(run, [url, "cannot be reached"])


# configs keep their documented layout: a title line and one "  - problem" line per problem; the CLI joins them
# with errors.one_line, so the one-line check is on that
MULTI_LINE_BY_DESIGN = {"config-unknown-key", "config-wrong-type", "stage3-config-unknown-key"}


# ---------------------------------------------------------------------------------------------------- the runner


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@pytest.mark.parametrize("build, expect", CASES)
def test_bad_input_gives_one_clear_line(build, expect, request, tmp_path, monkeypatch, caplog):
    case_id = request.node.callspec.id
    outside = [Path.cwd(), ROOT, tmp_path.parent]
    before = {str(p): _listing(p) for p in outside}
    built = build(tmp_path, monkeypatch)
    if expect in (WARNING, CLEAN):
        with caplog.at_level(logging.WARNING, logger="deepgen"):
            built.run()
        lines = [
            r.getMessage() for r in caplog.records if r.name.startswith("deepgen") and r.levelno == logging.WARNING
        ]
        assert len(lines) == (1 if expect is WARNING else 0), lines
        message = lines[0] if lines else ""
    else:
        with pytest.raises(expect) as info:
            built.run()
        error = info.value
        if not isinstance(error, SystemExit):
            assert isinstance(error, DeepGenError), type(error).__mro__
        message = str(error)
        if case_id in MULTI_LINE_BY_DESIGN:
            message = one_line(error)
    print(f"{case_id}: {message}")  # shown on failure (and with -s): the line a user reads
    assert "\n" not in message, message
    for name in built.names:
        assert name in message, (name, message)
    if built.after is not None:
        built.after()
    for p in outside:  # nothing new next to tmp_path, in the repository or in the working folder
        new = _listing(p) - before[str(p)]
        assert not new, (p, new)


def test_table_is_big_enough():
    assert len(CASES) >= 18
