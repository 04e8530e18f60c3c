"""The real-size model for benchmarks: its configs, random weights built straight on the target device (never at
real size on the CPU), the FLOPs of one DiT step from its config, and the peak FLOP/s of known GPUs."""

from __future__ import annotations

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name().
# The first match wins, so the more specific names come first.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
)
DEFAULT_PEAK_TFLOPS = 989.0  # H100/H200 SXM, bf16 dense


def model_spec(tiny: bool) -> dict:
    """Configs of every part: the tiny demo's (deepgen.tiny), or the real ones (deepgen-reference.md §1.2, §1.5,
    §1.7: Qwen2.5-VL-3B-Instruct, the official connector, the SD3.5-Medium DiT; the SD3.5 VAE)."""
    from deepgen import tiny as T
    from deepgen.model.connector import ConnectorConfig

    spec = {
        "vlm": T.TINY_VLM,
        "transformer": T.TINY_TRANSFORMER,
        "vae": T.TINY_VAE,
        "connector": T.TINY_CONNECTOR,
        "num_queries": T.TINY_NUM_QUERIES,
        "scheduler": T.SCHEDULER_CONFIG,
    }
    if tiny:
        return spec
    from deepgen.train.plan_model import REAL_DIT, REAL_VAE, REAL_VLM  # the one home of the real sizes

    vlm, dit, vae = REAL_VLM, REAL_DIT, REAL_VAE
    return {**spec, "vlm": vlm, "transformer": dit, "vae": vae, "connector": ConnectorConfig(), "num_queries": 128}


def skeleton(spec: dict, include_buffers: bool = False):
    """A DeepGenModel whose parameters are on the meta device (no memory). Buffers are built for real unless
    include_buffers (they are computed, not random: the DiT's sin-cos grid, the VLM's rotary frequencies)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

    from deepgen.model.deepgen import DeepGenModel
    from deepgen.model.dit import DeepGenTransformer2DModel
    from deepgen.tokenizer import demo_tokenizer

    with init_empty_weights(include_buffers=include_buffers):
        lmm = AutoModelForImageTextToText.from_config(
            Qwen2_5_VLConfig.from_dict(spec["vlm"]), attn_implementation="sdpa"
        )
        dit = DeepGenTransformer2DModel.from_config(spec["transformer"])
        vae = AutoencoderKL.from_config(spec["vae"])
        return DeepGenModel(
            lmm,
            demo_tokenizer(),
            dit,
            vae,
            spec["connector"],
            num_queries=spec["num_queries"],
            scheduler_config=spec["scheduler"],
        )


def materialize(module, device, dtype, seed: int = 0):
    """Give a skeleton's meta parameters real storage on `device`, in `dtype`, and a cheap deterministic init
    made there: matrices and kernels N(0, 1/fan_in), other weights (norms) 1, biases 0. Buffers keep the values
    they were built with (and their dtype), copied to `device`."""
    import torch

    buffers = dict(module.named_buffers())
    for param in module.parameters():
        param.data = param.data.to(dtype)  # still meta: free
    module.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            buffer.copy_(buffers[name])
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, (param[0].numel()) ** -0.5, generator=generator)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)
    return module


def random_model(spec: dict, device, dtype, seed: int = 0):
    model = materialize(skeleton(spec), device, dtype, seed)
    model.lmm.tie_weights()  # lm_head shares the embedding, as in the release
    return model.eval()


def load(args, device, dtype):
    """(model, what it is)."""
    if args.checkpoint:
        from deepgen.loading import load_model

        return load_model(args.checkpoint, args.vlm, args.diffusion, dtype=dtype, device=device), "real weights"
    kind = "tiny demo sizes" if args.tiny else "real sizes"
    return random_model(model_spec(args.tiny), device, dtype, args.seed), f"random weights, {kind}"


# ---- FLOPs of one DiT step, from its config ------------------------------------------------------------------


def dit_step_flops(config, image_tokens: int, context_tokens: int, batch: int) -> int:
    """FLOPs of one forward of the SD3/DeepGen DiT, counted from the config (a multiply-add = 2 FLOPs).

    D = num_attention_heads·attention_head_dim (= caption_projection_dim), N image tokens (target + references,
    per row), M context tokens, J = joint_attention_dim, P = pooled_projection_dim, C = in_channels,
    p = patch_size, B rows (2 with CFG: negative + prompt). Linear a→b on T tokens: 2·T·a·b.
      per joint block:
        image q,k,v,out                 8·N·D²
        context q,k,v (+ out)           6·M·D² (+ 2·M·D²; the last block is context_pre_only: no out, no MLP)
        joint attention QKᵀ and A·V     4·(N+M)²·D
        image MLP D→4D→D                16·N·D²;  context MLP 16·M·D² (not in the last block)
        AdaLN modulation of temb        2·D·(6D or 9D for dual blocks) + 2·D·(6D, or 2D when context_pre_only)
        dual blocks (dual_attention_layers) add image-only attention: 8·N·D² + 4·N²·D
      once: patch embedding 2·N·C·p²·D, context_embedder 2·M·J·D, timestep MLP 2·(256·D + D²), pooled MLP
        2·(P·D + D²), norm_out 2·D·2D, proj_out 2·N·D·p²·C_out.
    All of that × B. Norms, softmax, activations and the residual adds are elementwise and left out (< 1 %).
    tests/test_bench_gpu.py checks this against torch's FlopCounterMode on the tiny DiT.
    """
    c = config
    d, n, m = c.num_attention_heads * c.attention_head_dim, image_tokens, context_tokens
    dual = set(c.dual_attention_layers or ())
    per_row = 0
    for i in range(c.num_layers):
        pre_only = i == c.num_layers - 1
        per_row += 8 * n * d * d + 6 * m * d * d + 4 * (n + m) ** 2 * d + 16 * n * d * d
        per_row += 0 if pre_only else 2 * m * d * d + 16 * m * d * d
        per_row += 2 * d * (9 if i in dual else 6) * d + 2 * d * (2 if pre_only else 6) * d
        if i in dual:
            per_row += 8 * n * d * d + 4 * n * n * d
    patch = c.patch_size**2
    per_row += 2 * n * c.in_channels * patch * d + 2 * m * c.joint_attention_dim * d
    per_row += 2 * (256 * d + d * d) + 2 * (c.pooled_projection_dim * d + d * d) + 2 * d * 2 * d
    per_row += 2 * n * d * patch * c.out_channels
    return batch * per_row


def peak_tflops(given: float | None, device_name: str | None) -> tuple[float | None, str]:
    """(peak TFLOP/s for MFU, where it came from): --peak-tflops, else the GPU name, else the H100 figure."""
    if given:
        return given, "--peak-tflops"
    if device_name is None:
        return None, "CPU: pass --peak-tflops for an MFU"
    for key, value in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return value, f"{key} bf16 dense"
    return DEFAULT_PEAK_TFLOPS, f"unknown GPU {device_name!r}: assumed the H100 bf16 peak; pass --peak-tflops"


# ---- measuring ------------------------------------------------------------------------------------------------
