"""Two fixed costs of `load_model`, each timed in fresh processes: the DiT's construction at the real width, and
the Qwen2.5-VL tokenizer.

    python benchmarks/bench_load_steps.py dit [--reps 3]
    python benchmarks/bench_load_steps.py tokenizer [--reps 5]

dit: the real SD3.5-M DiT config (2.24 B parameters, a (1, 384², 1536) position table) built the way the loader
builds it before its weights are assigned:
- `init_empty_weights`: parameters on meta, buffers real (the loader before this benchmark was written);
- `empty_dit`: parameters and buffers on meta (`deepgen.loading.release.empty_dit`, used now);
- `empty_dit + sincos_table`: the same plus the table computed once (a checkpoint without the table).
Reported: wall time and peak RSS (VmHWM) minus the RSS after imports, medians over --reps processes.

tokenizer: `from_pretrained` wall time (imports excluded) of each way of loading the tokenizer, medians over
--reps processes: the test fixture's folder through `AutoTokenizer` (what `load_tokenizer` does), the shipped
demo tokenizer (`deepgen.tokenizer.demo_tokenizer`), and the bare `tokenizers.Tokenizer.from_file` of the same
tokenizer.json for comparison (not a transformers tokenizer: no special-token handling, padding or templates).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, median, proc_status, table, write_results  # noqa: E402

from deepgen.train.plan_model import REAL_DIT  # noqa: E402  (SD3.5-Medium / UniPic2 sizes)

NAME = "bench_load_steps"
DIT_MODES = ("init_empty_weights", "empty_dit", "empty_dit + sincos_table")
FIXTURE_TOKENIZER = ROOT / "tests" / "fixtures" / "deepgen-official-tiny" / "Qwen2.5-VL-tiny"
TOKENIZER_MODES = ("AutoTokenizer(fixture)", "demo_tokenizer()", "tokenizers.Tokenizer.from_file")
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


def run_child(part: str, mode: str) -> dict:
    cmd = [sys.executable, __file__, part, "--child", part, mode]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("dit", "tokenizer"))
    parser.add_argument("--reps", type=int, default=None, help="fresh processes per mode (dit 3, tokenizer 5)")
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
            runs[mode].append(run_child(args.part, mode))
    rows = []
    for mode in modes:
        row = [mode, median(r["s"] for r in runs[mode])]
        if args.part == "dit":
            row.append(round(median(r["peak_delta"] for r in runs[mode]) / MB))
        else:
            row.append(runs[mode][0]["class"])
        rows.append(row + [reps])
    extra = "peak ΔRSS MB" if args.part == "dit" else "class"
    print(table(["mode", "median s", extra, "processes"], rows))
    config = {"config": REAL_DIT} if args.part == "dit" else {}
    write_results(f"{NAME}_{args.part}", {"machine": machine(), **config, "runs": runs})


if __name__ == "__main__":
    main()
