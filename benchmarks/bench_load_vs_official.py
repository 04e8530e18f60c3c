"""Loading the official-layout tiny fixture: our `load_model` against the official DeepGen code, side by side.

    python benchmarks/bench_load_vs_official.py --official-src DIR --official-python PY [--reps 5] [--threads 1]
        [--checkpoint model.pt|model.safetensors]

The files are the shipped fixture tests/fixtures/deepgen-official-tiny (Qwen2.5-VL-tiny/, UniPic2-tiny/,
model.pt), which the official code wrote. Each load is a fresh process; the two alternate (ours first in even
reps, the official code first in odd ones), after one untimed warm-up process each that fills the page cache.
- ours: `deepgen.loading.load_model(checkpoint, Qwen2.5-VL-tiny, UniPic2-tiny, dtype=float32)`, in this Python.
- official: deepgenteam/deepgen (commit e6cb0c2, not part of this repository: pass its checkout as --official-src
  and an interpreter with its pins as --official-python, see benchmarks/README.md). `Config.fromfile` of
  configs/models/deepgen_scb.py with the model, tokenizer, DiT, VAE and scheduler paths pointed at the fixture's
  folders, float32, SDPA, and the fixture's sizes (num_queries, connector, LoRA rank/alpha, from its
  reference.json); then what its inference entry point does: `BUILDER.build(config.model)`,
  `guess_load_checkpoint(model.pt)`, `load_state_dict(strict=False)`, `.eval()` (no `.cuda().bfloat16()`).
Imports, `Config.fromfile` included, come before the clock and are reported apart. The load's peak is VmHWM at
its end minus VmRSS after the imports. --checkpoint picks our file; the official code reads model.pt only.
Ratios are ours/official within each rep (a pair ran back to back), then their median and range.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, median, positive, proc_status, table, write_results  # noqa: E402

NAME = "bench_load_vs_official"
FIXTURE = ROOT / "tests" / "fixtures" / "deepgen-official-tiny"
OFFICIAL_MODEL = "src/models/sd3_kontext/qwen2_5_vl_sd3_hf_dynamic_fusion.py"
OFFICIAL_CONFIG = "configs/models/deepgen_scb.py"
SIDES = ("ours", "official")
MB = 1e6


# ---- arguments ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-src", type=Path, help="checkout of deepgenteam/deepgen at e6cb0c2 (required)")
    parser.add_argument("--official-python", type=Path, help="Python with the official pins (required)")
    parser.add_argument("--reps", type=positive(int), default=5, help="load pairs (5)")
    parser.add_argument("--threads", type=positive(int), default=1, help="torch threads in every load (1)")
    parser.add_argument("--checkpoint", choices=("model.pt", "model.safetensors"), default="model.pt")
    parser.add_argument("--fixture", type=Path, default=FIXTURE, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    if args.official_src is None or args.official_python is None:
        parser.error(
            "the official side needs --official-src (a deepgenteam/deepgen checkout at e6cb0c2) and "
            "--official-python (an interpreter with its pins); this repository ships neither"
        )
    for name in (OFFICIAL_MODEL, OFFICIAL_CONFIG):
        if not (args.official_src / name).is_file():
            parser.error(f"--official-src {args.official_src} has no {name}: not a deepgenteam/deepgen checkout")
    if not os.access(args.official_python, os.X_OK) or args.official_python.is_dir():
        parser.error(f"--official-python {args.official_python} is not an executable file")
    return args


# ---- children (each in a fresh process) --------------------------------------------------------------------


def versions() -> dict[str, str]:
    import diffusers
    import peft
    import torch
    import transformers

    return {m.__name__: m.__version__ for m in (torch, transformers, diffusers, peft)}


def child_ours(args) -> dict:
    start = time.perf_counter()
    import peft.tuners.lora  # noqa: F401  (load_model imports it lazily; the official code at import)
    import torch

    from deepgen.loading import load_model

    torch.set_num_threads(args.threads)
    heads = json.loads((args.fixture / "reference.json").read_text())["model"]["connector"]["num_attention_heads"]
    import_s, before = time.perf_counter() - start, proc_status()
    start = time.perf_counter()
    model = load_model(
        args.fixture / args.checkpoint,
        args.fixture / "Qwen2.5-VL-tiny",
        args.fixture / "UniPic2-tiny",
        dtype=torch.float32,
        connector_config={"num_attention_heads": heads},
    )
    load_s = time.perf_counter() - start
    return measured(import_s, load_s, before, model)


def child_official(args) -> dict:
    start = time.perf_counter()
    sys.path.insert(0, str(args.official_src))
    import torch
    from mmengine.config import Config
    from xtuner.model.utils import guess_load_checkpoint
    from xtuner.registry import BUILDER

    torch.set_num_threads(args.threads)
    config = Config.fromfile(str(args.official_src / OFFICIAL_CONFIG))  # imports the model module
    model_cfg = official_model_config(config.model, args.fixture, torch.float32)
    import_s, before = time.perf_counter() - start, proc_status()
    start = time.perf_counter()
    model = BUILDER.build(model_cfg)
    state = guess_load_checkpoint(str(args.fixture / "model.pt"))
    info = model.load_state_dict(state, strict=False)
    model.eval()
    load_s = time.perf_counter() - start
    # strict=False hides mistakes: every checkpoint key must land, and only the folders' weights be "missing"
    unplaced = list(info.unexpected_keys) + [k for k in info.missing_keys if not k.startswith(("lmm.", "vae."))]
    if unplaced or any("lora" in k for k in info.missing_keys):
        raise RuntimeError(f"the official load left checkpoint keys unplaced: {unplaced[:10]}")
    return measured(import_s, load_s, before, model)


def official_model_config(model_cfg, fixture: Path, dtype):
    """configs/models/deepgen_scb.py's model dict pointed at the fixture: its folders (the config names
    model_zoo/ paths), float32 and SDPA (the release uses bf16 and flash-attention 2, which need a GPU), and the
    fixture's sizes as reference.json records them."""
    fixture_model = json.loads((fixture / "reference.json").read_text())["model"]
    vlm, diffusion = str(fixture / "Qwen2.5-VL-tiny"), str(fixture / "UniPic2-tiny")
    model_cfg.lmm.update(pretrained_model_name_or_path=vlm, torch_dtype=dtype, attn_implementation="sdpa")
    model_cfg.tokenizer.update(pretrained_model_name_or_path=vlm)
    for part in ("transformer", "vae", "test_scheduler", "train_scheduler"):
        model_cfg[part].update(pretrained_model_name_or_path=diffusion)
    model_cfg.transformer.update(torch_dtype=dtype)
    model_cfg.vae.update(torch_dtype=dtype)
    model_cfg.connector.update(**fixture_model["connector"], _attn_implementation="sdpa")
    lora = fixture_model["lora"]
    model_cfg.update(num_queries=fixture_model["num_queries"], lora_rank=lora["rank"], lora_alpha=lora["alpha"])
    return model_cfg


def measured(import_s: float, load_s: float, before: dict, model) -> dict:
    after = proc_status()
    unique = {t.data_ptr(): t.numel() for t in [*model.parameters(), *model.buffers()]}  # tied weights once
    return {
        "import_s": import_s,
        "load_s": load_s,
        "rss_after_imports": before["VmRSS"],
        "peak_delta": after["VmHWM"] - before["VmRSS"],
        "numel": sum(unique.values()),
        "versions": versions(),
    }


def run_child(side: str, args) -> dict:
    python = sys.executable if side == "ours" else str(args.official_python)
    cmd = [python, __file__, "--child", side, "--threads", str(args.threads), "--checkpoint", args.checkpoint]
    cmd += ["--fixture", str(args.fixture)]
    if side == "official":
        cmd += ["--official-src", str(args.official_src)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # each side imports only what its own interpreter (and this checkout) provides
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # the official code prints its own lines before


# ---- report ------------------------------------------------------------------------------------------------


def spread(values, scale: float = 1.0, digits: int = 2) -> str:
    values = [v / scale for v in values]
    return f"{median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def report(runs: dict[str, list[dict]]) -> str:
    rows = []
    for side in SIDES:
        r = runs[side]
        rows.append(
            [
                side,
                spread([x["import_s"] for x in r]),
                spread([x["load_s"] for x in r]),
                spread([x["peak_delta"] for x in r], MB, 0),
                round(median(x["rss_after_imports"] for x in r) / MB),
            ]
        )
    pairs = list(zip(runs["ours"], runs["official"]))
    rows.append(
        [
            "ours / official",
            spread([o["import_s"] / f["import_s"] for o, f in pairs]),
            spread([o["load_s"] / f["load_s"] for o, f in pairs]),
            spread([o["peak_delta"] / f["peak_delta"] for o, f in pairs]),
            "",
        ]
    )
    headers = ["loader", "import s", "load s", "peak ΔRSS MB", "RSS after imports MB"]
    return table(headers, rows, markdown=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child_ours(args) if args.child == "ours" else child_official(args)))
        return
    for side in SIDES:  # warm-up: page cache, .pyc files
        run_child(side, args)
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for rep in range(args.reps):
        for side in SIDES if rep % 2 == 0 else SIDES[::-1]:
            runs[side].append(run_child(side, args))
            print(f"rep {rep + 1} {side}: {runs[side][-1]['load_s']:.2f} s", flush=True)
    print(report(runs))
    info = {"machine": machine(), "checkpoint": args.checkpoint, "threads": args.threads}
    info["versions"] = {side: runs[side][0]["versions"] for side in SIDES}
    info["numel"] = {side: runs[side][0]["numel"] for side in SIDES}
    print(json.dumps(info["versions"]))
    write_results(NAME if args.checkpoint == "model.pt" else f"{NAME}_safetensors", {**info, "runs": runs})


if __name__ == "__main__":
    main()
