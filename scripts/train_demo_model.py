"""Train the embedded demo DeepGen (deepgen/assets/demo/deepgen_demo.safetensors) from nothing, on this machine.

    python scripts/train_demo_model.py                       # 50-105 minutes on one CPU core
    python scripts/train_demo_model.py --work outputs/demo --no-install   # keep the shipped file as it is

1. data: coloured shapes on coloured backgrounds with captions ("a red circle on a blue background") and edit
   triplets ("make the circle green"), deepgen.demo_world;
2. VAE: the tiny model's AutoencoderKL, trained here to reconstruct such pictures with a near-deterministic
   posterior (the random one's sampled latents are ~90 % noise, so nothing trained on them can learn);
3. DeepGen: the tiny architecture (deepgen.tiny) with that VAE and a wider, deeper DiT (DEMO_DIT), written as an
   official-layout release, then trained by `deepgen train` (stage 2: think tokens, SCB and the whole DiT; the VLM
   stays as it is) on the data;
4. export: the trained model as one demo file (deepgen.loading.demo_file: a converted single file without the
   packaged tokenizer and the seeded, untrained token embedding);
5. word order: stage 2 again from that file, now with a VLM LoRA on the VLM's Linear layers (its embedding stays
   the seeded one, so the file stays small). Step 3's model draws both asked colours but puts them either way
   round: the random VLM barely marks which colour word goes with which noun, and SCB and the DiT have no token
   positions to tell. Exported the same way, this is the demo that `model="tiny"`, the CLI's default and
   DeepGenLoader's demo choice load; then its hit rates over the colour x shape grid (the README's table).
Seeds are fixed: on one machine, the same torch build reproduces the tensors; a rerun on another machine gave a
model of the same quality, not the same bits (README, "Demo model"). `--from-demo FILE` runs step 5 alone
from a demo file of step 4 (the shipped file was made so, from the 10000-step demo the full script writes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepgen import demo_world as W  # noqa: E402
from deepgen import tiny  # noqa: E402
from deepgen.loading.demo_file import set_seeded_embedding, write_demo_file  # noqa: E402

# The tiny VAE with a wider first level: the 8-channel one learns these pictures far more slowly on a CPU.
DEMO_VAE = {**tiny.TINY_VAE, "block_out_channels": [16, 32, 32, 32]}
# The tiny DiT made 4x wider (8 heads x 16 = 128) and 6 blocks deep: the 32-wide, 4-block one learned the colours
# but drew scattered blobs (its velocity at high noise, where the layout is decided, was worse than the data mean).
DEMO_DIT = {**tiny.TINY_TRANSFORMER, "num_attention_heads": 8, "num_layers": 6, "caption_projection_dim": 128}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- 2. the VAE ------------------------------------------------------------------------------------------


def vae_batch(rng: np.random.Generator, n: int, size: int) -> torch.Tensor:
    """Random pictures of the demo's world, half in its palette and half in any colours (so other pictures
    still decode to something close), as (n, 3, size, size) in [-1, 1]."""
    palette = np.array(list(W.COLOURS.values()), dtype=np.float32)
    images = []
    for _ in range(n):
        alpha = np.asarray(W.draw(str(rng.choice(W.SHAPES)), "white", "black", size, rng), dtype=np.float32)
        alpha = np.clip((alpha[..., :1] - 15.0) / 230.0, 0.0, 1.0)
        if rng.random() < 0.5:
            fg, bg = palette[rng.choice(len(palette), size=2, replace=False)]
        else:
            fg, bg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        arr = bg * (1 - alpha) + fg * alpha
        images.append(torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(images).float()


def train_vae(steps: int, size: int, seed: int, batch: int = 8):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae = AutoencoderKL.from_config({**DEMO_VAE, "scaling_factor": 1.0, "shift_factor": 0.0})
    with torch.no_grad():  # start near-deterministic: a unit posterior std would drown the mean in noise
        vae.encoder.conv_out.bias[vae.config.latent_channels :].fill_(-6.0)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 20) * 0.5 * (1 + np.cos(np.pi * i / steps))
    )
    for step in range(1, steps + 1):
        x = vae_batch(rng, batch, size)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        # a tiny KL weight keeps the latents bounded; reconstruction pushes the posterior variance down
        mse = torch.nn.functional.mse_loss(recon, x)
        loss = mse + torch.nn.functional.l1_loss(recon, x) + 1e-7 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0 or step == 1:
            log(f"vae step {step}/{steps} mse {mse.item():.4f} std {posterior.std.mean().item():.4f}")
    vae.eval()
    with torch.no_grad():  # scale the latents to unit variance, as SD3's VAE config does
        means = torch.cat([vae.encode(vae_batch(rng, batch, size)).latent_dist.mean for _ in range(8)])
        stds = torch.cat([vae.encode(vae_batch(rng, batch, size)).latent_dist.std for _ in range(2)])
    shift, scale = means.mean().item(), 1.0 / means.std().item()
    vae.register_to_config(shift_factor=round(shift, 4), scaling_factor=round(scale, 4))
    log(f"vae: shift {shift:.4f} scale {scale:.4f}; scaled posterior std {stds.mean().item() * scale:.4f}")
    return to_sd3_latent_factors(vae)


def to_sd3_latent_factors(vae):
    """Fold the VAE's own latent shift/scale into its encoder's last and decoder's first convolution, so its config
    carries SD3's (0.0609, 1.5305) like the real VAE: ComfyUI's native SD3 path (KSampler, VAEDecode) assumes them.
    The DiT's latents, (z - shift) * scale, are unchanged."""
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    sd3_shift, sd3_scale = tiny.TINY_VAE["shift_factor"], tiny.TINY_VAE["scaling_factor"]
    if (shift, scale) == (sd3_shift, sd3_scale):
        return vae
    k, c = scale / sd3_scale, vae.config.latent_channels  # z_new = (z - shift) * k + sd3_shift
    with torch.no_grad():
        enc = vae.encoder.conv_out
        enc.weight[:c] *= k
        enc.bias[:c] = (enc.bias[:c] - shift) * k + sd3_shift
        enc.bias[c:] += 2 * float(np.log(k))  # log-variance: the std scales by k too
        dec = vae.decoder.conv_in  # z = (z_new - sd3_shift) / k + shift
        dec.bias += dec.weight.sum(dim=(1, 2, 3)) * (shift - sd3_shift / k)
        dec.weight /= k
    vae.register_to_config(shift_factor=sd3_shift, scaling_factor=sd3_scale)
    return vae


# ---- 3. the trainer ---------------------------------------------------------------------------------------


def demo_transformer(seed: int):
    """The demo's DiT (DEMO_DIT), randomly initialised from its own seed (seed + 1)."""
    from deepgen.model.dit import DeepGenTransformer2DModel

    torch.manual_seed(seed + 1)
    return DeepGenTransformer2DModel.from_config(DEMO_DIT)


TRAIN_CONFIG = """# written by scripts/train_demo_model.py
stage = 2
model = "{base}"
seed = {seed}
data = ["{data}"]
task_pattern = {{ image2image = 1, text2image = 2 }}
resolution = {size}
caption_dropout = 0.1
num_workers = 0
micro_batch_size = {batch}
grad_accumulation = 1
max_steps = {steps}
lr = {lr}
lr_schedule = "{schedule}"
betas = [0.9, 0.99]
weight_decay = 0.0
warmup_steps = {warmup}
max_grad_norm = 1.0
mixed_precision = "no"
output_dir = "{out}"
save_every = {save_every}
keep_last = 1
resume = "auto"
log_every = 10
validation_prompt = "a red circle on a blue background"
validation_every = {validation_every}
validation_num_steps = 20
train_dit = "full"
{vlm}
"""
# step 3: the VLM stays the seeded random base (the file need not carry its 151 936-token embedding)
IMAGES_RUN = {"vlm": "vlm_lora = false", "schedule": "cosine"}
# step 5: a VLM LoRA on Linear layers only (not the seeded embedding, nor the LM head tied to it); alpha/r = 4 lets
# the LoRA move faster than the DiT's constant lr would
WORD_ORDER_STEPS = 2000
WORD_ORDER_RUN = {
    "vlm": 'vlm_lora = true\nvlm_lora_targets = ["linear"]\nvlm_lora_rank = 16\nvlm_lora_alpha = 64\nvlm_lora_dropout = 0.0',
    "schedule": "constant",
}


def train_stage2(work: Path, name: str, base: Path, data: Path, args, run: dict, steps: int, lr: float) -> Path:
    """`deepgen train` (stage 2) of the release ``base`` on ``data``; returns the run's official-layout export."""
    config = work / f"demo_{name}.toml"
    config.write_text(
        TRAIN_CONFIG.format(
            base=base.as_posix(),
            seed=args.seed,
            data=data.as_posix(),
            size=args.size,
            batch=args.batch,
            steps=steps,
            lr=lr,
            schedule=run["schedule"],
            warmup=max(1, steps // 50) if run["schedule"] == "cosine" else 20,
            out=(work / name).as_posix(),
            save_every=max(50, steps // 10),
            validation_every=max(50, steps // 3),
            vlm=run["vlm"],
        ),  # fmt: skip
        encoding="utf-8",
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "deepgen", "train", "--config", str(config), "--cpu"], check=True, env=env)
    return work / name / "export" / "model.safetensors"


def export_demo(export: Path, base: Path, out: Path, args) -> Path:
    """A run's export (read with its base release, as a user would) written as one demo file."""
    from deepgen.loading import load_model

    trained = load_model(
        export,
        base / "Qwen2.5-VL-tiny",
        base / "UniPic2-tiny",
        dtype=torch.float32,
        allow_pretrain_checkpoint=True,  # step 3 trains no VLM LoRA: its VLM is the seeded base
        connector_config=json.loads((base / "connector_config.json").read_text()),
    )
    trained.vae = to_sd3_latent_factors(trained.vae)
    return write_demo_file(trained, out, embed_seed=args.seed, default_size=args.size)


def images_demo(work: Path, data: Path, args) -> Path:
    """Steps 2-4: the VAE, then the DiT, SCB and think tokens from random (the VLM as it is), as a demo file."""
    vae_dir = work / "vae"
    if (vae_dir / "config.json").is_file():
        from diffusers import AutoencoderKL

        log(f"2/5 VAE: reusing {vae_dir}")
        vae = to_sd3_latent_factors(AutoencoderKL.from_pretrained(str(vae_dir)))
    else:
        log("2/5 VAE")
        vae = train_vae(args.vae_steps, args.vae_size, args.seed, batch=8)
        vae.save_pretrained(vae_dir)

    log("3/5 release: the tiny architecture with the trained VAE, a seeded embedding and a random SCB/DiT")
    base = work / "base"
    model = tiny.build_tiny_model(args.seed)
    model.vae = vae
    model.transformer = demo_transformer(args.seed)
    set_seeded_embedding(model, args.seed)
    tiny.save_tiny_release(base, model=model)

    log("3/5 deepgen train (stage 2: the pictures)")
    export = train_stage2(work, "run", base, data, args, IMAGES_RUN, args.steps, args.lr)
    log("4/5 export: one demo file")
    return export_demo(export, base, work / "deepgen_demo_images.safetensors", args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="outputs/demo_model", help="working folder (data, VAE, release, runs)")
    p.add_argument("--size", type=int, default=64, help="training resolution (pixels a side)")
    p.add_argument("--vae-steps", type=int, default=1000)
    p.add_argument("--vae-size", type=int, default=64, help="VAE training pictures (pixels a side)")
    p.add_argument("--steps", type=int, default=10000, help="step 3's training steps (stage 2, the pictures)")
    p.add_argument("--word-order-steps", type=int, default=WORD_ORDER_STEPS, help="step 5's (stage 2, VLM LoRA)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--word-order-lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: small ops gain nothing from more)")
    p.add_argument("--from-demo", type=Path, help="a demo file of step 4: run step 5 alone from it")
    p.add_argument("--no-install", action="store_true", help="do not copy the result into deepgen/assets/demo/")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    log("1/5 data")
    data = W.write_dataset(work / "data", 2 * args.size, seed=args.seed)  # > 80 px: the trainer resizes
    images = args.from_demo.resolve() if args.from_demo else images_demo(work, data, args)

    from deepgen.loading import load_model
    from deepgen.pipeline import DeepGenPipeline

    log(f"5/5 word order: stage 2 again from {images}, with a VLM LoRA on its Linear layers")
    base = work / "base_word_order"
    tiny.save_tiny_release(base, model=load_model(images, dtype=torch.float32))
    export = train_stage2(
        work, "run_word_order", base, data, args, WORD_ORDER_RUN, args.word_order_steps, args.word_order_lr
    )
    out = export_demo(export, base, work / "deepgen_demo.safetensors", args)
    log(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) in {(time.time() - started) / 60:.1f} min")

    log("measure: the colour x shape grid, judged by deepgen.demo_world.read_picture")
    results = W.measure(DeepGenPipeline(load_model(out, dtype=torch.float32)))
    (work / "hit_rates.json").write_text(json.dumps(results, indent=2))
    print(W.table(results), flush=True)
    if not args.no_install:
        target = ROOT / "deepgen" / "assets" / "demo" / out.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, target)
        log(f"installed {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
