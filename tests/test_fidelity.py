"""Parity with the official code: the fixture's recorded tensors, reproduced through the public loader and
pipeline, within the fixture README's tolerances (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch
from official_fixture import load_official

from deepgen.images import to_uint8
from deepgen.pipeline import DeepGenPipeline


def tolerance_for(name: str, meta: dict) -> dict:
    prefix, field = name.split(".")[:2]
    for entry in meta["tolerances"]["entries"]:
        if field in entry["match"]:
            return entry
    raise KeyError(f"no tolerance for {name}")


def assert_matches(name: str, candidate: torch.Tensor, reference: dict, meta: dict) -> None:
    ref = reference[name]
    candidate = candidate.detach().to(ref.dtype).cpu()
    assert tuple(candidate.shape) == tuple(ref.shape), f"{name}: shape {tuple(candidate.shape)} vs {tuple(ref.shape)}"
    rule = tolerance_for(name, meta)
    if rule["check"] == "exact":
        assert torch.equal(candidate, ref), f"{name} differs"
    elif rule["check"] == "uint8":
        diff = (candidate.int() - ref.int()).abs()
        assert diff.max() <= rule["max_abs"], f"{name}: max diff {diff.max()}"
        assert (diff > 0).float().mean() <= rule["max_fraction"], f"{name}: {(diff > 0).float().mean():.4f} differ"
    else:
        bound = rule["atol"] + rule["rtol"] * ref.abs().max().item()
        err = (candidate - ref).abs().max().item()
        assert err <= bound, f"{name}: max error {err:.3g} > bound {bound:.3g}"


@pytest.fixture(scope="module", params=["model.safetensors", "model.pt"])
def pipe(request):
    return DeepGenPipeline(load_official(request.param))


class Recorder:
    def __init__(self):
        self.latents = {}

    def __call__(self, step, total, latents):
        self.latents[step + 1] = latents.clone()


def test_text_to_image_matches_official(pipe, reference, reference_meta):
    run = reference_meta["runs"]["t2i"]
    model = pipe.model
    rows = run["prompts"] + run["cfg_prompts"]
    with torch.no_grad():
        think = model.think(rows)
        for field, value in [
            ("input_ids", think.input_ids),
            ("vlm_attention_mask", think.attention_mask),
            ("position_ids", think.position_ids),
            ("scb_input", think.scb_input),
            ("connector_out", model.connector_output(think.scb_input)),
        ]:
            assert_matches(f"t2i.{field}", value, reference, reference_meta)
    cond = pipe.encode(run["prompts"])
    assert_matches("t2i.seq", torch.cat([cond.context, cond.negative_context]), reference, reference_meta)
    assert_matches("t2i.pooled", torch.cat([cond.pooled, cond.negative_pooled]), reference, reference_meta)
    check_sampling("t2i", pipe, cond, run, reference, reference_meta)


def test_edit_matches_official(pipe, reference, reference_meta):
    run = reference_meta["runs"]["edit"]
    ref_image = reference["edit.ref_pixels.s0.r0"]
    cond = pipe.encode(
        run["prompts"],
        references=[[ref_image]],
        reference_resize="keep",
        reference_noise=[[reference["edit.ref_eps.s0.r0"]]],
    )
    assert_matches("edit.ref_latents.s0.r0", cond.reference_latents[0][0], reference, reference_meta)
    assert_matches("edit.seq", torch.cat([cond.context, cond.negative_context]), reference, reference_meta)
    assert_matches("edit.pooled", torch.cat([cond.pooled, cond.negative_pooled]), reference, reference_meta)
    check_sampling("edit", pipe, cond, run, reference, reference_meta)


def check_sampling(prefix, pipe, cond, run, reference, meta):
    # First-step velocity, exactly as the DiT sees the CFG batch [negative; conditional].
    noise = reference[f"{prefix}.noise"]
    scheduler = pipe.make_scheduler()
    scheduler.set_timesteps(run["num_steps"])
    assert_matches(f"{prefix}.timesteps", scheduler.timesteps, reference, meta)
    assert_matches(f"{prefix}.sigmas", scheduler.sigmas, reference, meta)
    refs = None if cond.reference_latents is None else cond.reference_latents * 2
    with torch.no_grad():
        velocity = pipe.model.velocity(
            torch.cat([noise, noise]),
            scheduler.timesteps[0].expand(2 * len(cond)),
            torch.cat([cond.negative_context, cond.context]),
            torch.cat([cond.negative_pooled, cond.pooled]),
            refs,
        )
    assert_matches(f"{prefix}.velocity.step0", velocity, reference, meta)

    recorder = Recorder()
    latents = pipe.sample(
        cond,
        run["height"],
        run["width"],
        num_steps=run["num_steps"],
        cfg_scale=run["cfg_scale"],
        latents=noise,
        callback=recorder,
    )
    for step in range(1, run["num_steps"]):
        assert_matches(f"{prefix}.latents.step{step}", recorder.latents[step], reference, meta)
    assert_matches(f"{prefix}.final_latents", latents, reference, meta)
    image = pipe.decode(latents)
    assert_matches(f"{prefix}.image", image, reference, meta)
    assert_matches(f"{prefix}.image_u8", to_uint8(image), reference, meta)
