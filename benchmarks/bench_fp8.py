"""fp8 weights (`weight_dtype="fp8_e4m3fn"`): weight bytes at the real size, and output drift against bf16 / fp32.

    python benchmarks/bench_fp8.py [--no-medium]

- bytes: the real-size DeepGen 1.0 built on the meta device (nothing allocated), bf16 vs fp8, per part;
- drift on the official tiny fixture (its t2i and edit runs: prompts, 64², 4 steps, cfg 4, the saved noise):
  first-step velocity max |error| and decoded-image PSNR, fp32 / bf16 / fp8 (bf16 compute);
- drift on a medium random model (the real DiT width with 4 blocks, the real VLM text width, 36 layers with a
  2048 MLP): bf16 vs fp8 only, as the same model cast in place (the real size does not fit this machine).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _common import machine, table, write_results  # noqa: E402

NAME = "bench_fp8"
GB = 1e9


def part_of(name: str) -> str:
    if name.startswith("transformer."):
        return "DiT"
    if name.startswith("lmm.model.language_model."):
        return "VLM text"
    if name.startswith("lmm."):
        return "VLM vision"
    return "VAE" if name.startswith("vae.") else "SCB"


def part_bytes(model) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        out[part_of(name)] = out.get(part_of(name), 0) + t.numel() * t.element_size()
    return out


def real_size_bytes() -> dict:
    import torch
    from _real_size import model_spec, skeleton

    from deepgen.loading.fp8 import apply_fp8

    model = skeleton(model_spec(False), include_buffers=True).to(torch.bfloat16)
    bf16 = part_bytes(model)
    apply_fp8(model, torch.bfloat16)
    return {"bf16": bf16, "fp8": part_bytes(model)}


def psnr(a, b) -> float:
    """Of decoded images in [-1, 1], clamped as a user gets them (peak-to-peak 2)."""
    mse = float(((a.float().clamp(-1, 1) - b.float().clamp(-1, 1)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4 / mse)


def run_case(pipe, case: dict):
    """(first-step velocity of the CFG batch, decoded image) for one t2i or edit case."""
    import torch

    cond = pipe.encode(case["prompts"], references=case.get("refs"), **case.get("encode", {}))
    noise = case["noise"]
    scheduler = pipe.make_scheduler()
    scheduler.set_timesteps(case["steps"])
    refs = None if cond.reference_latents is None else cond.reference_latents * 2
    with torch.no_grad():
        velocity = pipe.model.velocity(
            torch.cat([noise, noise]),
            scheduler.timesteps[0].expand(2 * len(cond)),
            torch.cat([cond.negative_context, cond.context]),
            torch.cat([cond.negative_pooled, cond.pooled]),
            refs,
        )
        latents = pipe.sample(cond, case["height"], case["width"], num_steps=case["steps"], latents=noise)
        image = pipe.decode(latents)
    return velocity.float(), image.float()


def fixture_cases() -> dict[str, dict]:
    import json

    from official_fixture import OFFICIAL
    from safetensors.torch import load_file

    ref = load_file(str(OFFICIAL / "reference.safetensors"))
    runs = json.loads((OFFICIAL / "reference.json").read_text())["runs"]
    common = {"steps": 4, "height": 64, "width": 64}
    return {
        "t2i": {**common, "prompts": runs["t2i"]["prompts"], "noise": ref["t2i.noise"]},
        "edit": {
            **common,
            "prompts": runs["edit"]["prompts"],
            "noise": ref["edit.noise"],
            "refs": [[ref["edit.ref_pixels.s0.r0"]]],
            "encode": {"reference_resize": "keep", "reference_noise": [[ref["edit.ref_eps.s0.r0"]]]},
        },
    }


def compare(a, b) -> dict:
    (va, ia), (vb, ib) = a, b
    return {
        "velocity_max_err": float((va - vb).abs().max()),
        "velocity_max_ref": float(vb.abs().max()),
        "image_psnr_db": psnr(ia, ib),
    }


def fixture_drift(cases: dict) -> dict:
    import torch
    from official_fixture import load_official

    from deepgen.pipeline import DeepGenPipeline

    variants = {
        "fp32": {"dtype": torch.float32},
        "bf16": {"dtype": torch.bfloat16},
        "fp8": {"dtype": torch.bfloat16, "weight_dtype": "fp8_e4m3fn"},
    }
    outs = {}
    for name, kwargs in variants.items():
        pipe = DeepGenPipeline(load_official(**kwargs))
        outs[name] = {case: run_case(pipe, spec) for case, spec in cases.items()}
    pairs = (("bf16", "fp32"), ("fp8", "fp32"), ("fp8", "bf16"))
    return {f"{a} vs {b}": {c: compare(outs[a][c], outs[b][c]) for c in cases} for a, b in pairs}


def medium_spec() -> dict:
    from _real_size import model_spec

    spec = model_spec(False)
    vlm = spec["vlm"]
    return {
        **spec,
        "vlm": {
            **vlm,
            "text_config": {**vlm["text_config"], "intermediate_size": 2048},
            "vision_config": {**vlm["vision_config"], "depth": 2, "fullatt_block_indexes": [1]},
        },
        "transformer": {
            **spec["transformer"],
            "num_layers": 4,
            "dual_attention_layers": [0, 1],
            "pos_embed_max_size": 64,
        },
    }


def medium_drift() -> dict:
    import torch
    from _real_size import random_model

    from deepgen.loading.fp8 import apply_fp8
    from deepgen.pipeline import DeepGenPipeline

    torch.manual_seed(0)
    model = random_model(medium_spec(), "cpu", torch.bfloat16)
    image = torch.rand(3, 128, 128) * 2 - 1
    cases = {
        "t2i": {"steps": 4, "height": 128, "width": 128, "prompts": ["a red cat"], "noise": torch.randn(1, 16, 16, 16)},
        "edit": {
            "steps": 4,
            "height": 128,
            "width": 128,
            "prompts": ["make it blue"],
            "noise": torch.randn(1, 16, 16, 16),
            "refs": [[image]],
            "encode": {"reference_resize": "keep", "reference_noise": [[torch.randn(16, 16, 16)]]},
        },
    }
    params = sum(p.numel() for p in model.parameters())
    bf16 = {c: run_case(DeepGenPipeline(model), spec) for c, spec in cases.items()}
    apply_fp8(model, torch.bfloat16)  # the same weights, now stored in fp8
    fp8 = {c: run_case(DeepGenPipeline(model), spec) for c, spec in cases.items()}
    return {"params_m": params / 1e6, "fp8 vs bf16": {c: compare(fp8[c], bf16[c]) for c in cases}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-medium", action="store_true", help="skip the medium random model (about 3 GB)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    sizes = real_size_bytes()
    parts = list(sizes["bf16"])
    rows = [[p, f"{sizes['bf16'][p] / GB:.2f}", f"{sizes['fp8'][p] / GB:.2f}"] for p in parts]
    rows.append(["total", *(f"{sum(sizes[k].values()) / GB:.2f}" for k in ("bf16", "fp8"))])
    print(table(["part", "bf16 GB", "fp8 GB"], rows, markdown=True))
    results = {"machine": machine(), "real_size_bytes": sizes, "fixture": fixture_drift(fixture_cases())}
    if not args.no_medium:
        results["medium"] = medium_drift()
    drift = [("fixture " + pair, cases) for pair, cases in results["fixture"].items()]
    if "medium" in results:
        drift.append(("medium fp8 vs bf16", results["medium"]["fp8 vs bf16"]))
    rows = [
        [what, case, f"{m['velocity_max_err']:.4g}", f"{m['velocity_max_ref']:.3g}", f"{m['image_psnr_db']:.1f}"]
        for what, cases in drift
        for case, m in cases.items()
    ]
    print(table(["model, pair", "run", "velocity max |err|", "max |velocity|", "image PSNR dB"], rows, markdown=True))
    print(write_results(NAME, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
