"""DeepGenEdit's conditioning cache: a seed change runs no VLM, vision tower or reference VAE encode; any input the
conditioning depends on runs them again; the cached result equals a fresh one. Also: one patch-embed per
reference per sampling run."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import pytest
import torch

from nodes import NODE_CLASS_MAPPINGS as N
from nodes.edit import clear_conditioning_cache, image_fingerprint

SIZE = 64
SETTINGS = dict(width=0, height=0, batch_size=1, steps=2, cfg=4.0, shift=3.0)
INSTRUCTION = "make the sky purple"


def picture(seed: int) -> torch.Tensor:
    return torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(seed))


@contextmanager
def counting(model):
    """Counts forwards of the VLM's text tower, its vision tower, the VAE encoder and the DiT's patch embedder."""
    from deepgen.model import vlm as V

    counts: Counter = Counter()
    parts = {
        "vlm": V.text_tower(model.lmm),
        "vision": V.vision_tower(model.lmm),
        "vae_encode": model.vae.encoder,
        "patch_embed": model.transformer.pos_embed,
    }
    hooks = [
        module.register_forward_hook(lambda *_, name=name: counts.update([name])) for name, module in parts.items()
    ]
    try:
        yield counts
    finally:
        for hook in hooks:
            hook.remove()


def edit(handle, image, seed, instruction=INSTRUCTION, negative="", resize="keep"):
    return N["DeepGenEdit"]().edit(handle, image, instruction, negative, **SETTINGS, seed=seed, reference_resize=resize)


@pytest.fixture
def fresh(handle):
    clear_conditioning_cache()
    yield handle
    clear_conditioning_cache()


def test_seed_change_runs_only_the_dit_and_equals_an_uncached_run(fresh):
    ref = picture(1)
    runs = {}
    with counting(fresh.model) as counts:
        for seed in (1, 2, 3):
            runs[seed] = edit(fresh, ref, seed)
    # three seeds: one VLM forward, one vision-tower forward, one reference VAE encode (was 3 / 3 / 3)
    assert (counts["vlm"], counts["vision"], counts["vae_encode"]) == (1, 1, 1)
    assert not torch.equal(runs[1][1]["samples"], runs[2][1]["samples"])

    clear_conditioning_cache(fresh)
    with counting(fresh.model) as counts:
        images, latent = edit(fresh, ref, 3)
    assert (counts["vlm"], counts["vision"], counts["vae_encode"]) == (1, 1, 1)  # the cache was really cleared
    assert torch.equal(latent["samples"], runs[3][1]["samples"]) and torch.equal(images, runs[3][0])


def test_any_conditioning_input_runs_the_vlm_again(fresh):
    ref = picture(1)
    edit(fresh, ref, 1)

    def vlm_forwards(*args, **kwargs) -> int:
        with counting(fresh.model) as counts:
            edit(*args, **kwargs)
        return counts["vlm"]

    assert vlm_forwards(fresh, ref.clone(), 2) == 0  # a new tensor with the same pixels: same content, cached
    touched = ref.clone()
    touched[0, 0, 0, 0] += 1e-3
    assert vlm_forwards(fresh, touched, 2) == 1  # one changed pixel value
    assert vlm_forwards(fresh, ref, 2, instruction="make the sky green") == 1
    assert vlm_forwards(fresh, ref, 2, negative="blurry") == 1
    assert vlm_forwards(fresh, ref, 2, resize="square") == 1
    assert vlm_forwards(fresh, ref, 5, resize="square") == 0  # the latest entry is cached
    assert vlm_forwards(fresh, ref, 5) == 1  # five entries since the first: the LRU of 4 dropped it


def test_lora_strength_change_runs_the_vlm_again(fresh):
    from deepgen.lora import LoraFile, LoraModule

    name = "lmm.model.language_model.layers.0.self_attn.q_proj"
    width = fresh.model.get_submodule(name).weight.shape[0]
    g = torch.Generator().manual_seed(0)
    lora = LoraFile(
        "test.safetensors",
        {name: LoraModule(torch.randn(4, width, generator=g), torch.randn(width, 4, generator=g), 4.0)},
    )
    ref = picture(1)
    try:
        counts = []
        for handle in (fresh.with_loras([(lora, 1.0)]), fresh.with_loras([(lora, 0.5)])):
            with counting(fresh.model) as seen:
                first = edit(handle, ref, 1)
                again = edit(handle, ref, 2)
            counts.append(seen["vlm"])
            assert torch.equal(edit(handle, ref, 1)[1]["samples"], first[1]["samples"])
            assert not torch.equal(first[1]["samples"], again[1]["samples"])
        assert counts == [1, 1]  # each strength encodes once, then reuses its own conditioning
    finally:
        fresh.activate()  # leave the session's shared tiny model unpatched


def test_image_fingerprint_is_exact_and_cheap_enough():
    image = torch.rand(1, 1024, 1024, 3)
    same = image.clone()
    assert image_fingerprint(image) == image_fingerprint(same)
    same[0, 512, 512, 1] = torch.nextafter(same[0, 512, 512, 1], torch.tensor(2.0))
    assert image_fingerprint(image) != image_fingerprint(same)
    assert image_fingerprint(image) != image_fingerprint(image.reshape(1, 512, 2048, 3))
    assert image_fingerprint(image) != image_fingerprint(image.double())
    assert image_fingerprint(None) is None


def test_reference_is_patch_embedded_once_per_run(fresh):
    ref = picture(1)
    edit(fresh, ref, 1)  # encode once
    with counting(fresh.model) as counts:
        edit(fresh, ref, 2)
    # 2 steps x 2 CFG rows: the targets are embedded 4 times, the one reference once (was 4 times)
    assert counts["patch_embed"] == 2 * 2 + 1


def test_cache_goes_with_its_handle(fresh):
    import gc

    from nodes import edit as edit_module

    handle = fresh.with_loras([])
    edit(handle, picture(1), 1)
    assert handle in edit_module._CONDITIONING
    entries = len(edit_module._CONDITIONING)
    del handle
    gc.collect()
    assert len(edit_module._CONDITIONING) == entries - 1
