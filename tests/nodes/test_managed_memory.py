"""The model manager owns DeepGen's weights: part holders, LoRA patches on patcher clones, merged training weights.

Outside ComfyUI the manager is nodes/comfy_services/managed_models.py's StandalonePatcher (the real ComfyUI
ModelPatcher is checked in-process by tests/comfyui/native/test_native_model.py and in a server by
tests/comfyui/test_real_server_memory.py).
"""

from __future__ import annotations

import pytest
import torch
from trainer_kit import assert_same_outputs, outputs


@pytest.fixture
def model():
    from deepgen.tiny import build_tiny_model

    return build_tiny_model(seed=0)


def make_lora(model, seed: int):
    """A LoRA on one VLM projection, one DiT attention projection and the think tokens (.diff)."""
    from deepgen.lora import LoraFile, LoraModule, dit_lora_targets

    g = torch.Generator().manual_seed(seed)
    vlm = "lmm.model.language_model.layers.0.self_attn.q_proj"
    dit = "transformer." + dit_lora_targets(model.transformer, "attn")[0]
    modules = {}
    for name in (vlm, dit):
        out_dim, in_dim = model.get_submodule(name).weight.shape
        modules[name] = LoraModule(torch.randn(4, in_dim, generator=g), torch.randn(out_dim, 4, generator=g), 2.0)
    diffs = {"meta_queries": torch.randn(model.meta_queries.shape, generator=g) * 0.1}
    return LoraFile(f"lora{seed}.safetensors", modules, diffs=diffs)


def merged_alone(lora, strength):
    """The reference: a fresh base with only this LoRA merged (deepgen.lora's own merge)."""
    from deepgen.lora import LoraPatcher
    from deepgen.tiny import build_tiny_model

    ref = build_tiny_model(seed=0)
    LoraPatcher().apply(ref, [(lora, strength)])
    return outputs(ref)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_holders_share_the_models_parts_under_its_names(model):
    from nodes.part_holders import DeepGenDiTWeights, DeepGenSCB, DeepGenVAE, DeepGenVLM

    dit, scb = DeepGenDiTWeights(model), DeepGenSCB(model)
    assert dit.transformer is model.transformer and DeepGenVLM(model).lmm is model.lmm
    assert DeepGenVAE(model).vae is model.vae
    assert scb.meta_queries is model.meta_queries and scb.connector is model.connector
    model_keys = set(model.state_dict())
    assert set(dit.state_dict()) <= model_keys and set(scb.state_dict()) <= model_keys
    # ComfyUI patches by replacing a parameter on what it holds: the think tokens must follow to the model
    scb.meta_queries = torch.nn.Parameter(torch.zeros_like(model.meta_queries), requires_grad=False)
    assert model.meta_queries is scb.meta_queries


def test_strength_change_repatches_without_reload_and_unload_restores_base(model):
    from nodes.comfy_services import managed_models as mm
    from nodes.model_handle import DeepGenModelHandle

    base = DeepGenModelHandle(model, name="tiny", memory_mode="keep_all_on_gpu")
    base_state = state(model)
    lora = make_lora(model, 1)
    params = {n: p for n, p in model.named_parameters()}
    full, half = base.with_loras([(lora, 1.0)]), base.with_loras([(lora, 0.5)])
    assert state(model).keys() == base_state.keys() and all(
        torch.equal(v, base_state[k]) for k, v in state(model).items()
    )  # adding patches changes nothing until the manager loads the handle

    full.activate()
    assert_same_outputs(outputs(model), merged_alone(lora, 1.0), atol=1e-5)
    mm.EVENTS.clear()
    half.activate()  # the other strength: the same tensors, re-patched from the kept base weights
    assert_same_outputs(outputs(model), merged_alone(lora, 0.5), atol=1e-5)
    # only the parts the LoRA patches are loaded again; the VAE's (unpatched) weights stay as they were
    assert sorted(mm.EVENTS) == [("load", "DeepGenDiTWeights"), ("load", "DeepGenSCB"), ("load", "DeepGenVLM")]
    assert all(p is params[n] for n, p in model.vae.named_parameters(prefix="vae"))

    half.unload()
    after = state(model)
    assert all(torch.equal(after[k], base_state[k]) for k in base_state)  # exactly the base again
    assert all(p is params[n] for n, p in model.named_parameters())  # the very tensors: nothing was rebuilt
    assert mm.loaded_model_names() == []


def test_two_handles_with_different_loras_on_one_base_do_not_leak(model):
    from nodes.model_handle import DeepGenModelHandle

    base = DeepGenModelHandle(model, name="tiny", memory_mode="offload_vlm_after_encode")
    a_lora, b_lora = make_lora(model, 1), make_lora(model, 2)
    a, b = base.with_loras([(a_lora, 1.0)]), base.with_loras([(b_lora, 0.7)])
    want_a, want_b = merged_alone(a_lora, 1.0), merged_alone(b_lora, 0.7)
    for handle, want in ((a, want_a), (b, want_b), (a, want_a), (base, outputs(merged_base())), (b, want_b)):
        handle.activate()
        assert_same_outputs(outputs(model), want, atol=1e-5)
    # the chained handle carries both, in order
    both = a.with_loras([(b_lora, 0.7)])
    both.activate()
    assert not torch.allclose(outputs(model)[1], want_a[1], atol=1e-4)
    base.unload()


def merged_base():
    from deepgen.tiny import build_tiny_model

    return build_tiny_model(seed=0)


def test_stage_runs_the_nodes_with_the_handles_loras(model):
    """Two graphs with different LoRAs through the nodes, interleaved: each gives what it gives alone."""
    from nodes import NODE_CLASS_MAPPINGS as N
    from nodes.model_handle import DeepGenModelHandle

    base = DeepGenModelHandle(model, name="tiny", memory_mode="sequential_offload")
    a, b = base.with_loras([(make_lora(model, 1), 1.0)]), base.with_loras([(make_lora(model, 2), 1.0)])

    def image(handle):
        (think,) = N["ThinkTokenEncode"]().encode(handle, "a cat", "", "fix_pixels")
        cond, _, _ = N["SCBBridge"]().bridge(handle, think)
        img, _ = N["DeepGenSampler"]().sample(
            handle, cond, seed=1, steps=1, cfg=1.0, width=64, height=64, batch_size=1, shift=0.0
        )
        return img

    first_a = image(a)
    first_b = image(b)
    assert not torch.equal(first_a, first_b)
    assert torch.equal(image(a), first_a) and torch.equal(image(b), first_b)
    base.unload()


def test_loras_merged_gives_training_the_plain_merged_model_and_takes_it_back(model):
    from nodes.comfy_services import managed_models as mm
    from nodes.model_handle import DeepGenModelHandle

    base_state = state(model)
    lora = make_lora(model, 3)
    handle = DeepGenModelHandle(model, name="tiny", memory_mode="keep_all_on_gpu").with_loras([(lora, 1.0)])
    handle.activate()
    with handle.loras_merged() as net:
        assert net is model and mm.loaded_model_names() == []  # the manager let go of every part
        assert_same_outputs(outputs(net), merged_alone(lora, 1.0), atol=1e-5)
    after = state(model)
    assert all(torch.equal(after[k], base_state[k]) for k in base_state)
    handle.activate()  # and the manager can patch it again
    assert_same_outputs(outputs(model), merged_alone(lora, 1.0), atol=1e-5)
    handle.unload()


def test_an_unpatchable_lora_is_refused_before_any_patch(model):
    from deepgen.lora import LoraError, LoraFile, LoraModule
    from nodes.model_handle import DeepGenModelHandle

    handle = DeepGenModelHandle(model, name="tiny")
    bad = LoraFile("bad.safetensors", {"transformer.nope": LoraModule(torch.ones(2, 3), torch.ones(3, 2), 2.0)})
    with pytest.raises(LoraError, match="no module 'transformer.nope'"):
        handle.with_loras([(bad, 1.0)])
