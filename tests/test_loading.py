"""The loader: both official checkpoint files, the converted single file (bit-identical round trip), LoRA
merged vs kept as a PEFT adapter, and a clear error for each kind of bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from official_fixture import OFFICIAL, OFFICIAL_CONNECTOR, load_official, official_paths
from safetensors.torch import load_file, save_file

from deepgen.loading import CheckpointError, convert_model, detect_layout, load_model
from deepgen.pipeline import DeepGenPipeline
from deepgen.sizes import SizeError


@pytest.fixture(scope="module")
def checkpoint_tensors():
    return load_file(str(OFFICIAL / "model.safetensors"))


def load_with(tmp_path, tensors, name="model.safetensors", **kwargs):
    path = tmp_path / name
    save_file(tensors, str(path))
    paths = official_paths()
    return load_model(
        path, paths["vlm"], paths["diffusion"], dtype=torch.float32, connector_config=OFFICIAL_CONNECTOR, **kwargs
    )


def test_pt_and_safetensors_load_identically(official_model):
    from_pt = load_official("model.pt")
    a, b = official_model.state_dict(), from_pt.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_is_merged_with_alpha_over_rank(official_model, checkpoint_tensors):
    from transformers import Qwen2_5_VLForConditionalGeneration

    vlm = Qwen2_5_VLForConditionalGeneration.from_pretrained(official_paths()["vlm"], dtype=torch.float32)
    key = "model.language_model.layers.3.self_attn.q_proj"
    a = checkpoint_tensors[f"lmm.{key}.lora_A.default.weight"]
    b = checkpoint_tensors[f"lmm.{key}.lora_B.default.weight"]
    expected = vlm.get_submodule(key).weight + 2.0 * (b @ a)  # rank 2, alpha 4
    assert torch.allclose(official_model.lmm.get_submodule(key).weight, expected, atol=1e-6)
    ea = checkpoint_tensors["lmm.model.language_model.embed_tokens.lora_embedding_A.default"]
    eb = checkpoint_tensors["lmm.model.language_model.embed_tokens.lora_embedding_B.default"]
    expected = vlm.get_submodule("model.language_model.embed_tokens").weight + 2.0 * (eb @ ea).T
    assert torch.allclose(official_model.lmm.model.language_model.embed_tokens.weight, expected, atol=1e-6)


def test_peft_adapter_gives_the_same_conditioning(official_model):
    peft_model = load_official(lora="peft")
    assert any(".lora_A." in k for k in peft_model.lmm.state_dict())
    with torch.no_grad():
        merged = official_model.bridge(official_model.think(["a red cat", ""]).scb_input)
        adapter = peft_model.bridge(peft_model.think(["a red cat", ""]).scb_input)
    for x, y in zip(merged, adapter):
        assert torch.allclose(x, y, atol=1e-5, rtol=1e-4)


def test_old_transformers_key_layout_is_accepted(tmp_path, checkpoint_tensors, official_model):
    renamed = {}
    for key, value in checkpoint_tensors.items():
        key = key.replace("lmm.model.language_model.", "lmm.model.").replace("lmm.model.visual.", "lmm.visual.")
        renamed["module." + key] = value  # DeepSpeed/DDP prefix too
    model = load_with(tmp_path, renamed)
    assert torch.equal(
        model.lmm.model.language_model.embed_tokens.weight, official_model.lmm.model.language_model.embed_tokens.weight
    )


def test_state_dict_wrapper_in_pt(tmp_path, checkpoint_tensors):
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": checkpoint_tensors}, path)
    paths = official_paths()
    model = load_model(path, paths["vlm"], paths["diffusion"], dtype=torch.float32, connector_config=OFFICIAL_CONNECTOR)
    assert model.num_queries == checkpoint_tensors["meta_queries"].shape[0]


def test_convert_round_trip_is_bit_identical(tmp_path, official_model):
    out = convert_model(official_model, tmp_path / "deepgen.safetensors")
    assert detect_layout(out) == "single"
    # a file to share: it names none of the folders it was converted from (transformers' and diffusers' configs
    # record them as _name_or_path)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        configs = f.metadata()["configs"]
    assert "_name_or_path" not in configs and str(OFFICIAL) not in configs
    loaded = load_model(out, dtype=torch.float32)
    a, b = official_model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert loaded.lmm.lm_head.weight is loaded.lmm.model.language_model.embed_tokens.weight  # still tied
    assert (
        loaded.tokenizer("Generate an image: a cat")["input_ids"]
        == official_model.tokenizer("Generate an image: a cat")["input_ids"]
    )


@pytest.mark.parametrize("case", ["official", "official without the table", "converted"])
def test_position_table_is_computed_only_when_the_file_lacks_it(tmp_path, monkeypatch, checkpoint_tensors, case):
    """The DiT is built on meta, buffers included: the 2-D sin-cos table (864 MB at the real size) is read from the
    file, and computed once (as diffusers' PatchEmbed builds it) only for a checkpoint that omits it."""
    from diffusers.models import embeddings

    from deepgen.model.dit import DeepGenTransformer2DModel

    real, computed = embeddings.get_2d_sincos_pos_embed, []

    def counting(*args, **kwargs):
        table = real(*args, **kwargs)
        if table.device.type != "meta":
            computed.append(tuple(table.shape))
        return table

    converted = convert_model(load_official(), tmp_path / "converted.safetensors") if case == "converted" else None
    monkeypatch.setattr(embeddings, "get_2d_sincos_pos_embed", counting)
    if case == "official":
        model = load_official()
    elif converted is not None:
        model = load_model(converted, dtype=torch.float32)
    else:
        model = load_with(
            tmp_path, {k: v for k, v in checkpoint_tensors.items() if k != "transformer.pos_embed.pos_embed"}
        )
    assert len(computed) == (1 if case == "official without the table" else 0)
    table = model.transformer.pos_embed.pos_embed
    assert table.device.type == "cpu" and all(b.device.type == "cpu" for b in model.buffers())
    assert torch.equal(table, checkpoint_tensors["transformer.pos_embed.pos_embed"])
    monkeypatch.setattr(embeddings, "get_2d_sincos_pos_embed", real)
    built = DeepGenTransformer2DModel.from_config(model.transformer.config).pos_embed.pos_embed  # diffusers' own
    assert table.dtype == built.dtype and torch.equal(table, built)


def test_pretrain_checkpoint_needs_opt_in(tmp_path, checkpoint_tensors):
    scb_only = {k: v for k, v in checkpoint_tensors.items() if not k.startswith(("transformer.", "lmm."))}
    with pytest.raises(CheckpointError, match="allow_pretrain_checkpoint"):
        load_with(tmp_path, scb_only)
    model = load_with(tmp_path, scb_only, allow_pretrain_checkpoint=True)
    base = load_file(str(OFFICIAL / "UniPic2-tiny/transformer/diffusion_pytorch_model.safetensors"))
    assert torch.equal(model.transformer.state_dict()["proj_out.weight"], base["proj_out.weight"])


# ---- bad input ----------------------------------------------------------------------------------------


def test_checkpoint_of_another_model(tmp_path):
    other = {"model.diffusion_model.input_blocks.0.weight": torch.zeros(4, 4), "first_stage_model.x": torch.zeros(2)}
    with pytest.raises(CheckpointError, match="not look like a DeepGen"):
        load_with(tmp_path, other)


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt"])
def test_truncated_file(tmp_path, name):
    data = (OFFICIAL / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    paths = official_paths()
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(path, paths["vlm"], paths["diffusion"], dtype=torch.float32)


def test_missing_keys_are_named(tmp_path, checkpoint_tensors):
    broken = dict(checkpoint_tensors)
    del broken["connector.layers.1.mlp.fc2.bias"]
    del broken["transformer.proj_out.weight"]
    with pytest.raises(CheckpointError, match="proj_out.weight"):
        load_with(tmp_path, broken)
    broken["transformer.proj_out.weight"] = checkpoint_tensors["transformer.proj_out.weight"]
    with pytest.raises(CheckpointError, match=r"missing: connector\.layers\.1\.mlp\.fc2\.bias"):
        load_with(tmp_path, broken)


def test_shape_mismatch_is_named(tmp_path, checkpoint_tensors):
    broken = dict(checkpoint_tensors)
    broken["projector_2.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match=r"projector_2\.bias: checkpoint \(7,\)"):
        load_with(tmp_path, broken)


def test_missing_lora_half_and_unknown_lora_module(tmp_path, checkpoint_tensors):
    broken = dict(checkpoint_tensors)
    del broken["lmm.model.language_model.layers.0.mlp.up_proj.lora_B.default.weight"]
    with pytest.raises(CheckpointError, match="only one of A/B"):
        load_with(tmp_path, broken)
    broken = dict(checkpoint_tensors)
    broken["lmm.model.language_model.layers.99.mlp.up_proj.lora_A.default.weight"] = torch.zeros(2, 64)
    broken["lmm.model.language_model.layers.99.mlp.up_proj.lora_B.default.weight"] = torch.zeros(96, 2)
    with pytest.raises(CheckpointError, match="layers.99"):
        load_with(tmp_path, broken)


def test_vlm_folder_without_tokenizer(tmp_path):
    vlm = tmp_path / "vlm"
    shutil.copytree(official_paths()["vlm"], vlm)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (vlm / name).unlink()
    paths = official_paths()
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        load_model(
            paths["checkpoint"], vlm, paths["diffusion"], dtype=torch.float32, connector_config=OFFICIAL_CONNECTOR
        )


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(_Exploit.marker),))


def test_pickled_objects_are_refused_not_executed(tmp_path):
    _Exploit.marker = str(tmp_path / "executed")
    path = tmp_path / "evil.pt"
    torch.save({"meta_queries": torch.zeros(2, 2), "payload": _Exploit()}, path)
    paths = official_paths()
    with pytest.raises(CheckpointError, match="Refused"):
        load_model(path, paths["vlm"], paths["diffusion"])
    assert not (tmp_path / "executed").exists()


def test_official_checkpoint_needs_base_folders(tmp_path):
    alone = tmp_path / "model.safetensors"
    shutil.copy(official_paths()["checkpoint"], alone)
    with pytest.raises(CheckpointError, match="Qwen2.5-VL-3B-Instruct"):
        load_model(alone)


def test_base_folders_next_to_the_checkpoint_are_found(official_model):
    found = load_model(official_paths()["checkpoint"], dtype=torch.float32, connector_config=OFFICIAL_CONNECTOR)
    a, b = official_model.state_dict(), found.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- bad sampling input --------------------------------------------------------------------------------


def test_bad_sampling_input(official_model):
    pipe = DeepGenPipeline(official_model)
    with pytest.raises(ValueError, match="No prompts"):
        pipe.encode([])
    cond = pipe.encode(["a cat"])
    with pytest.raises(SizeError, match="multiple of 16"):
        pipe.sample(cond, 72, 64, num_steps=1)
    odd = torch.zeros(3, 50, 70)
    with pytest.raises(SizeError, match="multiple of 32"):
        pipe.encode(["edit it"], references=[[odd]], reference_resize="keep")
