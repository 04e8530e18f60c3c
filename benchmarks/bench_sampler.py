"""Overhead of the sampler loop: `DeepGenPipeline.sample` per step / a bare DiT forward on the same inputs.

    python benchmarks/bench_sampler.py [--steps 4] [--reps 5] [--budget-s 120] [--size 512] [--threads 1]

A random DeepGen with the tiny VLM/VAE and a DiT big enough for its forwards to dominate timing noise (hidden
256 = 4 heads x 64, 4 layers, 64x64 latents at 512x512). The sampler runs with CFG on (batch [neg; pos]) and a
step callback; the baseline calls `model.transformer(...)` directly with the same batched inputs, the same
number of times. The two are interleaved step by step: the sampler's callback runs (and times) one bare forward
after every sampler step, and the time spent in it is left out of the sampler's. One warm-up run, then `--reps`
runs. Reported, each as median (min–max): the sampler time / the bare time summed over one run's steps (paired
within a run, one value per run), and the per-step ratios.
The ratio (sampler / bare) is the cost of everything else in the loop: scheduler, CFG mix, dtype casts, callback.
On a shared 2-core machine that ratio is only good to a few per cent, so the loop is also timed alone, with the
DiT swapped for a stub that returns a ready velocity: that gives the overhead in ms per step directly (20 runs,
median (min–max); "x bare" divides each by the median bare step).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_model, machine, median, repeat_within, spread, spread_cell, table, write_results  # noqa: E402

NAME = "bench_sampler"
DIT = {
    "num_layers": 4,
    "attention_head_dim": 64,
    "num_attention_heads": 4,
    "joint_attention_dim": 256,
    "caption_projection_dim": 256,
    "pooled_projection_dim": 128,
    "sample_size": 64,
    "pos_embed_max_size": 64,
    "dual_attention_layers": [0, 1],
}
PROMPT = "a red cube on a wooden table"
STUB_RUNS = 20


def run_ratios(runs: list[list[tuple[float, float]]]) -> list[float]:
    """Per run: its sampler seconds over its bare seconds, each summed over the run's steps. Paired within a run,
    so a change in the machine's load between runs moves both sides."""
    return [sum(s for s, _ in run) / sum(b for _, b in run) for run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--budget-s",
        type=float,
        default=120,
        help="run fewer reps when the shared machine is slow, to end within about this (s)",
    )
    parser.add_argument("--size", type=int, default=512, help="output pixels (latents are size/8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    args = parser.parse_args()

    import torch
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    from deepgen.pipeline import DeepGenPipeline, initial_noise

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = build_model(transformer=DIT)
    pipe = DeepGenPipeline(model)
    cond = pipe.encode([PROMPT])  # guidance on: negative row co-batched
    size, steps = args.size, args.steps

    # The sampler's own inputs: [neg; pos] context, the seed-0 noise doubled, its timesteps.
    scheduler = pipe.make_scheduler()
    scheduler.set_timesteps(steps)
    noise = initial_noise([0], (model.transformer.config.in_channels, size // 8, size // 8))
    model_in = torch.cat([noise, noise])
    context = torch.cat([cond.negative_context, cond.context])
    pooled = torch.cat([cond.negative_pooled, cond.pooled])
    timesteps = scheduler.timesteps

    @torch.no_grad()
    def bare_step(t) -> float:
        start = time.perf_counter()
        model.transformer(model_in, encoder_hidden_states=context, pooled_projections=pooled, timestep=t.expand(2))
        return time.perf_counter() - start

    def paired_run() -> list[tuple[float, float]]:
        """One sampler run; after each of its steps (in its callback) one bare forward, timed apart.
        Returns (sampler step s, bare forward s) per step; step 0 also carries the sampler's setup."""
        clock, pairs = {"mark": 0.0}, []

        def callback(i, total, x):
            sampler_step = time.perf_counter() - clock["mark"]
            pairs.append((sampler_step, bare_step(timesteps[i])))
            clock["mark"] = time.perf_counter()

        clock["mark"] = time.perf_counter()
        pipe.sample(cond, size, size, num_steps=steps, cfg_scale=4.0, seed=0, callback=callback)
        tail = time.perf_counter() - clock["mark"]  # after the last callback: returning x
        pairs[-1] = (pairs[-1][0] + tail, pairs[-1][1])
        return pairs

    paired_run()  # warm-up
    runs = repeat_within(paired_run, args.reps, args.budget_s, started=t0)
    pairs = [pair for run in runs for pair in run]

    # The loop alone: the DiT replaced by a stub returning a precomputed velocity of the right shape.
    velocity = torch.randn_like(model_in)
    model.transformer.forward = lambda *a, **k: Transformer2DModelOutput(sample=velocity)
    stub_s = []
    for _ in range(STUB_RUNS):
        start = time.perf_counter()
        pipe.sample(cond, size, size, num_steps=steps, cfg_scale=4.0, seed=0, callback=lambda i, total, x: None)
        stub_s.append((time.perf_counter() - start) / steps)
    del model.transformer.forward

    sampler_s, bare_s = [p[0] for p in pairs], [p[1] for p in pairs]
    per_run, per_step = run_ratios(runs), [s / b for s, b in pairs]
    stub_ms = [s * 1e3 for s in stub_s]
    stub_x_bare = [1 + s / median(bare_s) for s in stub_s]
    values = {
        "sampler_s_per_step": sampler_s,
        "bare_dit_s_per_step": bare_s,
        "sampler_x_bare_per_run": per_run,
        "sampler_x_bare_per_step": per_step,
        "loop_only_ms_per_step": stub_ms,
        "loop_only_x_bare": stub_x_bare,
    }
    results = {
        "spread": {k: spread(v) for k, v in values.items()},
        "values": values,
        "pairs": pairs,
        "setup": {
            "dit": DIT,
            "size": size,
            "latent": size // 8,
            "steps": steps,
            "runs": len(runs),
            "cfg_scale": 4.0,
            "batch": 2,
            "dit_params_m": sum(p.numel() for p in model.transformer.parameters()) / 1e6,
        },
    }
    print(
        f"\nCFG on (DiT batch 2), {size}x{size} ({size // 8}x{size // 8} latents), {steps} steps, "
        f"{len(runs)} runs, each step paired with a bare forward ({len(pairs)} pairs), "
        f"{torch.get_num_threads()} threads"
    )
    print(
        table(
            ["loop", "s / step", "x bare (per run)", "x bare (per step)"],
            [
                [
                    "DeepGenPipeline.sample",
                    spread_cell(sampler_s, 3),
                    spread_cell(per_run, 3),
                    spread_cell(per_step, 3),
                ],
                ["bare transformer(...)", spread_cell(bare_s, 3), "1.000", "1.000"],
            ],
        )
    )
    print(
        f"the loop alone (stub DiT, {STUB_RUNS} runs): {spread_cell(stub_ms)} ms / step, "
        f"i.e. x{spread_cell(stub_x_bare, 4)} of the median bare step"
    )
    print("cells: median (min–max)")
    write_results(NAME, {"machine": machine(), "results": results, "wall_s": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
