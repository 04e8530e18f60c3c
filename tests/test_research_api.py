"""The research API (docs/api.md) against the official fixture's recorded tensors, through public names only:
think-token ids and positions, the stacked SCB input, per-step raw and guided velocities, and the
flow-matching loss rebuilt by hand from its public target and weighting.

Float tensors use the per-tensor tolerances of reference.json (`assert_matches`, as tests/test_fidelity.py)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from test_fidelity import assert_matches

from deepgen.constants import scb_tap_indices
from deepgen.pipeline import DeepGenPipeline, StepOutput
from deepgen.train.losses import (
    TrainingGrid,
    flow_matching_loss,
    flow_matching_target,
    loss_weighting,
    noisy_latents,
    weighted_mse,
)


@pytest.fixture(scope="module")
def pipe(official_model):
    return DeepGenPipeline(official_model)


def edit_inputs(reference):
    """The edit run's reference image and its recorded VAE posterior draw (fed in: RNGs differ)."""
    return [[reference["edit.ref_pixels.s0.r0"]]], [[reference["edit.ref_eps.s0.r0"]]]


# ---- think tokens: ids, masks, positions; the stacked SCB input -----------------------------------------
@pytest.mark.parametrize("prefix", ["t2i", "edit"])
def test_think_ids_positions_and_scb_input_match_official(pipe, reference, reference_meta, prefix):
    run = reference_meta["runs"][prefix]
    references = edit_inputs(reference)[0] if prefix == "edit" else None
    think = pipe.think(run["prompts"], references=references, reference_resize="keep")
    assert think.negative_prompts == run["cfg_prompts"]
    vlm = think.vlm
    for field, value in [
        ("input_ids", vlm.input_ids),
        ("attention_mask", vlm.text_attention_mask),
        ("vlm_attention_mask", vlm.attention_mask),
        ("position_ids", vlm.position_ids),
        ("scb_input", think.scb_input),
    ]:
        assert_matches(f"{prefix}.{field}", value, reference, reference_meta)

    # The think tokens: the last num_queries places of the sequence, after every row's (left-padded) prompt.
    num_queries = reference_meta["model"]["num_queries"]
    length = reference[f"{prefix}.input_ids"].shape[1]
    assert vlm.num_think_tokens == num_queries
    assert vlm.think_slice == slice(length, length + num_queries)
    assert torch.equal(vlm.think_position_ids, reference[f"{prefix}.position_ids"][:, :, length:])
    assert torch.equal(
        vlm.attention_mask[:, vlm.think_slice],
        torch.ones(len(vlm.input_ids), num_queries, dtype=vlm.attention_mask.dtype),
    )
    # They continue the prompt's positions on all three M-RoPE axes: max(prompt) + 1, + 2, ...
    recorded = reference[f"{prefix}.position_ids"]
    prompt_max = recorded[:, :, :length].amax(dim=(0, 2))
    expected = prompt_max[None, :, None] + 1 + torch.arange(num_queries)
    assert torch.equal(vlm.think_position_ids, expected.expand(3, -1, -1))

    # The SCB input is the six taps side by side, deepest first; think.vlm carries the same tensor.
    taps = vlm.scb_taps()
    assert len(taps) == len(scb_tap_indices(pipe.model.num_vlm_layers)) == 6
    assert torch.equal(torch.cat(taps, dim=-1), think.scb_input)
    assert vlm.scb_input is think.scb_input


# ---- sampling: raw and guided velocities per step ----------------------------------------------------------
@pytest.mark.parametrize("prefix", ["t2i", "edit"])
def test_step_velocities_match_official(pipe, reference, reference_meta, prefix):
    run = reference_meta["runs"][prefix]
    if prefix == "edit":
        images, eps = edit_inputs(reference)
        cond = pipe.encode(run["prompts"], references=images, reference_resize="keep", reference_noise=eps)
    else:
        cond = pipe.encode(run["prompts"])
    steps: list[StepOutput] = []
    latents_seen = []
    final = pipe.sample(
        cond,
        run["height"],
        run["width"],
        num_steps=run["num_steps"],
        cfg_scale=run["cfg_scale"],
        latents=reference[f"{prefix}.noise"],
        on_step=steps.append,
        callback=lambda i, n, x: latents_seen.append(x),
    )  # the old callback still works
    assert [s.step for s in steps] == list(range(run["num_steps"]))
    sigmas = reference[f"{prefix}.sigmas"]
    for i, s in enumerate(steps):
        assert s.guided and s.num_steps == run["num_steps"] and s.cfg_scale == run["cfg_scale"]
        assert_matches(f"{prefix}.latents.step{i}", s.latents, reference, reference_meta)
        # Raw DiT output in the recorded CFG batch order [negative; conditional], then the guided velocity.
        raw = torch.cat([s.velocity_uncond, s.velocity_cond])
        assert_matches(f"{prefix}.velocity.step{i}", raw, reference, reference_meta)
        assert_matches(f"{prefix}.guided_velocity.step{i}", s.velocity, reference, reference_meta)
        assert math.isclose(s.sigma, sigmas[i].item(), rel_tol=1e-6)
        assert math.isclose(s.sigma_next, sigmas[i + 1].item(), rel_tol=1e-6, abs_tol=1e-7)
        assert torch.allclose(s.next_latents, s.latents + (s.sigma_next - s.sigma) * s.velocity, atol=1e-5)
        assert s.next_latents is latents_seen[i]
    assert_matches(f"{prefix}.dit_timestep.step0", steps[0].timestep.expand(2 * len(cond)), reference, reference_meta)
    assert_matches(f"{prefix}.final_latents", steps[-1].next_latents, reference, reference_meta)
    assert torch.equal(final, steps[-1].next_latents)


def test_step_output_without_guidance_and_with_strength(pipe, reference, reference_meta):
    run = reference_meta["runs"]["t2i"]
    steps: list[StepOutput] = []
    pipe.sample(pipe.encode(run["prompts"][:1], guidance=False), 64, 64, num_steps=1, on_step=steps.append)
    assert not steps[0].guided and steps[0].cfg_scale == 1.0
    assert steps[0].velocity is steps[0].velocity_cond

    # img2img at strength 0.5 runs the last 2 of 4 steps: the sigmas are the schedule's from there on.
    steps.clear()
    noise = reference["t2i.noise"][:1]
    pipe.sample(
        pipe.encode(run["prompts"][:1]),
        64,
        64,
        num_steps=4,
        latents=noise,
        init_latents=noise,
        strength=0.5,
        on_step=steps.append,
    )
    sigmas = reference["t2i.sigmas"]
    assert [s.num_steps for s in steps] == [2, 2]
    assert [s.sigma for s in steps] == pytest.approx(sigmas[2:4].tolist(), rel=1e-6)
    assert steps[-1].sigma_next == 0.0


# ---- the flow-matching loss from its public parts ---------------------------------------------------------
def test_loss_by_hand_matches_official(pipe, reference, reference_meta):
    model, run = pipe.model, reference_meta["runs"]["loss_t2i"]
    grid = TrainingGrid.from_model(model)
    index = reference["loss_t2i.timestep_index"]
    sigmas, timesteps = grid.sigmas[index], grid.timesteps[index]
    x0 = [reference[f"loss_t2i.x0.s{i}"] for i in range(2)]
    eps = [reference[f"loss_t2i.noise.s{i}"] for i in range(2)]

    noisy = [noisy_latents(x, e, s) for x, e, s in zip(x0, eps, sigmas)]
    targets = [flow_matching_target(x, e) for x, e in zip(x0, eps)]
    weights = loss_weighting(sigmas)  # the official scheme, "none"
    assert torch.equal(weights, torch.ones(2))
    for i in range(2):
        assert_matches(f"loss_t2i.noisy.s{i}", noisy[i], reference, reference_meta)
        assert_matches(f"loss_t2i.target.s{i}", targets[i], reference, reference_meta)

    # The recorded DiT outputs through our target and weighting give the recorded loss.
    recorded_v = [reference[f"loss_t2i.velocity.s{i}"] for i in range(2)]
    per_sample = torch.stack([weighted_mse(v, y, w) for v, y, w in zip(recorded_v, targets, weights)])
    assert_matches("loss_t2i.per_sample", per_sample, reference, reference_meta)
    assert_matches("loss_t2i.value", per_sample.mean(), reference, reference_meta)

    # Our own DiT outputs, conditioned through the public think -> bridge path, give it too.
    with torch.no_grad():
        context, pooled = model.bridge(model.think(run["texts"]).scb_input)
        velocities = model.velocity(noisy, timesteps, context, pooled)
    for i in range(2):
        assert_matches(f"loss_t2i.velocity.s{i}", velocities[i], reference, reference_meta)
    loss = torch.stack([weighted_mse(v, y, w) for v, y, w in zip(velocities, targets, weights)]).mean()
    assert abs(loss.item() - run["loss"]) <= 1e-5 * abs(run["loss"])

    # flow_matching_loss is made of the same parts, bit for bit.
    with torch.no_grad():
        out = flow_matching_loss(model, run["texts"], x0, grid=grid, noise=eps, timestep_index=index)
    assert all(torch.equal(a, b) for a, b in zip(out.targets, targets))
    assert torch.equal(out.weights, weights)
    assert torch.equal(out.loss, loss)


def test_edit_loss_target_matches_official(pipe, reference, reference_meta):
    model, run = pipe.model, reference_meta["runs"]["loss_edit"]
    with torch.no_grad():
        target_latent = model.encode_image(
            reference["loss_edit.target_pixels.s0"][None], noise=reference["loss_edit.target_eps.s0"][None]
        )[0]
        ref = reference["loss_edit.ref_pixels.s0.r0"]
        ref_latent = model.encode_image(ref[None], noise=reference["loss_edit.ref_eps.s0.r0"][None])[0]
        out = flow_matching_loss(
            model,
            run["texts"],
            [target_latent],
            grid=TrainingGrid.from_model(model),
            reference_images=[[ref]],
            reference_latents=[[ref_latent]],
            noise=[reference["loss_edit.noise.s0"]],
            timestep_index=reference["loss_edit.timestep_index"],
        )
    assert_matches("loss_edit.target.s0", out.targets[0], reference, reference_meta)
    assert_matches("loss_edit.velocity.s0", out.velocities[0], reference, reference_meta)
    assert_matches("loss_edit.per_sample", out.per_sample, reference, reference_meta)
    assert abs(out.loss.item() - run["loss"]) <= 1e-5 * abs(run["loss"])


def test_loss_weighting_schemes():
    sigmas = torch.tensor([0.25, 0.5, 1.0])
    assert torch.equal(loss_weighting(sigmas, "none"), torch.ones(3))
    assert torch.allclose(loss_weighting(sigmas, "sigma_sqrt"), torch.tensor([16.0, 4.0, 1.0]))
    assert torch.allclose(loss_weighting(sigmas, "cosmap"), 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2)))
    with pytest.raises(ValueError, match="unknown loss weighting 'logit_normal'"):
        loss_weighting(sigmas, "logit_normal")


# ---- docs/api.md stays true -----------------------------------------------------------------------------------
def test_docs_api_examples_run(monkeypatch):
    """Every ```python block of docs/api.md runs, in order, in one namespace, from the repository root."""
    root = Path(__file__).resolve().parents[1]
    blocks = re.findall(r"```python\n(.*?)```", (root / "docs" / "api.md").read_text(), re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(root)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md, python block {i}", "exec"), namespace)
