"""Stage 3 (MR-GRPO) trainer on the tiny model: prompt files, config, step-0 identities through the real
trainer path, learning, exact resume, bad input.  The math core has its own hand-value tests
(test_grpo_math.py); the two-process run is in test_grpo_trainer_multiproc.py.

Runtime on 2 shared cores, one torch thread: about a minute for the whole file.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from trainer_kit import stage3_values

from deepgen.rewards import register_reward, unregister_reward
from deepgen.train.config import ConfigError
from deepgen.train.grpo.prompts import PromptError, load_prompt_set, read_prompt_file
from deepgen.train.grpo.run_config import POLICIES, load_stage3_config, stage3_config_from_dict
from deepgen.train.grpo.setup import find_unused_parameters, per_process_batch
from deepgen.train.grpo.step import new_step_stats
from deepgen.train.grpo.trainer import (
    GRPOTrainer,
    ZeroAdvantageWarning,
    lora_disabled,
    read_log,
)
from deepgen.train.runtime import TrainCallback, TrainingError

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "a red square on a grey background",
    "a blue circle on a white page",
    "a yellow sun over a green field",
    "a black cat on a wooden chair",
]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is latency-bound; the machine is shared
    yield
    torch.set_num_threads(before)


def mean_brightness(images, prompts):
    """The custom reward of these tests: mean pixel value in [0, 1]."""
    return [float(np.asarray(im, dtype=np.float32).mean() / 255.0) for im in images]


def constant(images, prompts):
    return [0.5] * len(images)


@pytest.fixture(autouse=True)
def custom_rewards():
    register_reward("mean_brightness", mean_brightness)
    register_reward("constant", constant)
    yield
    unregister_reward("mean_brightness")
    unregister_reward("constant")


def prompt_file(folder: Path, lines=PROMPTS, name="prompts.txt") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text("# test prompts\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return str(p)


def sft_data(folder: Path) -> str:
    from deepgen.train.data import write_synthetic_dataset

    if not (folder / "data.jsonl").is_file():
        write_synthetic_dataset(folder, n_text2image=4, n_edit=0, sizes=((96, 96),))
    return str(folder / "data.jsonl")


def tiny_config(tmp: Path, **over):
    values = {
        "category_weights": {"general": {"mean_brightness": 1.0}},
        "rollout_micro_batch_size": 8,
        "train_micro_batch_size": 8,
        **over,
    }
    return stage3_config_from_dict(stage3_values(tmp / "out", prompt_file(tmp), **values))


class LinearDecoder(torch.nn.Module):
    """A fixed linear "VAE decoder" (16 latent channels → RGB, ×8 nearest upsampling, tanh), mrgrpo-reference §8.3.

    The random tiny AutoencoderKL decodes almost the same mean brightness for any latent (std 0.0012 over random
    latents; its GroupNorms remove the latent's scale and the random per-pixel patterns average out), so
    brightness is a nearly flat reward there; with this decoder it is a smooth function of the final latent.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.randn(3, 16, generator=torch.Generator().manual_seed(0)) / 4.0)
        self.config = SimpleNamespace(scaling_factor=1.0, shift_factor=0.0)

    @property
    def dtype(self):
        return self.w.dtype

    def decode(self, z):
        x = torch.nn.functional.interpolate(torch.einsum("cd,bdhw->bchw", self.w, z), scale_factor=8, mode="nearest")
        return SimpleNamespace(sample=torch.tanh(x))


class LinearVAE(LinearDecoder):
    """:class:`LinearDecoder` with its encoder (8×8 mean pooling, then the decoder's pseudo-inverse; a posterior of
    zero variance), so SFT-Aux and the fixed-noise validation loss can encode their data with it."""

    def encode(self, x):
        pooled = torch.nn.functional.avg_pool2d(torch.atanh(x.float().clamp(-0.99, 0.99)), 8)
        mean = torch.einsum("dc,bchw->bdhw", torch.linalg.pinv(self.w), pooled)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean, std=torch.zeros_like(mean)))


def metrics(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith("time/")}


# ---------------------------------------------------------------------------------------------------- prompts


def test_prompt_files_categories_and_weighted_sampling(tmp_path):
    txt = prompt_file(tmp_path, ["a cat", "", "  # comment", "a dog"], "g.txt")
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(
        '{"prompt": "a sign that says \\"OPEN\\"", "category": "text_render"}\n\n'
        '"a bare string line"\n{"prompt": "a tree", "id": 7}\n',
        encoding="utf-8",
    )
    js = tmp_path / "l.json"
    js.write_text(json.dumps(["one", {"prompt": "two", "category": "text"}]), encoding="utf-8")
    assert [r.prompt for r in read_prompt_file(txt)] == ["a cat", "a dog"]
    recs = read_prompt_file(jsonl, "general")
    assert [(r.prompt, r.category) for r in recs] == [
        ('a sign that says "OPEN"', "text_rendering"),
        ("a bare string line", "general"),
        ("a tree", "general"),
    ]
    assert recs[2].meta == {"id": 7}
    assert [r.category for r in read_prompt_file(js)] == ["general", "text_rendering"]

    ps = load_prompt_set(
        [{"path": txt, "category": "general"}, {"path": str(jsonl), "category": "text_rendering"}],
        category_sample_weights={"text_rendering": 3.0, "general": 1.0},
    )
    assert [d.sample_weight for d in ps.datasets] == [1.0, 3.0]  # from the category defaults
    assert ps.categories == ["general", "text_rendering"]
    a = ps.sample(64, seed=1, step=5, rank=0)
    assert a == ps.sample(64, seed=1, step=5, rank=0)  # a pure function of (seed, step)
    assert a != ps.sample(64, seed=1, step=6, rank=0)
    # two processes take the two halves of the same global draw
    assert (
        ps.sample(32, seed=1, step=5, rank=0, world_size=2) + ps.sample(32, seed=1, step=5, rank=1, world_size=2) == a
    )
    draws = [r.source.startswith(str(jsonl)) for s in range(40) for r in ps.sample(8, seed=0, step=s)]
    assert 0.72 < sum(draws) / len(draws) < 0.95  # 3 prompts × 3.0 vs 2 × 1.0 → 9/11 ≈ 0.82

    # a prompt-set file (mirrors the official deepgen_train.yaml), paths relative to it
    (tmp_path / "set.toml").write_text(
        '[[datasets]]\npath = "g.txt"\ncategory = "general"\nsample_weight = 2.0\n', encoding="utf-8"
    )
    ps2 = load_prompt_set(str(tmp_path / "set.toml"))
    assert len(ps2) == 2 and ps2.datasets[0].sample_weight == 2.0


def test_shipped_stage3_configs_parse():
    c8 = load_stage3_config(ROOT / "configs/train/stage3_8gpu.toml")
    g = c8.grpo
    assert (
        c8.policy,
        c8.reference,
        g.group_size,
        g.prompts_per_step,
        g.num_steps,
        g.eta,
        g.timestep_fraction,
        g.clip_range,
        g.kl_beta,
        g.sft_lambda,
        g.lr,
        g.warmup_steps,
        g.max_grad_norm,
        g.logprob,
    ) == ("full", "copy", 8, 32, 50, 1.0, 0.6, 1e-4, 5e-7, 1e-4, 2e-6, 20, 1.0, "simplified")
    assert g.category_weights == {
        "text_rendering": {"preference": 0.2, "clip": 0.1, "ocr": 0.7},
        "general": {"preference": 0.7, "clip": 0.3},
    }
    c1 = load_stage3_config(ROOT / "configs/train/stage3_1gpu_lora.toml", ["group_size=6", "eta=0.8"])
    assert (c1.policy, c1.reference, c1.grpo.group_size, c1.grpo.eta) == ("lora", "disable_adapter", 6, 0.8)
    assert c1.grpo.category_weights == c8.grpo.category_weights  # presets by name
    tiny = load_stage3_config(ROOT / "configs/train/stage3_tiny.toml")
    assert tiny.model == "tiny" and tiny.grpo.resolution == 32
    official = stage3_config_from_dict({"model": "tiny", "prompts": ["x.txt"]})  # defaults = official values
    assert official.grpo.category_weights["text_rendering"] == {"preference": 0.2, "clip": 0.1, "ocr": 0.7}
    assert official.grpo.category_sample_weights == {"text_rendering": 3.0, "general": 1.0}
    with pytest.raises(ConfigError, match="unknown key 'group_sise'.*did you mean 'group_size'"):
        stage3_config_from_dict({"model": "tiny", "prompts": ["x.txt"], "group_sise": 4})


# ---------------------------------------------------------------------------------------------------- bad input


def test_bad_input_errors(tmp_path):
    empty = prompt_file(tmp_path, ["", "# only comments"], "empty.txt")
    with pytest.raises(PromptError, match="holds no prompts"):
        GRPOTrainer(tiny_config(tmp_path, prompts=[empty])).setup()
    with pytest.raises(TrainingError, match="names the reward 'sharpnes'.*not registered.*reward_modules"):
        GRPOTrainer(tiny_config(tmp_path, category_weights={"general": {"sharpnes": 1.0}})).setup()
    with pytest.raises(TrainingError, match=r"categories \['text_rendering'\] have no reward weights"):
        GRPOTrainer(tiny_config(tmp_path, prompts=[{"path": prompt_file(tmp_path), "category": "text"}])).setup()
    with pytest.raises(ConfigError, match="group_size must be ≥ 2 .*G = 1 every advantage is 0"):
        tiny_config(tmp_path, group_size=1)
    with pytest.raises(ConfigError, match="unknown reward preset 'genral'"):
        tiny_config(tmp_path, category_weights={"general": "genral"})
    # a missing reward model: a clear error at start-up (preflight), before any rollout
    cfg = tiny_config(
        tmp_path,
        category_weights={"general": {"clip": 0.5, "mean_brightness": 0.5}},
        rewards={"clip": {"model_path": str(tmp_path / "no-clip-here")}},
    )
    with pytest.raises(TrainingError, match=r"(?s)reward 'clip' .*cannot load its model.*no-clip-here.*hf download"):
        GRPOTrainer(cfg).setup()


def test_sft_batch_size_is_global_and_ddp_unused_rule(tmp_path):
    """``sft_batch_size`` is split over the processes like ``prompts_per_step``; DDP searches for unused tensors
    only when a part outside the DiT trains (stage 3's policies: never)."""
    assert [per_process_batch(256, n) for n in (1, 2, 8)] == [256, 128, 32]
    assert per_process_batch(2, 2) == 1
    with pytest.raises(ConfigError, match=r"sft_batch_size \(3\) is the global batch.*number of processes \(2\)"):
        per_process_batch(3, 2)
    for policy in POLICIES:
        spec = tiny_config(tmp_path, policy=policy).trainable_spec()
        assert not find_unused_parameters(spec)
    for part in ("vlm_lora", "connector", "meta_queries", "projectors"):
        assert find_unused_parameters(dataclasses.replace(spec, **{part: True})), part
    # one process takes the whole global batch; one SFT-Aux backward reaches every trainable tensor too
    cfg = tiny_config(
        tmp_path,
        policy="full",
        sft_data=[sft_data(tmp_path / "sft")],
        sft_resolution=64,
        sft_batch_size=3,
        sft_lambda=0.1,
        max_steps=1,
    )
    tr = GRPOTrainer(cfg).setup()
    assert tr.sft_batch_per_rank == 3 and len(next(tr._sft_iter)) == 3
    stats = new_step_stats()
    tr.sft_aux(0, stats)
    assert np.isfinite(stats["sft_loss"])
    assert all(p.grad is not None for p in tr.params.values())


def test_zero_variance_groups_warn_and_train_nothing(tmp_path):
    tr = GRPOTrainer(
        tiny_config(
            tmp_path,
            category_weights={"general": {"constant": 1.0}},
            group_size=2,
            rollout_micro_batch_size=4,
            train_micro_batch_size=4,
            max_steps=1,
        )
    ).setup()
    before = {n: p.detach().clone() for n, p in tr.params.items()}
    with pytest.warns(ZeroAdvantageWarning, match="every advantage is 0"):
        rec = tr.train_step(0)
    assert rec["adv/zero_frac"] == 1.0 and rec["policy_loss"] == 0.0 and rec["reward/constant/std"] == 0.0
    # KL = 0 at step 0 and A = 0: a zero gradient, so AdamW leaves the LoRA unchanged (weight decay 0)
    assert all(torch.equal(before[n], p) for n, p in tr.params.items())


# ---------------------------------------------------------------------------------------------------- step 0


@pytest.mark.parametrize("policy", ["lora", "full"])
def test_step0_kl_is_zero_and_ratio_is_one_through_the_trainer(tmp_path, policy):
    """At step 0 the policy is the reference (LoRA B = 0 with the adapter disabled as reference; or a frozen copy
    of the full DiT), and the train forward repeats the rollout forward on the same batches: KL is 0 (exactly for
    the LoRA's switched-off adapter, to rounding for a frozen copy) and ρ exactly 1 on every trained (timestep,
    sample)."""
    over = {"reference": "copy"} if policy == "full" else {}
    tr = GRPOTrainer(tiny_config(tmp_path, policy=policy, max_steps=1, **over)).setup()
    assert tr.reference_mode == ("copy" if policy == "full" else "disable_adapter")
    batch = tr.rollout(0)
    traj = batch.trajectory
    x_T = traj.latents[:, 0]
    assert torch.equal(x_T[0], x_T[3]) and not torch.equal(x_T[0], x_T[4])  # one shared x_T per group of 4
    assert not torch.equal(traj.final[0], traj.final[1])  # the SDE noise differs within the group
    tr.score(batch)
    st = {k: 0.0 for k in ("policy_loss", "kl", "kl_max", "ratio", "ratio_max_dev", "clip_frac", "approx_kl")}
    st.update(count=0, updates_this_step=0, grad_norm=float("nan"))
    tr._train_passes(batch, st)
    assert st["count"] == 8 * tr.g.num_train_timesteps
    if policy == "lora":
        assert st["kl"] == 0.0 and st["kl_max"] == 0.0
    else:
        # the frozen copy is another module with the same weights: on the demo's 128-wide DiT its output Linear
        # rounds differently from the policy's on equal inputs (measured: velocities 1.4e-6 apart, KL 5.6e-9)
        assert 0.0 <= st["kl"] < 1e-7 and st["kl_max"] < 1e-6
    assert st["ratio_max_dev"] == 0.0 and st["ratio"] == st["count"] and st["clip_frac"] == 0.0
    grads = [p.grad for p in tr.params.values() if p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads)  # the policy term does train
    # every trainable tensor got a gradient (LoRA A: a zero one, B = 0): why DDP's unused search is off
    assert len(grads) == len(tr.params) and not find_unused_parameters(tr.cfg.trainable_spec())

    if policy == "lora":  # the reference switch leaves the trainable flags alone (PEFT's would not)
        with lora_disabled(tr.model.transformer):
            pass
        assert all(p.requires_grad for p in tr.params.values())
        # the trajectory does not depend on the rollout micro-batch (up to batch-shape rounding)
        from deepgen.train.grpo.rollout import cps_rollout

        one = cps_rollout(
            tr.policy_velocity,
            x_T,
            batch.context,
            batch.pooled,
            sigmas=tr.sigmas,
            timesteps=tr.timesteps,
            seed=tr.g.seed,
            noise_tag=(0,),
            image_ids=range(8),
            micro_batch_size=1,
        )
        assert torch.allclose(one.latents, traj.latents, atol=1e-4)
        assert torch.allclose(one.logprobs, traj.logprobs, atol=1e-5)


def test_options_cfg_exact_logprob_eta_and_per_image_noise(tmp_path):
    """The documented options run through the same path: CFG in rollouts and training (both branches with
    gradients), the exact Gaussian log-prob, η = 0.8, independent x_T per image; still KL 0 / ρ 1 at step 0."""
    cfg = tiny_config(tmp_path, cfg_scale=2.0, logprob="exact", eta=0.8, init_same_noise=False, max_steps=1)
    tr = GRPOTrainer(cfg).setup()
    batch = tr.rollout(0)
    assert batch.negative_context is not None  # the negative ('') prompt is encoded for CFG
    x_T = batch.trajectory.latents[:, 0]
    assert not torch.equal(x_T[0], x_T[1])  # one x_T per image
    rec = tr.train()[0]
    assert rec["kl"] == 0.0 and rec["ratio_max_dev"] == 0.0
    assert np.isfinite(rec["policy_loss"]) and rec["grad_norm"] > 0


# ---------------------------------------------------------------------------------------------------- learning


def test_learning_raises_the_custom_reward(tmp_path):
    """30 steps on the tiny model (LoRA policy, lr 1e-2) with a registered brightness reward and a fixed seed
    schedule: the reward's rollout mean and its fixed-seed evaluation both go up by a wide margin."""
    from deepgen.tiny import build_tiny_model

    model = build_tiny_model(0)
    model.vae = LinearDecoder()
    steps = 30
    cfg = tiny_config(
        tmp_path,
        max_steps=steps,
        eval_prompts=prompt_file(tmp_path),
        eval_every=steps,
        eval_before_training=True,
        eval_num_steps=4,
        eval_cfg_scale=1.0,
        eval_images_per_prompt=2,
        eval_save_images=False,
    )
    t0 = time.perf_counter()
    hist = GRPOTrainer(cfg, model=model).setup().train()
    seconds = time.perf_counter() - t0
    train = [r for r in hist if not r.get("eval")]
    evals = [r["eval/mean_brightness/mean"] for r in hist if r.get("eval")]
    means = [r["reward/mean_brightness/mean"] for r in train]
    first, last = float(np.mean(means[:5])), float(np.mean(means[-5:]))
    std0 = train[0]["reward/mean_brightness/std"]
    print(
        f"\nlearning: brightness {first:.4f} -> {last:.4f} (+{last - first:.4f}; within-batch std at step 1 "
        f"{std0:.4f}); fixed-seed eval {evals[0]:.4f} -> {evals[-1]:.4f} (+{evals[-1] - evals[0]:.4f}); "
        f"{steps} steps in {seconds:.1f} s"
    )
    assert len(train) == steps and len(evals) == 2
    # measured: seed 0 +0.103 (rollouts) / +0.110 (eval); seeds 1, 2, 3: +0.087/+0.072, +0.127/+0.118, +0.150/+0.138
    assert last - first > 0.04
    assert evals[-1] - evals[0] > 0.04
    assert train[0]["kl"] == 0.0 and max(r["kl"] for r in train) > 0  # the policy left the reference


def test_learning_with_kl_and_sft_aux(tmp_path):
    """The same learning run with both regularisers on: a KL penalty (β = 1e-5, 20× the official 5e-7, so it acts
    at these sizes) and SFT-Aux (λ = 0.01 on a synthetic stage-2 set, 100× the official 1e-4).  The reward still
    rises, the policy leaves the reference (KL > 0), and SFT-Aux learns: the fixed-noise validation loss of the
    SFT data (``val_loss``, logged every 5 steps) falls.  :class:`LinearVAE` decodes (the reward) and encodes
    (the SFT data); the trained demo model's VAE can take its place once it ships."""
    from deepgen.tiny import build_tiny_model

    model = build_tiny_model(0)
    model.vae = LinearVAE()
    steps = 30
    cfg = tiny_config(
        tmp_path,
        max_steps=steps,
        kl_beta=1e-5,
        sft_data=[sft_data(tmp_path / "sft")],
        sft_resolution=64,
        sft_batch_size=2,
        sft_lambda=0.01,
        val_loss_every=5,
        eval_prompts=prompt_file(tmp_path),
        eval_every=steps,
        eval_before_training=True,
        eval_num_steps=4,
        eval_cfg_scale=1.0,
        eval_images_per_prompt=2,
        eval_save_images=False,
    )
    hist = GRPOTrainer(cfg, model=model).setup().train()
    train = [r for r in hist if not r.get("eval")]
    evals = [r["eval/mean_brightness/mean"] for r in hist if r.get("eval")]
    means = [r["reward/mean_brightness/mean"] for r in train]
    val = [r["val_loss"] for r in train if "val_loss" in r]
    rise = float(np.mean(means[-5:]) - np.mean(means[:5]))
    print(
        f"\nwith KL and SFT-Aux: brightness +{rise:.4f}, eval +{evals[-1] - evals[0]:.4f}, "
        f"max KL {max(r['kl'] for r in train):.3g}, val_loss {val[0]:.4f} -> {val[-1]:.4f}"
    )
    assert len(val) == steps // 5 and [r["step"] for r in train if "val_loss" in r] == list(range(5, steps + 1, 5))
    # measured (seeds 0-4): rollouts +0.039, +0.041, +0.035, +0.038, +0.040; eval +0.030, +0.027, +0.013,
    # +0.030, +0.040; val_loss first -> last -0.074, -0.129, -0.077, -0.073, -0.076
    assert rise > 0.015
    assert evals[-1] - evals[0] > 0.005
    assert train[0]["kl"] == 0.0 and max(r["kl"] for r in train) > 0
    assert val[-1] < val[0] - 0.03


# ---------------------------------------------------------------------------------------------------- resume


class KillAt(TrainCallback):
    """Raises KeyboardInterrupt at the ``n``-th interrupt check (inside a step) or at the end of step ``step``."""

    def __init__(self, *, checks: int | None = None, step: int | None = None):
        self.checks, self.step, self.seen = checks, step, 0

    def check_interrupt(self):
        self.seen += 1
        if self.checks is not None and self.seen == self.checks:
            raise KeyboardInterrupt("killed mid-step")

    def on_step_end(self, run, info):
        if self.step is not None and info.step == self.step:
            raise KeyboardInterrupt("killed after a step")


def run(cfg, callbacks=()):
    return GRPOTrainer(cfg, callbacks=callbacks).setup().train()


def test_killed_run_resumes_to_the_same_rewards_and_losses(tmp_path):
    data = sft_data(tmp_path / "sft")
    common = dict(max_steps=4, save_every=2, sft_data=[data], sft_resolution=64, sft_batch_size=2, sft_lambda=0.1)
    full = run(tiny_config(tmp_path / "a", output_dir=str(tmp_path / "a"), **common))
    assert [r["step"] for r in full] == [1, 2, 3, 4]
    assert all(np.isfinite(r["sft_loss"]) for r in full)
    keys = {
        "reward/mean_brightness/mean",
        "reward/mean_brightness/std",
        "kl",
        "kl_max",
        "clip_frac",
        "ratio_mean",
        "approx_kl",
        "policy_loss",
        "sft_loss",
        "adv/hist",
        "adv/std",
        "grad_norm",
        "lr",
        "updates",
    }
    assert keys <= set(full[0])
    assert sum(full[0]["adv/hist"]) == 8

    out = tmp_path / "b"
    cfg = tiny_config(tmp_path / "b", output_dir=str(out), **{**common, "resume": "auto"})
    # kill inside step 3 (after the step-2 checkpoint, before step 3's update): per step there are
    # 4 rollout steps + K·micro-batches = 2 training passes → 6 checks; the 15th is inside step 3
    with pytest.raises(KeyboardInterrupt):
        run(cfg, [KillAt(checks=15)])
    assert [r["step"] for r in read_log(out)] == [1, 2]
    rest = run(cfg)
    assert [r["step"] for r in rest] == [3, 4]
    assert [metrics(r) for r in rest] == [metrics(r) for r in full[2:]]  # exact
    assert [metrics(r) for r in read_log(out)] == [metrics(r) for r in full]


def test_official_quirk_mode_interrupt_checkpoint_and_resume(tmp_path):
    """Update after every trained timestep + bf16 old log-probs (GRPOConfig.official()); Ctrl-C at a step
    boundary writes an interrupt checkpoint; the resumed run repeats the uninterrupted one."""
    common = dict(max_steps=3, optimizer_step_per_timestep=True, bf16_old_logprob=True, warmup_steps=2)
    full = run(tiny_config(tmp_path / "a", output_dir=str(tmp_path / "a"), **common))
    assert full[0]["lr"] == pytest.approx(1e-2 / 2)  # warm-up: the first rollout's first update is not at lr 0
    assert full[1]["lr"] == full[2]["lr"] == pytest.approx(1e-2)  # full lr once warmup_steps updates are done
    k = full[0]["train_steps"]
    assert [r["updates"] for r in full] == [len(k), 2 * len(k), 3 * len(k)]  # K updates per rollout
    assert full[0]["ratio_max_dev"] > 0  # bf16-rounded old log-probs: ρ ≠ 1 even before any update
    out = tmp_path / "b"
    cfg = tiny_config(tmp_path / "b", output_dir=str(out), resume="auto", **common)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, [KillAt(step=2)])
    assert (out / "checkpoint-00000002").is_dir()
    rest = run(cfg)
    assert [metrics(r) for r in rest] == [metrics(r) for r in full[2:]]
