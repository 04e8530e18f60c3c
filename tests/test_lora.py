"""LoRA files: a trained adapter, saved and merged back with strength 1, reproduces the adapted model;
strength 0 (or restore) gives back the exact base weights."""

from __future__ import annotations

import pytest
import torch

from deepgen.lora import LoraError, LoraPatcher, add_lora, dit_lora_targets, load_lora, save_lora, vlm_lora_targets
from deepgen.tiny import build_tiny_model


def velocity_and_context(model):
    with torch.no_grad():
        context, pooled = model.bridge(model.think(["a cat", ""]).scb_input)
        torch.manual_seed(0)
        x = torch.randn(2, 16, 4, 4)
        return model.velocity(x, torch.tensor([500.0, 500.0]), context, pooled), context


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    model = build_tiny_model(seed=0)
    add_lora(model.transformer, dit_lora_targets(model.transformer), rank=4, alpha=32)  # scale 8, as in the issue
    targets = [t for t in vlm_lora_targets(model.lmm) if "language_model" in t][:40]
    add_lora(model.lmm, targets + ["model.language_model.embed_tokens"], rank=2, alpha=4)
    torch.manual_seed(1)
    with torch.no_grad():  # pretend training moved the B matrices away from zero
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.normal_(std=0.05)
    diffs = {"projector_2.weight": torch.randn_like(model.projector_2.weight) * 0.01}
    path = save_lora(model, tmp_path_factory.mktemp("lora") / "test.safetensors", {"steps": 3})
    with_scb = save_lora(model, path.with_name("with_scb.safetensors"), {"steps": 3}, diffs=diffs)
    return model, path, with_scb, diffs


def test_file_layout(adapted):
    model, path, _, _ = adapted
    lora = load_lora(path)
    assert lora.metadata == {"steps": 3}
    assert "transformer.transformer_blocks.0.attn.to_q" in lora.modules  # SD3 diffusers key, ComfyUI-loadable
    assert "transformer.transformer_blocks.0.attn2.to_q" in lora.modules  # SD3.5's second attention is adapted too
    assert lora.modules["lmm.model.language_model.embed_tokens"].embedding
    # the scale alpha/r = 8 is folded into B and .alpha says r, so loaders that ignore alpha get the same update
    module = lora.modules["transformer.transformer_blocks.0.attn.to_q"]
    assert module.scale == 1.0
    layer = model.transformer.get_submodule("transformer_blocks.0.attn.to_q")
    expected = 8.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    assert torch.allclose(module.scale * module.delta(), expected, atol=1e-6)


def test_strength_one_reproduces_adapter_and_zero_the_base(adapted):
    model, path, _, _ = adapted
    expected_v, expected_ctx = velocity_and_context(model)
    base = build_tiny_model(seed=0)
    base_v, base_ctx = velocity_and_context(base)
    patcher = LoraPatcher()
    patcher.apply(base, [(load_lora(path), 1.0)])
    v, ctx = velocity_and_context(base)
    assert torch.allclose(v, expected_v, atol=1e-5) and torch.allclose(ctx, expected_ctx, atol=1e-5)
    patcher.apply(base, [(load_lora(path), 0.0)])
    v0, _ = velocity_and_context(base)
    assert torch.equal(v0, base_v)
    patcher.apply(base, [(load_lora(path), 0.5)])
    patcher.restore(base)
    assert torch.equal(velocity_and_context(base)[0], base_v)


def test_bad_lora_inputs(tmp_path, adapted):  # noqa: ARG001
    with pytest.raises(LoraError, match="rank must be at least 1"):
        add_lora(build_tiny_model().transformer, ["proj_out"], rank=0, alpha=1)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(LoraError, match="not a readable"):
        load_lora(bad)


def test_diffusers_load_lora_adapter_gives_the_same_dit(adapted):
    """diffusers reads our DiT keys (and ignores .alpha): with the scale folded in, its adapter matches ours,
    also from a file that carries VLM LoRAs and think-token/connector .diff tensors besides."""
    _, _, with_scb, _ = adapted
    other = build_tiny_model(seed=0)
    other.transformer.load_lora_adapter(str(with_scb), prefix="transformer", adapter_name="deepgen")
    ours = build_tiny_model(seed=0)
    LoraPatcher().apply(ours, [(load_lora(with_scb), 1.0)])
    for name in ("lmm", "projector_2"):  # only the DiT differs from the base in `other`: patch the rest as ours
        getattr(other, name).load_state_dict(getattr(ours, name).state_dict())
    expected, _ = velocity_and_context(ours)
    got, _ = velocity_and_context(other)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize("prefix", ["lora_transformer_", "lora_unet_"], ids=["onetrainer", "kohya"])
def test_kohya_names_load_back(adapted, tmp_path, prefix):
    """A file with OneTrainer/kohya names (lora_transformer_ / lora_unet_ + <module_with_underscores>
    .lora_down/up/alpha, alpha not folded) patches the model exactly as our own file does."""
    from safetensors.torch import load_file, save_file

    model, path, _, _ = adapted
    kohya = {}
    for key, value in load_file(str(path)).items():
        if not key.startswith("transformer."):
            continue
        module, kind = key.rsplit(".lora_", 1) if ".lora_" in key else key.rsplit(".", 1)
        flat = prefix + module[len("transformer.") :].replace(".", "_")
        if kind == "A.weight":
            kohya[f"{flat}.lora_down.weight"] = value
        elif kind == "B.weight":
            kohya[f"{flat}.lora_up.weight"] = value / 2  # unfolded: alpha 2r restores the same scale
        else:
            kohya[f"{flat}.alpha"] = value * 2
    save_file(kohya, str(tmp_path / "kohya.safetensors"))
    a, b = build_tiny_model(seed=0), build_tiny_model(seed=0)
    LoraPatcher().apply(a, [(load_lora(tmp_path / "kohya.safetensors"), 1.0)])
    ours = load_lora(path)
    ours.modules = {k: v for k, v in ours.modules.items() if k.startswith("transformer.")}
    LoraPatcher().apply(b, [(ours, 1.0)])
    assert torch.allclose(velocity_and_context(a)[0], velocity_and_context(b)[0], atol=1e-6)


def test_stage_two_and_three_adapt_the_same_dit_modules():
    """One definition of the DiT LoRA targets: the stage 1-2 default and stage 3's `dit_lora_targets` are the preset
    "attn", which covers SD3.5's attn2 (diffusers' SD3 suffixes such as "attn.to_q" would miss it)."""
    from deepgen.train.config import TrainConfig
    from deepgen.train.grpo.run_config import Stage3Config
    from deepgen.train.runtime import TrainableSpec

    transformer = build_tiny_model(seed=0).transformer
    stage2 = dit_lora_targets(transformer, TrainableSpec.from_config(TrainConfig()).dit_lora_targets)
    stage3 = dit_lora_targets(transformer, Stage3Config().dit_lora_targets)
    assert stage2 == stage3 and any(".attn2." in name for name in stage2)


def test_vlm_lora_targets_presets_and_config():
    """ "auto" (the official default) adapts every Linear and the token embedding; "linear" leaves the embedding (and the LM head
    tied to it) out (the demo model's embedding is seeded, not stored, so it must stay as it is); a config string is a one-item list."""
    from deepgen.train.config import config_from_dict
    from deepgen.train.runtime import TrainableSpec

    lmm = build_tiny_model(seed=0).lmm
    auto, linear = vlm_lora_targets(lmm), vlm_lora_targets(lmm, ["linear"])
    embedding = lmm.get_input_embeddings().weight
    tied = [n for n in auto if lmm.get_submodule(n).weight is embedding]  # the embedding and the tied LM head
    assert len(tied) == 2 and sorted(linear) == sorted(set(auto) - set(tied))
    cfg = config_from_dict({"stage": 2, "model": "tiny", "data": ["x.jsonl"], "vlm_lora_targets": "linear"})
    assert TrainableSpec.from_config(cfg).vlm_lora_targets == ["linear"]
    with pytest.raises(LoraError, match="Unknown VLM LoRA targets"):
        vlm_lora_targets(lmm, "attention")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_direct_linear_merge_matches_peft(dtype):
    """merge_lora merges Linear layers itself (PEFT's route cost 85 s at the real size): the same bits as PEFT's
    in fp32, within one ulp in bf16."""
    from deepgen.loading.lora import attach_lora_adapter, merge_lora
    from deepgen.tiny import build_tiny_model

    g = torch.Generator().manual_seed(0)
    ours, theirs = build_tiny_model(seed=0).to(dtype), build_tiny_model(seed=0).to(dtype)
    pairs = {}
    for name, module in ours.lmm.named_modules():
        if ".language_model.layers." in name and isinstance(module, torch.nn.Linear):
            pairs[name] = {
                "A": torch.randn(8, module.in_features, generator=g) * 0.1,
                "B": torch.randn(module.out_features, 8, generator=g) * 0.1,
            }
    original = build_tiny_model(seed=0).to(dtype).lmm
    merge_lora(ours.lmm, pairs, 2.0)
    attach_lora_adapter(theirs.lmm, pairs, alpha=16.0, adapter_name="x")
    for name in pairs:
        layer = theirs.lmm.get_submodule(name)
        layer.merge(adapter_names=["x"])
        expected = layer.get_base_layer().weight
        got = ours.lmm.get_submodule(name).weight
        assert type(ours.lmm.get_submodule(name)) is torch.nn.Linear
        if dtype == torch.float32:
            assert torch.equal(got, expected), name
        else:  # one fused addmm_ instead of PEFT's rounded fp32 delta: rounding-level apart (an ulp of W or ΔW)
            base = original.get_submodule(name).weight.float()
            delta = pairs[name]["B"].to(dtype).float() @ pairs[name]["A"].to(dtype).float() * 2.0
            bound = torch.finfo(dtype).eps * (base.abs() + delta.abs())
            assert ((got.float() - expected.float()).abs() <= bound).all(), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_direct_embedding_merge_matches_peft(dtype, monkeypatch):
    """merge_lora merges an Embedding's LoRA in place, without PEFT, a block of rows at a time: PEFT's merge builds
    the delta and a scaled copy, each as large as the 151936-row table (a 78 MB transient on the tiny fixture,
    2.5 GB at the real width in bf16). Same arithmetic as PEFT's, so within rounding of its result (the BLAS may
    round a narrow block differently from the whole product)."""
    from deepgen.loading import CheckpointError, lora

    def embedding_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Embedding(3000, 48)).to(dtype)

    g = torch.Generator().manual_seed(0)
    pairs = {"0": {"A": torch.randn(4, 3000, generator=g) * 0.1, "B": torch.randn(48, 4, generator=g) * 0.1}}
    ours, theirs = embedding_model(), embedding_model()
    base, weight = ours[0].weight.detach().float().clone(), ours[0].weight

    def no_peft(*args, **kwargs):
        raise AssertionError("the embedding went through PEFT")

    monkeypatch.setattr(lora, "attach_lora_adapter", no_peft)
    monkeypatch.setattr(lora, "EMBEDDING_BLOCK", 7 * 48)  # 7 rows a block: many blocks, the last one partial
    assert lora.merge_lora(ours, pairs, 2.0) == []
    assert type(ours[0]) is torch.nn.Embedding and ours[0].weight is weight  # in place, nothing left wrapped
    monkeypatch.undo()

    lora.attach_lora_adapter(theirs, pairs, alpha=8.0, adapter_name="x")  # rank 4: scaling 2.0
    theirs[0].merge(adapter_names=["x"])
    expected = theirs[0].get_base_layer().weight.float()
    a, b = pairs["0"]["A"], pairs["0"]["B"]
    assert (expected - base).abs().max() > 1e-2  # the merge did change the table
    size = 2.0 * (b.abs() @ a.abs()).T  # bounds |ΔW| and the rounding of each B·A dot product
    bound = 2 * torch.finfo(dtype).eps * (base.abs() + 2 * size)  # an ulp of ΔW (when cast) and one of the sum
    assert ((weight.float() - expected).abs() <= bound).all()
    with pytest.raises(CheckpointError, match="do not fit an Embedding"):
        lora.merge_lora(ours, {"0": {"A": pairs["0"]["A"][:, :100], "B": pairs["0"]["B"]}}, 2.0)
