"""Reference latents are patch-embedded once per sampling run (DeepGenPipeline.sample runs inside
transformer.reference_tokens_once()) and once per forward elsewhere, shared by the CFG rows and the images of one
prompt; the results are bit-identical."""

from __future__ import annotations

import pytest
import torch

from deepgen.model.dit import DeepGenTransformer2DModel
from deepgen.pipeline import DeepGenPipeline

STEPS, BATCH = 3, 2


@pytest.fixture(scope="module")
def setup(tiny_model):
    pipe = DeepGenPipeline(tiny_model)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cond = pipe.encode(["make it blue"], references=[[image]], reference_resize="keep").repeat(BATCH)
    return pipe, cond


def sample(pipe, cond):
    return pipe.sample(cond, num_steps=STEPS, cfg_scale=4.0, seed=5)


def reference_embeds(pipe, run) -> tuple[torch.Tensor, int]:
    """Run `run()`; return its result and how many patch-embeds were of references (targets: one per row a step)."""
    calls = []
    hook = pipe.model.transformer.pos_embed.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = run()
    finally:
        hook.remove()
    return out, len(calls) - STEPS * 2 * BATCH


def test_once_per_run_and_bit_identical(setup, monkeypatch):
    pipe, cond = setup
    transformer = pipe.model.transformer
    with transformer.reference_tokens_once():
        once, once_calls = reference_embeds(pipe, lambda: sample(pipe, cond))
    assert transformer._reference_memo is None  # nothing outlives the run
    plain, plain_calls = reference_embeds(pipe, lambda: sample(pipe, cond))

    def every_use(self, ref, dtype, memo):  # the code before: every row of every step embeds its references
        return self.pos_embed(ref.unsqueeze(0).to(dtype))[0]

    monkeypatch.setattr(DeepGenTransformer2DModel, "_embed_reference", every_use)
    before, before_calls = reference_embeds(pipe, lambda: sample(pipe, cond))
    assert before_calls == STEPS * 2 * BATCH  # 12: steps x CFG rows x images
    assert plain_calls == 1  # the pipeline's sample() runs inside reference_tokens_once() itself
    assert once_calls == 1  # one reference, one embed for the whole run
    assert torch.equal(once, before) and torch.equal(plain, before)


def test_no_reuse_across_runs_or_with_grad(setup):
    pipe, cond = setup
    transformer = pipe.model.transformer
    for _ in range(2):
        with transformer.reference_tokens_once():
            _, calls = reference_embeds(pipe, lambda: sample(pipe, cond))
        assert calls == 1  # a new run embeds again: no memo kept between runs
    with pytest.raises(RuntimeError), transformer.reference_tokens_once():
        raise RuntimeError("interrupted")
    assert transformer._reference_memo is None

    ref = cond.reference_latents[0][0]
    x = torch.randn(2, *ref.shape)
    args = (x, cond.context[:1].expand(2, -1, -1), cond.pooled[:1].expand(2, -1), torch.tensor([500.0, 500.0]))
    counted = []
    hook = transformer.pos_embed.register_forward_hook(lambda *_: counted.append(1))
    try:
        with transformer.reference_tokens_once(), torch.enable_grad():
            transformer(*args, reference_latents=[[ref], [ref]])  # training: every use embedded on its own
            transformer(*args, reference_latents=[[ref], [ref]])
    finally:
        hook.remove()
    assert len(counted) == 2 * (2 + 2)
