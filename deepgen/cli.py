"""The `deepgen` command line: generate, edit, convert, info, download (and train, from deepgen.train).

Without --checkpoint, generate/edit use the embedded demo model (tiny, trained on coloured shapes by
scripts/train_demo_model.py), so a fresh install can run end to end offline; point --checkpoint/--vlm/--diffusion at the released files for real images.  What
`deepgen train` exports loads here too: its model.safetensors as --checkpoint (a stage-1 export has no DiT or
VLM LoRA: the DiT comes from --diffusion and the VLM runs without the DeepGen LoRA, which one log line says),
its LoRA files (and the training node's, and stage 3's lora.safetensors) as --lora.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

DTYPES = ("auto", "bf16", "fp16", "fp32")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--checkpoint",
        default="tiny",
        help="DeepGen model.pt/.safetensors, a DeepGen-1.0-diffusers folder, a converted file, "
        "'tiny' (the default: an embedded demo trained on coloured shapes) or 'tiny-random' (random weights)",
    )
    g.add_argument("--vlm", help="Qwen2.5-VL-3B-Instruct folder (official layout)")
    g.add_argument("--diffusion", help="UniPic2-SD3.5M-Kontext folder with transformer/ vae/ scheduler/")
    g.add_argument("--connector-heads", type=int, help="connector attention heads, for non-official widths only")
    g.add_argument("--dtype", choices=DTYPES, default="auto", help="compute dtype")
    g.add_argument(
        "--weight-dtype",
        choices=("default", "fp8", "fp8_e4m3fn"),
        default="default",
        help="fp8: store the DiT and VLM text weights in float8_e4m3fn, each layer upcast to --dtype to run",
    )
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps …")
    g.add_argument("--compile", action="store_true", help="torch.compile the DiT's blocks (slow first image)")
    g.add_argument(
        "--sdpa-backend",
        choices=("auto", "flash", "efficient", "math"),
        default="auto",
        help="force one attention kernel in the DiT (auto: torch picks)",
    )


def add_sampling_args(p: argparse.ArgumentParser, default_size: int | None) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--prompt", action="append", required=True, help="repeat for a batch of prompts")
    g.add_argument("--negative", help="negative prompt (default: the official one)")
    g.add_argument("--width", type=int, default=default_size)
    g.add_argument("--height", type=int, default=default_size)
    g.add_argument("--steps", type=int, default=50)
    g.add_argument("--cfg", type=float, default=4.0)
    g.add_argument("--shift", type=float, help="scheduler shift (default: the scheduler config's)")
    g.add_argument("--seed", type=int, default=0, help="image i of the batch uses seed + i")
    g.add_argument("--num-images", type=int, default=1, help="images per prompt")
    g.add_argument(
        "--step-cache",
        type=float,
        default=0.0,
        metavar="THRESHOLD",
        help="0: off; e.g. 0.1: skip the DiT's inner blocks on steps whose first block barely changed "
        "(faster, slightly different images)",
    )
    g.add_argument("--out", default="outputs", help="output folder, or a .png path for a single image")


def add_lora_args(p: argparse.ArgumentParser) -> None:
    p.add_argument_group("LoRA").add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:STRENGTH]",
        help="a DeepGen LoRA file (from `deepgen train` or the training node) merged into the model with a "
        "strength (default 1.0); repeat to stack several",
    )


def read_lora_args(values: list[str]) -> list:
    """``[(LoraFile, strength)]`` of the --lora values, read before the model loads (a bad file fails fast)."""
    from .errors import InputError
    from .lora import load_lora

    loras = []
    for value in values:
        path, strength = value, 1.0
        head, sep, tail = value.rpartition(":")
        if sep and head:
            try:
                path, strength = head, float(tail)
            except ValueError:
                pass  # the colon belongs to the path (C:\loras\x.safetensors)
        if not math.isfinite(strength):
            raise InputError(f"--lora {value!r}: the strength must be a number such as 0.8")
        loras.append((load_lora(path), strength))
    return loras


def load_pipeline(args):
    from tqdm.auto import tqdm

    from .devices import pick_device, pick_dtype
    from .loading import load_model
    from .pipeline import DeepGenPipeline

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    if args.checkpoint == "tiny":
        print(
            "Using the embedded demo DeepGen (a tiny model trained on coloured shapes: it draws 'a red circle on "
            "a blue background' and the like, 64 px). Pass --checkpoint/--vlm/--diffusion for the released model.",
            file=sys.stderr,
        )
    connector = {"num_attention_heads": args.connector_heads} if args.connector_heads else None
    with tqdm(desc="loading", unit="part", total=None) as bar:  # closed on errors too: the error gets its own line
        model = load_model(
            args.checkpoint,
            args.vlm,
            args.diffusion,
            dtype=dtype,
            device=device,
            connector_config=connector,
            weight_dtype=args.weight_dtype,
            compile_dit=args.compile,
            sdpa_backend=args.sdpa_backend,
            progress=lambda msg: (bar.set_postfix_str(msg), bar.update()),
            allow_pretrain_checkpoint=True,  # a stage-1 export loads; the loader logs what it lacks
        )
    return DeepGenPipeline(model)


def check_sampling_args(args) -> None:
    """Refuse what the model cannot take before anything loads."""
    from .errors import InputError
    from .sizes import check_output_size

    if any(not (p or "").strip() for p in args.prompt):
        raise InputError("--prompt is empty; describe the image (or the edit) you want")
    if args.steps < 1 or args.num_images < 1:
        raise InputError(f"--steps ({args.steps}) and --num-images ({args.num_images}) must be at least 1")
    if not args.step_cache >= 0:
        raise InputError(f"--step-cache must be 0 (off) or a positive threshold such as 0.1, got {args.step_cache}")
    if args.width is not None or args.height is not None:
        check_output_size(args.height or 512, args.width or 512)


def run_sampling(args, references=None) -> list[Path]:
    from tqdm.auto import tqdm

    from .images import to_pil

    check_sampling_args(args)
    loras = read_lora_args(args.lora)
    pipe = load_pipeline(args)
    if loras:
        from .lora import LoraPatcher

        LoraPatcher().apply(pipe.model, loras)  # every file is checked against the model before any is merged
    negatives = [args.negative] * len(args.prompt) if args.negative is not None else None
    with tqdm(total=len(args.prompt), desc="encoding", unit="prompt") as bar:
        cond = pipe.encode(
            args.prompt,
            negatives,
            references,
            guidance=args.cfg > 1.0,
            reference_resize=getattr(args, "resize", "fix_pixels"),
            reference_target=getattr(args, "reference_size", None),
        )
        bar.update(len(args.prompt))
    cond = cond.repeat(args.num_images)
    with tqdm(total=args.steps, desc="sampling", unit="step") as bar:
        latents = pipe.sample(
            cond,
            args.height,
            args.width,
            num_steps=args.steps,
            cfg_scale=args.cfg,
            seed=args.seed,
            shift=args.shift,
            callback=lambda i, n, x: bar.update(),
            step_cache=args.step_cache,
        )
    if pipe.last_step_cache is not None:
        stats = pipe.last_step_cache
        print(f"step cache {stats.threshold:g}: {stats.skipped} of {len(stats.reused)} steps reused", file=sys.stderr)
    with tqdm(total=1, desc="decoding", unit="batch") as bar:
        images = to_pil(pipe.decode(latents))
        bar.update()
    return save_images(images, Path(args.out))


def save_images(images, out: Path) -> list[Path]:
    if out.suffix.lower() == ".png" and len(images) == 1:
        paths = [out]
    else:
        folder = out.with_suffix("") if out.suffix else out
        paths = [folder / f"deepgen_{i:04d}.png" for i in range(len(images))]
    for image, path in zip(images, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        print(path)
    return paths


def cmd_generate(args) -> int:
    run_sampling(args)
    return 0


def cmd_edit(args) -> int:
    from .images import open_image

    refs = [open_image(p) for p in args.image]  # every file checked before the model loads
    run_sampling(args, [refs] * len(args.prompt))
    return 0


def cmd_convert(args) -> int:
    from .devices import pick_dtype
    from .loading import convert_checkpoint

    device = "cpu"
    connector = {"num_attention_heads": args.connector_heads} if args.connector_heads else None
    fp8 = args.dtype == "fp8"  # the DiT and VLM text in float8_e4m3fn, the rest in bf16
    out = convert_checkpoint(
        args.checkpoint,
        args.output,
        args.vlm,
        args.diffusion,
        dtype=pick_dtype("bf16" if fp8 else args.dtype, device),
        connector_config=connector,
        weight_dtype="fp8_e4m3fn" if fp8 else "default",
    )
    print(out)
    return 0


def cmd_info(args) -> int:
    from .loading.inspect import describe

    print(json.dumps(describe(args.path), indent=2))
    return 0


def cmd_download(args) -> int:
    from .download import download_release

    for path in download_release(args.models_dir, args.what):
        print(path)
    return 0


def cmd_demo_data(args) -> int:
    from .demo_world import write_caption_folder

    n = write_caption_folder(args.folder, size=args.size, seed=args.seed, copies=args.copies)
    print(f"wrote {n} captioned pictures to {args.folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepgen", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="text-to-image")
    add_model_args(p)
    add_sampling_args(p, None)  # the model's size: 512, the demo's 64
    add_lora_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("edit", help="edit one or more reference images with an instruction")
    add_model_args(p)
    add_sampling_args(p, None)
    add_lora_args(p)
    p.add_argument("--image", action="append", required=True, help="reference image; repeat for several")
    p.add_argument(
        "--resize",
        default="fix_pixels",
        choices=["fix_pixels", "longest_side", "square", "keep"],
        help="how references are brought to multiples of 32 (default: about 512² pixels)",
    )
    p.add_argument("--reference-size", type=int, help="fix_pixels target (default: 512, the demo model's 64)")
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("convert", help="write one fast-loading .safetensors with configs and tokenizer")
    p.add_argument("checkpoint")
    p.add_argument("output")
    p.add_argument("--vlm")
    p.add_argument("--diffusion")
    p.add_argument("--connector-heads", type=int)
    p.add_argument("--dtype", choices=(*DTYPES, "fp8"), default="bf16", help="fp8: DiT and VLM text in float8_e4m3fn")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="what a checkpoint file or folder holds, and which release layout it is")
    p.add_argument("path")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("download", help="fetch the official files with huggingface_hub (only when you ask)")
    p.add_argument("--models-dir", default="models")
    p.add_argument(
        "--what",
        nargs="+",
        default=["deepgen", "vlm", "diffusion"],
        choices=["deepgen", "vlm", "diffusion", "diffusers"],
    )
    p.set_defaults(func=cmd_download)

    p = sub.add_parser(
        "demo-data", help="captioned pictures of the demo model's world (coloured shapes), a dataset to try training"
    )
    p.add_argument("folder", help="a new or empty folder, e.g. ComfyUI/input/deepgen_lora_dataset")
    p.add_argument(
        "--size", type=int, default=128, help="picture side in pixels (≥ 80, the official data filter's minimum; "
        "training resizes them to its resolution, the demo model's 64)"
    )  # fmt: skip
    p.add_argument("--copies", type=int, default=1, help="pictures per (shape, colour, background): 90 each")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_data)

    try:
        from .train.cli import add_train_parser
    except ImportError:  # the trainer is optional at import time
        add_train_parser = None  # type: ignore[assignment]  # mypy cannot type an optional import
    if add_train_parser is not None:
        add_train_parser(sub)
    return parser


def main(argv=None) -> int:
    """Run one command. A user error prints one `error: ...` line and exits 2; `--debug` (or DEEPGEN_DEBUG=1)
    adds the traceback."""
    from .errors import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, also after the sub-command
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    return run_cli(lambda: args.func(args), debug=debug or None)


if __name__ == "__main__":
    sys.exit(main())
