"""VLM forwards when only the seed changes: encode once + sample per seed, against `pipe(...)` per seed.

    python benchmarks/bench_vlm_reuse.py [--seeds 5] [--steps 2] [--reps 10] [--threads 1]

The tiny random DeepGen (`deepgen.tiny.build_tiny_model`). A forward hook on the VLM's text tower
(`deepgen.model.vlm.text_tower(model.lmm)`) counts its forwards. Reuse: `pipe.encode` once, then `pipe.sample`
with seeds 0..N-1, which must add 0 forwards. Naive baseline: `pipe(prompt, seed=s, output_type="latent")` per
seed, which encodes every time (N forwards). Both give the same latents per seed (checked). Wall times (after
one uncounted warm-up call; the two paths interleaved seed by seed; the whole comparison repeated --reps times,
median (min–max), the ratio paired within a rep) are shown too, but at toy sizes they say little about the real
model, whose 3B VLM costs far more next to the DiT, and on a shared machine they are noisy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, spread, spread_cell, table, write_results  # noqa: E402

NAME = "bench_vlm_reuse"
PROMPT = "a lighthouse on a cliff at dusk"
SIZE = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10, help="times the whole comparison runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    args = parser.parse_args()

    import torch

    from deepgen.model.vlm import text_tower
    from deepgen.pipeline import DeepGenPipeline
    from deepgen.tiny import build_tiny_model

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = build_tiny_model()
    pipe = DeepGenPipeline(model)
    forwards = [0]
    text_tower(model.lmm).register_forward_hook(lambda module, inputs, output: forwards.__setitem__(0, forwards[0] + 1))
    seeds = range(args.seeds)
    sample_kwargs = {"height": SIZE, "width": SIZE, "num_steps": args.steps, "cfg_scale": 4.0}

    pipe(PROMPT, seed=99, output_type="latent", **sample_kwargs)  # warm-up, not counted
    forwards[0] = 0

    def run(fn, *args, **kwargs):
        """(result, seconds, VLM forwards) of one call."""
        before, start = forwards[0], time.perf_counter()
        result = fn(*args, **kwargs)
        return result, time.perf_counter() - start, forwards[0] - before

    def rep() -> dict:
        """Both paths over all seeds, interleaved per seed (reuse's sample, then the naive call) so that load
        from other users hits both alike."""
        cond, reuse_s, reuse_forwards = run(pipe.encode, [PROMPT])
        reused, naive, extra, naive_s, naive_forwards = [], [], 0, 0.0, 0
        for s in seeds:
            latents, seconds, count = run(pipe.sample, cond, seed=s, **sample_kwargs)
            reused.append(latents)
            reuse_s, extra = reuse_s + seconds, extra + count
            output, seconds, count = run(pipe, PROMPT, seed=s, output_type="latent", **sample_kwargs)
            naive.append(output.latents)
            naive_s, naive_forwards = naive_s + seconds, naive_forwards + count
        return {
            "reuse_vlm_forwards": reuse_forwards + extra,
            "reuse_extra_forwards_after_encode": extra,
            "naive_vlm_forwards": naive_forwards,
            "reuse_s": reuse_s,
            "naive_s": naive_s,
            "naive_x_reuse_time": naive_s / reuse_s,  # paired within the rep
            "same_latents": all(torch.equal(a, b) for a, b in zip(reused, naive)),
            "max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(reused, naive)),
        }

    reps = [rep() for _ in range(args.reps)]
    first, extra = reps[0], sum(r["reuse_extra_forwards_after_encode"] for r in reps)
    same, max_diff = all(r["same_latents"] for r in reps), max(r["max_abs_diff"] for r in reps)
    timed = ("reuse_s", "naive_s", "naive_x_reuse_time")
    results = {
        "seeds": args.seeds,
        "steps": args.steps,
        "size": SIZE,
        "reps": args.reps,
        "reuse_vlm_forwards": first["reuse_vlm_forwards"],
        "reuse_extra_forwards_after_encode": extra,
        "naive_vlm_forwards": first["naive_vlm_forwards"],
        "naive_x_reuse_forwards": first["naive_vlm_forwards"] / first["reuse_vlm_forwards"],
        "spread": {k: spread(r[k] for r in reps) for k in timed},
        "same_latents": same,
        "max_abs_diff": max_diff,
        "per_rep": reps,
    }
    print(
        f"\n{args.seeds} seeds, {args.steps} steps, {SIZE}x{SIZE}, CFG on (one VLM forward encodes [pos; neg]), "
        f"{args.reps} reps, {torch.get_num_threads()} threads; forwards per rep"
    )
    print(
        table(
            ["path", "VLM forwards", "extra after encode", "x reuse (forwards)", "wall s", "x reuse (wall)"],
            [
                [
                    "encode once + sample per seed",
                    first["reuse_vlm_forwards"],
                    extra,
                    "1.0",
                    spread_cell([r["reuse_s"] for r in reps]),
                    "1.00",
                ],
                [
                    "pipe(...) per seed",
                    first["naive_vlm_forwards"],
                    "-",
                    f"{results['naive_x_reuse_forwards']:.1f}",
                    spread_cell([r["naive_s"] for r in reps]),
                    spread_cell([r["naive_x_reuse_time"] for r in reps]),
                ],
            ],
        )
    )
    print("wall cells: median (min–max) over the reps, the ratio paired within a rep")
    print(f"same latents per seed: {same} (max |diff| {max_diff:.3g})")
    write_results(NAME, {"machine": machine(), "results": results, "wall_s": time.perf_counter() - t0})
    if extra != 0:
        sys.exit(f"FAIL: sampling with a new seed ran the VLM {extra} more times")


if __name__ == "__main__":
    main()
