"""Stages 1 and 2 on the tiny model: the loss goes down, only the intended tensors change, and the exports
(official-layout checkpoint, LoRA file) load back to the trained model's outputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from trainer_kit import (
    Recorder,
    assert_same_outputs,
    base_config,
    changed,
    eval_loss,
    one_thread,
    outputs,
    snapshot,
    write_dataset,
)

from deepgen.loading import load_model
from deepgen.lora import load_lora
from deepgen.tiny import build_tiny_model, save_tiny_release
from deepgen.train.checkpointing import load_checkpoint
from deepgen.train.export import combine_lora_pairs
from deepgen.train.trainer import SFTTrainer

SCB = ("meta_queries", "projector_1.", "projector_2.", "projector_3.", "connector.")
TINY_CONNECTOR = {"num_attention_heads": 4}


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("trainer-data"))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The tiny model (seed 0) in the official release layout: checkpoint + VLM folder + diffusion folder."""
    folder = tmp_path_factory.mktemp("tiny-release")
    with one_thread():
        paths = save_tiny_release(folder)
    return folder, paths


def load_export(path, paths, **kw):
    return load_model(
        path, paths["vlm"], paths["diffusion"], dtype=torch.float32, connector_config=TINY_CONNECTOR, **kw
    )


class Before(Recorder):
    """Records the model's tensors and fixed-draw loss when training starts (after LoRA injection)."""

    def __init__(self, trainer_ref, data):
        super().__init__()
        self.trainer_ref, self.data = trainer_ref, data

    def on_train_start(self, run):
        model = self.trainer_ref[0].model
        self.before, self.loss = snapshot(model), eval_loss(model, self.data)


def train(cfg, data, model=None, **kw):
    ref = []
    before = Before(ref, data)
    trainer = SFTTrainer(cfg, model=model, callbacks=[before], cpu=True, **kw)
    ref.append(trainer)
    result = trainer.run()
    return trainer.model, result, before


def test_stage1_trains_only_the_bridge(data, tmp_path, release):
    model, result, before = train(
        base_config(data, tmp_path, stage=1, lr=1e-2, max_steps=6, save_every=3), data, model=build_tiny_model(seed=0)
    )
    assert eval_loss(model, data) < before.loss
    moved = changed(before.before, snapshot(model))
    assert {"meta_queries", "projector_1.weight", "projector_3.weight", "connector.layers.1.mlp.fc2.weight"} <= moved
    assert all(k.startswith(SCB) for k in moved), sorted(k for k in moved if not k.startswith(SCB))[:5]
    assert not any(".lora_" in n for n, _ in model.named_parameters())
    # logs: one JSON line per update with per-task losses; checkpoints hold the trainable tensors only
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6] and log[0]["lr"] == pytest.approx(1e-2)
    assert "loss_image2image" in log[0] and "loss_text2image" in log[1]
    assert [(s, r) for s, _, r in before.checkpoints] == [(3, "periodic"), (6, "final")]
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.step == 6 and all(k.startswith(SCB) for k in ckpt.trainable)
    assert ckpt.data_position["micro_step"] == 6
    # stage 1 trains no LoRA: no LoRA file, but a pre-training checkpoint in the official layout
    assert result.lora_path is None and result.checkpoint_path.is_file()
    _, paths = release
    loaded = load_export(result.checkpoint_path, paths, allow_pretrain_checkpoint=True)
    assert_same_outputs(outputs(loaded), outputs(model))


def test_stage2_full_dit_and_vlm_lora_from_an_official_release(data, tmp_path, release):
    folder, paths = release
    cfg = base_config(data, tmp_path, stage=2, model=str(folder), lr=1e-3, max_steps=4, vlm_lora_dropout=0.0)
    model, result, before = train(cfg, data)
    assert eval_loss(model, data) < before.loss
    after = snapshot(model)
    moved = changed(before.before, after)
    assert any(k.startswith("transformer.") for k in moved) and any(k.startswith(SCB) for k in moved)
    assert not any(k.startswith(("lmm.", "vae.")) for k in moved)  # the VLM trains only through its LoRA
    lora_b = {n: p for n, p in model.lmm.named_parameters() if "lora_B" in n or "lora_embedding_B" in n}
    # every text layer but the last gets a gradient: SCB taps hidden_states[35, 29, …], i.e. layer 34's output
    text = [n for n in lora_b if "language_model.layers" in n]
    assert text and all((lora_b[n].abs().sum() > 0) == (".layers.35." not in n) for n in text)
    assert lora_b["model.language_model.embed_tokens.lora_embedding_B.default"].abs().sum() > 0
    assert all(p.abs().sum() == 0 for n, p in lora_b.items() if "visual" in n)  # no gradient, as officially
    # the official-layout export: PEFT keys as in model.pt, and load_model reproduces the trained model
    exported = load_adapter_keys(result.checkpoint_path)
    assert "lmm.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight" in exported
    assert "lmm.model.language_model.embed_tokens.lora_embedding_A.default" in exported
    assert {"meta_queries", "projector_2.weight", "connector.layers.0.self_attn.q_proj.weight"} <= exported
    assert "transformer.transformer_blocks.0.attn.to_q.weight" in exported
    trained = outputs(model)
    assert_same_outputs(outputs(load_export(result.checkpoint_path, paths)), trained)
    assert_same_outputs(outputs(load_export(result.checkpoint_path, paths, lora="peft")), trained)
    # the LoRA file holds only the LoRA parts here (the DiT trained in full) and says so
    assert load_lora(result.lora_path).metadata["complete"] is False

    # A second run starting from that export (its VLM LoRA merged at load) exports both LoRAs, combined.
    second = tmp_path / "second"
    second.mkdir()
    for sub in ("Qwen2.5-VL-tiny", "UniPic2-tiny"):
        (second / sub).symlink_to(folder / sub)
    shutil.copy(folder / "connector_config.json", second)
    shutil.copy(result.checkpoint_path, second / "model.safetensors")
    cfg2 = base_config(
        data,
        tmp_path / "out2",
        stage=2,
        model=str(second),
        lr=1e-2,
        max_steps=1,
        train_dit="frozen",
        vlm_lora_rank=2,
        vlm_lora_alpha=6.0,
        vlm_lora_dropout=0.0,
    )
    model2, result2, _ = train(cfg2, data)
    assert_same_outputs(outputs(load_export(result2.checkpoint_path, paths)), outputs(model2))
    ranks = {
        t.shape[0]
        for k, t in load_adapter_keys(result2.checkpoint_path, tensors=True).items()
        if k.endswith("lora_A.default.weight")
    }
    assert ranks == {4 + 2}


def test_stage2_dit_lora_option(data, tmp_path, release):
    cfg = base_config(
        data, tmp_path, stage=2, lr=1e-2, max_steps=4, train_dit="lora", vlm_lora=False, dit_lora_targets=["attn_ff"]
    )
    model, result, before = train(cfg, data, model=build_tiny_model(seed=0))
    assert eval_loss(model, data) < before.loss
    moved = changed(before.before, snapshot(model))
    assert moved and all(k.startswith(SCB) for k in moved)  # the DiT's own weights stay frozen
    dit_b = {n: p for n, p in model.transformer.named_parameters() if "lora_B" in n}
    assert any(".ff.net.2." in n for n in dit_b)
    # all get a gradient but the last block's context queries (context_pre_only: its context output is dropped)
    assert {n for n, p in dit_b.items() if p.abs().sum() == 0} == {
        "transformer_blocks.3.attn.add_q_proj.lora_B.default.weight"
    }
    # the LoRA file holds the DiT LoRA and the bridge change (.diff), so it is the whole run
    adapter = load_lora(result.lora_path)
    assert adapter.parts == ["transformer", "scb"] and adapter.metadata["complete"] is True
    assert "transformer.transformer_blocks.0.ff.net.0.proj" in adapter.modules
    # the official export merges the DiT LoRA into the DiT weights
    _, paths = release
    keys = load_adapter_keys(result.checkpoint_path)
    assert not any(".lora_" in k or "base_layer" in k for k in keys)
    assert_same_outputs(
        outputs(load_export(result.checkpoint_path, paths, allow_pretrain_checkpoint=True)), outputs(model)
    )


def test_combined_lora_pairs_sum_the_updates():
    g = torch.Generator().manual_seed(0)
    a = {
        "m": {
            "A": torch.randn(3, 5, generator=g),
            "B": torch.randn(4, 3, generator=g),
            "scale": 2.0,
            "embedding": False,
        }
    }
    b = {
        "m": {
            "A": torch.randn(2, 5, generator=g),
            "B": torch.randn(4, 2, generator=g),
            "scale": 1.5,
            "embedding": False,
        },
        "n": {
            "A": torch.randn(2, 5, generator=g),
            "B": torch.randn(4, 2, generator=g),
            "scale": 1.5,
            "embedding": False,
        },
    }
    out = combine_lora_pairs(a, b)
    assert out["m"]["A"].shape == (5, 5) and out["n"]["A"].shape == (5, 5)
    want_m = 2.0 * a["m"]["B"] @ a["m"]["A"] + 1.5 * b["m"]["B"] @ b["m"]["A"]
    assert torch.allclose(2.0 * out["m"]["B"] @ out["m"]["A"], want_m, atol=1e-5)
    assert torch.allclose(2.0 * out["n"]["B"] @ out["n"]["A"], 1.5 * b["n"]["B"] @ b["n"]["A"], atol=1e-5)


def load_adapter_keys(path, tensors=False):
    from safetensors.torch import load_file

    state = load_file(str(path))
    return state if tensors else set(state)


@pytest.mark.parametrize(
    "selection",
    [
        dict(train_dit="frozen", vlm_lora=False),
        dict(train_dit="lora", vlm_lora=False),
        dict(train_dit="full", vlm_lora=False, train_meta_queries=False, train_projectors=False),
        dict(train_dit="frozen", vlm_lora=True),
    ],
)
def test_ddp_searches_unused_tensors_only_when_a_backward_leaves_some(data, tmp_path, selection):
    """The stage-1/2 rule for DDP's ``find_unused_parameters`` against real backwards of an edit and a T2I
    micro-batch: some trainable tensor has no gradient exactly when the rule turns the search on."""
    from deepgen.train.data import MicroBatchLoader, load_datasets
    from deepgen.train.losses import TrainingGrid
    from deepgen.train.runtime import TrainableSpec, flow_batch_inputs, load_model_for_training, setup_trainable
    from deepgen.train.trainer import find_unused_parameters, sft_loss

    cfg = base_config(data, tmp_path, stage=2, micro_batch_size=1, **selection)
    spec = TrainableSpec.from_config(cfg)
    model, _ = load_model_for_training("tiny", dtype=torch.float32, device="cpu")
    params = setup_trainable(model, spec)
    grid = TrainingGrid.from_model(model)
    datasets = load_datasets(cfg.data, resolution=cfg.resolution, verify="exists")
    loader = iter(MicroBatchLoader(datasets, cfg.pattern, 1, seed=0, rank=0, world_size=1, num_workers=0))
    tasks = []
    for _ in range(2):  # the pattern alternates: one edit, one T2I micro-batch
        batch = next(loader)
        tasks.append(batch.task)
        for p in params.values():
            p.grad = None
        loss, _ = sft_loss(model, grid=grid, **flow_batch_inputs(model, batch, seed=0, rank=0, world=1, device="cpu"))
        loss.backward()
        unused = [n for n, p in params.items() if p.grad is None]
        assert bool(unused) == find_unused_parameters(spec), (batch.task, unused[:5])
    assert sorted(tasks) == ["image2image", "text2image"]
