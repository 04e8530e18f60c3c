"""The real-size model on one GPU: seconds per image, peak VRAM per memory mode, our DiT step against a bare
diffusers SD3 step, and the model FLOP utilisation (MFU), in one markdown table.

    python benchmarks/bench_gpu.py [--checkpoint PATH [--vlm DIR] [--diffusion DIR]] [--device cuda]
                                   [--sizes 512 1024] [--steps 50] [--cfg 4.0] [--reps 2] [--dit-reps 10]
                                   [--memory-modes ...] [--dtype auto] [--peak-tflops T] [--json PATH]
    python benchmarks/bench_gpu.py --device cpu --tiny --steps 2          # the CPU check CI runs

Weights: with --checkpoint (and --vlm / --diffusion for the official layout) the real release through
`deepgen.loading.load_model`; without, random weights of the real sizes (Qwen2.5-VL-3B, the SD3.5-Medium DiT,
the SD3.5 VAE, the official SCB; deepgen-reference.md), built on the meta device and materialised straight
on the target device with a cheap deterministic init (nothing real-size is ever allocated on the CPU, apart from
the DiT's sin-cos position grid, which the loader builds there too). --tiny runs the same path with the tiny
demo configs (`deepgen.tiny`).

Every image goes through `nodes.model_handle.DeepGenModelHandle` stage by stage, as the ComfyUI nodes drive it
(stage("encode"): think → stage("references" or "bridge"): bridge → stage("sample"): sample → stage("decode"):
decode), so the memory modes are the nodes' own (outside ComfyUI its StandalonePatcher loads and unloads). Outside ComfyUI the handle's compute device
is DEEPGEN_DEVICE (set here to --device) and its offload device the CPU.

Timing: CUDA is synchronised around every timed stage; each configuration runs once untimed (2 steps: same
shapes, so kernels and allocator are warm), then --reps times; medians are reported. Ratios are against a
baseline measured in the same process. The feature rows (step cache, torch.compile, fp8 weights) switch the
feature on for the same model and compare with it off; fp8 runs last, since it recasts the weights in place.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Clock, machine, median, positive, table  # noqa: E402
from _real_size import (  # noqa: E402
    DEFAULT_PEAK_TFLOPS,
    dit_step_flops,
    load,
    peak_tflops,
)

NAME = "bench_gpu"
NO_CUDA = "n/a (no CUDA device)"
PROMPT = "a lighthouse on a cliff at dusk, warm light, detailed oil painting"
EDIT_INSTRUCTION = "make it night and add a full moon"
MEMORY_MODES = ("keep_all_on_gpu", "offload_vlm_after_encode", "sequential_offload")  # nodes/model_handle.py
ROW_KEYS = ("section", "name", "value", "unit", "ratio", "baseline", "note")


# ---- arguments ---------------------------------------------------------------------------------------------


def _image_size(text: str) -> int:
    value = positive(int)(text)
    if value % 16:
        raise argparse.ArgumentTypeError(f"image sizes must be multiples of 16 (VAE /8, DiT patch 2), got {value}")
    return value


def _device(text: str) -> str:
    import torch

    try:
        return str(torch.device(text))
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device name (cuda, cuda:1, cpu)") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_gpu.py", description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    w = p.add_argument_group("weights (default: random weights of the real sizes)")
    w.add_argument(
        "--checkpoint",
        help="the DeepGen checkpoint (official model.pt/.safetensors, the diffusers "
        "folder, or a `deepgen convert` file): real weights via load_model",
    )
    w.add_argument("--vlm", help="official layout: the Qwen2.5-VL-3B-Instruct folder")
    w.add_argument("--diffusion", help="official layout: the UniPic2-SD3.5M-Kontext folder")
    w.add_argument("--tiny", action="store_true", help="the tiny demo configs instead of the real sizes (CPU check)")
    p.add_argument("--device", type=_device, default="cuda", help="compute device")
    p.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp16", "fp32"),
        default="auto",
        help="auto: bf16 on CUDA, fp32 on the CPU (deepgen.devices.pick_dtype)",
    )
    p.add_argument(
        "--sizes",
        type=_image_size,
        nargs="+",
        default=None,
        help="square text-to-image sizes in pixels; the first is also the edit and memory-mode size "
        "(default 512 1024; with --tiny 64 128)",
    )
    p.add_argument("--steps", type=positive(int), default=50, help="denoising steps per image")
    p.add_argument("--cfg", type=positive(float), default=4.0, help="guidance scale (> 1: cond + negative rows)")
    p.add_argument("--reps", type=positive(int), default=2, help="timed images per configuration (median)")
    p.add_argument("--dit-reps", type=positive(int), default=10, help="timed DiT forwards each, ours and bare")
    p.add_argument(
        "--memory-modes",
        nargs="+",
        choices=MEMORY_MODES,
        default=list(MEMORY_MODES),
        help="memory modes to measure (first is the baseline)",
    )
    p.add_argument(
        "--peak-tflops",
        type=positive(float),
        default=None,
        help=f"the GPU's dense peak TFLOP/s for --dtype, for MFU (default: from the GPU name, "
        f"{DEFAULT_PEAK_TFLOPS:g} for H100/H200 SXM bf16; on the CPU only if given)",
    )
    p.add_argument(
        "--threads",
        type=positive(int),
        default=None,
        help="torch CPU threads (default: 1 on the CPU, where the tiny model is overhead-bound and idle "
        "threads spinning on a shared machine cost more than they give; torch's own on CUDA)",
    )
    p.add_argument(
        "--step-cache",
        type=positive(float),
        default=0.1,
        help="the step cache threshold of the 'step cache on' row (First Block Cache, deepgen.model.speed)",
    )
    p.add_argument(
        "--compile-backend",
        choices=("inductor", "aot_eager", "eager"),
        default="inductor",
        help="torch.compile backend of the 'compile on' row (aot_eager: the CPU check, no code generation)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and of the noise")
    p.add_argument("--json", type=Path, default=None, help="also write the rows (and the machine) to this file")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tiny and args.checkpoint:
        parser.error("--tiny builds random tiny weights: drop --checkpoint, or drop --tiny to load real weights")
    if (args.vlm or args.diffusion) and not args.checkpoint:
        parser.error("--vlm / --diffusion go with --checkpoint (the official layout)")
    if args.sizes is None:
        args.sizes = [64, 128] if args.tiny else [512, 1024]
    return args


def generate(handle, clock: Clock, size: int, steps: int, cfg: float, seed: int, reference=None) -> dict:
    """One image through the handle, stage by stage as the nodes run it; seconds per stage and in all."""
    pipe, t = handle.pipe, {}
    with clock.time(t, "encode"):
        with handle.stage("encode"):
            think = pipe.think(
                [EDIT_INSTRUCTION if reference is not None else PROMPT],
                references=[[reference]] if reference is not None else None,
                guidance=cfg > 1.0,
                reference_target=size,
            )
        with handle.stage("references" if think.has_references else "bridge"):  # the VAE encodes references
            cond = pipe.bridge(think)
    with clock.time(t, "sample"), handle.stage("sample"):
        latents = pipe.sample(cond, size, size, num_steps=steps, cfg_scale=cfg, seed=seed)
    with clock.time(t, "decode"), handle.stage("decode"):
        pipe.decode(latents)
    t["total"] = t["encode"] + t["sample"] + t["decode"]
    return t


def timed_images(handle, clock: Clock, args, size: int, reference=None) -> dict:
    """Median seconds per stage over --reps images, after one untimed 2-step image of the same shapes."""
    generate(handle, clock, size, min(2, args.steps), args.cfg, args.seed, reference)
    runs = [generate(handle, clock, size, args.steps, args.cfg, args.seed + i, reference) for i in range(args.reps)]
    return {key: median([r[key] for r in runs]) for key in runs[0]}


def row(section, name, value, unit="", ratio=None, baseline="", note="") -> dict:
    return dict(zip(ROW_KEYS, (section, name, value, unit, ratio, baseline, note)))


def parts_note(t: dict) -> str:
    return f"encode {t['encode']:.3f} + sample {t['sample']:.3f} + decode {t['decode']:.3f} s"


def speed_rows(handle, clock, args) -> tuple[list, dict]:
    from PIL import Image

    rows, results = [], {}
    what = f"{args.steps} steps, CFG {args.cfg:g}, batch 1"
    for size in args.sizes:
        t = results[size] = timed_images(handle, clock, args, size)
        base = results[args.sizes[0]]["total"]
        rows.append(
            row(
                "speed",
                f"text-to-image {size}²",
                t["total"],
                "s/image",
                t["total"] / base,
                f"t2i {args.sizes[0]}²",
                f"{what}; {parts_note(t)}",
            )
        )
    size = args.sizes[0]
    reference = Image.new("RGB", (size, size), (120, 90, 60))
    t = timed_images(handle, clock, args, size, reference)
    rows.append(
        row(
            "speed",
            f"edit {size}², 1 reference",
            t["total"],
            "s/image",
            t["total"] / results[size]["total"],
            f"t2i {size}²",
            f"{what}; reference as VLM vision tokens + DiT latent tokens; {parts_note(t)}",
        )
    )
    return rows, results


def memory_rows(model, clock, args) -> list:
    """Peak CUDA memory and s/image of a text-to-image at the first size, per memory mode of the node handle."""
    from nodes.model_handle import DeepGenModelHandle

    rows, peaks, times = [], {}, {}
    size, first = args.sizes[0], args.memory_modes[0]
    for mode in args.memory_modes:
        handle = DeepGenModelHandle(model, name=NAME, memory_mode=mode)
        generate(handle, clock, size, min(2, args.steps), args.cfg, args.seed)  # warm-up: loads and kernels
        clock.reset_peak()
        runs = [generate(handle, clock, size, args.steps, args.cfg, args.seed + i) for i in range(args.reps)]
        times[mode] = median([r["total"] for r in runs])
        peaks[mode] = clock.peak_gib()
        allocated, reserved = peaks[mode]
        if allocated is None:
            rows.append(row("memory", f"peak VRAM, {mode}", NO_CUDA, "GiB", note="moves between devices are no-ops"))
        else:
            rows.append(
                row(
                    "memory",
                    f"peak VRAM, {mode}",
                    allocated,
                    "GiB",
                    allocated / peaks[first][0],
                    first,
                    f"torch max_memory_allocated; reserved {reserved:.2f} GiB; t2i {size}²",
                )
            )
        rows.append(
            row(
                "memory",
                f"s/image, {mode}",
                times[mode],
                "s/image",
                times[mode] / times[first],
                first,
                f"t2i {size}², {args.steps} steps; includes this mode's weight moves",
            )
        )
    DeepGenModelHandle(model, name=NAME, memory_mode="keep_all_on_gpu").activate()  # everything back on the device
    return rows, peaks.get("keep_all_on_gpu", (None, None))[0]


def bare_sd3(ours):
    """diffusers' plain SD3Transformer2DModel with our DiT's config, sharing its tensors (no copy)."""
    from accelerate import init_empty_weights
    from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel

    with init_empty_weights(include_buffers=True):
        bare = SD3Transformer2DModel.from_config(dict(ours.config))
    bare.load_state_dict(ours.state_dict(), strict=True, assign=True)
    return bare.eval()


def dit_rows(model, clock, args, device_name) -> tuple[list, dict]:
    """Our DiT forward vs the bare diffusers one on the same CFG batch (no references), per size; FLOPs; MFU."""
    import torch

    ours, bare = model.transformer, bare_sd3(model.transformer)
    peak, peak_source = peak_tflops(args.peak_tflops, device_name)
    rows, steps = [], {}
    for size in args.sizes:
        inputs = dit_inputs(model, args, size)
        context = inputs["encoder_hidden_states"]
        batch = context.shape[0]
        times = {"ours": [], "bare": []}
        with torch.no_grad():
            for name, dit in (("ours", ours), ("bare", bare)):
                dit(**inputs)  # warm-up
            for _ in range(args.dit_reps):  # interleaved, so drift hits both alike
                for name, dit in (("ours", ours), ("bare", bare)):
                    t = {}
                    with clock.time(t, "s"):
                        dit(**inputs)
                    times[name].append(t["s"])
        s_ours, s_bare = median(times["ours"]), median(times["bare"])
        steps[size] = s_ours
        image_tokens = (size // 8 // ours.config.patch_size) ** 2
        flops = dit_step_flops(ours.config, image_tokens, context.shape[1], batch)
        shape = f"{batch} rows × ({image_tokens} image + {context.shape[1]} context tokens)"
        rows.append(
            row(
                "DiT step",
                f"ours, {size}²",
                s_ours * 1e3,
                "ms/step",
                s_ours / s_bare,
                "bare SD3",
                f"DeepGenTransformer2DModel; {shape}; median of {args.dit_reps}",
            )
        )
        rows.append(
            row(
                "DiT step",
                f"bare diffusers SD3, {size}²",
                s_bare * 1e3,
                "ms/step",
                1.0,
                "bare SD3",
                "SD3Transformer2DModel, same config and tensors, same inputs",
            )
        )
        scale, prefix = (1e12, "T") if flops >= 1e12 else (1e9, "G")
        rows.append(
            row(
                "DiT step",
                f"FLOPs, {size}²",
                flops / scale,
                f"{prefix}FLOP/step",
                note=f"from the config (dit_step_flops); {shape}",
            )
        )
        achieved = flops / s_ours / 1e12
        mfu = achieved / peak * 100 if peak else f"n/a ({peak_source})"
        rows.append(
            row(
                "DiT step",
                f"MFU, {size}²",
                mfu,
                "%",
                note=f"{achieved:.4g} TFLOP/s achieved"
                + (
                    f" / {peak:g} peak ({peak_source}); bare: {flops / s_bare / 1e12 / peak * 100:.1f} %"
                    if peak
                    else ""
                ),
            )
        )
    return rows, steps


def weight_bytes(module) -> int:
    """Bytes of the parameters and buffers as stored (fp8 counts 1 per element); shared storage once."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def step_times(clock, dit, inputs, reps) -> list:
    import torch

    times = []
    with torch.no_grad():
        for _ in range(reps):
            t = {}
            with clock.time(t, "s"):
                dit(**inputs)
            times.append(t["s"])
    return times


def cache_rows(handle, clock, args) -> list:
    """The sample stage at the first size with the step cache off and on, interleaved image by image."""
    pipe, size = handle.pipe, args.sizes[0]
    with handle.stage("encode"):
        think = pipe.think([PROMPT], guidance=args.cfg > 1.0)
    with handle.stage("bridge"):
        cond = pipe.bridge(think)
    times: dict = {"off": [], "on": []}
    latents, skipped = {}, []
    with handle.stage("sample"):
        for rep in range(args.reps + 1):  # the first pair warms up
            for name, threshold in (("off", 0.0), ("on", args.step_cache)):
                t = {}
                with clock.time(t, "s"):
                    latents[name] = pipe.sample(
                        cond, size, size, num_steps=args.steps, cfg_scale=args.cfg, seed=args.seed, step_cache=threshold
                    )
                if rep:
                    times[name].append(t["s"])
            skipped.append(pipe.last_step_cache.skipped)
    off, on = median(times["off"]), median(times["on"])
    err = float((latents["on"].float() - latents["off"].float()).abs().max())
    what = f"the sample stage of t2i {size}², {args.steps} steps, CFG {args.cfg:g}"
    return [
        row("step cache", f"sampling, step cache off, {size}²", off, "s/image", 1.0, "cache off", what),
        row(
            "step cache",
            f"sampling, step cache on, {size}²",
            on,
            "s/image",
            on / off,
            "cache off",
            f"First Block Cache, threshold {args.step_cache:g}: {skipped[-1]} of {args.steps} steps reused; "
            f"final latents max |Δ| {err:.3g} vs off (random weights skip differently from the release)",
        ),
    ]


def dit_inputs(model, args, size):
    import torch

    from deepgen.pipeline import DeepGenPipeline

    ours = model.transformer
    cond = DeepGenPipeline(model).encode([PROMPT], guidance=args.cfg > 1.0)
    context = torch.cat([cond.negative_context, cond.context]) if cond.has_negative else cond.context
    pooled = torch.cat([cond.negative_pooled, cond.pooled]) if cond.has_negative else cond.pooled
    batch, dtype = context.shape[0], ours.dtype
    generator = torch.Generator("cpu").manual_seed(args.seed)
    latents = torch.randn(batch, ours.config.in_channels, size // 8, size // 8, generator=generator)
    return {
        "hidden_states": latents.to(ours.device, dtype),
        "encoder_hidden_states": context.to(dtype),
        "pooled_projections": pooled.to(dtype),
        "timestep": torch.full((batch,), 500.0, device=ours.device),
    }


def compile_rows(model, clock, args, eager_step) -> list:
    """Our DiT step with its blocks compiled (regional torch.compile), against the eager step; then undone."""
    import torch

    from deepgen.model import speed

    size, dit = args.sizes[0], model.transformer
    inputs = dit_inputs(model, args, size)
    with torch.no_grad():
        eager = dit(**inputs).sample
    speed.compile_blocks(dit, backend=args.compile_backend)
    try:
        first: dict = {}
        with clock.time(first, "s"), torch.no_grad():
            compiled = dit(**inputs).sample  # compiles
        step_times(clock, dit, inputs, 1)  # a second call at the same shapes may still specialise
        step = median(step_times(clock, dit, inputs, args.dit_reps))
    finally:
        speed.uncompile_blocks(dit)
    err = float((compiled.float() - eager.float()).abs().max())
    return [
        row("compile", f"DiT step, compile off, {size}²", eager_step * 1e3, "ms/step", 1.0, "compile off", "eager"),
        row(
            "compile",
            f"DiT step, torch.compile on, {size}²",
            step * 1e3,
            "ms/step",
            step / eager_step,
            "compile off",
            f"regional compile of the blocks, backend {args.compile_backend}; first call (compiling) "
            f"{first['s']:.1f} s; velocity max |Δ| {err:.3g} vs eager; median of {args.dit_reps}",
        ),
    ]


def fp8_rows(handle, model, clock, args, dtype_name, eager_step, peak_first) -> list:
    """The same model with its DiT and VLM towers stored in fp8 (deepgen.loading.fp8, in place: run last)."""
    from deepgen.loading.fp8 import apply_fp8

    size = args.sizes[0]
    before = weight_bytes(model)
    apply_fp8(model, model.dtype)
    after = weight_bytes(model)
    step = median(step_times(clock, model.transformer, dit_inputs(model, args, size), args.dit_reps + 1)[1:])
    rows = [
        row(
            "precision",
            f"DiT step {dtype_name}, {size}²",
            eager_step * 1e3,
            "ms/step",
            1.0,
            dtype_name,
            "ours, as above",
        ),
        row(
            "precision",
            f"DiT step fp8 weights, {size}²",
            step * 1e3,
            "ms/step",
            step / eager_step,
            dtype_name,
            f"DiT + VLM towers stored in float8_e4m3fn, each layer upcast to {dtype_name}; median of {args.dit_reps}",
        ),
        row(
            "precision",
            "weights, fp8",
            after / 2**30,
            "GiB",
            after / before,
            dtype_name,
            f"counted from the modules: {before / 2**30:.2f} GiB in {dtype_name}",
        ),
    ]
    generate(handle, clock, size, min(2, args.steps), args.cfg, args.seed)  # warm-up at the new dtypes
    clock.reset_peak()
    generate(handle, clock, size, args.steps, args.cfg, args.seed)
    allocated, reserved = clock.peak_gib()
    if allocated is None or peak_first is None:
        rows.append(row("precision", f"peak VRAM fp8 weights, {size}²", NO_CUDA, "GiB", baseline=dtype_name))
    else:
        rows.append(
            row(
                "precision",
                f"peak VRAM fp8 weights, {size}²",
                allocated,
                "GiB",
                allocated / peak_first,
                f"{dtype_name}, keep_all_on_gpu",
                f"t2i {size}², keep_all_on_gpu; reserved {reserved:.2f} GiB",
            )
        )
    return rows


def markdown(rows: list) -> str:
    def cell(value, digits=3):
        if value is None:
            return "–"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    cells = [
        [r["section"], r["name"], cell(r["value"]), r["unit"], cell(r["ratio"], 2), r["baseline"], r["note"]]
        for r in rows
    ]
    return table(["section", "row", "value", "unit", "ratio", "vs", "note"], cells, markdown=True, align="llrlrll")


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_args(argv)
    import torch

    from deepgen.devices import pick_dtype

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda but torch sees no CUDA device; use --device cpu --tiny for the CPU check")
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.cuda.set_device(device)
    elif not args.tiny:
        print("warning: real sizes on a non-CUDA device; this is slow (use --tiny for the CPU check)", file=sys.stderr)
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    os.environ["DEEPGEN_DEVICE"] = str(device)  # the node handle's compute device outside ComfyUI
    dtype = pick_dtype(args.dtype, device)
    dtype_name = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    clock, started = Clock(device), time.perf_counter()

    setup: dict = {}
    with clock.time(setup, "load"):
        model, weights = load(args, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    from nodes.model_handle import DeepGenModelHandle

    handle = DeepGenModelHandle(model, name=NAME, memory_mode="keep_all_on_gpu")
    handle.activate()
    rows = [row("setup", "model load / build", setup["load"], "s", note=f"{weights}; {params / 1e9:.3f} B parameters")]
    speed, images = speed_rows(handle, clock, args)
    dit, dit_steps = dit_rows(model, clock, args, device_name)
    memory, peak_first = memory_rows(model, clock, args)
    first = args.sizes[0]
    features = cache_rows(handle, clock, args) + compile_rows(model, clock, args, dit_steps[first])
    features += fp8_rows(handle, model, clock, args, dtype_name, dit_steps[first], peak_first)  # last: in place
    rows += speed + memory + features + dit
    elapsed = time.perf_counter() - started

    print(
        f"# bench_gpu: {device_name or device.type}, {dtype_name}, {weights}, torch {torch.__version__}, "
        f"{elapsed:.0f} s in all\n"
    )
    print(markdown(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "machine": {
                **machine(),
                "device": device_name or device.type,
                "dtype": dtype_name,
                "weights": weights,
                "elapsed_s": elapsed,
            },
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "rows": rows,
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
