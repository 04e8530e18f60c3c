"""Pipeline behaviour beyond parity: seeds, ragged batches, references, img2img, reuse, diffusers layout."""

from __future__ import annotations

import pytest
import torch
from release_layouts import save_diffusers_release
from safetensors.torch import save_file

from deepgen.loading import CheckpointError, load_model
from deepgen.pipeline import DeepGenPipeline, initial_noise


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return DeepGenPipeline(tiny_model)


def test_seed_gives_each_image_its_own_reproducible_noise(pipe):
    cond = pipe.encode(["a cat", "a dog"])
    batch = pipe.sample(cond, 32, 32, num_steps=2, seed=7)
    alone = pipe.sample(pipe.encode(["a dog", "a cat"]), 32, 32, num_steps=2, seed=[8, 7])
    # Image "a dog" used seed 8 in both runs; the co-batched negatives are identical, so results agree.
    assert torch.allclose(batch[1], alone[0], atol=1e-5)
    assert not torch.allclose(batch[0], batch[1])
    assert torch.equal(initial_noise([3], (16, 4, 4)), initial_noise([3], (16, 4, 4)))


def test_ragged_batch_masks_padding(pipe):
    """Samples with different numbers of reference tokens are padded; each equals its unpadded run."""
    model = pipe.model
    torch.manual_seed(0)
    x = torch.randn(2, 16, 4, 4)
    refs = [[torch.randn(16, 4, 4)], [torch.randn(16, 4, 8), torch.randn(16, 2, 2)]]
    ctx, pooled = torch.randn(2, 5, 48), torch.randn(2, 24)
    t = torch.tensor([500.0, 500.0])
    with torch.no_grad():
        together = model.velocity(x, t, ctx, pooled, refs)
        separate = [model.velocity(x[i : i + 1], t[:1], ctx[i : i + 1], pooled[i : i + 1], [refs[i]]) for i in range(2)]
    for i in range(2):
        assert torch.allclose(together[i], separate[i][0], atol=1e-5)


def test_targets_of_different_sizes_return_a_list(pipe):
    with torch.no_grad():
        out = pipe.model.velocity(
            [torch.randn(16, 4, 4), torch.randn(16, 4, 6)],
            torch.tensor([10.0, 10.0]),
            torch.randn(2, 3, 48),
            torch.randn(2, 24),
        )
    assert [tuple(o.shape) for o in out] == [(16, 4, 4), (16, 4, 6)]


def test_multi_reference_edit_and_output_size(pipe):
    a, b = torch.rand(3, 64, 96) * 2 - 1, torch.rand(3, 32, 32) * 2 - 1
    cond = pipe.encode(["combine them"], references=[[a, b]], reference_resize="keep")
    assert [tuple(r.shape) for r in cond.reference_latents[0]] == [(16, 8, 12), (16, 4, 4)]
    assert cond.reference_size == (64, 96)
    latents = pipe.sample(cond, num_steps=1)
    assert tuple(latents.shape) == (1, 16, 8, 12)
    assert cond.context.shape == cond.negative_context.shape  # co-batched, padded together


def test_edit_negative_is_official_by_default(pipe):
    rows = []
    original = pipe.model.think
    pipe.model.think = lambda prompts, refs=None: rows.extend(prompts) or original(prompts, refs)
    try:
        pipe.encode(["x"], references=[[torch.zeros(3, 32, 32)]])
        pipe.encode(["y"])
    finally:
        pipe.model.think = original
    assert rows[1].startswith("blurry, low quality") and rows[3] == ""


def test_the_demo_model_edits_with_its_own_empty_negative():
    """The demo never saw the official edit negative (release._load_demo_file says why it would spoil its edits)."""

    demo = DeepGenPipeline(load_model("tiny", dtype=torch.float32))
    think = demo.think(["make the circle green"], references=[[torch.zeros(3, 64, 64)]])
    assert demo.model.edit_negative_prompt == "" and think.negative_prompts == [""]


def test_img2img_strength(pipe):
    cond = pipe.encode(["a cat"])
    init = torch.randn(1, 16, 4, 4)
    steps = []
    pipe.sample(
        cond, 32, 32, num_steps=4, seed=1, init_latents=init, strength=0.5, callback=lambda i, n, x: steps.append(n)
    )
    assert steps == [2, 2]
    full = pipe.sample(cond, 32, 32, num_steps=4, seed=1, init_latents=init, strength=1.0)
    plain = pipe.sample(cond, 32, 32, num_steps=4, seed=1)
    assert torch.equal(full, plain)
    with pytest.raises(ValueError, match="strength"):
        pipe.sample(cond, 32, 32, num_steps=4, init_latents=init, strength=0.0)


def test_callback_can_interrupt(pipe):
    class Stop(Exception):
        pass

    calls = []

    def callback(i, n, x):
        calls.append(i)
        if i == 1:
            raise Stop

    with pytest.raises(Stop):
        pipe.sample(pipe.encode(["a cat"]), 32, 32, num_steps=10, callback=callback)
    assert calls == [0, 1]


def test_no_cfg_runs_one_branch(pipe):
    cond = pipe.encode(["a cat"], guidance=False)
    assert not cond.has_negative
    assert pipe.sample(cond, 32, 32, num_steps=1, cfg_scale=4.0).shape == (1, 16, 4, 4)


def test_diffusers_layout_loads_identically(tmp_path, official_model):
    save_diffusers_release(official_model, tmp_path)
    loaded = load_model(tmp_path, dtype=torch.float32)
    a, b = official_model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    (tmp_path / "connector" / "model.safetensors").unlink()
    save_file({"weird.name": torch.zeros(1)}, str(tmp_path / "connector" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unknown connector tensor names: weird.name"):
        load_model(tmp_path, dtype=torch.float32)
