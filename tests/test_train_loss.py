"""The trainer's flow-matching loss equals the official value recorded in the fixture for the same draws."""

from __future__ import annotations

import torch

from deepgen.train.losses import TrainingGrid, flow_matching_loss


def close(a, b, rtol):
    return (a - b).abs().max().item() <= rtol * b.abs().max().item()


def test_text_to_image_loss_matches_official(official_model, reference, reference_meta):
    run = reference_meta["runs"]["loss_t2i"]
    grid = TrainingGrid.from_model(official_model)
    u = reference["loss_t2i.u"]
    index = (u * 1000).long()
    assert torch.equal(index, reference["loss_t2i.timestep_index"])
    assert close(grid.timesteps[index], reference["loss_t2i.timesteps"], 1e-6)
    assert close(grid.sigmas[index], reference["loss_t2i.sigmas"], 1e-6)
    with torch.no_grad():
        out = flow_matching_loss(
            official_model,
            run["texts"],
            [reference[f"loss_t2i.x0.s{i}"] for i in range(2)],
            grid=grid,
            noise=[reference[f"loss_t2i.noise.s{i}"] for i in range(2)],
            timestep_index=index,
        )
    assert close(out.velocities[1], reference["loss_t2i.velocity.s1"], 2e-4)
    assert close(out.per_sample, reference["loss_t2i.per_sample"], 1e-5)
    assert abs(out.loss.item() - run["loss"]) <= 1e-5 * abs(run["loss"])


def test_edit_loss_matches_official(official_model, reference, reference_meta):
    run = reference_meta["runs"]["loss_edit"]
    model = official_model
    grid = TrainingGrid.from_model(model)
    ref = reference["loss_edit.ref_pixels.s0.r0"]
    with torch.no_grad():
        ref_latent = model.encode_image(ref[None], noise=reference["loss_edit.ref_eps.s0.r0"][None])[0]
        target = model.encode_image(
            reference["loss_edit.target_pixels.s0"][None], noise=reference["loss_edit.target_eps.s0"][None]
        )[0]
        assert close(target, reference["loss_edit.target_latents.s0"], 1e-4)
        out = flow_matching_loss(
            model,
            run["texts"],
            [target],
            grid=grid,
            reference_images=[[ref]],
            reference_latents=[[ref_latent]],
            noise=[reference["loss_edit.noise.s0"]],
            timestep_index=reference["loss_edit.timestep_index"],
        )
    assert abs(out.loss.item() - run["loss"]) <= 1e-5 * abs(run["loss"])


def test_grid_is_uniform_over_the_shifted_schedule(official_model):
    grid = TrainingGrid.from_model(official_model)
    assert len(grid) == 1000
    s = torch.arange(1000, 0, -1) / 1000
    assert torch.allclose(grid.sigmas, 3 * s / (1 + 2 * s), atol=1e-6)
    assert torch.allclose(grid.timesteps, grid.sigmas * 1000, atol=1e-3)
    u, index = grid.draw(5, torch.Generator().manual_seed(0))
    assert torch.equal(index, (u * 1000).long())
