"""Tests of nodes/comfy_services' model folders: listing and resolving names standalone (DEEPGEN_MODELS_DIR)
and through ComfyUI's folder_paths (the test doubles of tests/comfy_doubles.py, fixture ``fake_comfy``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from comfy_doubles import touch

from nodes import comfy_services as cs

pytestmark = pytest.mark.usefixtures("clean_comfy_services")


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A standalone models root in DEEPGEN_MODELS_DIR."""
    root = tmp_path / "models"
    d = root / "deepgen"
    touch(d / "DeepGen-1.0" / "model.pt")
    touch(d / "DeepGen-1.0" / "vlm" / "config.json")
    touch(d / "DeepGen-1.0" / "vlm" / "model.safetensors")
    touch(d / "DeepGen-1.0" / "vae" / "config.json")
    touch(d / "official" / "DeepGen-1.0-diffusers" / "transformer" / "config.json")
    touch(d / "loose.safetensors")
    touch(d / "notes.txt")
    touch(d / ".cache" / "huggingface" / "x.safetensors")
    (d / "empty").mkdir()
    te = root / "text_encoders"
    touch(te / "Qwen2.5-VL" / "config.json")
    touch(te / "Qwen2.5-VL" / "model-00001-of-00002.safetensors")
    touch(te / "family" / "plain.safetensors")  # organisational folder, not a model folder
    touch(root / "clip" / "legacy.safetensors")  # ComfyUI's legacy folder name
    touch(root / "vae" / "sd35_vae.safetensors")
    monkeypatch.setenv("DEEPGEN_MODELS_DIR", str(root))
    return root


def test_list_models_files_and_release_folders(models):
    assert cs.list_models("deepgen") == [
        "DeepGen-1.0",
        "DeepGen-1.0/model.pt",
        "DeepGen-1.0/vae/config.json",
        "DeepGen-1.0/vlm/config.json",
        "DeepGen-1.0/vlm/model.safetensors",
        "loose.safetensors",
        "official",
        "official/DeepGen-1.0-diffusers",
        "official/DeepGen-1.0-diffusers/transformer",
        "official/DeepGen-1.0-diffusers/transformer/config.json",
    ]
    assert cs.list_models("text_encoders") == [
        "Qwen2.5-VL",
        "Qwen2.5-VL/model-00001-of-00002.safetensors",
        "family/plain.safetensors",
        "legacy.safetensors",
    ]
    assert cs.list_models("clip") == cs.list_models("text_encoders")
    assert cs.list_models("vae") == ["sd35_vae.safetensors"]
    assert cs.list_models("diffusion_models") == []  # missing folders are fine
    with pytest.raises(ValueError, match="unknown model kind"):
        cs.list_models("checkpoints_of_doom")


def test_default_models_dir_is_cwd_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    touch(tmp_path / "models" / "vae" / "a.safetensors")
    assert cs.model_folders("vae") == [str(tmp_path / "models" / "vae")]
    assert cs.list_models("vae") == ["a.safetensors"]


def test_several_roots_first_wins(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    touch(a / "vae" / "same.safetensors", b"A")
    touch(b / "vae" / "same.safetensors", b"B")
    touch(b / "vae" / "only_b.safetensors")
    monkeypatch.setenv("DEEPGEN_MODELS_DIR", f"{a}{os.pathsep}{b}")
    assert cs.list_models("vae") == ["only_b.safetensors", "same.safetensors"]
    assert Path(cs.resolve_model_path("vae", "same.safetensors")).read_bytes() == b"A"


def test_resolve_model_path(models):
    assert cs.resolve_model_path("deepgen", "DeepGen-1.0") == str(models / "deepgen" / "DeepGen-1.0")
    p = cs.resolve_model_path("deepgen", "DeepGen-1.0/vlm/config.json")
    assert p == str(models / "deepgen" / "DeepGen-1.0" / "vlm" / "config.json")
    assert cs.resolve_model_path("deepgen", "DeepGen-1.0\\vlm\\config.json") == p  # Windows-made workflow
    assert cs.resolve_model_path("deepgen", "./DeepGen-1.0//vlm/config.json") == p
    assert cs.resolve_model_path("text_encoders", "legacy.safetensors") == str(models / "clip" / "legacy.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        cs.resolve_model_path("deepgen", "nope.safetensors")
    for name in list(cs.list_models("deepgen")) + cs.list_models("text_encoders"):
        kind = "deepgen" if os.path.lexists(models / "deepgen" / name) else "text_encoders"
        assert os.path.exists(cs.resolve_model_path(kind, name))


@pytest.mark.parametrize(
    "name",
    [
        "../vae/sd35_vae.safetensors",
        "DeepGen-1.0/../../vae/sd35_vae.safetensors",
        "..",
        "..\\..\\etc\\passwd",
        "/etc/passwd",
        "C:\\Windows\\win.ini",
        "",
        "   ",
        ".",
        "a\x00b",
    ],
)
def test_resolve_refuses_traversal(models, name):
    with pytest.raises(ValueError):
        cs.resolve_model_path("deepgen", name)


def test_resolve_refuses_non_string(models):
    with pytest.raises(ValueError):
        cs.resolve_model_path("deepgen", None)  # type: ignore[arg-type]


def test_symlink_escape_refused(models, tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    touch(outside / "secret.safetensors")
    touch(outside / "model.pt")
    d = models / "deepgen"
    os.symlink(outside, d / "evil_dir")
    os.symlink(outside / "secret.safetensors", d / "evil.safetensors")
    # a link that stays inside the model folders, even across kinds, is fine
    os.symlink(models / "text_encoders" / "Qwen2.5-VL", d / "qwen")

    for name in ("evil_dir", "evil_dir/secret.safetensors", "evil.safetensors"):
        with pytest.raises(ValueError, match="outside the model folders"):
            cs.resolve_model_path("deepgen", name)
    # the classic trick: a link followed by '..' (the OS would resolve it from the link's target)
    with pytest.raises(ValueError):
        cs.resolve_model_path("deepgen", "qwen/../../../outside/secret.safetensors")
    listed = cs.list_models("deepgen")
    assert not any(n.startswith("evil") for n in listed)
    assert "qwen" in listed and "qwen/config.json" in listed
    assert cs.resolve_model_path("deepgen", "qwen/config.json").endswith("qwen/config.json")

    monkeypatch.setenv("DEEPGEN_ALLOW_EXTERNAL_SYMLINKS", "1")
    assert cs.resolve_model_path("deepgen", "evil_dir") == str(d / "evil_dir")
    assert "evil_dir" in cs.list_models("deepgen")


def test_symlink_loop_and_dangling_link(models):
    d = models / "deepgen"
    os.symlink(d, d / "DeepGen-1.0" / "loop")
    os.symlink(d / "gone.safetensors", d / "dangling.safetensors")
    assert "dangling.safetensors" not in cs.list_models("deepgen")
    with pytest.raises(FileNotFoundError):
        cs.resolve_model_path("deepgen", "dangling.safetensors")


def test_register_model_folders_new_key(fake_comfy):
    fp = fake_comfy.fp
    shared = fp.supported_pt_extensions
    before = {k: (list(v[0]), set(v[1])) for k, v in fp.folder_names_and_paths.items()}
    cs.register_model_folders()
    cs.register_model_folders()  # idempotent
    paths, exts = fp.folder_names_and_paths["deepgen"]
    assert paths == [str(fake_comfy.models_dir / "deepgen")]
    assert {".safetensors", ".pt", ".pth", ".json", ".gguf", ".ckpt"} <= set(exts)
    assert (fake_comfy.models_dir / "deepgen").is_dir()
    assert shared == {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}  # not mutated
    for k, (p, e) in before.items():  # standard folders untouched
        assert fp.folder_names_and_paths[k][0] == p and set(fp.folder_names_and_paths[k][1]) == e


def test_register_model_folders_keeps_extra_model_paths(fake_comfy, tmp_path):
    fp = fake_comfy.fp
    extra = str(tmp_path / "big_disk" / "deepgen")
    fp.add_model_folder_path("deepgen", extra)  # what extra_model_paths.yaml does: empty ext set
    cs.register_model_folders()
    paths, exts = fp.folder_names_and_paths["deepgen"]
    assert paths == [extra, str(fake_comfy.models_dir / "deepgen")]
    assert len(exts) == 0  # "every file" is kept

    fp.folder_names_and_paths["deepgen"] = ([extra], fp.supported_pt_extensions)  # another pack's registration
    cs.register_model_folders()
    paths, exts = fp.folder_names_and_paths["deepgen"]
    assert paths == [extra, str(fake_comfy.models_dir / "deepgen")]
    assert ".json" in exts and ".json" not in fp.supported_pt_extensions


def test_list_and_resolve_through_folder_paths(fake_comfy, tmp_path):
    fp = fake_comfy.fp
    m = fake_comfy.models_dir
    touch(m / "deepgen" / "DeepGen-1.0" / "model.pt")
    touch(m / "deepgen" / "DeepGen-1.0" / "vae" / "config.json")
    touch(m / "deepgen" / ".cache" / "x.safetensors")
    extra = tmp_path / "big_disk" / "deepgen"
    touch(extra / "DeepGen-1.0-diffusers" / "model_index.json")
    touch(extra / "DeepGen-1.0-diffusers" / "transformer" / "config.json")
    fp.add_model_folder_path("deepgen", str(extra))
    touch(m / "clip" / "qwen" / "config.json")
    touch(m / "clip" / "qwen" / "model.safetensors")

    assert cs.list_models("deepgen") == [
        "DeepGen-1.0",
        "DeepGen-1.0-diffusers",
        "DeepGen-1.0-diffusers/model_index.json",
        "DeepGen-1.0-diffusers/transformer/config.json",
        "DeepGen-1.0/model.pt",
        "DeepGen-1.0/vae/config.json",
    ]
    assert ("get_filename_list", "deepgen") in fake_comfy.calls
    assert cs.list_models("text_encoders") == ["qwen", "qwen/model.safetensors"]
    assert cs.resolve_model_path("deepgen", "DeepGen-1.0-diffusers") == str(extra / "DeepGen-1.0-diffusers")
    assert cs.resolve_model_path("clip", "qwen") == str(m / "clip" / "qwen")

    outside = tmp_path / "outside"
    touch(outside / "secret.safetensors")
    os.symlink(outside / "secret.safetensors", m / "deepgen" / "evil.safetensors")
    assert "evil.safetensors" not in cs.list_models("deepgen")  # ComfyUI lists it; we filter it
    with pytest.raises(ValueError, match="outside the model folders"):
        cs.resolve_model_path("deepgen", "evil.safetensors")
    with pytest.raises(ValueError):
        cs.resolve_model_path("deepgen", "../loras/x.safetensors")


def test_deepgen_folder_with_every_file_extension_set(fake_comfy, tmp_path):
    # extra_model_paths.yaml registering `deepgen:` first leaves an empty set: "every file"
    extra = tmp_path / "disk" / "deepgen"
    touch(extra / "Release" / "model.pt")
    touch(extra / "Release" / "README.md")
    fake_comfy.fp.add_model_folder_path("deepgen", str(extra))
    cs.register_model_folders()
    assert cs.list_models("deepgen") == ["Release", "Release/README.md", "Release/model.pt"]


def test_clip_vision_files_list_and_resolve_in_their_folder(models, fake_comfy, tmp_path):
    """models/clip_vision (the reward nodes' CLIP files): listed and resolved standalone and through folder_paths,
    names kept inside the folder."""
    touch(models / "clip_vision" / "openai" / "model.safetensors")
    outside = touch(tmp_path / "outside" / "clip.safetensors")
    os.symlink(outside, models / "clip_vision" / "escape.safetensors")
    with pytest.MonkeyPatch.context() as mp:  # standalone first: no ComfyUI modules
        for name in ("comfy", "folder_paths", "comfy.model_management"):
            mp.delitem(sys.modules, name, raising=False)
        assert cs.list_models("clip_vision") == ["openai/model.safetensors"]
        assert cs.resolve_model_path("clip_vision", "openai/model.safetensors").endswith("openai/model.safetensors")
        with pytest.raises(ValueError, match="outside the model folders"):
            cs.resolve_model_path("clip_vision", "escape.safetensors")
        with pytest.raises(ValueError):
            cs.resolve_model_path("clip_vision", "../deepgen/loose.safetensors")
    touch(fake_comfy.models_dir / "clip_vision" / "clip_vision_l.safetensors")
    assert cs.list_models("clip_vision") == ["clip_vision_l.safetensors"]
    assert cs.resolve_model_path("clip_vision", "clip_vision_l.safetensors") == str(
        fake_comfy.models_dir / "clip_vision" / "clip_vision_l.safetensors"
    )


def test_clip_tokenizer_dir_is_comfyuis_own_or_none(fake_comfy, tmp_path, monkeypatch):
    """ComfyUI's comfy/sd1_tokenizer (OpenAI's CLIP tokenizer) when running inside a ComfyUI that has it; None
    outside ComfyUI, or when its comfy package has no such folder."""
    assert cs.clip_tokenizer_dir() is None  # the double's comfy package has no folder on disk
    package = tmp_path / "ComfyUI" / "comfy"
    touch(package / "sd1_tokenizer" / "vocab.json", b"{}")
    monkeypatch.setattr(sys.modules["comfy"], "__path__", [str(package)])
    assert cs.clip_tokenizer_dir() is None  # no merges.txt: not a CLIP tokenizer
    touch(package / "sd1_tokenizer" / "merges.txt", b"#version: 0.2\n")
    assert cs.clip_tokenizer_dir() == str(package / "sd1_tokenizer")
    for name in ("comfy", "folder_paths", "comfy.model_management"):
        monkeypatch.delitem(sys.modules, name)
    assert cs.clip_tokenizer_dir() is None  # outside ComfyUI: never imports it
    assert "comfy" not in sys.modules
