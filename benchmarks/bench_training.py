"""Training step time and peak memory per stage, and the memory gradient checkpointing saves, as ratios.

    python benchmarks/bench_training.py [--steps 5] [--resolution 256] [--threads 1] [--repeats 3]

The model is the tiny DeepGen (36-layer toy VLM, so the real SCB taps) with a scaled-up DiT (4 layers, 12 heads
x 64, joint width 1024) and a scaled-up connector (width 512), trained at 256x256 (256 DiT tokens): big enough
that activations, gradients and AdamW state are visible next to the weights.  Runs, each in a fresh process:

- stage 1 (think tokens + projectors + connector), stage 2 (+ full DiT + VLM LoRA r 16), stage 2 consumer
  (+ DiT LoRA r 16 instead of the full DiT), each with gradient checkpointing off and on;
- every run: one warm-up update, then --steps updates of 2 micro-batches (micro batch 2, 1 edit + 1 T2I);
- step time: median seconds per update;
- memory: peak RSS *during the measured updates* (a thread samples VmRSS every 2 ms), reported two ways:
  "train MiB" = minus the RSS of a process that only built the same model and imported the trainer (so:
  gradients, AdamW state, activations, data, LoRA adapters); "step peak MiB" = minus the RSS right after the
  warm-up update (gradients and AdamW state already allocated, so: mostly activations — what checkpointing saves).

Every (run, checkpointing) worker runs --repeats times, interleaved: each repeat goes through all runs, off and
on back to back, in the order off/on on even repeats and on/off on odd ones, so a drift in the machine's load
hits both sides of a pair. Ratios are per repeat: against stage 1 without checkpointing of the same repeat, and
on over off of the same run and repeat. Every cell is the median (min–max) over the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, build_model, machine, median, spread, spread_cell, table, write_results  # noqa: E402

NAME = "bench_training"
DIT = {
    "num_layers": 4,
    "attention_head_dim": 64,
    "num_attention_heads": 12,
    "joint_attention_dim": 1024,
    "caption_projection_dim": 768,
    "pooled_projection_dim": 768,
    "dual_attention_layers": [0, 1],
}
CONNECTOR = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 8}
RUNS = {
    "stage1": dict(stage=1),
    "stage2": dict(stage=2, train_dit="full", vlm_lora=True),
    "stage2_dit_lora": dict(stage=2, train_dit="lora", vlm_lora=True),
}


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class PeakSampler:
    def __init__(self, period: float = 0.002):
        self.period, self.peak, self._stop = period, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib())
            time.sleep(self.period)

    def __enter__(self):
        self.peak = rss_kib()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib())


def worker(run: str, checkpointing: bool, steps: int, resolution: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from deepgen.train.config import TrainConfig
    from deepgen.train.data import write_synthetic_dataset
    from deepgen.train.trainer import SFTTrainer

    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    data = write_synthetic_dataset(
        tmp / "data", n_text2image=8, n_edit=4, sizes=((resolution, resolution),) if resolution > 80 else ((96, 96),)
    )
    spec = dict(RUNS[run])
    stage = spec.pop("stage")
    cfg = TrainConfig.for_stage(
        stage,
        model="bench",
        data=[str(data)],
        resolution=resolution,
        micro_batch_size=2,
        grad_accumulation=2,
        task_pattern={"image2image": 1, "text2image": 1},
        max_steps=steps + 1,
        lr=1e-4,
        warmup_steps=0,
        num_workers=0,
        caption_dropout=0.1,
        mixed_precision="no",
        gradient_checkpointing=checkpointing,
        output_dir=str(tmp / "out"),
        resume="no",
        save_every=0,
        data_verify="exists",
        vlm_lora_rank=16,
        vlm_lora_alpha=32.0,
        dit_lora_rank=16,
        dit_lora_alpha=16.0,
        export_checkpoint=False,
        export_lora=False,
        validation_at_end=False,
        log_file=False,
        **spec,
    )
    model = build_model(transformer=DIT, connector=CONNECTOR)

    class Clock:
        def __init__(self):
            self.times, self.sampler, self.start_rss, self.trainable = [], None, 0, 0

        def on_train_start(self, run_info):
            self.trainable = run_info.trainable_parameters

        def on_step_end(self, run_info, info):
            if info.step == 1:  # after the warm-up update: start measuring
                self.start_rss = rss_kib()
                self.sampler = PeakSampler().__enter__()
            else:
                self.times.append(info.step_time)

    clock = Clock()
    SFTTrainer(cfg, model=model, callbacks=[clock], cpu=True).run()
    clock.sampler.__exit__(None, None, None)
    # what training adds on top of the model and data: measured from the RSS before the warm-up update too
    return {
        "run": run,
        "checkpointing": checkpointing,
        "step_s": median(clock.times),
        "trainable_params": clock.trainable,
        "peak_rss_mib": clock.sampler.peak / 1024,
        "rss_after_warmup_mib": clock.start_rss / 1024,
        "model_params": sum(p.numel() for p in model.parameters()),
    }


def baseline_rss(resolution: int, threads: int) -> float:
    """RSS (MiB) of a process that built the same model and loaded the data but did not train."""
    code = f"""
import sys, json, torch
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
torch.set_num_threads({threads})
from bench_training import build_model, DIT, CONNECTOR, rss_kib
m = build_model(transformer=DIT, connector=CONNECTOR)
import deepgen.train.trainer, accelerate, peft
print(json.dumps({{"rss_mib": rss_kib() / 1024}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["rss_mib"]


def run_worker(run: str, checkpointing: str, steps: int, resolution: int, threads: int, base_mib: float) -> dict:
    """One worker in a fresh process; its result with the two memory figures derived from base_mib."""
    command = [sys.executable, __file__, "--worker", run, checkpointing, "--steps", str(steps)]
    command += ["--resolution", str(resolution), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    t = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-4000:])
    r = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    r["training_mib"] = r["peak_rss_mib"] - base_mib
    r["step_peak_mib"] = r["peak_rss_mib"] - r["rss_after_warmup_mib"]
    r["wall_s"] = time.perf_counter() - t
    return r


def run_repeats(args: argparse.Namespace, base_mib: float) -> list[dict]:
    """Every (run, checkpointing) worker of args.runs, args.repeats times: off → on in even repeats, on → off in
    odd ones, so a drift in the machine's load hits both sides of a pair. Each result carries its `repeat`."""
    results = []
    for repeat in range(args.repeats):
        for run in args.runs:
            for gc in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
                r = run_worker(run, gc, args.steps, args.resolution, args.threads, base_mib)
                r["repeat"] = repeat
                results.append(r)
                print(
                    f"repeat {repeat + 1}/{args.repeats} {run} checkpointing {gc}: {r['step_s']:.2f} s/update, "
                    f"+{r['training_mib']:.0f} MiB, step peak {r['step_peak_mib']:.0f} MiB",
                    flush=True,
                )
    return results


def summarize(results: list[dict]) -> list[dict]:
    """Per (run, checkpointing), in first-seen order: the per-repeat values and ratios, and their spreads.

    Ratios pair results of the same repeat: against the first run without checkpointing ("vs stage1"), and
    against the same run without checkpointing ("vs ckpt off")."""

    def find(run, checkpointing, repeat):
        return next(x for x in results if (x["run"], x["checkpointing"], x["repeat"]) == (run, checkpointing, repeat))

    ref_run = results[0]["run"]
    keys = list(dict.fromkeys((r["run"], r["checkpointing"]) for r in results))
    summary = []
    for run, checkpointing in keys:
        mine = sorted(
            (r for r in results if (r["run"], r["checkpointing"]) == (run, checkpointing)), key=lambda r: r["repeat"]
        )
        values = {k: [r[k] for r in mine] for k in ("step_s", "training_mib", "step_peak_mib")}
        refs = [find(ref_run, False, r["repeat"]) for r in mine]
        offs = [find(run, False, r["repeat"]) for r in mine]
        values["time_vs_ref"] = [r["step_s"] / x["step_s"] for r, x in zip(mine, refs)]
        values["train_vs_ref"] = [r["training_mib"] / x["training_mib"] for r, x in zip(mine, refs)]
        values["train_vs_off"] = [r["training_mib"] / x["training_mib"] for r, x in zip(mine, offs)]
        values["step_peak_vs_off"] = [r["step_peak_mib"] / x["step_peak_mib"] for r, x in zip(mine, offs)]
        values["time_vs_off"] = [r["step_s"] / x["step_s"] for r, x in zip(mine, offs)]
        summary.append(
            {
                "run": run,
                "checkpointing": checkpointing,
                "trainable_params": mine[0]["trainable_params"],
                "repeats": len(mine),
                "values": values,
                "spread": {k: spread(v) for k, v in values.items()},
            }
        )
    return summary


def report(results: list[dict]) -> dict:
    """Print the table of `results` (median (min–max) cells) and return what the JSON keeps of them."""
    summary = summarize(results)
    cells = [
        ("step_s", 2),
        ("time_vs_ref", 2),
        ("training_mib", 0),
        ("train_vs_ref", 2),
        ("step_peak_mib", 0),
        ("train_vs_off", 2),
        ("step_peak_vs_off", 2),
        ("time_vs_off", 2),
    ]
    rows = [
        [f"{s['run']} ckpt {'on' if s['checkpointing'] else 'off'}", f"{s['trainable_params'] / 1e6:.1f}"]
        + [spread_cell(s["values"][key], digits) for key, digits in cells]
        for s in summary
    ]
    headers = [
        "run",
        "trainable M",
        "s/update",
        "time vs stage1",
        "train MiB",
        "train vs stage1",
        "step peak MiB",
        "train vs ckpt off",
        "step peak vs ckpt off",
        "time vs ckpt off",
    ]
    print()
    print(table(headers, rows))
    print(f"cells: median (min–max) over {summary[0]['repeats']} repeats; ratios paired within a repeat")
    return {"results": results, "summary": summary, "table": {"headers": headers, "rows": rows}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def positive(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
        return value

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive, default=5)
    parser.add_argument("--resolution", type=positive, default=256)
    parser.add_argument("--threads", type=positive, default=1)
    parser.add_argument("--repeats", type=positive, default=3, help="fresh processes per (run, checkpointing)")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument(
        "--report", metavar="JSON", help="print the table of a results file again and rewrite its summary"
    )
    parser.add_argument("--worker", nargs=2, metavar=("RUN", "CHECKPOINTING"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.worker:
        result = worker(args.worker[0], args.worker[1] == "on", args.steps, args.resolution, args.threads)
        print("RESULT " + json.dumps(result))
        return

    if args.report:
        data = json.loads(Path(args.report).read_text())
        Path(args.report).write_text(json.dumps({**data, **report(data["results"])}, indent=2) + "\n")
        return

    base = baseline_rss(args.resolution, args.threads)
    results = run_repeats(args, base)
    path = write_results(
        NAME, {"machine": machine(), "settings": vars(args), "baseline_rss_mib": base, **report(results)}
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
