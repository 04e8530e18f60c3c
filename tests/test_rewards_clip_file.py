"""The CLIP reward from one safetensors file (ComfyUI's models/clip_vision) with a tokenizer folder: the same scores
as the same model as a transformers folder; strict loading; clear errors for image-tower-only files, wrong shapes,
other layouts, a missing tokenizer."""

import numpy as np
import pytest
import torch
from clip_kit import save_single_file, tiny_clip, write_tokenizer
from PIL import Image
from trainer_kit import one_thread

from deepgen.errors import CheckpointError, InputError
from deepgen.rewards import CLIPReward, RewardModelNotFound
from deepgen.rewards.clip_file import VIT_L14_CONFIG, check_clip_file, clip_config

PROMPTS = ["a red cat on a chair", "a watercolor lighthouse", "text that says HELLO", "a plain grey square"]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, its config dict, its transformers folder, a tokenizer folder of vocab.json + merges.txt only)."""
    root = tmp_path_factory.mktemp("clipfile")
    model, cfg = tiny_clip(root / "folder")
    write_tokenizer(root / "tokenizer")
    return model, cfg, root / "folder", root / "tokenizer"


def _pil():
    rng = np.random.default_rng(1)
    arrs = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(3)] + [np.full((40, 56, 3), 90, np.uint8)]
    return [Image.fromarray(a) for a in arrs]


@pytest.mark.parametrize("position_ids", [True, False], ids=["with-position-ids", "without"])
def test_single_file_scores_equal_the_folder(tiny, tmp_path, position_ids):
    model, cfg, folder, tok = tiny
    path = save_single_file(model, tmp_path / "clip_vision" / "clip-tiny.safetensors", position_ids=position_ids)
    pil = _pil()
    from_folder = CLIPReward(folder, device="cpu")(pil, PROMPTS)
    reward = CLIPReward(path, device="cpu", tokenizer_path=tok, config=cfg)
    from_file = reward(pil, PROMPTS)
    assert torch.equal(from_file, from_folder)
    loaded, _ = reward.load()
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    assert torch.equal(loaded.text_model.embeddings.position_ids, torch.arange(77)[None])
    assert not torch.allclose(reward(pil, PROMPTS[::-1]), from_file)  # the text tower is used


def test_image_tower_only_files_are_refused_with_the_file_to_get(tiny, tmp_path):
    model, cfg, _, tok = tiny

    def vision_only(state):
        for k in [k for k in state if not k.startswith(("vision_model.", "visual_projection."))]:
            del state[k]

    path = save_single_file(model, tmp_path / "clip_vision_l.safetensors", edit=vision_only)
    with pytest.raises(CheckpointError) as e:
        CLIPReward(path, device="cpu", tokenizer_path=tok, config=cfg).load()
    msg = str(e.value)
    assert "clip_vision_l.safetensors holds only CLIP's image tower" in msg
    assert "needs the text tower too" in msg and "openai/clip-vit-large-patch14" in msg and "model.safetensors" in msg
    open_clip = tmp_path / "open_clip_vision.safetensors"  # ComfyUI / open_clip naming of the image tower
    from safetensors.torch import save_file

    save_file({"visual.conv1.weight": torch.zeros(4, 3, 2, 2), "visual.proj": torch.zeros(4, 4)}, str(open_clip))
    with pytest.raises(CheckpointError, match="only CLIP's image tower"):
        check_clip_file(open_clip, cfg)

    def text_only(state):
        for k in [k for k in state if not k.startswith("text_model.")]:
            del state[k]

    with pytest.raises(CheckpointError, match="only CLIP's text tower"):
        check_clip_file(save_single_file(model, tmp_path / "clip_l.safetensors", edit=text_only), cfg)


def test_wrong_shapes_missing_and_unexpected_tensors_are_named(tiny, tmp_path):
    model, cfg, _, tok = tiny
    path = save_single_file(model, tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError) as e:  # the shipped ViT-L/14 config: every width differs
        check_clip_file(path)
    msg = str(e.value)
    assert "does not match the ViT-L/14 config" in msg and "wrong shapes" in msg
    assert "logit_scale" not in msg  # a scalar in both: not listed

    def wider(state):
        state["text_projection.weight"] = torch.zeros(16, 40)

    bad = save_single_file(model, tmp_path / "bad.safetensors", edit=wider)
    with pytest.raises(CheckpointError, match=r"text_projection.weight \[16, 40\] \(expected \[16, 32\]\)"):
        CLIPReward(bad, device="cpu", tokenizer_path=tok, config=cfg).load()

    def renamed(state):
        state["text_model.extra.weight"] = state.pop("text_model.final_layer_norm.weight")

    with pytest.raises(CheckpointError) as e:
        check_clip_file(save_single_file(model, tmp_path / "renamed.safetensors", edit=renamed), cfg)
    assert "missing: text_model.final_layer_norm.weight" in str(e.value)
    assert "unexpected: text_model.extra.weight" in str(e.value)

    def bad_ids(state):
        state["text_model.embeddings.position_ids"] = torch.zeros(1, 77, dtype=torch.long)

    with pytest.raises(CheckpointError, match="position_ids is not 0..76"):
        CLIPReward(
            save_single_file(model, tmp_path / "ids.safetensors", edit=bad_ids), "cpu", tokenizer_path=tok, config=cfg
        ).load()


def test_tokenizer_other_formats_and_options(tiny, tmp_path):
    model, cfg, folder, tok = tiny
    path = save_single_file(model, tmp_path / "tiny.safetensors")
    with pytest.raises(RewardModelNotFound, match="holds no tokenizer: set tokenizer_path"):
        CLIPReward(path, device="cpu", config=cfg).load()
    with pytest.raises(RewardModelNotFound, match="lacks merges.txt"):
        (tmp_path / "half").mkdir()
        (tmp_path / "half" / "vocab.json").write_text("{}")
        CLIPReward(path, device="cpu", tokenizer_path=tmp_path / "half", config=cfg).load()
    with pytest.raises(RewardModelNotFound, match="CLIP model file .* is missing"):
        CLIPReward(tmp_path / "absent.safetensors", device="cpu", tokenizer_path=tok).load()
    pt = tmp_path / "clip.bin"
    pt.write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="must be safetensors"):
        CLIPReward(pt, device="cpu", tokenizer_path=tok).load()
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        check_clip_file(junk)
    with pytest.raises(InputError, match="for a single-file model_path"):
        CLIPReward(folder, device="cpu", tokenizer_path=tok).load()


def test_shipped_config_is_vit_l14():
    cfg = clip_config()
    assert VIT_L14_CONFIG.is_file()
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.num_hidden_layers, t.vocab_size, t.max_position_embeddings) == (768, 12, 49408, 77)
    assert (v.hidden_size, v.num_hidden_layers, v.patch_size, v.image_size) == (1024, 24, 14, 224)
    assert cfg.projection_dim == 768 and t.hidden_act == v.hidden_act == "quick_gelu"
    from transformers import CLIPModel

    with torch.device("meta"):
        assert sum(p.numel() for p in CLIPModel(cfg).parameters()) == 427_616_513  # ViT-L/14's 428M
