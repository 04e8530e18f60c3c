"""benchmarks/bench_gpu.py: argument parsing, the real-size configs, the FLOP formula and the CPU run (--tiny).

The GPU run itself needs a lent device; these tests check everything else, with no wall-clock assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bench_kit import assert_argparse_error, load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_gpu")


@pytest.fixture(scope="module")
def real_size(bench):  # bench_gpu put benchmarks/ on sys.path for its helpers
    return load_script("_real_size")


# ---- arguments ----------------------------------------------------------------------------------------------


def test_defaults(bench):
    args = bench.parse_args([])
    assert args.device == "cuda" and args.dtype == "auto" and not args.tiny
    assert args.checkpoint is None and args.vlm is None and args.diffusion is None
    assert args.sizes == [512, 1024] and args.steps == 50 and args.cfg == 4.0
    assert args.reps == 2 and args.dit_reps == 10 and args.seed == 0 and args.json is None and args.threads is None
    assert args.memory_modes == ["keep_all_on_gpu", "offload_vlm_after_encode", "sequential_offload"]
    assert args.peak_tflops is None  # from the GPU name


def test_tiny_defaults_and_values(bench, tmp_path):
    args = bench.parse_args(
        [
            "--device",
            "cpu",
            "--tiny",
            "--steps",
            "2",
            "--json",
            str(tmp_path / "o.json"),
            "--memory-modes",
            "sequential_offload",
            "--peak-tflops",
            "1.5",
        ]
    )
    assert args.device == "cpu" and args.tiny and args.sizes == [64, 128] and args.steps == 2
    assert args.json == tmp_path / "o.json" and args.memory_modes == ["sequential_offload"]
    assert args.peak_tflops == 1.5
    assert bench.parse_args(["--tiny", "--sizes", "32"]).sizes == [32]
    real = bench.parse_args(["--checkpoint", "m.safetensors", "--vlm", "q", "--diffusion", "u"])
    assert (real.checkpoint, real.vlm, real.diffusion) == ("m.safetensors", "q", "u")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "must be > 0"),
        (["--steps", "two"], "is not an integer"),
        (["--reps", "-1"], "must be > 0"),
        (["--dit-reps", "0"], "must be > 0"),
        (["--threads", "0"], "must be > 0"),
        (["--cfg", "0"], "must be > 0"),
        (["--peak-tflops", "-3"], "must be > 0"),
        (["--sizes", "500"], "multiples of 16"),
        (["--sizes"], "expected at least one argument"),
        (["--dtype", "fp8"], "invalid choice"),
        (["--memory-modes", "all_on_gpu"], "invalid choice"),
        (["--device", "gpu0"], "not a torch device name"),
        (["--tiny", "--checkpoint", "m.pt"], "--tiny builds random tiny weights"),
        (["--vlm", "q"], "go with --checkpoint"),
    ],
)
def test_bad_values_are_argparse_errors(bench, capsys, argv, message):
    assert_argparse_error(bench.parse_args, argv, message, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when there is no CUDA device")
def test_cuda_without_a_gpu_is_a_clear_error(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--tiny"])
    assert exc.value.code == 2
    assert "--device cpu --tiny" in capsys.readouterr().err


def test_peak_tflops(bench):
    assert bench.peak_tflops(None, "NVIDIA H100 80GB HBM3") == (989.0, "H100 bf16 dense")
    assert bench.peak_tflops(None, "NVIDIA H200")[0] == 989.0
    assert bench.peak_tflops(None, "NVIDIA H100 PCIe")[0] == 756.0
    assert bench.peak_tflops(None, "Some GPU")[0] == bench.DEFAULT_PEAK_TFLOPS
    assert bench.peak_tflops(400.0, "NVIDIA H100 80GB HBM3") == (400.0, "--peak-tflops")
    assert bench.peak_tflops(None, None)[0] is None


# ---- the model it builds ------------------------------------------------------------------------------------


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_real_size_skeleton_has_the_release_sizes(real_size):
    """The random real-size model is the release's shape: the counts of deepgen-reference.md §1.1 (the project's
    shared reference notes)."""
    model = real_size.skeleton(real_size.model_spec(tiny=False), include_buffers=True)  # all on meta: no memory
    scb = sum(_count(getattr(model, n)) for n in ("connector", "projector_1", "projector_2", "projector_3"))
    assert _count(model.transformer) == 2_243_171_520
    assert _count(model.connector) == 394_430_460
    assert scb + model.meta_queries.numel() == 432_449_532
    assert _count(model.lmm) == 3_754_622_976  # Qwen2.5-VL-3B-Instruct, tied lm_head counted once
    assert model.num_queries == 128 and model.num_vlm_layers == 36
    assert model.vae.config.latent_channels == 16 and model.vae.config.scaling_factor == 1.5305


def test_materialize_gives_finite_deterministic_weights(real_size):
    spec = real_size.model_spec(tiny=True)
    a = real_size.random_model(spec, "cpu", torch.float32, seed=3)
    b = real_size.random_model(spec, "cpu", torch.float32, seed=3)
    reference = real_size.skeleton(spec)  # its buffers are built for real
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert pa.device.type == "cpu" and torch.isfinite(pa).all(), name
        assert torch.equal(pa, pb), name
    for name, buffer in reference.named_buffers():
        assert torch.equal(a.get_buffer(name), buffer), name
    assert a.lmm.get_output_embeddings().weight is a.lmm.get_input_embeddings().weight
    width = spec["connector"].hidden_size
    assert torch.equal(a.connector.layers[0].layer_norm1.weight, torch.ones(width))  # norms start at 1
    assert torch.equal(a.connector.layers[0].layer_norm1.bias, torch.zeros(width))


# ---- FLOPs ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dual", [[0, 1], [1, 3], []])
@pytest.mark.parametrize("latent, context, batch", [(16, 43, 2), (32, 10, 1)])
def test_flop_formula_matches_torch_flop_counter(bench, dual, latent, context, batch):
    """The formula counts exactly what torch's FlopCounterMode counts (SDPA in its math form, so its matmuls
    are counted too) on the tiny DiT: every linear, the patch conv and the attention matmuls."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from deepgen.model.dit import DeepGenTransformer2DModel
    from deepgen.tiny import TINY_TRANSFORMER

    dit = DeepGenTransformer2DModel.from_config({**TINY_TRANSFORMER, "dual_attention_layers": dual}).eval()
    c = dit.config
    inputs = (
        torch.randn(batch, c.in_channels, latent, latent),
        torch.randn(batch, context, c.joint_attention_dim),
        torch.randn(batch, c.pooled_projection_dim),
        torch.full((batch,), 500.0),
    )
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        dit(*inputs)
    image_tokens = (latent // c.patch_size) ** 2
    assert bench.dit_step_flops(c, image_tokens, context, batch) == counter.get_total_flops()


def test_flops_of_the_real_dit_at_512(bench, real_size):
    """Scale check at 512² with CFG, counted another way. An image token meets 12·D² weights per block (q, k, v,
    out and the 4D-wide MLP) and 4·D² more in the 13 dual blocks; a context token 12·D² (3·D² in the last block:
    q, k, v only). The AdaLN weights (another 12·D² a block) act once per row, not per token. Attention: QKᵀ and
    A·V over all tokens, and over the image tokens again in the dual blocks. Embeddings, AdaLN and the output
    layer add well under 1 %."""
    config = real_size.skeleton(real_size.model_spec(tiny=False), include_buffers=True).transformer.config
    d, rows, image, context = 1536, 2, 1024, 160
    linear = 2 * rows * (image * (24 * 12 + 13 * 4) + context * (23 * 12 + 3)) * d * d
    attention = 4 * rows * (24 * (image + context) ** 2 + 13 * image**2) * d
    flops = bench.dit_step_flops(config, image, context, rows)
    assert linear + attention < flops < 1.01 * (linear + attention)
    assert 4.0e12 < flops < 4.6e12


# ---- the CPU run, as CI runs it -------------------------------------------------------------------------------


def test_tiny_cpu_run_writes_the_documented_rows(tmp_path):
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DEEPGEN_DEVICE", None)
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            *("--device", "cpu", "--tiny", "--steps", "2", "--json", str(out)),
            *("--compile-backend", "aot_eager", "--step-cache", "0.5"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| section" in done.stdout and "| DiT step" in done.stdout  # the markdown table
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert data["machine"]["device"] == "cpu" and data["machine"]["dtype"] == "fp32"
    assert all(tuple(r) == ("section", "name", "value", "unit", "ratio", "baseline", "note") for r in rows)
    by_name = {r["name"]: r for r in rows}
    assert len(by_name) == len(rows)

    measured = [
        "model load / build",
        "text-to-image 64²",
        "text-to-image 128²",
        "edit 64², 1 reference",
        "s/image, keep_all_on_gpu",
        "s/image, offload_vlm_after_encode",
        "s/image, sequential_offload",
        "DiT step fp32, 64²",
        "DiT step, compile off, 64²",
        "sampling, step cache off, 64²",
        "sampling, step cache on, 64²",
        "DiT step, torch.compile on, 64²",
        "DiT step fp8 weights, 64²",
        "weights, fp8",
        "ours, 64²",
        "bare diffusers SD3, 64²",
        "ours, 128²",
        "bare diffusers SD3, 128²",
        "FLOPs, 64²",
        "FLOPs, 128²",
    ]
    for name in measured:
        value = by_name[name]["value"]
        assert isinstance(value, float) and value > 0, (name, value)
    for name in ("DiT step fp8 weights, 64²", "DiT step, torch.compile on, 64²", "sampling, step cache on, 64²"):
        assert isinstance(by_name[name]["ratio"], float) and by_name[name]["ratio"] > 0, name
    # smaller, though not by much on the tiny model: its 151k-token embedding (kept in fp32) dominates
    assert 0 < by_name["weights, fp8"]["ratio"] < 0.95
    assert "steps reused" in by_name["sampling, step cache on, 64²"]["note"]
    assert "backend aot_eager" in by_name["DiT step, torch.compile on, 64²"]["note"]
    for name in (
        "peak VRAM, keep_all_on_gpu",
        "peak VRAM, offload_vlm_after_encode",
        "peak VRAM, sequential_offload",
        "peak VRAM fp8 weights, 64²",
    ):
        assert by_name[name]["value"] == "n/a (no CUDA device)"
    assert by_name["MFU, 64²"]["value"].startswith("n/a (CPU")  # no peak figure for a CPU
    for name in ("text-to-image 64²", "s/image, keep_all_on_gpu", "ours, 64²"):
        assert isinstance(by_name[name]["ratio"], float) and by_name[name]["ratio"] > 0
    numeric_na = {r["name"] for r in rows if isinstance(r["value"], str)}
    assert all(v.startswith("n/a") for v in (by_name[n]["value"] for n in numeric_na))
