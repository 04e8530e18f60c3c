"""Loading a ≥ 300 MB random checkpoint through the real loader: peak memory and time, as ratios.

    python benchmarks/bench_loading.py [--dtype float32|bfloat16] [--reps 5] [--budget-s 150] [--rebuild] [--threads 1]

The release is the official layout (Qwen2.5-VL folder, UniPic2 folder, model.safetensors) at the tiny VLM/VAE
sizes with a scaled-up DiT and connector, so that model.safetensors is 434 MB (float32), ~99 % DiT +
connector. It is built once into benchmarks/.cache/ and reused. If `deepgen.loading.convert` is present, the
`deepgen convert` single file (stored in the load dtype) is measured too.

Every measurement is a fresh `python` process:
- memory: peak RSS (VmHWM) of a process that imports the loader and loads the model, minus the peak RSS
  of a sibling that only imports the same modules; reported / the checkpoint file's size and / all weight bytes
  the loader reads (checkpoint + VLM + VAE safetensors). Memory-mapped weights are resident only once read, so
  the RSS after reading every weight is reported too, split into private (anonymous) and file-backed pages.
- time: `load_model(...)` wall time (imports excluded) / the time a fresh process takes to `open().read()` the
  same weight files. The page cache is warmed by one read first, then raw read and load alternate `--reps`
  times; the ratio pairs each load with the raw read just before it.
Every figure is the median (min–max) over the alternations; the JSON keeps every alternation's values.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, RESULTS, ROOT, machine, proc_status, repeat_within, spread, spread_cell, table, write_results  # noqa: E402

NAME = "bench_loading"
# Real SD3.5-M: 24 heads x 64, 24 layers, joint 4096, pooled 2048. Scaled to 12 heads x 64, 4 layers.
DIT = {
    "num_layers": 4,
    "attention_head_dim": 64,
    "num_attention_heads": 12,
    "joint_attention_dim": 1024,
    "caption_projection_dim": 768,
    "pooled_projection_dim": 768,
    "dual_attention_layers": [0, 1],
}
# Real SCB connector: 6 layers, width 2048, 32 heads, MLP 11946. Scaled to width 512, 8 heads.
CONNECTOR = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 8}
LORA_RANK = 8
SPEC = {"dit": DIT, "connector": CONNECTOR, "lora_rank": LORA_RANK, "seed": 0, "version": 1}
MB = 1e6


# ---- the scaled release (built once) ------------------------------------------------------------------


def release_dir() -> Path:
    digest = hashlib.sha1(json.dumps(SPEC, sort_keys=True).encode()).hexdigest()[:10]
    return CACHE / f"loading-{digest}"


def ensure_release(rebuild: bool) -> dict[str, Path]:
    folder = release_dir()
    paths = {"checkpoint": folder / "model.safetensors", "vlm": folder / "Qwen2.5-VL", "diffusion": folder / "UniPic2"}
    if rebuild or not (folder / "done").is_file():
        import shutil

        from _common import build_model, save_official_release

        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        print(f"building the scaled release in {folder} ...", flush=True)
        save_official_release(build_model(DIT, CONNECTOR), folder, LORA_RANK)
        (folder / "done").write_text(json.dumps(SPEC))
    return paths


def ensure_converted(paths: dict[str, Path], dtype: str, rebuild: bool) -> Path | None:
    """The `deepgen convert` file in `dtype`, or None while deepgen.loading.convert does not exist."""
    output = release_dir() / f"converted-{dtype}.safetensors"
    if output.is_file() and not rebuild:
        return output
    try:
        import torch

        from deepgen.loading.convert import convert_checkpoint
    except ImportError:
        return None
    print(f"converting to {output.name} ...", flush=True)
    convert_checkpoint(
        paths["checkpoint"],
        output,
        paths["vlm"],
        paths["diffusion"],
        dtype=getattr(torch, dtype),
        connector_config={"num_attention_heads": CONNECTOR["num_attention_heads"]},
    )
    return output


# ---- child processes -----------------------------------------------------------------------------------


def child(mode: str, layout: str, dtype: str, target: str) -> None:
    """Runs in the fresh process; prints one JSON line."""
    import torch

    from deepgen.loading import load_model  # the import-only sibling stops here

    out = {"after_imports": proc_status()}
    if mode == "load":
        paths = json.loads(target)
        start = time.perf_counter()
        if layout == "official":
            model = load_model(
                paths["checkpoint"],
                paths["vlm"],
                paths["diffusion"],
                dtype=getattr(torch, dtype),
                connector_config={"num_attention_heads": CONNECTOR["num_attention_heads"]},
            )
        else:
            model = load_model(paths["single"], dtype=getattr(torch, dtype))
        out["load_s"] = time.perf_counter() - start
        out["after_load"] = proc_status()  # VmHWM here is the load's peak
        # Memory-mapped weights are resident only once read: read every one, as a first generation would.
        with torch.no_grad():
            tensors = list(model.parameters()) + list(model.buffers())
            unique = {t.data_ptr(): t.numel() * t.element_size() for t in tensors}  # tied weights once
            out["params_bytes"] = sum(unique.values())
            for t in tensors:
                t.sum()
        out["after_touch"] = proc_status()
    print(json.dumps(out))


RAW_READ = """
import sys, time
start = time.perf_counter()
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        data = f.read()
    del data
print(time.perf_counter() - start)
"""


def run_child(*args: str) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def raw_read(files: list[Path]) -> float:
    cmd = [sys.executable, "-c", RAW_READ, *map(str, files)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


# ---- main ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--budget-s",
        type=float,
        default=150,
        help="do fewer reps when the shared machine is slow, to end within about this (s)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (1)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached release and converted file")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "LAYOUT", "DTYPE", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for every child process
    paths = ensure_release(args.rebuild)
    converted = ensure_converted(paths, args.dtype, args.rebuild)
    t0 = time.perf_counter()  # the budget is for measuring, not for the one-time build
    weight_files = [
        paths["checkpoint"],
        *sorted(paths["vlm"].glob("*.safetensors")),
        *sorted((paths["diffusion"] / "vae").glob("*.safetensors")),
    ]
    cases = {
        "official": {
            "files": weight_files,
            "target": {k: str(v) for k, v in paths.items()},
            "checkpoint": paths["checkpoint"],
        }
    }
    if converted is not None:
        cases["single"] = {"files": [converted], "target": {"single": str(converted)}, "checkpoint": converted}

    baseline = run_child("imports", "-", args.dtype, "-")
    for case in cases.values():  # warm the page cache
        raw_read(case["files"])

    def alternation() -> dict:
        rep = {}
        for name, case in cases.items():
            raw = raw_read(case["files"])
            rep[name] = {"raw_s": raw, **run_child("load", name, args.dtype, json.dumps(case["target"]))}
        return rep

    reps = repeat_within(alternation, args.reps, args.budget_s, started=t0)
    samples = {name: [rep[name] for rep in reps] for name in cases}

    results, rows = {}, []
    for name, case in cases.items():
        runs = samples[name]
        ckpt_bytes = case["checkpoint"].stat().st_size
        weight_bytes = sum(f.stat().st_size for f in case["files"])
        peak = [r["after_load"]["VmHWM"] - baseline["after_imports"]["VmHWM"] for r in runs]
        touched = [r["after_touch"]["VmRSS"] - r["after_imports"]["VmRSS"] for r in runs]
        values = {  # one value per alternation; load/raw pairs the load with the raw read just before it
            "peak_rss_delta_mb": [p / MB for p in peak],
            "peak_rss_x_checkpoint": [p / ckpt_bytes for p in peak],
            "peak_rss_x_weight_files": [p / weight_bytes for p in peak],
            "touched_rss_delta_mb": [t / MB for t in touched],
            "touched_rss_x_weight_files": [t / weight_bytes for t in touched],
            "touched_private_mb": [(r["after_touch"]["RssAnon"] - r["after_imports"]["RssAnon"]) / MB for r in runs],
            "load_s": [r["load_s"] for r in runs],
            "raw_read_s": [r["raw_s"] for r in runs],
            "load_x_raw_read": [r["load_s"] / r["raw_s"] for r in runs],
        }
        results[name] = {
            "checkpoint_mb": ckpt_bytes / MB,
            "weight_files_mb": weight_bytes / MB,
            "model_tensors_mb": runs[0]["params_bytes"] / MB,
            "spread": {k: spread(v) for k, v in values.items()},
            "values": values,
            "baseline": baseline["after_imports"],
            "runs": runs,
        }
        cells = [
            ("peak_rss_delta_mb", 0),
            ("peak_rss_x_checkpoint", 2),
            ("peak_rss_x_weight_files", 2),
            ("touched_rss_x_weight_files", 2),
            ("touched_private_mb", 0),
            ("load_s", 2),
            ("raw_read_s", 3),
            ("load_x_raw_read", 1),
        ]
        rows.append(
            [name, f"{ckpt_bytes / MB:.0f}", f"{weight_bytes / MB:.0f}"]
            + [spread_cell(values[key], digits) for key, digits in cells]
        )

    print(f"\nload dtype {args.dtype}, {len(reps)} alternating reps, a fresh process each; median (min–max)")
    print(
        table(
            [
                "layout",
                "ckpt MB",
                "weights MB",
                "peak dRSS MB",
                "peak/ckpt",
                "peak/weights",
                "touched/weights",
                "private MB",
                "load s",
                "raw read s",
                "load/raw",
            ],
            rows,
        )
    )
    print(
        "peak: the load's peak RSS over an import-only sibling; touched: RSS once every weight has been read "
        "(private MB: the part that is not memory-mapped file pages)"
    )
    if converted is None:
        print("TODO: deepgen.loading.convert not found; the single-file layout was not measured")

    previous = RESULTS / f"{NAME}.json"
    data = json.loads(previous.read_text()) if previous.is_file() else {}
    data.setdefault("by_dtype", {})[args.dtype] = {
        "machine": machine(),
        "reps": len(reps),
        "threads_per_process": args.threads,
        "results": results,
        "wall_s": time.perf_counter() - t0,
    }
    data["spec"] = SPEC
    print(f"wrote {write_results(NAME, data)} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
