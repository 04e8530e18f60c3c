"""Every node on the tiny model: types, shapes, conventions, equivalences, interruption, offloading, loading."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from release_layouts import save_diffusers_release

from nodes import NODE_CLASS_MAPPINGS as N
from nodes import comfy_services as cs
from nodes.types import TINY_CHOICE

OFFICIAL = Path(__file__).resolve().parents[1] / "fixtures" / "deepgen-official-tiny"
SIZE, STEPS = 64, 2
SAMPLER = dict(width=SIZE, height=SIZE, batch_size=1, steps=STEPS, cfg=4.0, shift=3.0, seed=7)


def picture(seed: int, h: int = SIZE, w: int = SIZE) -> torch.Tensor:
    """A ComfyUI IMAGE [1, H, W, 3] in 0..1."""
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def t2i(handle, prompt="a red fox in the snow", **sampler):
    (think,) = N["ThinkTokenEncode"]().encode(handle, prompt, "", "fix_pixels")
    cond, positive, negative = N["SCBBridge"]().bridge(handle, think)
    images, latent = N["DeepGenSampler"]().sample(handle, cond, **{**SAMPLER, **sampler})
    return think, cond, positive, negative, images, latent


def test_text_to_image_chain(handle):
    model = handle.model
    think, cond, positive, negative, images, latent = t2i(handle, batch_size=2)
    # DEEPGEN_THINK: prompt and negative co-batched in one VLM call
    assert (
        think.scb_input.shape[0] == 2 and think.negative_prompts == [""] and think.prompts == ["a red fox in the snow"]
    )
    # native CONDITIONING [[cross_attn, {"pooled_output"}]] with the DiT's widths
    ((ctx, extra),) = positive
    assert ctx.shape[0] == 1 and ctx.shape[2] == model.transformer.config.joint_attention_dim
    assert extra["pooled_output"].shape == (1, model.transformer.config.pooled_projection_dim)
    assert "reference_latents" not in extra and negative[0][0].shape == ctx.shape
    assert torch.equal(ctx, cond.context.float()) and torch.equal(negative[0][0], cond.negative_context.float())
    # IMAGE [B, H, W, 3] float 0..1 on CPU; LATENT {"samples": [B, 16, H/8, W/8]}
    assert images.shape == (2, SIZE, SIZE, 3) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert set(latent) == {"samples"} and latent["samples"].shape == (2, 16, SIZE // 8, SIZE // 8)
    # a batch reproduces single runs (up to batched-matmul rounding): image i uses seed + i
    single, _ = N["DeepGenSampler"]().sample(handle, cond, **{**SAMPLER, "seed": SAMPLER["seed"] + 1})
    assert torch.allclose(single[0], images[1], atol=1e-4) and not torch.allclose(images[0], images[1], atol=1e-2)


def test_latent_is_comfyui_sd3_raw_vae_space(handle):
    """LATENT holds z (raw VAE latent): ComfyUI's SD3 process_in (z - 0.0609) * 1.5305 gives the DiT's latents."""
    from deepgen.images import to_comfy_image

    _, cond, _, _, images, latent = t2i(handle)
    scale, shift = handle.model.vae.config.scaling_factor, handle.model.vae.config.shift_factor
    assert (scale, shift) == (1.5305, 0.0609)
    dit = handle.pipe.sample(cond, SIZE, SIZE, num_steps=STEPS, cfg_scale=4.0, seed=[SAMPLER["seed"]], shift=3.0)
    assert torch.allclose(latent["samples"], dit / scale + shift)
    assert torch.allclose((latent["samples"] - shift) * scale, dit, atol=1e-5)
    # what ComfyUI's VAEDecode does with an SD3 VAE: decode z directly
    z = latent["samples"].to(handle.model.vae.dtype)
    decoded = to_comfy_image(handle.model.vae.decode(z).sample)
    assert torch.allclose(decoded, images, atol=1e-4)


def test_sampler_takes_a_latent_and_denoise(handle):
    _, cond, _, _, _, latent = t2i(handle)
    same, _ = N["DeepGenSampler"]().sample(
        handle, cond, **{**SAMPLER, "width": 0, "height": 0}, latent=latent, denoise=1.0
    )
    assert same.shape == (1, SIZE, SIZE, 3)  # size from the latent; denoise 1 repaints everything
    bigger = {"samples": torch.nn.functional.interpolate(latent["samples"], scale_factor=1.5, mode="bicubic")}
    refined, out = N["DeepGenSampler"]().sample(
        handle, cond, **{**SAMPLER, "steps": 4, "batch_size": 3}, latent=bigger, denoise=0.5
    )
    assert refined.shape == (3, 96, 96, 3) and out["samples"].shape == (3, 16, 12, 12)
    with pytest.raises(ValueError, match="16-channel SD3 latents"):
        N["DeepGenSampler"]().sample(handle, cond, **SAMPLER, latent={"samples": torch.zeros(1, 4, 8, 8)})
    with pytest.raises(ValueError, match="no step to run"):
        N["DeepGenSampler"]().sample(handle, cond, **SAMPLER, latent=latent, denoise=0.2)


def test_sampler_size_errors_in_plain_words(handle):
    from deepgen.sizes import SizeError

    _, cond, _, _, _, _ = t2i(handle, steps=1)
    with pytest.raises(SizeError, match="not a multiple of 16"):
        N["DeepGenSampler"]().sample(handle, cond, **{**SAMPLER, "width": 70})
    with pytest.raises(ValueError, match="prompt is empty"):
        N["ThinkTokenEncode"]().encode(handle, "   ", "", "fix_pixels")


def test_edit_node_equals_composed_graph_and_pipeline(handle):
    from deepgen.images import from_comfy_image

    ref = picture(1)
    instruction = "make the sky purple"
    settings = dict(width=0, height=0, batch_size=1, steps=STEPS, cfg=4.0, shift=3.0, seed=11)
    images, latent = N["DeepGenEdit"]().edit(handle, ref, instruction, "", **settings, reference_resize="keep")
    assert images.shape == (1, SIZE, SIZE, 3)  # width/height 0: the reference's size

    (think,) = N["ThinkTokenEncode"]().encode(handle, instruction, "", "keep", image_1=ref)
    assert len(think.references[0]) == 1
    cond, positive, _ = N["SCBBridge"]().bridge(handle, think)
    assert [r.shape for r in positive[0][1]["reference_latents"]] == [(1, 16, SIZE // 8, SIZE // 8)]
    images2, latent2 = N["DeepGenSampler"]().sample(handle, cond, **settings)
    assert torch.equal(latent["samples"], latent2["samples"]) and torch.equal(images, images2)

    # ... and both equal the library's one-call path (pipe.encode with the official edit negative)
    pipe = handle.pipe
    direct = pipe.encode([instruction], references=[from_comfy_image(ref)], reference_resize="keep")
    x = pipe.sample(direct, num_steps=STEPS, cfg_scale=4.0, seed=[11], shift=3.0)
    scale, shift = handle.model.latent_scale
    assert torch.equal(latent["samples"], x.float() / scale + shift)


def test_edit_with_several_references(handle):
    from deepgen import constants

    first, second = picture(2), picture(3, 32, 64)
    images, latent = N["DeepGenEdit"]().edit(
        handle,
        first,
        "put the object of image 2 into image 1",
        constants.EDIT_NEGATIVE_PROMPT,
        width=0,
        height=0,
        batch_size=2,
        steps=1,
        cfg=4.0,
        shift=3.0,
        seed=1,
        reference_resize="keep",
        image_2=second,
    )
    assert images.shape == (2, SIZE, SIZE, 3) and latent["samples"].shape == (2, 16, 8, 8)
    (think,) = N["ThinkTokenEncode"]().encode(handle, "x", "", "keep", image_1=first, image_3=torch.cat([second] * 2))
    assert [tuple(r.shape) for r in think.references[0]] == [(3, 64, 64), (3, 32, 64), (3, 32, 64)]
    # an empty negative is the model's own edit negative: the demo's is empty (DeepGen 1.0's the official one,
    # tests/test_pipeline.py)
    assert handle.model.edit_negative_prompt == "" and think.negative_prompts == [""]


def test_reward_score_picks_best_and_reports(handle):
    from deepgen.rewards import register_reward, unregister_reward

    images = torch.stack([torch.full((16, 16, 3), v) for v in (0.2, 0.9, 0.5)])
    register_reward("test_brightness", lambda imgs, prompts: [np.asarray(i.convert("L")).mean() / 255 for i in imgs])
    try:
        out = N["RewardScore"]().score(images, "a bright picture", "custom", "test_brightness=1")
    finally:
        unregister_reward("test_brightness")
    scores, best, report, best_index = out["result"]
    assert best_index == 1 and torch.equal(best, images[1:2])
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores) and scores[1] == max(scores)
    rows = out["ui"]["deepgen1_rewards"]
    assert [r["index"] for r in rows] == [0, 1, 2] and [r["best"] for r in rows] == [False, True, False]
    assert set(rows[0]) == {"index", "total", "rewards", "best"} and set(rows[0]["rewards"]) == {"test_brightness"}
    assert "best: image 1" in report and "test_brightness" in report
    json.dumps(out["ui"], allow_nan=False)


def test_reward_score_ocr_offline_and_nan_as_null():
    images = torch.ones(2, 32, 32, 3)
    out = N["RewardScore"]().score(images, "a plain white wall", "ocr")  # no quoted text: OCR not applicable
    scores, best, report, best_index = out["result"]
    assert best_index == -1 and best.shape == (1, 32, 32, 3) and "best: none" in report
    assert all(math.isnan(s) for s in scores)  # NaN in the FLOAT list
    assert out["ui"]["deepgen1_rewards"][0] == {"index": 0, "total": None, "rewards": {"ocr": None}, "best": False}
    json.dumps(out["ui"], allow_nan=False)


def test_reward_score_reports_a_failing_judge():
    """An unreachable or broken judge endpoint counts as ties (0.5); the report must say so."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Broken(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Broken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        out = N["RewardScore"]().score(torch.rand(2, 8, 8, 3), "a cat", "preference", judge_url=url)
    finally:
        server.shutdown()
    scores, _, text, _ = out["result"]
    assert scores == [0.5, 0.5]
    assert "WARNING: the preference judge failed" in text and "1 of 1 comparisons" in text


def test_missing_reward_model_says_where(tmp_path, monkeypatch):
    from deepgen.rewards import RewardModelNotFound

    monkeypatch.setenv("DEEPGEN_MODELS_DIR", str(tmp_path))
    with pytest.raises(RewardModelNotFound, match=str(tmp_path / "deepgen" / "clip")):
        N["RewardScore"]().score(torch.ones(1, 8, 8, 3), "x", "clip")


def test_interrupt_stops_within_one_step(handle):
    _, cond, _, _, _, _ = t2i(handle, steps=1)
    forwards = []

    def count(*_):
        forwards.append(1)
        if len(forwards) == 2:  # the user presses "cancel" during step 2 of 10
            cs.request_interrupt()

    hook = handle.model.transformer.register_forward_hook(count)
    try:
        with pytest.raises(cs.interrupt_exception_types()):
            N["DeepGenSampler"]().sample(handle, cond, **{**SAMPLER, "steps": 10})
    finally:
        hook.remove()
    assert len(forwards) == 2  # no DiT forward after the step in which the interrupt came


# what the model manager is asked to do in each memory mode, stage by stage (encode, bridge, sample, decode)
EXPECTED_LOADS = {
    "keep_all_on_gpu": [
        [("load", "DeepGenSCB"), ("load", "DeepGenVLM"), ("load", "DeepGenDiTWeights"), ("load", "DeepGenVAE")],
        [],
        [],
    ],
    "offload_vlm_after_encode": [
        [("load", "DeepGenSCB"), ("load", "DeepGenVLM"), ("unload", "DeepGenVLM")],
        [],
        [("load", "DeepGenDiTWeights"), ("load", "DeepGenVAE")],
    ],
    "sequential_offload": [
        [("load", "DeepGenSCB"), ("load", "DeepGenVLM"), ("unload", "DeepGenVLM")],
        [],
        [
            ("load", "DeepGenDiTWeights"),
            ("unload", "DeepGenDiTWeights"),
            ("load", "DeepGenVAE"),
            ("unload", "DeepGenVAE"),
        ],
    ],
}


@pytest.mark.parametrize("mode", ["keep_all_on_gpu", "offload_vlm_after_encode", "sequential_offload"])
def test_memory_modes(handle, mode):
    from nodes.comfy_services import managed_models as mm
    from nodes.model_handle import DeepGenModelHandle

    h = DeepGenModelHandle(handle.model, name="tiny", memory_mode=mode)
    h.unload()  # start from nothing loaded (the session's model is shared)
    mm.EVENTS.clear()
    seen = []
    (think,) = N["ThinkTokenEncode"]().encode(h, "a cat", "", "fix_pixels")
    seen.append(list(mm.EVENTS))
    mm.EVENTS.clear()
    cond, _, _ = N["SCBBridge"]().bridge(h, think)
    seen.append(list(mm.EVENTS))
    mm.EVENTS.clear()
    N["DeepGenSampler"]().sample(h, cond, **{**SAMPLER, "steps": 1})
    seen.append(list(mm.EVENTS))
    assert seen == EXPECTED_LOADS[mode]
    resident = {"keep_all_on_gpu": 4, "offload_vlm_after_encode": 3, "sequential_offload": 1}[mode]
    assert len(mm.loaded_model_names()) == resident and "DeepGenSCB" in mm.loaded_model_names()
    h.unload()
    assert mm.loaded_model_names() == []
    assert think.scb_input.device.type == "cpu" and cond.context.device.type == "cpu"  # outputs on intermediate


def test_loader_reads_both_release_layouts_from_model_folders(tmp_path, monkeypatch, tiny):
    """Official: checkpoint in models/deepgen, Qwen in models/text_encoders, UniPic2 in models/diffusion_models.
    Diffusers-format: one folder in models/deepgen. Both load through the node and generate."""
    monkeypatch.setenv("DEEPGEN_MODELS_DIR", str(tmp_path))
    (tmp_path / "deepgen").mkdir()
    shutil.copy(OFFICIAL / "model.safetensors", tmp_path / "deepgen" / "deepgen-official-tiny.safetensors")
    (tmp_path / "deepgen" / "connector_config.json").write_text(json.dumps({"num_attention_heads": 4}))
    shutil.copytree(OFFICIAL / "Qwen2.5-VL-tiny", tmp_path / "text_encoders" / "Qwen2.5-VL-tiny")
    shutil.copytree(OFFICIAL / "UniPic2-tiny", tmp_path / "diffusion_models" / "UniPic2-tiny")
    save_diffusers_release(tiny, tmp_path / "deepgen" / "DeepGen-1.0-diffusers-tiny")
    loader = N["DeepGenLoader"]
    assert loader.INPUT_TYPES()["required"]["checkpoint"][0] == [
        TINY_CHOICE,
        "DeepGen-1.0-diffusers-tiny",
        "deepgen-official-tiny.safetensors",
    ]

    official, native_model, native_vae = loader().load(
        "deepgen-official-tiny.safetensors",
        "Qwen2.5-VL-tiny",
        "UniPic2-tiny",
        "auto",
        "fp32",
        "offload_vlm_after_encode",
        "sdpa",
    )
    assert official.sources["layout"] == "official"
    assert native_model is None and native_vae is None  # ComfyUI's MODEL/VAE exist only inside ComfyUI
    *_, images, _ = t2i(official, steps=1)
    assert images.shape == (1, SIZE, SIZE, 3)

    diffusers, *_ = loader().load(
        "DeepGen-1.0-diffusers-tiny", "auto", "auto", "auto", "auto", "keep_all_on_gpu", "sdpa"
    )
    assert diffusers.sources["layout"] == "diffusers"
    a, b = tiny.state_dict(), diffusers.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_inside_comfyui_progress_previews_and_interrupt(handle, monkeypatch):
    """With stand-ins for ComfyUI's modules: the sampler drives comfy.utils.ProgressBar with one JPEG latent
    preview per step, and ComfyUI's interrupt flag stops it within one step."""
    import types

    from PIL import Image

    bars, flag = [], {"set": False}

    class InterruptProcessingException(Exception):
        pass

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.calls, self.total, self.node_id = [], total, node_id
            bars.append(self)

        def update_absolute(self, value, total=None, preview=None):
            self.calls.append((value, preview))

    def throw():
        if flag["set"]:
            flag["set"] = False
            raise InterruptProcessingException()

    mm = types.ModuleType("comfy.model_management")
    mm.throw_exception_if_processing_interrupted = throw
    mm.interrupt_current_processing = lambda value=True: flag.update(set=value)
    mm.InterruptProcessingException = InterruptProcessingException
    mm.get_torch_device = mm.intermediate_device = mm.unet_offload_device = lambda: torch.device("cpu")
    mm.soft_empty_cache = lambda *a, **k: None
    mm.free_memory = lambda *a, **k: None
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    for name, module in {
        "comfy": types.ModuleType("comfy"),
        "comfy.model_management": mm,
        "comfy.utils": utils,
        "folder_paths": types.ModuleType("folder_paths"),
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    assert cs.in_comfyui()

    (think,) = N["ThinkTokenEncode"]().encode(handle, "a cat", "", "fix_pixels", unique_id="7")
    cond, _, _ = N["SCBBridge"]().bridge(handle, think, unique_id="7")
    bars.clear()
    N["DeepGenSampler"]().sample(handle, cond, **{**SAMPLER, "steps": 3}, unique_id="7")
    sampling, decoding = bars
    assert sampling.total == 3 and sampling.node_id == "7" and [v for v, _ in sampling.calls] == [1, 2, 3]
    for _, preview in sampling.calls:
        kind, image, max_size = preview
        assert kind == "JPEG" and isinstance(image, Image.Image) and image.size == (SIZE // 8, SIZE // 8)
        assert max_size == 512
    assert decoding.total == 1 and [v for v, p in decoding.calls] == [1]

    calls = []
    hook = handle.model.transformer.register_forward_hook(lambda *_: calls.append(1) or cs.request_interrupt())
    try:
        with pytest.raises(InterruptProcessingException):
            N["DeepGenSampler"]().sample(handle, cond, **{**SAMPLER, "steps": 5})
    finally:
        hook.remove()
    assert len(calls) == 1
