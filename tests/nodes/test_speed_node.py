"""DeepGenSpeed: the DiT speed switches as a model patch. Off changes nothing, each switch reaches the DiT of the
patched handle's sampling runs only, the input handle samples as before, compiled blocks are made once."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections import Counter
from contextlib import contextmanager

import pytest
import torch

from deepgen.errors import InputError
from deepgen.model.speed import Switches
from nodes import NODE_CLASS_MAPPINGS as N
from nodes import comfy_services as cs

SIZE, STEPS = 64, 6
SAMPLER = dict(width=SIZE, height=SIZE, batch_size=1, steps=STEPS, cfg=4.0, shift=3.0, seed=7)
# On the session's random tiny model the first block's output changes by more than 30 % between most steps;
# 0.5 skips some steps of this run, not all (benchmarks/README.md, "DiT speed switches").
THRESHOLD = 0.5


def speed(handle, compile=False, sdpa_backend="auto", step_cache=0.0):
    (patched,) = N["DeepGenSpeed"]().patch(handle, compile, sdpa_backend, step_cache)
    return patched


@pytest.fixture
def cond(handle):
    (think,) = N["ThinkTokenEncode"]().encode(handle, "a red fox in the snow", "", "fix_pixels")
    return N["SCBBridge"]().bridge(handle, think)[0]


def sample(handle, cond, **settings):
    images, latent = N["DeepGenSampler"]().sample(handle, cond, **{**SAMPLER, **settings})
    return images, latent["samples"]


@contextmanager
def block_runs(model):
    """Counts attention calls of an inner DiT block and of the last one: a block skipped by the step cache is
    still called, but its attention does not run."""
    blocks = model.transformer.transformer_blocks
    counts: Counter = Counter()
    hooks = [
        blocks[1].attn.register_forward_hook(lambda *_: counts.update(["inner"])),
        blocks[-1].attn.register_forward_hook(lambda *_: counts.update(["last"])),
    ]
    try:
        yield counts
    finally:
        for hook in hooks:
            hook.remove()


def no_cache_hooks(model) -> bool:
    return all(
        not getattr(getattr(b, "_diffusers_hook", None), "hooks", None) for b in model.transformer.transformer_blocks
    )


def test_defaults_change_nothing_and_the_input_stays_as_it_was(handle, cond):
    patched = speed(handle)
    assert patched is not handle and patched.model is handle.model and patched.patchers is handle.patchers
    assert patched.speed == handle.speed == Switches()
    images, latents = sample(handle, cond)
    same_images, same_latents = sample(patched, cond)
    assert torch.equal(same_images, images) and torch.equal(same_latents, latents)
    # the switches ride along when a LoRA loader comes after the node
    cached = speed(handle, step_cache=0.2)
    assert cached.with_loras([]).speed == cached.speed and handle.speed == Switches()


def test_step_cache_skips_the_inner_blocks_and_says_which_steps(handle, cond, monkeypatch, caplog):
    shown = []
    monkeypatch.setattr(cs, "send_progress_text", lambda text, node_id: shown.append((node_id, text)))
    with block_runs(handle.model) as plain_runs:
        ref_images, ref = sample(handle, cond)
    assert plain_runs == {"inner": STEPS, "last": STEPS} and handle.pipe.last_step_cache is None and not shown

    cached = speed(handle, step_cache=THRESHOLD)
    with block_runs(handle.model) as runs, caplog.at_level("INFO", logger="nodes.speed"):
        _, latent = N["DeepGenSampler"]().sample(cached, cond, **SAMPLER, unique_id="12")
    latents = latent["samples"]
    stats = cached.pipe.last_step_cache
    assert stats is not None and len(stats.reused) == STEPS and 0 < stats.skipped < STEPS
    assert runs == {"inner": STEPS - stats.skipped, "last": STEPS}  # the last block always runs
    # reusing a step changes the result, not the picture: the relative drift measured 0.14 on the demo model (one of
    # its 6 steps reused at this loose threshold; 0.03 on the previous, blurrier demo)
    assert 0 < ((latents - ref).norm() / ref.norm()).item() < 0.3
    steps = ", ".join(str(i + 1) for i, hit in enumerate(stats.reused) if hit)
    text = f"DeepGen step cache 0.5: {stats.skipped} of {STEPS} steps reused (steps {steps})"
    assert shown == [("12", text)] and text in caplog.text
    # the other branch, without the node, samples exactly as before and no cache hook is left on the DiT
    assert no_cache_hooks(handle.model)
    images, again = sample(handle, cond)
    assert torch.equal(again, ref) and torch.equal(images, ref_images)


def test_edit_uses_the_switches_of_its_model_and_the_conditioning_of_the_input(handle):
    from deepgen.model.vlm import text_tower
    from nodes.edit import clear_conditioning_cache

    image = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(1))
    settings = {**SAMPLER, "width": 0, "height": 0}
    vlm_runs: list = []
    hook = text_tower(handle.model.lmm).register_forward_hook(lambda *_: vlm_runs.append(1))

    def edit(h):
        with block_runs(handle.model) as runs:
            images, latent = N["DeepGenEdit"]().edit(h, image, "make the sky purple", "", **settings)
        return latent["samples"], runs["inner"]

    clear_conditioning_cache()
    try:
        ref, plain_inner = edit(handle)
        same, same_inner = edit(speed(handle))
        assert torch.equal(same, ref) and plain_inner == same_inner == STEPS
        cached = speed(handle, step_cache=THRESHOLD)
        latents, inner = edit(cached)
        stats = cached.pipe.last_step_cache
        assert 0 < stats.skipped < STEPS and inner == STEPS - stats.skipped and not torch.equal(latents, ref)
        # the switches change sampling only: the speed models reuse the input model's conditioning
        assert len(vlm_runs) == 1
        edit(speed(cached, sdpa_backend="math").with_loras([]))  # a LoRA loader after the node: its own entries
        assert len(vlm_runs) == 2
    finally:
        hook.remove()
        clear_conditioning_cache()


def test_sdpa_math_gives_the_images_of_auto_and_a_kernel_the_cpu_lacks_says_so(handle, cond):
    dit = handle.model.transformer
    images, latents = sample(handle, cond)
    math_images, math_latents = sample(speed(handle, sdpa_backend="math"), cond)
    torch.testing.assert_close(math_latents, latents, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(math_images, images, rtol=1e-4, atol=1e-5)
    assert dit.sdpa_backend == "auto"
    # the memory-efficient kernel is CUDA-only: that it fails on the CPU shows the choice reaches the attention
    if torch.device(cs.torch_device()).type == "cpu":
        with pytest.raises(InputError, match="sdpa_backend 'efficient' cannot run .*efficient needs a CUDA GPU"):
            sample(speed(handle, sdpa_backend="efficient"), cond, steps=1)
    assert dit.sdpa_backend == "auto"
    assert torch.equal(sample(handle, cond)[1], latents)  # undone after the failed run too


def counting_backend(graphs: list):
    """A torch.compile backend that records each graph dynamo captures and runs it as traced (no code generation:
    inductor takes minutes on a CPU). A capture is a compile: none may happen where compiled code exists."""

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    return backend


def compiled(handle, backend, **switches):
    patched = speed(handle, compile=True, **switches)
    return patched.with_speed(dataclasses.replace(patched.speed, compile_backend=backend))


def test_compile_captures_once_and_is_undone_after_each_run(handle, cond):
    graphs: list = []
    backend = counting_backend(graphs)
    _, eager = sample(handle, cond)
    _, first = sample(compiled(handle, backend), cond)
    captured = len(graphs)
    assert captured > 0
    torch.testing.assert_close(first, eager, rtol=1e-4, atol=1e-5)
    blocks = handle.model.transformer.transformer_blocks
    assert all(b._compiled_call_impl is None for b in blocks)  # the blocks run eagerly outside the run
    # a re-queue with a new seed, and a new node output with the same switches, reuse the compiled blocks
    sample(compiled(handle, backend), cond, seed=8)
    again = compiled(handle, backend)
    _, second = sample(again, cond)
    assert len(graphs) == captured and torch.equal(second, first)
    _, plain = sample(handle, cond)
    assert len(graphs) == captured and torch.equal(plain, eager)  # the input model stays eager
    # a forced kernel is traced into its own graphs: a graph traced under "auto" must not serve "efficient"
    _, math = sample(compiled(handle, backend, sdpa_backend="math"), cond)
    assert len(graphs) > captured
    torch.testing.assert_close(math, eager, rtol=1e-4, atol=1e-5)
    if torch.device(cs.torch_device()).type == "cpu":
        with pytest.raises(InputError, match="sdpa_backend 'efficient' cannot run"):
            sample(compiled(handle, backend, sdpa_backend="efficient"), cond, steps=1)


def test_compile_with_the_step_cache_skips_the_same_steps(handle, cond):
    cached = speed(handle, step_cache=THRESHOLD)
    _, ref = sample(cached, cond)
    both = compiled(handle, counting_backend([]), step_cache=THRESHOLD)
    _, latents = sample(both, cond)
    assert both.pipe.last_step_cache.reused == cached.pipe.last_step_cache.reused
    torch.testing.assert_close(latents, ref, rtol=1e-4, atol=1e-5)
    assert no_cache_hooks(handle.model)


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None,
    reason="inductor on the CPU needs a C compiler, and none is on PATH",
)
@pytest.mark.skipif(
    not os.environ.get("DEEPGEN_SLOW_TESTS"),
    reason="inductor compiles the tiny DiT's blocks for minutes on a CPU; DEEPGEN_SLOW_TESTS=1 runs it",
)
def test_compile_on_with_inductor_gives_the_eager_images(handle, cond):
    """The node as an artist sets it: compile on, the default backend (inductor), which generates C++ here."""
    patched = speed(handle, compile=True)
    assert patched.speed.compile_backend == "inductor"
    _, eager = sample(handle, cond, steps=2)
    _, latents = sample(patched, cond, steps=2)
    torch.testing.assert_close(latents, eager, rtol=1e-4, atol=1e-5)


def test_switch_choices_and_bad_values():
    from deepgen.model.speed import SDPA_BACKENDS

    assert N["DeepGenSpeed"].INPUT_TYPES()["required"]["sdpa_backend"][0] == list(SDPA_BACKENDS)
    with pytest.raises(InputError, match="step_cache"):
        Switches(step_cache=-0.1)
    with pytest.raises(InputError, match="sdpa_backend"):
        Switches(sdpa_backend="fast")
