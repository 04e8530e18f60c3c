"""Two fixed costs of `load_model`, each timed in fresh processes: the DiT's construction at the real width, and
the Qwen2.5-VL tokenizer.

    python benchmarks/bench_load_steps.py dit [--reps 3] [--threads 1]
    python benchmarks/bench_load_steps.py tokenizer [--reps 5] [--threads 1]

dit: the real SD3.5-M DiT config (2.24 B parameters, a (1, 384², 1536) position table) built the way the loader
builds it before its weights are assigned:
- `init_empty_weights`: parameters on meta, buffers real (the loader before this benchmark was written);
- `empty_dit`: parameters and buffers on meta (`deepgen.loading.release.empty_dit`, used now);
- `empty_dit + sincos_table`: the same plus the table computed once (a checkpoint without the table).
Reported: wall time and peak RSS (VmHWM) minus the RSS after imports, and the time over `init_empty_weights`'s.

tokenizer: `from_pretrained` wall time (imports excluded) of each way of loading the tokenizer: the test
fixture's folder through `AutoTokenizer` (what `load_tokenizer` does), the shipped demo tokenizer
(`deepgen.tokenizer.demo_tokenizer`), and the bare `tokenizers.Tokenizer.from_file` of the same tokenizer.json for
comparison (not a transformers tokenizer: no special-token handling, padding or templates), and each time over
the bare parse's.

Every figure is the median (min–max) over --reps fresh processes per mode, the modes interleaved; a ratio pairs
the processes of the same rep.
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
from _common import ROOT, machine, proc_status, spread, spread_cell, table, write_results  # noqa: E402

from deepgen.train.plan_model import REAL_DIT  # noqa: E402  (SD3.5-Medium / UniPic2 sizes)

NAME = "bench_load_steps"
DIT_MODES = ("init_empty_weights", "empty_dit", "empty_dit + sincos_table")
FIXTURE_TOKENIZER = ROOT / "tests" / "fixtures" / "deepgen-official-tiny" / "Qwen2.5-VL-tiny"
TOKENIZER_MODES = ("AutoTokenizer(fixture)", "demo_tokenizer()", "tokenizers.Tokenizer.from_file")
# what each part's times are divided by: the old DiT build; the bare tokenizer parse (the floor)
REFERENCE = {"dit": "init_empty_weights", "tokenizer": "tokenizers.Tokenizer.from_file"}
MB = 1e6


def child(part: str, mode: str) -> dict:
    """Runs in the fresh process."""
    if part == "dit":
        from accelerate import init_empty_weights

        from deepgen.loading.release import empty_dit, sincos_table
        from deepgen.model.dit import DeepGenTransformer2DModel

        before = proc_status()
        start = time.perf_counter()
        if mode == "init_empty_weights":
            with init_empty_weights():
                dit = DeepGenTransformer2DModel.from_config(REAL_DIT)
        else:
            dit = empty_dit(REAL_DIT)
            if mode.endswith("sincos_table"):
                dit.pos_embed.pos_embed = sincos_table(dit.pos_embed)
        seconds = time.perf_counter() - start
        after = proc_status()
        params = sum(p.numel() for p in dit.parameters())
        return {"s": seconds, "peak_delta": after["VmHWM"] - before["VmRSS"], "params": params}
    from transformers import AutoTokenizer

    from deepgen.tokenizer import TOKENIZER_DIR, demo_tokenizer

    start = time.perf_counter()
    if mode == "AutoTokenizer(fixture)":
        tok = AutoTokenizer.from_pretrained(str(FIXTURE_TOKENIZER), local_files_only=True)
    elif mode == "demo_tokenizer()":
        tok = demo_tokenizer()
    else:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(str(TOKENIZER_DIR)) / "tokenizer.json"))
    return {"s": time.perf_counter() - start, "class": type(tok).__name__}


def run_child(part: str, mode: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, part, "--child", part, mode]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def paired_ratios(runs: dict[str, list[dict]], mode: str, reference: str) -> list[float]:
    """mode's seconds over reference's, process by process of the same rep (the modes run interleaved, so a
    change in the machine's load moves both)."""
    return [r["s"] / ref["s"] for r, ref in zip(runs[mode], runs[reference], strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("dit", "tokenizer"))
    parser.add_argument("--reps", type=int, default=None, help="fresh processes per mode (dit 3, tokenizer 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (1)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    modes = DIT_MODES if args.part == "dit" else TOKENIZER_MODES
    reps = args.reps or (3 if args.part == "dit" else 5)
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for _ in range(reps):  # interleaved, so drift in the machine's load hits every mode alike
        for mode in modes:
            runs[mode].append(run_child(args.part, mode, args.threads))
    reference, rows, spreads = REFERENCE[args.part], [], {}
    for mode in modes:
        values = {"s": [r["s"] for r in runs[mode]], "x_reference": paired_ratios(runs, mode, reference)}
        if args.part == "dit":
            values["peak_delta_mb"] = [r["peak_delta"] / MB for r in runs[mode]]
        spreads[mode] = {k: spread(v) for k, v in values.items()}
        row = [mode, spread_cell(values["s"]), spread_cell(values["x_reference"])]
        row.append(spread_cell(values["peak_delta_mb"], 0) if args.part == "dit" else runs[mode][0]["class"])
        rows.append(row + [reps])
    extra = "peak ΔRSS MB" if args.part == "dit" else "class"
    print(table(["mode", "s", f"x {reference}", extra, "processes"], rows))
    print("cells: median (min–max) over the processes; ratios paired within a rep")
    config = {"config": REAL_DIT} if args.part == "dit" else {}
    data = {"machine": machine(), "threads_per_process": args.threads, **config, "reference": reference}
    data.update(spread=spreads, runs=runs)
    write_results(f"{NAME}_{args.part}", data)


if __name__ == "__main__":
    main()
