"""The DiT speed switches' drift against the plain run, on the official tiny fixture (deepgen.model.speed).

    python benchmarks/bench_switches.py [--steps 50] [--thresholds 0.05 0.1 0.2 0.3 0.5] [--inductor]

For the fixture's t2i and edit cases (its prompts, noise, reference; 64², CFG 4), each switch is compared with the
same run without it: the final latents' max |error| and the decoded images' PSNR, and for the step cache the steps
whose inner blocks were skipped. Compile runs with the aot_eager backend (dynamo + AOT autograd graph capture);
--inductor adds torch's default backend (minutes of compiling on a CPU). Timings are not measured here: at 64² on
the tiny model they say nothing about a GPU (benchmarks/bench_gpu.py measures the speed-ups).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _common import machine, table, write_results  # noqa: E402
from bench_fp8 import fixture_cases, psnr  # noqa: E402

NAME = "bench_switches"


def run(pipe, case: dict, steps: int, **kwargs):
    """(final latents, decoded image, skipped steps or None) of one case."""
    import torch

    with torch.no_grad():
        cond = pipe.encode(case["prompts"], references=case.get("refs"), **case.get("encode", {}))
        latents = pipe.sample(cond, case["height"], case["width"], num_steps=steps, latents=case["noise"], **kwargs)
        image = pipe.decode(latents)
    stats = pipe.last_step_cache
    return latents.float(), image.float(), None if stats is None else stats.skipped


def drift(out, base) -> dict:
    return {"latent_max_err": float((out[0] - base[0]).abs().max()), "image_psnr_db": psnr(out[1], base[1])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--inductor", action="store_true", help="also compile with inductor (slow on a CPU)")
    args = parser.parse_args(argv)
    import torch
    from official_fixture import load_official

    from deepgen.model import speed
    from deepgen.pipeline import DeepGenPipeline

    torch.set_num_threads(min(2, torch.get_num_threads()))
    cases = fixture_cases()
    pipe = DeepGenPipeline(load_official())
    dit = pipe.model.transformer
    base = {c: run(pipe, spec, args.steps) for c, spec in cases.items()}
    results: dict = {"machine": machine(), "steps": args.steps, "rows": []}

    def add(switch: str, outs: dict) -> None:
        for c, out in outs.items():
            results["rows"].append({"switch": switch, "case": c, "skipped": out[2], **drift(out, base[c])})

    for threshold in args.thresholds:
        add(f"step cache {threshold:g}", {c: run(pipe, s, args.steps, step_cache=threshold) for c, s in cases.items()})
    for backend in ("flash", "math"):
        dit.sdpa_backend = backend
        add(f"sdpa {backend}", {c: run(pipe, s, args.steps) for c, s in cases.items()})
    dit.sdpa_backend = "auto"
    for backend in ["aot_eager"] + (["inductor"] if args.inductor else []):
        compiled = DeepGenPipeline(load_official())
        speed.compile_blocks(compiled.model.transformer, backend=backend)
        add(f"compile {backend}", {c: run(compiled, s, args.steps) for c, s in cases.items()})

    rows = [
        [
            r["switch"],
            r["case"],
            "–" if r["skipped"] is None else f"{r['skipped']}/{args.steps}",
            f"{r['latent_max_err']:.3g}",
            f"{r['image_psnr_db']:.1f}",
        ]
        for r in results["rows"]
    ]
    print(table(["switch", "case", "steps skipped", "latent max |err|", "image PSNR dB"], rows, markdown=True))
    print(write_results(NAME, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
