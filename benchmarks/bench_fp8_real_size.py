"""fp8 weights at the real size: drift against bf16 of one random real-size model, built once.

    nice -n 5 python benchmarks/bench_fp8_real_size.py [--size real|medium|tiny] [--resolution 512] [--steps 2]

One process builds the model from the release's configs (`_real_size.model_spec`) with seeded random weights in
bf16 (never a second copy: no file, no clone), runs it, recasts the same modules in place with the library's own
`apply_fp8` (DiT and VLM text and vision towers in float8_e4m3fn), and runs it again on the same inputs:
- the VLM encode of one prompt with its co-batched negative: context and pooled vectors;
- the DiT alone at fixed noise levels on the bf16 conditioning: x_σ = (1 − σ)·x0 + σ·ε (x0, ε seeded), CFG batch;
- a short sampling run end to end (each precision's own encode; CFG, fixed noise) and its decoded image: the raw
  DiT output of every step, the final latents, the image's PSNR;
- the weight bytes per part, counted from the modules, before and after the recast;
- wall time per stage, peak RSS (VmHWM) and the peak of private memory.
Errors are fp8 against bf16: max |error|, max |bf16| and ‖error‖ / ‖bf16‖. The weights are random, so this checks
the fp8 path numerically at the real shapes; it says nothing about the quality of the released weights.
--size medium / tiny run the same code on smaller models (bench_fp8.py's medium spec; the tiny demo configs).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, positive, proc_status, table  # noqa: E402
from bench_fp8 import medium_spec, part_bytes, psnr  # noqa: E402
from bench_real_size import AnonPeak  # noqa: E402

NAME = "bench_fp8_real_size"
GB = 1e9
SIZES = ("real", "medium", "tiny")
PROMPT = "a lighthouse on a cliff at dusk, warm light, detailed oil painting"
MEMORY_MARGIN = 3e9  # activations (the VAE decode at 512² dominates), tokenizer, Python; measured at medium size


# ---- arguments ----------------------------------------------------------------------------------------------


def sigma(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a noise level must be in (0, 1], got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="real", help="real (default), or a smaller check")
    parser.add_argument("--resolution", type=positive(int), help="image side in pixels (512; tiny: 64)")
    parser.add_argument("--steps", type=positive(int), default=2, help="sampling steps (2)")
    parser.add_argument("--cfg", type=float, default=4.0, help="guidance scale, > 1 (4.0)")
    parser.add_argument("--sigmas", type=sigma, nargs="+", default=[1.0, 0.25], help="DiT-alone noise levels (1 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="weights, noise and x0 seed (0)")
    parser.add_argument("--threads", type=positive(int), default=2, help="torch threads (2)")
    parser.add_argument("--json", type=Path, help="results file (default benchmarks/results/NAME[_SIZE].json)")
    parser.add_argument("--skip-memory-check", action="store_true", help="run even if MemAvailable looks short")
    args = parser.parse_args(argv)
    args.resolution = args.resolution or (64 if args.size == "tiny" else 512)
    if args.resolution % 16:
        parser.error(f"--resolution must be a multiple of 16, got {args.resolution}")
    if not args.cfg > 1.0:
        parser.error(f"--cfg must be > 1 (the measured DiT batch is the CFG pair), got {args.cfg}")
    suffix = "" if args.size == "real" else f"_{args.size}"
    args.json = args.json or RESULTS / f"{NAME}{suffix}.json"
    return args


# ---- model and memory -------------------------------------------------------------------------------------------


def spec_for(size: str) -> dict:
    from _real_size import model_spec

    return medium_spec() if size == "medium" else model_spec(size == "tiny")


def bf16_bytes_needed(spec: dict) -> int:
    """The bf16 weights of `spec`, counted on the meta device (nothing allocated)."""
    import torch
    from _real_size import skeleton

    return sum(part_bytes(skeleton(spec, include_buffers=True).to(torch.bfloat16)).values())


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def build(spec: dict, seed: int):
    import torch
    from _real_size import random_model

    model = random_model(spec, "cpu", torch.bfloat16, seed)
    pos = model.transformer.pos_embed
    pos.pos_embed = pos.pos_embed.to(torch.bfloat16)  # the position table, as the bf16 loader has it
    return model


def release_freed_memory() -> None:
    """Give the freed bf16 weights' heap pages back to the OS (glibc keeps them otherwise), so the fp8 run's RSS
    is its own."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS just stays higher
        pass


# ---- one precision's outputs ------------------------------------------------------------------------------------


def run_outputs(pipe, args, inputs: dict, stage, fixed_cond=None) -> dict:
    """Encode, the DiT alone at args.sigmas (on `fixed_cond`, default this run's own encode), sample, decode."""
    import torch

    out: dict = {}
    with torch.no_grad():
        with stage("encode"):
            cond = pipe.encode([PROMPT])
        out["context"] = torch.cat([cond.negative_context, cond.context]).float()
        out["pooled"] = torch.cat([cond.negative_pooled, cond.pooled]).float()
        context, pooled = fixed_cond or (out["context"], out["pooled"])
        out["velocity"] = {}
        with stage("dit_velocity"):
            for s in args.sigmas:
                x = (1 - s) * inputs["x0"] + s * inputs["noise"]
                v = pipe.model.velocity(torch.cat([x, x]), torch.full((2,), s * 1000.0), context, pooled)
                out["velocity"][f"{s:g}"] = v.float()
        steps: list = []

        def on_step(step) -> None:
            steps.append(torch.cat([step.velocity_uncond, step.velocity_cond]).float())

        with stage("sample"):
            latents = pipe.sample(
                cond, args.resolution, args.resolution, num_steps=args.steps, cfg_scale=args.cfg,
                latents=inputs["noise"], on_step=on_step,
            )  # fmt: skip
        out["steps"], out["latents"] = steps, latents.float()
        with stage("decode"):
            out["image"] = pipe.decode(latents).float()
    if not torch.isfinite(out["image"]).all():
        raise RuntimeError("the decoded image is not finite")
    return out


def errors(fp8, bf16) -> dict:
    diff = fp8 - bf16
    return {
        "max_abs_err": float(diff.abs().max()),
        "max_abs_ref": float(bf16.abs().max()),
        "rel_l2": float(diff.norm() / bf16.norm()),
    }


def drift(fp8: dict, bf16: dict) -> dict:
    return {
        "encode": {k: errors(fp8[k], bf16[k]) for k in ("context", "pooled")},
        "dit_velocity": {s: errors(fp8["velocity"][s], v) for s, v in bf16["velocity"].items()},
        "sample_steps": [errors(a, b) for a, b in zip(fp8["steps"], bf16["steps"])],
        "latents": errors(fp8["latents"], bf16["latents"]),
        "image_psnr_db": psnr(fp8["image"], bf16["image"]),
    }


# ---- the run --------------------------------------------------------------------------------------------------


class Stages:
    """Wall time per stage, and the RSS at its end (VmHWM is the peak since the start of the process)."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.rss: dict[str, int] = {}
        self.prefix = ""

    def __call__(self, name: str):
        @contextlib.contextmanager
        def timed():
            key = self.prefix + name
            start = time.perf_counter()
            yield
            self.times[key] = time.perf_counter() - start
            self.rss[key] = proc_status()["VmRSS"]
            print(f"[{time.strftime('%H:%M:%S')}] {key}: {self.times[key]:.1f} s, RSS {self.rss[key] / GB:.2f} GB")

        return timed()


def measure(args, spec: dict) -> dict:
    import torch

    from deepgen.loading.fp8 import apply_fp8
    from deepgen.pipeline import DeepGenPipeline

    anon, stage, start = AnonPeak(), Stages(), time.perf_counter()
    with stage("build"):
        model = build(spec, args.seed)
    pipe = DeepGenPipeline(model)
    latent = (model.transformer.config.in_channels, args.resolution // 8, args.resolution // 8)
    generator = torch.Generator().manual_seed(args.seed)
    inputs = {"noise": torch.randn(1, *latent, generator=generator), "x0": torch.randn(1, *latent, generator=generator)}
    result: dict = {"params": {}, "bytes": {"bf16": part_bytes(model)}}
    for name, t in model.named_parameters():
        part = name.split(".")[0]
        result["params"][part] = result["params"].get(part, 0) + t.numel()

    stage.prefix = "bf16 "
    bf16 = run_outputs(pipe, args, inputs, stage)
    stage.prefix = ""
    with stage("fp8 recast"):  # the same modules, cast layer by layer: no second copy of the model
        apply_fp8(model, torch.bfloat16)
        release_freed_memory()
    result["bytes"]["fp8"] = part_bytes(model)
    stage.prefix = "fp8 "
    fp8 = run_outputs(pipe, args, inputs, stage, fixed_cond=(bf16["context"], bf16["pooled"]))

    result["drift"] = drift(fp8, bf16)
    result["times_s"] = {**stage.times, "total": time.perf_counter() - start}
    end = proc_status()
    result["memory"] = {
        "peak_rss": end["VmHWM"],
        "private_peak": anon.stop(),
        "rss_after": stage.rss,
        "weights_bf16": sum(result["bytes"]["bf16"].values()),
        "weights_fp8": sum(result["bytes"]["fp8"].values()),
    }
    return result


def report(r: dict) -> None:
    b16, f8 = r["bytes"]["bf16"], r["bytes"]["fp8"]
    rows = [[p, f"{b16[p] / GB:.2f}", f"{f8[p] / GB:.2f}"] for p in b16]
    rows.append(["total", f"{sum(b16.values()) / GB:.2f}", f"{sum(f8.values()) / GB:.2f}"])
    print(table(["part", "bf16 GB", "fp8 GB"], rows, markdown=True))
    d = r["drift"]
    rows = [[f"encode {k}", m] for k, m in d["encode"].items()]
    rows += [[f"DiT alone σ={s}", m] for s, m in d["dit_velocity"].items()]
    rows += [[f"sampling step {i + 1}, DiT output", m] for i, m in enumerate(d["sample_steps"])]
    rows.append(["final latents", d["latents"]])
    cells = [[w, f"{m['max_abs_err']:.4g}", f"{m['max_abs_ref']:.3g}", f"{m['rel_l2']:.4g}"] for w, m in rows]
    print(table(["fp8 vs bf16", "max |err|", "max |bf16|", "‖err‖/‖bf16‖"], cells, markdown=True))
    mem = r["memory"]
    first, args = d["sample_steps"][0], r["args"]
    label = f"{args['size']} random, {args['resolution']}², {args['steps']} steps"
    print(
        f"README.md drift row: | {label} | fp8 vs bf16 | {first['max_abs_err']:.3g} / {first['max_abs_ref']:.2g} | ",
        end="",
    )
    print(f"{d['image_psnr_db']:.1f} dB | – | – |")
    print(
        f"image PSNR {d['image_psnr_db']:.1f} dB; peak RSS {mem['peak_rss'] / GB:.2f} GB "
        f"(private {mem['private_peak'] / GB:.2f}); total {r['times_s']['total']:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    spec = spec_for(args.size)
    need, free = bf16_bytes_needed(spec) + MEMORY_MARGIN, mem_available()
    if need > free and not args.skip_memory_check:
        print(
            f"needs about {need / GB:.1f} GB of memory, only {free / GB:.1f} GB is available: stop other jobs, "
            "or try --size medium (or --skip-memory-check)",
            file=sys.stderr,
        )
        return 2
    results = {"machine": machine(), "args": {**vars(args), "json": str(args.json)}, **measure(args, spec)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")  # first: a long run's numbers are never lost
    report(results)
    print(args.json)
    if not all(math.isfinite(m["max_abs_err"]) for m in results["drift"]["sample_steps"]):
        print("non-finite drift: the fp8 run overflowed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
