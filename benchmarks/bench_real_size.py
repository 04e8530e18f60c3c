"""The real-size DeepGen 1.0 on this machine's CPU: build, save, convert, load, encode, sample, decode.

    nice -n 5 python benchmarks/bench_real_size.py [--root /work/bench-real] [--reps 2] [--keep]

Every part is built with the release's configs (Qwen2.5-VL-3B, the SD3.5-Medium DiT, the SCB, the SD3.5 VAE;
benchmarks/_real_size.py) and random weights, in bf16 except the SCB (fp32, as released), then saved in the
official layout (base VLM folder, UniPic2 transformer/vae/scheduler folders, model.safetensors with the trained
keys and rank-64 LoRA keys) and converted with `deepgen.loading.convert_checkpoint` to the single file. Each step
below runs in a fresh process; memory is that process's own (/proc/self/status):
- load through `deepgen.loading.load_model`, official and single layouts, alternating with a raw read of the same
  bytes (read into one reused buffer), --reps times: peak RSS / checkpoint bytes, load s / raw read s;
- with the single file loaded: the VLM encode of a prompt and of a one-reference edit (CFG rows co-batched),
  2 DiT steps at 512² and 1 at 1024² with CFG through `DeepGenPipeline.sample`, each step paired with a bare
  `diffusers.SD3Transformer2DModel` of the same config sharing the same tensors, on the same inputs; the VAE
  decode of both;
- weights per part and per memory mode of the node handle, counted from the modules (bytes that would sit on
  the compute device), bf16 and fp8.
The files (~27 GB) go under --root and are deleted at the end unless --keep. Peak memory stays at one part's
size plus what the process maps: no step holds two full copies.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, proc_status, table, write_results  # noqa: E402

NAME = "bench_real_size"
GB = 1e9
LORA_RANK = 64  # the release's VLM LoRA: r 64, alpha 128 on every text-tower Linear
PROMPT = "a lighthouse on a cliff at dusk, warm light, detailed oil painting"
EDIT = "make it night and add a full moon"


# ---- memory of this process --------------------------------------------------------------------------------------


class AnonPeak:
    """Samples RssAnon every 20 ms: the private part of the peak, which VmHWM does not separate."""

    def __init__(self):
        self.peak, self._stop = proc_status()["RssAnon"], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, proc_status()["RssAnon"])

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, proc_status()["RssAnon"])


# ---- children ------------------------------------------------------------------------------------------------------


def paths(root: Path) -> dict[str, Path]:
    official = root / "official"
    return {
        "checkpoint": official / "model.safetensors",
        "vlm": official / "Qwen2.5-VL-3B-Instruct",
        "diffusion": official / "UniPic2-SD3.5M-Kontext-2B",
        "single": root / "deepgen-bf16.safetensors",
    }


def weight_files(layout: str, p: dict[str, Path]) -> list[Path]:
    """The files a load reads: the checkpoint(s) and base weights."""
    if layout == "single":
        return [p["single"]]
    return [p["checkpoint"], *sorted(p["vlm"].glob("*.safetensors")), *sorted(p["diffusion"].rglob("*.safetensors"))]


def child_build_vlm(p, _args) -> dict:
    import torch
    from _real_size import materialize, model_spec
    from accelerate import init_empty_weights
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

    from deepgen.tokenizer import demo_tokenizer

    with init_empty_weights():
        lmm = AutoModelForImageTextToText.from_config(
            Qwen2_5_VLConfig.from_dict(model_spec(False)["vlm"]), attn_implementation="sdpa"
        )
    materialize(lmm, "cpu", torch.bfloat16, seed=1)
    lmm.tie_weights()
    lmm.save_pretrained(p["vlm"])
    demo_tokenizer().save_pretrained(p["vlm"])  # the shipped Qwen2.5-VL tokenizer
    return {"params": sum(t.numel() for t in lmm.parameters())}


def child_build_rest(p, _args) -> dict:
    """DiT (bf16), SCB (fp32), VAE (bf16) and LoRA keys, the DiT's position table included."""
    import torch
    from _common import lora_tensors
    from _real_size import materialize, model_spec, skeleton
    from safetensors.torch import save_file

    from deepgen.tiny import SCHEDULER_CONFIG

    model = skeleton(model_spec(False))  # parameters on meta; computed buffers (the position table) real
    materialize(model.transformer, "cpu", torch.bfloat16, seed=2)
    materialize(model.vae, "cpu", torch.bfloat16, seed=3)
    for name in ("connector", "projector_1", "projector_2", "projector_3"):
        materialize(getattr(model, name), "cpu", torch.float32, seed=4)
    model.meta_queries = torch.nn.Parameter(torch.randn(model.meta_queries.shape) * 0.02)
    model.transformer.save_config(p["diffusion"] / "transformer")
    model.vae.save_pretrained(p["diffusion"] / "vae")
    (p["diffusion"] / "scheduler").mkdir(parents=True, exist_ok=True)
    (p["diffusion"] / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    tensors = {k: v.contiguous() for k, v in model.trained_state_dict().items()}
    lora = {k: v.to(torch.bfloat16) for k, v in lora_tensors(model, LORA_RANK).items()}  # meta lmm: shapes only
    save_file({**tensors, **lora}, str(p["checkpoint"]))
    return {"lora_params": sum(t.numel() for t in lora.values()), "keys": len(tensors) + len(lora)}


def child_convert(p, _args) -> dict:
    import torch

    from deepgen.loading import convert_checkpoint

    convert_checkpoint(p["checkpoint"], p["single"], p["vlm"], p["diffusion"], dtype=torch.bfloat16)
    return {}


def child_raw(p, args) -> dict:
    files = weight_files(args["layout"], p)
    buffer = bytearray(64 << 20)
    view, total = memoryview(buffer), 0
    start = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                total += n
    return {"raw_s": time.perf_counter() - start, "bytes": total}


def child_load(p, args) -> dict:
    import torch

    from deepgen.loading import load_model

    before = proc_status()
    start = time.perf_counter()
    if args["layout"] == "single":
        model = load_model(p["single"], dtype=torch.bfloat16)
    else:
        model = load_model(p["checkpoint"], p["vlm"], p["diffusion"], dtype=torch.bfloat16)
    load_s = time.perf_counter() - start
    after = proc_status()
    start = time.perf_counter()
    touch(model)  # page in what the load only mapped, as a first generation would
    touch_s = time.perf_counter() - start
    return {"load_s": load_s, "touch_s": touch_s, "before": before, "after": after, "touched": proc_status()}


def part_bytes(model) -> dict[str, int]:
    """Bytes per node-handle part (scb, vlm, dit, vae) as stored; tied or shared storage counted once."""

    def part(name: str) -> str:
        for prefix, key in (("lmm.", "vlm"), ("transformer.", "dit"), ("vae.", "vae")):
            if name.startswith(prefix):
                return key
        return "scb"

    out, seen = dict.fromkeys(("scb", "vlm", "dit", "vae"), 0), set()
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]:
        key = (t.device.type, t.data_ptr(), t.dtype, tuple(t.shape)) if t.device.type != "meta" else (name,)
        if key in seen or (t.device.type == "meta" and name.startswith("lmm.lm_head")):
            continue
        seen.add(key)
        out[part(name)] += t.numel() * t.element_size()
    return out


def mode_peaks(parts: dict[str, int]) -> dict[str, int]:
    """Weight bytes resident on the compute device at the worst stage of two t2i images, per memory mode of
    nodes.model_handle (its STAGE_PARTS and unload rules, replayed)."""
    sys.path.insert(0, str(ROOT))
    from nodes.model_handle import MEMORY_MODES, PARTS, STAGE_PARTS

    peaks = {}
    for mode in MEMORY_MODES:
        resident: set = set()
        peak = 0
        for stage in ("encode", "bridge", "sample", "decode") * 2:
            resident |= set(PARTS if mode == "keep_all_on_gpu" else STAGE_PARTS[stage])
            peak = max(peak, sum(parts[x] for x in resident))
            if mode == "sequential_offload":
                resident -= {x for x in STAGE_PARTS[stage] if x != "scb"}
            elif mode == "offload_vlm_after_encode" and stage == "encode":
                resident.discard("vlm")
        peaks[mode] = peak
    return peaks


def touch(model) -> int:
    """Read one element of every 4 KiB page of every parameter and buffer (pages in what a load mapped)."""
    import torch

    total, seen = 0, set()
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.data_ptr() in seen or t.numel() == 0:
                continue
            seen.add(t.data_ptr())
            flat = t.detach().reshape(-1)
            flat[:: max(1, 4096 // t.element_size())].float().sum()
            total += t.numel() * t.element_size()
    return total


def child_run(p, args) -> dict:
    """Load the single file; encode, sample (ours vs bare per step), decode; count the weights per part."""
    import torch
    from accelerate import init_empty_weights
    from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
    from PIL import Image

    from deepgen.loading import load_model
    from deepgen.pipeline import DeepGenPipeline

    torch.manual_seed(0)
    clock = time.perf_counter
    out: dict = {"times": {}}
    t0 = clock()
    model = load_model(p["single"], dtype=torch.bfloat16)
    out["times"]["load"] = clock() - t0
    t0 = clock()
    touched = touch(model)
    out["times"]["touch"] = clock() - t0  # load + touch: what a first generation pays before computing
    out["touched_bytes"] = touched
    out["after_touch"] = proc_status()
    out["parts_bf16"] = part_bytes(model)
    pipe = DeepGenPipeline(model)
    with init_empty_weights(include_buffers=True):
        bare = SD3Transformer2DModel.from_config(dict(model.transformer.config))
    bare.load_state_dict(model.transformer.state_dict(), strict=True, assign=True)  # the same tensors, no copy
    bare.eval()

    t0 = clock()
    cond = pipe.encode([PROMPT])
    out["times"]["encode_t2i"] = clock() - t0
    reference = Image.fromarray((torch.rand(512, 512, 3) * 255).to(torch.uint8).numpy())
    t0 = clock()
    think = pipe.think([EDIT], references=[[reference]])
    out["times"]["think_edit"] = clock() - t0
    t0 = clock()
    edit_cond = pipe.bridge(think)
    out["times"]["bridge_edit"] = clock() - t0
    out["edit_vlm_tokens"] = int(think.scb_input.shape[1])

    context = torch.cat([cond.negative_context, cond.context])
    pooled = torch.cat([cond.negative_pooled, cond.pooled])
    steps: dict = {}
    for size, n in ((512, 2), (1024, 1)):
        pairs: list = []
        mark = [clock()]

        def on_step(s, pairs=pairs, mark=mark):
            ours = clock() - mark[0]
            x = torch.cat([s.latents, s.latents]).to(torch.bfloat16)
            t1 = clock()
            with torch.no_grad():
                v = bare(
                    hidden_states=x,
                    encoder_hidden_states=context.to(torch.bfloat16),
                    pooled_projections=pooled.to(torch.bfloat16),
                    timestep=s.timestep.expand(2),
                ).sample
            bare_s = clock() - t1
            v_neg, v_pos = v.float().chunk(2)
            err = float((v_pos - s.velocity_cond.float()).abs().max())
            pairs.append({"ours_s": ours, "bare_s": bare_s, "velocity_max_diff": err})
            mark[0] = clock()

        t0 = clock()
        latents = pipe.sample(cond, size, size, num_steps=n, seed=0, on_step=on_step)
        sample_s = clock() - t0
        t0 = clock()
        image = pipe.decode(latents)
        steps[size] = {"pairs": pairs, "sample_s": sample_s, "decode_s": clock() - t0}
        assert torch.isfinite(image).all(), f"non-finite image at {size}²"
        print(json.dumps({"progress": size, **steps[size]}), file=sys.stderr, flush=True)
    out["steps"] = steps
    out["edit_reference_latents"] = list(edit_cond.reference_latents[0][0].shape)
    return out


def child_count_fp8(_p, _args) -> dict:
    """The same per-part bytes for the fp8 weights, from the meta skeleton (no memory)."""
    import torch
    from _real_size import model_spec, skeleton

    from deepgen.loading.fp8 import apply_fp8

    model = skeleton(model_spec(False), include_buffers=True).to(torch.bfloat16)
    apply_fp8(model, torch.bfloat16)
    return {"parts_fp8": part_bytes(model)}


CHILDREN = {
    "build_vlm": child_build_vlm,
    "build_rest": child_build_rest,
    "convert": child_convert,
    "raw": child_raw,
    "load": child_load,
    "run": child_run,
    "count_fp8": child_count_fp8,
}


def child_main(mode: str, root: str, args_json: str) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    anon = AnonPeak()
    start = time.perf_counter()
    result = CHILDREN[mode](paths(Path(root)), json.loads(args_json))
    result.update(wall_s=time.perf_counter() - start, end=proc_status(), anon_peak=anon.stop())
    print("RESULT " + json.dumps(result), flush=True)


def spawn(mode: str, root: Path, **kwargs) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(root), json.dumps(kwargs)]
    print(f"[{time.strftime('%H:%M:%S')}] {mode} {kwargs or ''}", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    print(f"    {result.get('wall_s', 0):.1f} s, peak RSS {result['end']['VmHWM'] / GB:.2f} GB", flush=True)
    return result


# ---- report -----------------------------------------------------------------------------------------------------


def file_bytes(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/work/bench-real"), help="where the ~27 GB of files go")
    parser.add_argument("--reps", type=int, default=2, help="load / raw-read alternations per layout")
    parser.add_argument("--keep", action="store_true", help="keep the files (default: delete them at the end)")
    parser.add_argument("--skip-build", action="store_true", help="reuse the files under --root")
    parser.add_argument("--loads-only", action="store_true", help="only the load / raw-read alternations")
    parser.add_argument("--run-only", action="store_true", help="only the run process (encode, sample, decode)")
    args = parser.parse_args()
    root, p = args.root, paths(args.root)
    results: dict = {"machine": machine(), "reps": args.reps}
    started = time.perf_counter()
    try:
        if not args.skip_build:
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            results["build_vlm"] = spawn("build_vlm", root)
            results["build_rest"] = spawn("build_rest", root)
            results["convert"] = spawn("convert", root)
        sizes = {layout: file_bytes(weight_files(layout, p)) for layout in ("official", "single")}
        results["checkpoint_bytes"] = {
            "official_model_file": p["checkpoint"].stat().st_size,
            "official_all": sizes["official"],
            "single": sizes["single"],
        }
        loads: dict = {"official": [], "single": []}
        spawn("raw", root, layout="single")  # warms the page cache (untimed)
        for _ in range(0 if args.run_only else args.reps):
            for layout in ("single", "official"):
                raw = spawn("raw", root, layout=layout)
                load = spawn("load", root, layout=layout)
                loads[layout].append({"raw": raw, "load": load})
        if not args.run_only:
            results["loads"] = loads
        if not args.loads_only:
            results["run"] = spawn("run", root)
            results["count_fp8"] = spawn("count_fp8", root)
    finally:
        results["elapsed_s"] = time.perf_counter() - started
        suffix = "_loads" if args.loads_only else "_run" if args.run_only else ""
        path = write_results(NAME + suffix, results)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report(results)
    print(path)
    return 0


def report(r: dict) -> None:
    rows = []
    for layout, runs in r.get("loads", {}).items():
        ckpt = r["checkpoint_bytes"]["single" if layout == "single" else "official_all"]
        peaks = [x["load"]["after"]["VmHWM"] - x["load"]["before"]["VmRSS"] for x in runs]  # before the touch
        anon = [x["load"]["anon_peak"] - x["load"]["before"]["RssAnon"] for x in runs]
        ratios = [x["load"]["load_s"] / x["raw"]["raw_s"] for x in runs]
        touched = [(x["load"]["load_s"] + x["load"].get("touch_s", 0.0)) / x["raw"]["raw_s"] for x in runs]
        rows.append(
            [
                layout,
                f"{ckpt / GB:.2f}",
                f"{min(peaks) / GB:.2f}–{max(peaks) / GB:.2f}",
                f"{min(peaks) / ckpt:.2f}–{max(peaks) / ckpt:.2f}",
                f"{min(anon) / GB:.2f}–{max(anon) / GB:.2f}",
                f"{min(x['load']['load_s'] for x in runs):.1f}–{max(x['load']['load_s'] for x in runs):.1f}",
                f"{min(x['raw']['raw_s'] for x in runs):.1f}–{max(x['raw']['raw_s'] for x in runs):.1f}",
                f"{min(ratios):.2f}–{max(ratios):.2f}",
                f"{min(touched):.2f}–{max(touched):.2f}",
            ]
        )
    if rows:
        head = ["layout", "weights GB", "peak ΔRSS GB", "peak/ckpt", "private ΔRSS GB", "load s", "raw s", "load/raw"]
        head.append("(load+touch)/raw")
        print(table(head, rows, markdown=True))
    run = r.get("run")
    if run:
        rows = []
        for size, s in run["steps"].items():
            for i, pair in enumerate(s["pairs"]):
                rows.append(
                    [
                        f"{size}² step {i}",
                        f"{pair['ours_s']:.1f}",
                        f"{pair['bare_s']:.1f}",
                        f"{pair['ours_s'] / pair['bare_s']:.3f}",
                        f"{pair['velocity_max_diff']:.3g}",
                    ]
                )
        print(table(["DiT step (CFG, 2 rows)", "ours s", "bare s", "ours/bare", "max |Δv|"], rows, markdown=True))
        print(json.dumps(run["times"], indent=1), {k: v["decode_s"] for k, v in run["steps"].items()})
        fp8 = r.get("count_fp8", {}).get("parts_fp8", {})
        parts = run["parts_bf16"]
        rows = [[k, f"{parts[k] / GB:.2f}", f"{fp8.get(k, 0) / GB:.2f}"] for k in parts]
        modes_bf16, modes_fp8 = mode_peaks(parts), mode_peaks(fp8) if fp8 else {}
        rows += [[f"mode {m}", f"{v / GB:.2f}", f"{modes_fp8.get(m, 0) / GB:.2f}"] for m, v in modes_bf16.items()]
        r["mode_peaks"] = {"bf16": modes_bf16, "fp8": modes_fp8}
        print(table(["part / memory mode", "bf16 GB", "fp8 GB"], rows, markdown=True))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--report":  # the tables again, from a results file
        report(json.loads(Path(sys.argv[2]).read_text()))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(main())
