"""The fixed-noise validation loss (deepgen/train/val_loss.py) on the tiny model: a pure function of the weights,
equal to the official loss of each sample at the fixed draws (the batching changes nothing), and it moves when the
weights do.  Its use in the stages: test_stages_learn.py, test_grpo_trainer.py, test_trainer_distributed.py."""

from __future__ import annotations

import pytest
import torch
from trainer_kit import one_thread, write_dataset

from deepgen.train.data import derive_seed, load_datasets
from deepgen.train.losses import TrainingGrid, flow_matching_loss
from deepgen.train.val_loss import VAL_TIMESTEP_INDICES, FixedNoiseValidation


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from deepgen.tiny import build_tiny_model

    data = write_dataset(tmp_path_factory.mktemp("val"), n_t2i=2, n_edit=1, size=96)
    datasets = load_datasets([data], resolution=32)
    model = build_tiny_model(0)
    return model, datasets, TrainingGrid.from_model(model)


def test_equals_the_official_loss_of_each_sample_at_the_fixed_draws(setup):
    model, datasets, grid = setup
    with one_thread():
        val = FixedNoiseValidation.from_datasets(datasets, 3, seed=7)
        assert [bool(s.references) for s in val.samples] == [False, False, True]  # T2I first, then the edit
        got = val.compute(model, grid)
        assert val.compute(model, grid) == got  # no draw left: the same weights give the same number
        by_hand = []
        for i, s in enumerate(val.samples):
            target = model.encode_image(s.target[None], sample=False)[0]
            refs = [model.encode_image(r[None], sample=False)[0] for r in s.references]
            for j, t in enumerate(VAL_TIMESTEP_INDICES):
                noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(derive_seed(7, "val", i, j)))
                out = flow_matching_loss(
                    model,
                    [s.prompt],
                    [target],
                    grid=grid,
                    reference_images=[s.references] if refs else None,
                    reference_latents=[refs] if refs else None,
                    noise=[noise],
                    timestep_index=torch.tensor([t]),
                )
                by_hand.append(out.loss.item())
    assert got == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-5)


def test_moves_with_the_weights_and_restores_the_train_mode(setup):
    model, datasets, grid = setup
    val = FixedNoiseValidation.from_datasets(datasets, 2)
    model.train()
    with one_thread():
        before = val.compute(model, grid)
        assert model.training and not model.vae.training
        with torch.no_grad():
            model.projector_3.weight.mul_(3.0)
        after = val.compute(model, grid)
        with torch.no_grad():
            model.projector_3.weight.div_(3.0)
    model.eval()
    assert after != before


def test_needs_a_sample():
    with pytest.raises(ValueError, match="at least one sample"):
        FixedNoiseValidation([])
