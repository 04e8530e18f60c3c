"""Check ``deepgen train --plan``'s estimate against measured memory on the small model (CPU RSS).

    python benchmarks/bench_plan.py [--steps 2] [--resolution 256] [--repeats 3] [--runs stage1 stage2 stage2_dit_lora]

Each run is bench_training.py's worker (same model: the tiny VLM with a scaled-up DiT and connector; same
trainer settings: micro-batch 2, 1 edit + 1 T2I micro-batch per update, fp32), with gradient checkpointing off
and on, in a fresh process; memory is measured as there: "train MiB" = peak RSS during the measured updates
minus the RSS of a process that only built the model (so gradients, AdamW states, LoRA adapters,
activations, and what the allocator keeps).  The plan is deepgen.train.plan for the same model sizes and config;
its comparable number is its peak minus the weights the baseline process already holds. Every worker runs
--repeats times, interleaved as in bench_training.py; measured cells are median (min–max) over the repeats.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, spread, spread_cell, table, write_results  # noqa: E402
from bench_training import CONNECTOR, DIT, RUNS, baseline_rss, run_repeats  # noqa: E402

NAME = "bench_plan"
MIB = 1024**2


def planned(run: str, checkpointing: bool, resolution: int) -> dict:
    from deepgen import tiny
    from deepgen.train.config import TrainConfig
    from deepgen.train.plan import ModelConfigs, plan_for_config

    spec = dict(RUNS[run])
    stage = spec.pop("stage")
    cfg = TrainConfig.for_stage(
        stage,
        model="bench",
        data=["unused"],
        resolution=resolution,
        micro_batch_size=2,
        grad_accumulation=2,
        task_pattern={"image2image": 1, "text2image": 1},
        mixed_precision="no",
        gradient_checkpointing=checkpointing,
        vlm_lora_rank=16,
        vlm_lora_alpha=32.0,
        dit_lora_rank=16,
        dit_lora_alpha=16.0,
        **spec,
    )
    configs = ModelConfigs(
        tiny.TINY_VLM,
        {**tiny.TINY_TRANSFORMER, **DIT},
        tiny.TINY_VAE,
        {**tiny.TINY_CONNECTOR.to_dict(), **CONNECTOR},
        tiny.TINY_NUM_QUERIES,
        "bench model",
    )
    plan = plan_for_config(cfg, configs)
    row = plan.per_device(1)
    built = 4 * (plan.count.total_params - plan.count.added_params)  # fp32 weights the baseline already holds
    buffers = sum(row.weights.values()) - 4 * plan.count.total_params
    return {
        "trainable_params": plan.count.trainable_params,
        "plan_train_mib": (row.total(checkpointing) - built - buffers) / MIB,
        "plan_activations_mib": (row.activations_ckpt if checkpointing else row.activations) / MIB,
        "plan_states_mib": (row.gradients + row.optimizer + row.step_temp) / MIB,
    }


def summarize(results: list[dict]) -> list[dict]:
    """Per (run, checkpointing), in first-seen order: the measured values of every repeat and plan / measured
    per repeat (the plan does not change between repeats), with their spreads."""
    keys = list(dict.fromkeys((r["run"], r["checkpointing"]) for r in results))
    summary = []
    for run, checkpointing in keys:
        mine = sorted(
            (r for r in results if (r["run"], r["checkpointing"]) == (run, checkpointing)), key=lambda r: r["repeat"]
        )
        values = {k: [r[k] for r in mine] for k in ("training_mib", "step_peak_mib")}
        values["plan_x_measured"] = [r["plan_train_mib"] / r["training_mib"] for r in mine]
        summary.append(
            {
                "run": run,
                "checkpointing": checkpointing,
                "trainable_params": mine[0]["trainable_params"],
                "plan_train_mib": mine[0]["plan_train_mib"],
                "plan_activations_mib": mine[0]["plan_activations_mib"],
                "repeats": len(mine),
                "values": values,
                "spread": {k: spread(v) for k, v in values.items()},
            }
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per (run, checkpointing)")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    args = parser.parse_args()
    base = baseline_rss(args.resolution, args.threads)
    results = run_repeats(args, base)
    plans = {}
    for r in results:
        key = (r["run"], r["checkpointing"])
        plans[key] = plans.get(key) or planned(*key, args.resolution)
        r.update(plans[key])
    summary = summarize(results)
    rows = [
        [
            f"{s['run']} ckpt {'on' if s['checkpointing'] else 'off'}",
            f"{s['trainable_params'] / 1e6:.1f}",
            spread_cell(s["values"]["training_mib"], 0),
            f"{s['plan_train_mib']:.0f}",
            spread_cell(s["values"]["plan_x_measured"]),
            spread_cell(s["values"]["step_peak_mib"], 0),
            f"{s['plan_activations_mib']:.0f}",
        ]
        for s in summary
    ]
    headers = [
        "run",
        "trainable M",
        "measured train MiB",
        "plan MiB",
        "plan / measured",
        "step peak MiB",
        "plan act MiB",
    ]
    print()
    print(table(headers, rows))
    print(f"cells: median (min–max) over {args.repeats} repeats, a fresh process each")
    data = {"machine": machine(), "settings": vars(args), "baseline_mib": base, "results": results}
    path = write_results(NAME, {**data, "summary": summary})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
