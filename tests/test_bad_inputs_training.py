"""Every bad input of the training surface ends in one clear line (issue "Safe by construction").

This module: output folders, the remote judge, downloads, config keys and values, the CLI.  The rest of the
table: data sets in tests/test_bad_inputs_data.py, checkpoints in tests/test_bad_inputs_checkpoints.py; the
runner and what every case must come to in tests/bad_inputs_training_kit.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bad_inputs_training_kit import (
    ROOT,
    Built,
    case_table,
    forbid_model_load,
    free_port,
    local_no_proxy,
    rows_file,
    run_case,
    sft_run,
)
from PIL import Image
from test_bad_inputs_checkpoints import CASES as CHECKPOINT_CASES
from test_bad_inputs_data import CASES as DATA_CASES
from trainer_kit import base_config, write_dataset

from deepgen.errors import CheckpointError, ConfigError, ResourceError
from deepgen.train.data import EmptyDatasetError

CASES, case = case_table()


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


@pytest.mark.parametrize("build, expect", CASES)
def test_bad_input_gives_one_clear_line(build, expect, request, tmp_path, monkeypatch, caplog):
    run_case(build, expect, request, tmp_path, monkeypatch, caplog)


def test_table_is_big_enough():
    """Counted over the table's three modules."""
    assert len(CASES) + len(DATA_CASES) + len(CHECKPOINT_CASES) >= 18
