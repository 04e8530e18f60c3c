"""CLIP reward on a tiny random CLIPModel + offline tokenizer/processor saved into tmp_path."""

import numpy as np
import pytest
import torch
from clip_kit import tiny_clip
from PIL import Image

from deepgen.rewards import CLIPReward, RewardModelNotFound


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run far faster single-threaded on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A byte-level CLIP BPE vocab (no merges), a 32 px image processor and a 2-layer CLIP."""
    d = tmp_path_factory.mktemp("clip")
    tiny_clip(d)
    return d


def _images():
    rng = np.random.default_rng(0)
    arrs = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    arrs.append(np.full((48, 64, 3), 200, np.uint8))
    return arrs


PROMPTS = ["a red cat on a chair", "a watercolor lighthouse", "text that says HELLO", "a plain grey square"]


def test_shapes_range_determinism_and_cache(clip_dir):
    arrs = _images()
    pil = [Image.fromarray(a) for a in arrs]
    r = CLIPReward(clip_dir, device="cpu", batch_size=3)  # two batches
    s = r(pil, PROMPTS)
    assert s.shape == (4,) and s.dtype == torch.float32
    assert torch.isfinite(s).all() and (s.abs() <= 1.0 + 1e-6).all()
    assert torch.equal(s, r(pil, PROMPTS))
    r2 = CLIPReward(str(clip_dir), device="cpu")
    assert r2.load()[0] is r.load()[0]  # cached per (path, device, dtype)
    assert torch.allclose(r2(pil, PROMPTS), s, atol=1e-6)
    # ComfyUI IMAGE tensor (B,H,W,3) in 0..1 gives the same scores
    t = torch.from_numpy(np.stack(arrs).astype(np.float32) / 255.0)
    assert torch.allclose(r(t, PROMPTS), s, atol=1e-6)
    # the score depends on the prompt
    assert not torch.allclose(r(pil, PROMPTS[::-1]), s)


def test_is_unscaled_cosine_of_model_embeddings(clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    pil = [Image.fromarray(a) for a in _images()]
    s = CLIPReward(clip_dir, device="cpu")(pil, PROMPTS)
    model = CLIPModel.from_pretrained(str(clip_dir), local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(str(clip_dir), local_files_only=True)
    inp = proc(text=PROMPTS, images=pil, return_tensors="pt", padding="max_length", truncation=True, max_length=77)
    with torch.no_grad():
        out = model(**inp)
    ref = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
    assert torch.allclose(s, ref, atol=1e-5)  # no x100 logit scale, no clamp


def test_missing_folder_error_is_clear(tmp_path):
    r = CLIPReward(tmp_path / "nowhere", device="cpu")  # construction is lazy: no error yet
    with pytest.raises(RewardModelNotFound) as e:
        r([Image.new("RGB", (32, 32))], ["x"])
    msg = str(e.value)
    assert "nowhere" in msg and "openai/clip-vit-large-patch14" in msg and "--local-dir" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(RewardModelNotFound, match="lacks config.json"):
        CLIPReward(tmp_path / "empty", device="cpu").load()


def test_a_node_held_reward_model_goes_with_the_node(clip_dir, tmp_path, monkeypatch):
    """RewardScore keeps its models in its own store (the model manager's patchers), not the library's cache: when
    ComfyUI drops the node (POST /free), nothing keeps them."""
    import gc
    import shutil
    import weakref

    from deepgen.rewards import base
    from nodes.comfy_services import managed_models as mm
    from nodes.reward import RewardScore

    shutil.copytree(clip_dir, tmp_path / "deepgen" / "clip")
    monkeypatch.setenv("DEEPGEN_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("DEEPGEN_DEVICE", "cpu")
    node = RewardScore()
    images = torch.from_numpy(np.stack(_images()).astype(np.float32) / 255.0)
    cached_before = dict(base._CACHE)
    node.score(images, "a red cat", rewards="clip")
    assert base._CACHE == cached_before  # the library's own cache was not used
    assert "RewardModelWeights" in mm.loaded_model_names()
    (patcher,) = node.models.patchers()
    held = weakref.ref(patcher.model.reward_model)
    del node, patcher
    gc.collect()
    assert held() is None
    assert "RewardModelWeights" not in mm.loaded_model_names()
