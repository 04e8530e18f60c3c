"""DeepGenLoader's native MODEL and VAE driven by ComfyUI's own nodes, against DeepGenSampler.

SCBBridge -> KSampler(euler, normal) -> VAEDecode must give DeepGenSampler's image within 1/255 per pixel, for
text-to-image and for an edit, on the official tiny fixture. ComfyUI's VAEDecode maps [-1, 1] to (x + 1) / 2
while DeepGen's nodes write the official (127.5 x + 128) / 255: a constant 0.5/255 of the 1/255 budget.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

TINY = "deepgen-demo (tiny, trained on shapes)"  # DeepGenLoader's embedded demo choice (nodes/types.py)

SIZE = 64
STEPS = 6
SEED = 7
PROMPT = "a red fox in the snow"
EDIT = "make it winter"
TOLERANCE = 1 / 255


@pytest.fixture(scope="module")
def handle(ext):
    from official_fixture import load_official

    handle_mod = sys_module(ext, "nodes.model_handle")
    return handle_mod.DeepGenModelHandle(load_official(), name="official-tiny", memory_mode="keep_all_on_gpu")


def sys_module(ext, name):
    import importlib

    return importlib.import_module(f"{ext.__name__}.{name}")


@pytest.fixture(scope="module")
def native(ext, handle):
    return sys_module(ext, "nodes.native").native_outputs(handle)


def reference_image():
    rng = np.random.default_rng(3)
    return torch.from_numpy(rng.random((1, SIZE, SIZE, 3), dtype=np.float32))


def bridged(ext, handle, prompt, image=None):
    N = ext.NODE_CLASS_MAPPINGS
    (think,) = N["ThinkTokenEncode"]().encode(handle, prompt, "", "keep", image_1=image)
    return N["SCBBridge"]().bridge(handle, think)


def deepgen_sample(ext, handle, cond, steps=STEPS, cfg=4.0):
    images, _ = ext.NODE_CLASS_MAPPINGS["DeepGenSampler"]().sample(handle, cond, SIZE, SIZE, 1, steps, cfg, 3.0, SEED)
    return images


def native_sample(comfy_nodes, model, vae, positive, negative, steps=STEPS, cfg=4.0, scheduler="normal"):
    from comfy_extras.nodes_sd3 import EmptySD3LatentImage

    latent = EmptySD3LatentImage.execute(SIZE, SIZE, 1).result[0]
    (out,) = comfy_nodes.KSampler().sample(model, SEED, steps, cfg, "euler", scheduler, positive, negative, latent)
    (images,) = comfy_nodes.VAEDecode().decode(vae, out)
    return images


def max_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def test_loader_outputs_native_model_and_vae(ext, comfy_nodes):
    import comfy.model_patcher
    import comfy.sd

    handle, model, vae = ext.NODE_CLASS_MAPPINGS["DeepGenLoader"]().load(TINY)
    assert isinstance(model, comfy.model_patcher.ModelPatcher) and isinstance(vae, comfy.sd.VAE)
    assert model.model.diffusion_model is handle.model.transformer  # the same weights, no copy
    assert vae.first_stage_model.vae is handle.model.vae


def test_official_sigmas_are_comfyui_normal(handle, native):
    import comfy.samplers

    model, _ = native
    scheduler = handle.pipe.make_scheduler()
    for steps in (STEPS, 50):
        scheduler.set_timesteps(steps)
        ms = model.get_model_object("model_sampling")
        normal = comfy.samplers.calculate_sigmas(ms, "normal", steps)
        assert torch.allclose(normal, scheduler.sigmas.float(), atol=1e-6), steps
        for other in ("simple", "sgm_uniform"):
            assert max_diff(comfy.samplers.calculate_sigmas(ms, other, steps), scheduler.sigmas) > 1e-3, other


def test_text_to_image_matches_deepgen_sampler(ext, comfy_nodes, handle, native):
    cond, positive, negative = bridged(ext, handle, PROMPT)
    ours = deepgen_sample(ext, handle, cond)
    theirs = native_sample(comfy_nodes, *native, positive, negative)
    diff = max_diff(ours, theirs)
    print(f"t2i max pixel difference: {diff * 255:.3f}/255")
    assert ours.shape == theirs.shape == (1, SIZE, SIZE, 3)
    assert diff <= TOLERANCE


def test_edit_matches_deepgen_sampler(ext, comfy_nodes, handle, native):
    cond, positive, negative = bridged(ext, handle, EDIT, reference_image())
    assert "reference_latents" in positive[0][1]
    ours = deepgen_sample(ext, handle, cond)
    theirs = native_sample(comfy_nodes, *native, positive, negative)
    diff = max_diff(ours, theirs)
    print(f"edit max pixel difference: {diff * 255:.3f}/255")
    assert diff <= TOLERANCE
    # the reference latents matter: without them the native result changes
    no_refs = [[c, {k: v for k, v in extra.items() if k != "reference_latents"}] for c, extra in positive]
    no_refs_neg = [[c, {k: v for k, v in extra.items() if k != "reference_latents"}] for c, extra in negative]
    assert max_diff(native_sample(comfy_nodes, *native, no_refs, no_refs_neg), theirs) > 10 * TOLERANCE


def test_vae_encode_decode_round_trip(comfy_nodes, handle, native):
    _, vae = native
    image = reference_image()
    (latent,) = comfy_nodes.VAEEncode().encode(vae, image)
    assert latent["samples"].shape == (1, 16, SIZE // 8, SIZE // 8)
    with torch.no_grad():
        dist = handle.model.vae.encode(image.permute(0, 3, 1, 2) * 2 - 1).latent_dist
    assert torch.allclose(latent["samples"], dist.mode(), atol=1e-5)  # raw z, as ComfyUI's SD3 VAE gives
    (decoded,) = comfy_nodes.VAEDecode().decode(vae, latent)
    with torch.no_grad():
        expected = ((handle.model.vae.decode(dist.mode()).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert decoded.shape == image.shape and max_diff(decoded, expected) < 1e-5


def test_latent_upscale_then_sample(ext, comfy_nodes, handle, native):
    from comfy_extras.nodes_sd3 import EmptySD3LatentImage

    model, vae = native
    _, positive, negative = bridged(ext, handle, PROMPT)
    latent = EmptySD3LatentImage.execute(SIZE, SIZE, 1).result[0]
    (draft,) = comfy_nodes.KSampler().sample(model, SEED, 2, 4.0, "euler", "normal", positive, negative, latent)
    (big,) = comfy_nodes.LatentUpscale().upscale(draft, "bilinear", 96, 96, "disabled")
    assert big["samples"].shape == (1, 16, 12, 12)
    (refined,) = comfy_nodes.KSampler().sample(
        model, SEED, 4, 4.0, "euler", "normal", positive, negative, big, denoise=0.5
    )
    (images,) = comfy_nodes.VAEDecode().decode(vae, refined)
    assert images.shape == (1, 96, 96, 3) and torch.isfinite(images).all()


def _lora_tensors(transformer, kohya: bool) -> dict:
    """A random rank-4 DiT LoRA on two attention projections, in diffusers or kohya names."""
    gen = torch.Generator().manual_seed(11)
    out = {}
    for module in ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_out.0"):
        weight = transformer.get_submodule(module).weight
        a = torch.randn(4, weight.shape[1], generator=gen) * 0.5
        b = torch.randn(weight.shape[0], 4, generator=gen) * 0.5
        if kohya:
            name = "lora_unet_" + module.replace(".", "_")
            out.update({f"{name}.lora_down.weight": a, f"{name}.lora_up.weight": b, f"{name}.alpha": torch.tensor(4.0)})
        else:
            out.update({f"transformer.{module}.lora_A.weight": a, f"transformer.{module}.lora_B.weight": b})
    return out


@pytest.mark.parametrize("kohya", [False, True], ids=["diffusers", "kohya"])
def test_lora_loader_model_only_matches_our_lora_path(ext, comfy_nodes, handle, native, tmp_path, kohya):
    import folder_paths
    from safetensors.torch import save_file

    from deepgen.lora import LoraPatcher, load_lora

    model, vae = native
    path = tmp_path / "dit_lora.safetensors"
    save_file(_lora_tensors(handle.model.transformer, kohya), str(path))
    cond, positive, negative = bridged(ext, handle, PROMPT)
    base = native_sample(comfy_nodes, model, vae, positive, negative, steps=3)

    patcher = LoraPatcher()  # our own path: merge into the weights, sample, restore
    patcher.apply(handle.model, [(load_lora(path), 0.8)])
    try:
        ours = deepgen_sample(ext, handle, cond, steps=3)
    finally:
        patcher.restore(handle.model)

    folder_paths.add_model_folder_path("loras", str(tmp_path))
    (lora_model,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, path.name, 0.8)
    assert len(lora_model.patches) == 2  # both modules matched: no key left unloaded
    theirs = native_sample(comfy_nodes, lora_model, vae, positive, negative, steps=3)
    print(f"LoRA ({'kohya' if kohya else 'diffusers'}) max pixel difference: {max_diff(ours, theirs) * 255:.3f}/255")
    assert max_diff(theirs, base) > 10 * TOLERANCE  # the LoRA changes the image ...
    assert max_diff(ours, theirs) <= TOLERANCE  # ... as DeepGen's own LoRA path does


def test_model_patch_nodes(ext, comfy_nodes, handle, native):
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3, RescaleCFG

    model, vae = native
    _, positive, negative = bridged(ext, handle, PROMPT)
    base = native_sample(comfy_nodes, model, vae, positive, negative, steps=3)
    (same,) = ModelSamplingSD3().patch(model, 3.0)
    assert max_diff(native_sample(comfy_nodes, same, vae, positive, negative, steps=3), base) < 1e-5
    (shifted,) = ModelSamplingSD3().patch(model, 6.0)
    assert max_diff(native_sample(comfy_nodes, shifted, vae, positive, negative, steps=3), base) > 10 * TOLERANCE
    (rescaled,) = RescaleCFG().patch(model, 0.7)
    assert max_diff(native_sample(comfy_nodes, rescaled, vae, positive, negative, steps=3), base) > TOLERANCE


def test_other_schedulers_do_not_reproduce(ext, comfy_nodes, handle, native):
    """Only `normal` gives the official sigmas: `simple` visibly changes the image (so the equality is no accident)."""
    cond, positive, negative = bridged(ext, handle, PROMPT)
    ours = deepgen_sample(ext, handle, cond)
    assert max_diff(native_sample(comfy_nodes, *native, positive, negative, scheduler="simple"), ours) > TOLERANCE


def test_sd35_shaped_vae_is_comfyuis_own(ext):
    """The real release's VAE shape becomes comfy.sd.VAE from our state dict and decodes as diffusers does."""
    import comfy.sd
    from diffusers import AutoencoderKL

    vae_mod = sys_module(ext, "nodes.native.vae")
    torch.manual_seed(0)
    ours = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=1.5305,
        shift_factor=0.0609,
    ).eval()
    assert vae_mod.is_sd35_shaped(ours)
    vae = vae_mod.native_vae(ours)
    assert type(vae) is comfy.sd.VAE and vae.latent_channels == 16
    z = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    expected = ((ours.decode(z).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert max_diff(vae.decode(z), expected) < 1e-4


def test_one_patcher_per_weight_set_for_both_paths(ext, comfy_nodes, handle, native, tmp_path):
    """KSampler and DeepGenSampler load, patch and evict the DiT through one patcher: a LoRA of either path
    never sits unseen under the other, and ComfyUI's list of loaded models holds DeepGen's parts."""
    import comfy.model_management as mm
    import folder_paths
    from safetensors.torch import save_file

    from deepgen.lora import load_lora

    model, vae = native
    assert model is handle.patchers["dit"]  # the MODEL output is the handle's own DiT patcher
    path = tmp_path / "dit_lora.safetensors"
    save_file(_lora_tensors(handle.model.transformer, kohya=False), str(path))
    cond, positive, negative = bridged(ext, handle, PROMPT)
    base_ours = deepgen_sample(ext, handle, cond, steps=3)
    loaded = {type(m.model.model).__name__: m.model.model_size() for m in mm.current_loaded_models}
    assert {"DeepGenNativeDiT", "DeepGenSCB"} <= set(loaded) and min(loaded.values()) > 0, loaded
    base_native = native_sample(comfy_nodes, model, vae, positive, negative, steps=3)

    folder_paths.add_model_folder_path("loras", str(tmp_path))
    (lora_model,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, path.name, 0.8)
    with_native_lora = native_sample(comfy_nodes, lora_model, vae, positive, negative, steps=3)
    assert max_diff(with_native_lora, base_native) > 10 * TOLERANCE
    # the native LoRA is still patched in on the shared weights; DeepGenSampler on the base handle must not see it
    assert max_diff(deepgen_sample(ext, handle, cond, steps=3), base_ours) == 0

    lora_handle = handle.with_loras([(load_lora(path), 0.8)])
    with_our_lora = deepgen_sample(ext, lora_handle, cond, steps=3)
    assert max_diff(with_our_lora, with_native_lora) <= TOLERANCE  # the same patch, whichever path adds it
    # ... and KSampler on the base MODEL must not see our LoRA handle's patches
    assert max_diff(native_sample(comfy_nodes, model, vae, positive, negative, steps=3), base_native) == 0

    mm.unload_all_models()
    assert not [m for m in mm.current_loaded_models if "DeepGen" in type(m.model.model).__name__]


def test_memory_mode_unloads_the_vlm_after_encode_in_comfyuis_manager(ext, handle):
    """offload_vlm_after_encode in ComfyUI's own list: the VLM is loaded to encode and unloaded right after."""
    import comfy.model_management as mm

    offload = sys_module(ext, "nodes.model_handle").DeepGenModelHandle(
        handle.model, name="official-tiny", memory_mode="offload_vlm_after_encode"
    )

    def loaded() -> set:
        return {type(m.model.model).__name__ for m in mm.current_loaded_models if m.model is not None}

    with offload.stage("encode"):
        assert {"DeepGenVLM", "DeepGenSCB"} <= loaded()
    assert "DeepGenVLM" not in loaded() and "DeepGenSCB" in loaded()
    mm.unload_all_models()
    assert not {name for name in loaded() if name.startswith("DeepGen")}
