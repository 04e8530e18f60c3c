"""The DiT speed switches (deepgen.model.speed): step cache, SDPA backend, regional torch.compile."""

from __future__ import annotations

import os

import pytest
import torch
from official_fixture import load_official

from deepgen.errors import InputError
from deepgen.model import speed
from deepgen.pipeline import DeepGenPipeline

STEPS = 12


@pytest.fixture(scope="module")
def pipe():
    return DeepGenPipeline(load_official())


@pytest.fixture(scope="module")
def cond(pipe):
    return pipe.encode(["a red cube on a table"])


def count_calls(module, calls: list):
    return module.register_forward_hook(lambda *_: calls.append(1))


def run(pipe, cond, **kwargs):
    """(latents, attention calls of an inner block, of the last block, the steps' cache_reused flags)."""
    blocks = pipe.model.transformer.transformer_blocks
    inner, last, flags = [], [], []
    hooks = [count_calls(blocks[1].attn, inner), count_calls(blocks[-1].attn, last)]
    try:
        x = pipe.sample(cond, 64, 64, num_steps=STEPS, seed=3, on_step=lambda s: flags.append(s.cache_reused), **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return x, len(inner), len(last), flags


def test_step_cache_off_by_default_and_runs_every_block(pipe, cond):
    x, inner, last, flags = run(pipe, cond)
    assert (inner, last) == (STEPS, STEPS) and not any(flags)
    assert pipe.last_step_cache is None


def test_step_cache_skips_the_inner_blocks_on_reused_steps(pipe, cond):
    ref, *_ = run(pipe, cond)
    x, inner, last, flags = run(pipe, cond, step_cache=0.5)
    stats = pipe.last_step_cache
    assert stats is not None and stats.reused == flags and len(flags) == STEPS
    assert 0 < stats.skipped < STEPS, "the threshold should skip some steps on the fixture, not all"
    assert inner == STEPS - stats.skipped  # an inner block runs only on computed steps
    assert last == STEPS  # the last (context_pre_only) block always runs
    assert not flags[0]  # nothing to reuse on the first step
    assert 0 < (x - ref).abs().max() < 0.5


def test_step_cache_with_a_tiny_threshold_changes_nothing_and_leaves_no_hooks(pipe, cond):
    ref, *_ = run(pipe, cond)
    x, inner, _, flags = run(pipe, cond, step_cache=1e-9)
    assert inner == STEPS and not any(flags)
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    for block in pipe.model.transformer.transformer_blocks:
        registry = getattr(block, "_diffusers_hook", None)
        assert registry is None or not registry.hooks, "the cache hooks must be gone after the run"


def test_step_cache_refuses_negative_thresholds(pipe, cond):
    with pytest.raises(ValueError, match="step_cache"):
        pipe.sample(cond, 64, 64, num_steps=1, step_cache=-0.1)


def dit_inputs(dit):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, 16, 8, 8, generator=g),
        torch.randn(2, 5, dit.config.joint_attention_dim, generator=g),
        torch.randn(2, dit.config.pooled_projection_dim, generator=g),
        torch.tensor([500.0, 500.0]),
    )


@pytest.mark.parametrize("backend", ["flash", "math"])
def test_sdpa_backend_forced_gives_the_same_velocity(pipe, backend):
    dit = pipe.model.transformer
    inputs = dit_inputs(dit)
    with torch.no_grad():
        ref = dit(*inputs).sample
        try:
            dit.sdpa_backend = backend
            out = dit(*inputs).sample
        finally:
            dit.sdpa_backend = "auto"
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_sdpa_backend_reaches_attention(pipe):
    """The memory-efficient kernel is CUDA-only: forcing it on the CPU must fail, which proves it is forced; the
    error says what each kernel needs, with torch's own words kept as its cause."""
    dit = pipe.model.transformer
    dit.sdpa_backend = "efficient"
    try:
        with torch.no_grad(), pytest.raises(InputError, match="sdpa_backend 'efficient' cannot run") as caught:
            dit(*dit_inputs(dit))
    finally:
        dit.sdpa_backend = "auto"
    assert "efficient needs a CUDA GPU" in str(caught.value) and "torch said: No viable backend" in str(caught.value)
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_loader_wires_the_switches():
    model = load_official(sdpa_backend="math", compile_dit=True)
    assert model.transformer.sdpa_backend == "math"
    assert speed.compiled_blocks(model.transformer) == len(model.transformer.transformer_blocks)
    with pytest.raises(InputError, match="sdpa_backend"):
        load_official(sdpa_backend="fast")


def test_regional_compile_gives_the_same_velocity():
    """aot_eager traces each block through dynamo and AOT autograd (the graph capture inductor compiles) in a
    few seconds; inductor itself takes minutes on a CPU: DEEPGEN_SLOW_TESTS=1 runs it too."""
    backends = ["aot_eager"] + (["inductor"] if os.environ.get("DEEPGEN_SLOW_TESTS") else [])
    for backend in backends:
        dit = load_official().transformer
        inputs = dit_inputs(dit)
        with torch.no_grad():
            ref = dit(*inputs).sample
            speed.compile_blocks(dit, backend=backend)
            assert speed.compiled_blocks(dit) == len(dit.transformer_blocks)
            out = dit(*inputs).sample
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_cli_flags_reach_the_options():
    from deepgen.cli import build_parser, check_sampling_args

    args = build_parser().parse_args(
        ["generate", "--prompt", "x", "--compile", "--sdpa-backend", "math", "--step-cache", "0.1"]
    )
    assert (args.compile, args.sdpa_backend, args.step_cache) == (True, "math", 0.1)
    check_sampling_args(args)
    args.step_cache = -0.1
    with pytest.raises(InputError, match="--step-cache"):
        check_sampling_args(args)


def test_switches_hold_for_one_run_and_their_compiled_blocks_go_with_the_model():
    """`Switches` (the ComfyUI speed node's): on inside `applied`, as before after it; "auto" and compile off keep
    what the loader set; the compiled blocks are kept with the DiT and freed with it."""
    import gc
    import weakref

    from deepgen.model.dit import DeepGenTransformer2DModel
    from deepgen.tiny import TINY_TRANSFORMER

    dit = DeepGenTransformer2DModel(**TINY_TRANSFORMER).eval()
    blocks = len(dit.transformer_blocks)
    inputs = dit_inputs(dit)
    with torch.no_grad():
        ref = dit(*inputs).sample
        with speed.Switches(compile=True, sdpa_backend="math", compile_backend="eager").applied(dit):
            assert dit.sdpa_backend == "math" and speed.compiled_blocks(dit) == blocks
            out = dit(*inputs).sample
        assert dit.sdpa_backend == "auto" and speed.compiled_blocks(dit) == 0
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)

        speed.configure(dit, compile=True, sdpa_backend="math", backend="eager")  # as load_model(compile_dit=True)
        loaded = [b._compiled_call_impl for b in dit.transformer_blocks]
        with speed.Switches().applied(dit):
            assert dit.sdpa_backend == "math" and [b._compiled_call_impl for b in dit.transformer_blocks] == loaded
        with speed.Switches(compile=True, sdpa_backend="flash", compile_backend="eager").applied(dit):
            assert dit.sdpa_backend == "flash" and dit.transformer_blocks[0]._compiled_call_impl is not loaded[0]
        assert dit.sdpa_backend == "math" and [b._compiled_call_impl for b in dit.transformer_blocks] == loaded

    assert dit in speed._COMPILED
    gone = weakref.ref(dit)
    del dit, loaded
    gc.collect()
    assert gone() is None, "the kept compiled blocks must not keep the model alive"
