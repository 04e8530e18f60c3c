"""MR-GRPO rollout throughput on the tiny model: the G images of a group in one batch vs one image at a time.

    python benchmarks/bench_rollout.py [--group-size 8] [--steps 10] [--sizes 32 128] [--reps 5] [--threads 1]

A rollout is what the stage-3 trainer does per group (deepgen.train.grpo.rollout.cps_rollout): one shared x_T,
``--steps`` CPS SDE steps with the conditional DiT velocity (no CFG, as officially), the old log-prob of every
transition, every state copied to CPU storage; then (second figure) the VAE decode of the G final latents.
"batched" runs the G images as one DiT batch per step (``rollout_micro_batch_size = G``), "one at a time" as
G batches of 1 (``rollout_micro_batch_size = 1``); the noise is keyed per image, so both give the same
trajectories (checked: max |Δ| is printed). The two are interleaved rep by rep after a warm-up rep of each;
the figure is the median over reps of the paired ratio (batched images/s) / (one-at-a-time images/s), printed
with its min–max over the reps (the JSON keeps every rep's ratio).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, spread, spread_cell, table, write_results  # noqa: E402

NAME = "bench_rollout"
PROMPT = "a red cube on a wooden table"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=8, help="G (official 8)")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps (official 50)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128], help="image sides in pixels")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from deepgen.images import to_pil
    from deepgen.pipeline import DeepGenPipeline
    from deepgen.tiny import build_tiny_model
    from deepgen.train.grpo.rollout import (
        cps_rollout,
        initial_group_noise,
        rollout_schedule,
    )

    model = build_tiny_model(0)
    pipe = DeepGenPipeline(model)
    G = args.group_size
    with torch.no_grad():
        cond = pipe.encode([PROMPT], guidance=False).repeat(G)
    sigmas, timesteps = rollout_schedule(pipe.make_scheduler(), args.steps)

    def one_run(size: int, mb: int, rep: int, decode: bool):
        x_T = initial_group_noise(1, G, (16, size // 8, size // 8), seed=0, tag=(rep,))
        t0 = time.perf_counter()
        traj = cps_rollout(
            model.velocity,
            x_T,
            cond.context,
            cond.pooled,
            sigmas=sigmas,
            timesteps=timesteps,
            seed=0,
            noise_tag=(rep,),
            micro_batch_size=mb,
        )
        t_roll = time.perf_counter() - t0
        if decode:
            with torch.no_grad():
                for s in range(0, G, mb):
                    to_pil(model.decode_latents(traj.final[s : s + mb]))
        return traj, t_roll, time.perf_counter() - t0

    rows, results = [], []
    for size in args.sizes:
        one_run(size, G, -1, True)  # warm-up
        one_run(size, 1, -1, True)
        ratios_roll, ratios_all, ips_b, ips_1, max_diff = [], [], [], [], 0.0
        for rep in range(args.reps):
            tb, rb, ab = one_run(size, G, rep, True)
            t1, r1, a1 = one_run(size, 1, rep, True)
            max_diff = max(max_diff, float((tb.latents - t1.latents).abs().max()))
            ratios_roll.append(r1 / rb)  # = (G/rb) / (G/r1): batched images/s over one-at-a-time images/s
            ratios_all.append(a1 / ab)
            ips_b.append(G / rb)
            ips_1.append(G / r1)
        res = {
            "size": size,
            "group_size": G,
            "steps": args.steps,
            "reps": args.reps,
            "batched_images_per_s": median(ips_b),
            "one_at_a_time_images_per_s": median(ips_1),
            "ratio_rollout": median(ratios_roll),
            "ratio_rollout_and_decode": median(ratios_all),
            "spread": {
                "batched_images_per_s": spread(ips_b),
                "one_at_a_time_images_per_s": spread(ips_1),
                "ratio_rollout": spread(ratios_roll),
                "ratio_rollout_and_decode": spread(ratios_all),
            },
            "per_rep": {"ratio_rollout": ratios_roll, "ratio_rollout_and_decode": ratios_all},
            "max_abs_latent_diff": max_diff,
        }
        results.append(res)
        rows.append(
            [
                f"{size}x{size}",
                G,
                args.steps,
                spread_cell(ips_b, 1),
                spread_cell(ips_1, 1),
                spread_cell(ratios_roll),
                spread_cell(ratios_all),
                f"{max_diff:.1e}",
            ]
        )
        print(f"size {size}: done", flush=True)
    print(
        table(
            [
                "image",
                "G",
                "steps",
                "batched img/s",
                "1-at-a-time img/s",
                "ratio rollout",
                "ratio + decode",
                "max |Δ latents|",
            ],
            rows,
        )
    )
    print("cells: median (min–max) over the reps")
    path = write_results(NAME, {"machine": machine(), "args": vars(args), "results": results})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
