"""Every stage learns on a small model: stages 1-2 by the fixed-noise validation loss the trainer logs (``val_loss``),
stage 3 by its reward.

- stage 1: the think tokens, projectors and connector (a fresh SCB) learn against a frozen DiT that reads the
  SCB's context (:func:`conditioned_model`);
- stage 2: ``configs/train/tiny.toml`` itself, from random weights, on its synthetic data (an overfit set);
- stage 3: a DiT LoRA on the demo model makes "red" prompts' pictures redder, with KL and SFT-Aux on (and in
  test_grpo_trainer.py, ``test_learning_with_kl_and_sft_aux``, on the random tiny model with a linear VAE).

Bounds come from repeated runs over seeds (the numbers are in each test); every run here is deterministic (fixed
seeds, one torch thread).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_kit import base_config, one_thread, stage3_values, write_dataset

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


RED_PROMPTS = [
    "a red circle on a blue background",
    "a red square on a green background",
    "a red triangle on a white background",
    "a red circle on a black background",
]


def redness(images, prompts) -> list[float]:
    """How red a picture is: the mean over pixels of max(0, R - max(G, B)), in [0, 1]."""
    out = []
    for im in images:
        a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        out.append(float(np.clip(a[..., 0] - a[..., 1:].max(axis=-1), 0.0, None).mean()))
    return out


def demo_stage3_run(tmp_path: Path, seed: int, steps: int = 20) -> dict:
    """Stage 3 on the demo model: a DiT LoRA, "red" prompts, the redness reward, KL and SFT-Aux (on pictures of the
    demo's world) on. Returns the rollout means, the evaluations before and after, the KLs and the SFT val_loss."""
    from deepgen.demo_world import write_caption_folder
    from deepgen.rewards import register_reward, unregister_reward
    from deepgen.train.grpo.run_config import stage3_config_from_dict
    from deepgen.train.grpo.trainer import GRPOTrainer

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(RED_PROMPTS) + "\n", encoding="utf-8")
    sft = tmp_path / "sft"
    write_caption_folder(sft, seed=seed)
    values = stage3_values(
        tmp_path / "out",
        str(prompts),
        category_weights={"general": {"redness": 1.0}},
        resolution=64,
        num_steps=8,
        dit_lora_rank=8,
        dit_lora_alpha=8.0,
        lr=3e-3,
        max_steps=steps,
        seed=seed,
        rollout_micro_batch_size=8,
        train_micro_batch_size=8,
        kl_beta=1e-5,
        sft_data=[str(sft)],
        sft_resolution=64,
        sft_batch_size=2,
        sft_lambda=0.01,
        val_loss_every=5,
        eval_prompts=str(prompts),
        eval_every=steps,
        eval_before_training=True,
        eval_num_steps=8,
        eval_save_images=False,
    )
    register_reward("redness", redness)
    try:
        hist = GRPOTrainer(stage3_config_from_dict(values)).setup().train()
    finally:
        unregister_reward("redness")
    train = [r for r in hist if not r.get("eval")]
    return {
        "means": [r["reward/redness/mean"] for r in train],
        "evals": [r["eval/redness/mean"] for r in hist if r.get("eval")],
        "kl": [r["kl"] for r in train],
        "val": [r["val_loss"] for r in train if "val_loss" in r],
    }


def test_stage3_demo_model_redness_rises_with_kl_and_sft_aux(tmp_path):
    run = demo_stage3_run(tmp_path, seed=0)
    means, evals, val = run["means"], run["evals"], run["val"]
    rise = float(np.mean(means[-5:]) - np.mean(means[:5]))
    print(
        f"\nstage 3 (demo): redness {np.mean(means[:5]):.4f} -> {np.mean(means[-5:]):.4f} (+{rise:.4f}), eval "
        f"{evals[0]:.4f} -> {evals[-1]:.4f}, max KL {max(run['kl']):.3g}, val_loss {val[0]:.4f} -> {val[-1]:.4f}"
    )
    assert len(evals) == 2 and len(val) == 4
    assert run["kl"][0] == 0.0 and max(run["kl"]) > 0  # the policy left the reference
    # measured (seeds 0-4, 20 steps, ~23 s each): rollout means (last five - first five) +0.014, +0.013, +0.040,
    # +0.022, +0.035; the fixed-noise evaluation 0.132 -> 0.163, 0.153, 0.165, 0.162, 0.160 (+0.022 to +0.033).
    # SFT-Aux at λ 0.01 does not hold its val_loss there (+0.003 to +0.018): the demo already fits its world
    assert rise > 0.005
    assert evals[-1] - evals[0] > 0.01


if __name__ == "__main__":  # measure the stage-3 spread over seeds: python tests/test_stages_learn.py 0 1 2 3 4
    import sys
    import tempfile

    torch.set_num_threads(1)
    for s in map(int, sys.argv[1:]):
        with tempfile.TemporaryDirectory() as tmp:
            r = demo_stage3_run(Path(tmp), s)
        m = r["means"]
        print(
            f"seed {s}: rollouts {np.mean(m[:5]):.4f} -> {np.mean(m[-5:]):.4f}, eval {r['evals'][0]:.4f} -> "
            f"{r['evals'][-1]:.4f}, max KL {max(r['kl']):.3g}, val_loss {r['val'][0]:.4f} -> {r['val'][-1]:.4f}",
            flush=True,
        )
