"""Node definitions without running a model: ids, names, INPUT_TYPES/RETURN_TYPES, validation, packaging."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nodes import IMPORT_ERRORS, NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from nodes.types import TINY_CHOICE

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL = ROOT / "tests" / "fixtures" / "deepgen-official-tiny"
NODE_IDS = {
    "DeepGenLoader",
    "ThinkTokenEncode",
    "SCBBridge",
    "DeepGenSampler",
    "DeepGenEdit",
    "RewardScore",
    "DeepGenSpeed",
}
NATIVE_TYPES = {"IMAGE", "LATENT", "CONDITIONING", "MODEL", "VAE", "MASK", "FLOAT", "INT", "STRING", "BOOLEAN"}
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN"}
OPTION_KEYS = {
    "default",
    "min",
    "max",
    "step",
    "round",
    "display",
    "multiline",
    "placeholder",
    "dynamicPrompts",
    "label_on",
    "label_off",
    "tooltip",
    "lazy",
    "forceInput",
    "control_after_generate",
    "image_upload",
}


def test_all_node_modules_import():
    assert IMPORT_ERRORS == {}
    assert NODE_IDS <= set(NODE_CLASS_MAPPINGS)
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)


@pytest.mark.parametrize("node_id", sorted(NODE_IDS))
def test_identity(node_id):
    cls = NODE_CLASS_MAPPINGS[node_id]
    assert NODE_DISPLAY_NAME_MAPPINGS[node_id].endswith("(DeepGen 1.0)")
    assert cls.CATEGORY.startswith("DeepGen 1.0/")
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 40


@pytest.mark.parametrize("node_id", sorted(NODE_IDS))
def test_input_types_well_formed(node_id):
    cls = NODE_CLASS_MAPPINGS[node_id]
    types = cls.INPUT_TYPES()
    assert set(types) <= {"required", "optional", "hidden"} and types["required"]
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            assert isinstance(spec, tuple) and 1 <= len(spec) <= 2, name
            kind, opts = spec[0], spec[1] if len(spec) > 1 else {}
            assert set(opts) <= OPTION_KEYS, (name, set(opts) - OPTION_KEYS)
            assert isinstance(opts.get("tooltip"), str) and opts["tooltip"], f"{node_id}.{name} has no tooltip"
            if isinstance(kind, list):  # combo: unique strings, default among them
                assert kind and all(isinstance(v, str) for v in kind) and len(set(kind)) == len(kind)
                assert opts.get("default", kind[0]) in kind
            elif kind in WIDGETS:
                default = opts.get("default")
                if kind in ("INT", "FLOAT"):
                    assert opts["min"] <= default <= opts["max"], name
                    assert isinstance(default, int) or kind == "FLOAT"
                if kind == "STRING":
                    assert isinstance(default, str)
            else:
                assert kind in NATIVE_TYPES or kind.startswith("DEEPGEN_"), kind
    assert set(types.get("hidden", {}).values()) <= {"UNIQUE_ID", "PROMPT", "EXTRA_PNGINFO"}


@pytest.mark.parametrize("node_id", sorted(NODE_IDS))
def test_return_types_and_function(node_id):
    cls = NODE_CLASS_MAPPINGS[node_id]
    n = len(cls.RETURN_TYPES)
    assert isinstance(cls.RETURN_TYPES, tuple) and n >= 1
    assert all(isinstance(t, str) and (t in NATIVE_TYPES or t.startswith("DEEPGEN_")) for t in cls.RETURN_TYPES)
    assert len(cls.RETURN_NAMES) == n and len(cls.OUTPUT_TOOLTIPS) == n
    assert len(getattr(cls, "OUTPUT_IS_LIST", (False,) * n)) == n
    fn = getattr(cls, cls.FUNCTION)
    params = inspect.signature(fn).parameters
    types = cls.INPUT_TYPES()
    for section in ("required", "optional", "hidden"):
        for name in types.get(section, {}):
            assert name in params, f"{node_id}.{cls.FUNCTION} does not take {name}"
            if section != "required":  # ComfyUI omits unconnected optional inputs: they need defaults
                assert params[name].default is not inspect.Parameter.empty, name


def test_custom_socket_types_connect():
    produced = {t for c in NODE_CLASS_MAPPINGS.values() for t in c.RETURN_TYPES if t.startswith("DEEPGEN_")}
    consumed = {
        s[0]
        for c in NODE_CLASS_MAPPINGS.values()
        for sec in ("required", "optional")
        for s in c.INPUT_TYPES().get(sec, {}).values()
        if isinstance(s[0], str) and s[0].startswith("DEEPGEN_")
    }
    assert produced == consumed == {"DEEPGEN_MODEL", "DEEPGEN_THINK", "DEEPGEN_COND"}


def test_seed_widgets_have_control_after_generate():
    for node_id in ("DeepGenSampler", "DeepGenEdit"):
        spec = NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()["required"]["seed"]
        assert spec[1]["control_after_generate"] and spec[1]["max"] == 0xFFFFFFFFFFFFFFFF


@pytest.mark.parametrize("node_id", ["DeepGenSampler", "DeepGenEdit"])
def test_size_validation_in_plain_words(node_id):
    validate = NODE_CLASS_MAPPINGS[node_id].VALIDATE_INPUTS
    assert validate(width=512, height=768) is True
    assert validate(width=0, height=0) is True
    assert validate(width=None, height=512) is True  # linked: checked at run time
    message = validate(width=500, height=512)
    assert "width 500 is not a multiple of 16" in message and "496 or 512" in message
    assert "height" in validate(width=512, height=9000)
    assert "whole number" in validate(width="big", height=512)


@pytest.mark.parametrize("node_id", ["DeepGenSampler", "DeepGenEdit"])
def test_size_message_names_only_the_bad_input(node_id):
    """Issue 12 section 4: a width of 13 got "try 16 or 16" and one message about both inputs."""
    validate = NODE_CLASS_MAPPINGS[node_id].VALIDATE_INPUTS
    args = {"instruction": "an edit"} if node_id == "DeepGenEdit" else {}
    message = validate(width=13, height=512, **args)
    assert "width 13 is not a multiple of 16 (try 16)" in message
    assert "height" not in message and "16 or 16" not in message
    message = validate(width=512, height=520, **args)
    assert "height 520 is not a multiple of 16 (try 512 or 528)" in message and "width" not in message
    both = validate(width=13, height=8190, **args)
    assert "width 13 is not a multiple of 16 (try 16)" in both
    assert "height 8190 is not a multiple of 16 (try 8176 or 8192)" in both


@pytest.mark.parametrize("node_id, name", [("ThinkTokenEncode", "prompt"), ("DeepGenEdit", "instruction")])
def test_empty_prompt_is_refused_when_queued(node_id, name):
    """VALIDATE_INPUTS runs when the graph is queued, before any node (the loader included) runs."""
    validate = NODE_CLASS_MAPPINGS[node_id].VALIDATE_INPUTS
    sizes = {"width": 512, "height": 512} if node_id == "DeepGenEdit" else {}
    for empty in ("", "   \n\t"):
        message = validate(**{name: empty}, **sizes)
        assert isinstance(message, str) and "prompt is empty" in message
    assert validate(**{name: "a red fox"}, **sizes) is True
    assert validate(**{name: None}, **sizes) is True  # linked: checked when the node runs


def test_loader_validation(tmp_path, monkeypatch):
    from nodes.types import LEGACY_TINY_CHOICES

    monkeypatch.setenv("DEEPGEN_MODELS_DIR", str(tmp_path))
    validate = NODE_CLASS_MAPPINGS["DeepGenLoader"].VALIDATE_INPUTS
    assert validate(attention="sdpa", checkpoint=TINY_CHOICE) is True
    assert "one of" in validate(attention="xformers", checkpoint=TINY_CHOICE)
    if importlib.util.find_spec("flash_attn") is None:
        assert "flash-attn package" in validate(attention="flash_attention_2", checkpoint=TINY_CHOICE)
    # a workflow saved with the demo's earlier name still loads the demo; a file that is not there is refused
    assert validate(attention="sdpa", checkpoint=LEGACY_TINY_CHOICES[0]) is True
    from nodes.loader import resolve_sources

    assert resolve_sources(LEGACY_TINY_CHOICES[0])["checkpoint"] == "tiny"
    message = validate(attention="sdpa", checkpoint="gone.safetensors")
    assert "'gone.safetensors' is not in models/deepgen" in message and TINY_CHOICE in message


def test_loader_lists_demo_and_releases(tmp_path, monkeypatch):
    from nodes.loader import DeepGenLoader

    monkeypatch.setenv("DEEPGEN_MODELS_DIR", str(tmp_path))
    assert DeepGenLoader.INPUT_TYPES()["required"]["checkpoint"][0] == [TINY_CHOICE]
    # an official release folder in models/deepgen, and the split layout across the standard folders
    shutil.copytree(
        OFFICIAL,
        tmp_path / "deepgen" / "official-tiny",
        ignore=shutil.ignore_patterns("inputs", "reference*", "README.md", "model.pt"),
    )
    shutil.copy(OFFICIAL / "model.safetensors", tmp_path / "deepgen" / "deepgen-tiny.safetensors")
    shutil.copytree(OFFICIAL / "Qwen2.5-VL-tiny", tmp_path / "text_encoders" / "Qwen2.5-VL-tiny")
    shutil.copytree(OFFICIAL / "UniPic2-tiny", tmp_path / "diffusion_models" / "UniPic2-tiny")
    required = DeepGenLoader.INPUT_TYPES()["required"]
    assert required["checkpoint"][0] == [TINY_CHOICE, "deepgen-tiny.safetensors", "official-tiny"]
    assert required["vlm"][0] == ["auto", "Qwen2.5-VL-tiny"]
    assert required["diffusion"][0] == ["auto", "UniPic2-tiny"]  # found through its transformer/ and vae/
    assert required["vae"][0] == ["auto"]


def test_loader_resolves_layouts(tmp_path, monkeypatch):
    from deepgen.loading import CheckpointError
    from nodes.loader import resolve_sources

    monkeypatch.setenv("DEEPGEN_MODELS_DIR", str(tmp_path))
    release = tmp_path / "deepgen" / "official-tiny"
    shutil.copytree(OFFICIAL, release, ignore=shutil.ignore_patterns("inputs", "reference*", "README.md", "model.pt"))
    (release / "connector_config.json").write_text(json.dumps({"num_attention_heads": 4}))
    src = resolve_sources("official-tiny")
    assert src["layout"] == "official" and src["checkpoint"] == str(release / "model.safetensors")
    assert src["vlm"] == str(release / "Qwen2.5-VL-tiny") and src["diffusion"] == str(release / "UniPic2-tiny")
    assert src["connector_config"] == {"num_attention_heads": 4}
    # a bare checkpoint file with nothing next to it and nothing registered: a plain-words error
    shutil.copy(OFFICIAL / "model.safetensors", tmp_path / "deepgen" / "bare.safetensors")
    with pytest.raises(CheckpointError, match="Qwen2.5-VL-3B-Instruct folder"):
        resolve_sources("bare.safetensors")
    assert resolve_sources(TINY_CHOICE)["checkpoint"] == "tiny"
    # an SD3.5 VAE override from models/vae: a VAE folder, or a diffusers pipeline folder holding vae/
    shutil.copytree(OFFICIAL / "UniPic2-tiny" / "vae", tmp_path / "vae" / "sd35-vae")
    shutil.copytree(OFFICIAL / "UniPic2-tiny", tmp_path / "vae" / "pipeline")
    (tmp_path / "vae" / "pipeline" / "model_index.json").write_text("{}")
    assert resolve_sources("official-tiny", vae="sd35-vae")["vae"] == str(tmp_path / "vae" / "sd35-vae")
    assert resolve_sources("official-tiny", vae="pipeline")["vae"] == str(tmp_path / "vae" / "pipeline" / "vae")


def test_loader_vae_override_must_be_16_channels(tmp_path):
    import torch
    from diffusers import AutoencoderKL

    from deepgen.loading import CheckpointError
    from nodes.loader import _load_vae

    vae = _load_vae(str(OFFICIAL / "UniPic2-tiny" / "vae"), torch.float32)
    assert vae.config.latent_channels == 16
    config = json.loads((OFFICIAL / "UniPic2-tiny" / "vae" / "config.json").read_text())
    config.update(
        latent_channels=4,
        block_out_channels=[8, 8],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
    )
    AutoencoderKL.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="16-channel"):
        _load_vae(str(tmp_path), torch.float32)


def test_loader_fingerprint_is_cheap_and_tracks_files(tmp_path, monkeypatch):
    from nodes.loader import DeepGenLoader

    monkeypatch.setenv("DEEPGEN_MODELS_DIR", str(tmp_path))
    release = tmp_path / "deepgen" / "official-tiny"
    shutil.copytree(OFFICIAL, release, ignore=shutil.ignore_patterns("inputs", "reference*", "README.md", "model.pt"))
    args = dict(
        checkpoint="official-tiny",
        vlm="auto",
        diffusion="auto",
        vae="auto",
        precision="auto",
        memory_mode="offload_vlm_after_encode",
        attention="sdpa",
        unique_id="1",
    )
    import hashlib

    DeepGenLoader.IS_CHANGED(**args)  # imports done (libraries hash at import time)

    def no_hashing(*a, **k):
        raise AssertionError("IS_CHANGED must not hash model files")

    for name in ("sha256", "md5", "sha1", "blake2b", "file_digest"):
        monkeypatch.setattr(hashlib, name, no_hashing, raising=False)
    first = DeepGenLoader.IS_CHANGED(**args)
    st = os.stat(release / "model.safetensors")
    assert f"{st.st_size}:{st.st_mtime_ns}" in first  # cheap: sizes and times, never the bytes
    monkeypatch.undo()
    monkeypatch.setenv("DEEPGEN_MODELS_DIR", str(tmp_path))
    assert DeepGenLoader.IS_CHANGED(**args) == first
    assert DeepGenLoader.IS_CHANGED(**{**args, "memory_mode": "sequential_offload"}) != first
    os.utime(release / "model.safetensors", ns=(1, 1))
    assert DeepGenLoader.IS_CHANGED(**args) != first
    assert DeepGenLoader.IS_CHANGED(**{**args, "checkpoint": TINY_CHOICE}) == DeepGenLoader.IS_CHANGED(
        **{**args, "checkpoint": TINY_CHOICE}
    )


def test_reward_weights_parsing():
    from nodes.reward import parse_weights

    assert parse_weights("general", "") == "general"
    assert parse_weights("ocr", "ignored") == {"ocr": 1.0}
    assert parse_weights("custom", "clip=0.3, ocr: 0.7") == {"clip": 0.3, "ocr": 0.7}
    with pytest.raises(ValueError, match="name=weight"):
        parse_weights("custom", "clip 0.3")
    with pytest.raises(ValueError, match="empty"):
        parse_weights("custom", " ")


def load_as_comfyui():
    """Import the repository root the way ComfyUI 0.3.75's load_custom_node does: the module is named after the
    folder's path (dots replaced by "_x_") and loaded from its __init__.py as a package."""
    name = str(ROOT).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, os.path.join(str(ROOT), "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
    return module


def test_root_file_run_alone_imports_and_registers_nothing():
    """pytest imports the root __init__.py as a lone file when the clone's folder is not a Python name (the README's
    custom_nodes/ComfyUI-DeepGen): that must not fail every test with a relative-import error."""
    import runpy

    module_globals = runpy.run_path(os.path.join(str(ROOT), "__init__.py"))
    assert module_globals["NODE_CLASS_MAPPINGS"] == {}
    assert module_globals["WEB_DIRECTORY"] == "./web"


def test_package_entry_imports_like_comfyui():
    pack = load_as_comfyui()
    assert NODE_IDS <= set(pack.NODE_CLASS_MAPPINGS)
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(pack.NODE_CLASS_MAPPINGS)
    assert pack.WEB_DIRECTORY == "./web" and (ROOT / "web").is_dir()
    assert pack.NODE_CLASS_MAPPINGS["DeepGenSampler"].__module__ == str(ROOT).replace(".", "_x_") + ".nodes.sampler"


GUARD = r"""
import builtins, os, socket, subprocess, sys, importlib.util, types
def refuse(*a, **k):
    raise AssertionError("network, subprocess or pip use while importing the package")
socket.socket.connect = refuse
socket.create_connection = refuse
subprocess.Popen.__init__ = refuse
os.system = refuse
real_import = builtins.__import__
def guarded_import(name, *args, **kwargs):
    if name.split(".")[0] in ("pip", "huggingface_hub", "requests", "urllib3"):
        raise AssertionError(f"importing {name} while importing the package")
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded_import
# ComfyUI's modules, as stand-ins, so that the package also registers models/deepgen
fp = types.ModuleType("folder_paths")
fp.models_dir = sys.argv[2]
fp.supported_pt_extensions = {".safetensors", ".pt"}
fp.folder_names_and_paths = {}
sys.modules["folder_paths"] = fp
sys.modules["comfy"] = types.ModuleType("comfy")
sys.modules["comfy.model_management"] = types.ModuleType("comfy.model_management")
name = sys.argv[1].replace(".", "_x_")  # ComfyUI's load_custom_node
spec = importlib.util.spec_from_file_location(name, os.path.join(sys.argv[1], "__init__.py"))
pack = importlib.util.module_from_spec(spec)
sys.modules[name] = pack
spec.loader.exec_module(pack)
assert len(pack.NODE_CLASS_MAPPINGS) >= 6
assert fp.folder_names_and_paths["deepgen"][0] == [os.path.join(sys.argv[2], "deepgen")]
heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
print("OK", heavy)
"""


def test_import_never_downloads_or_installs(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    before = sorted(p.name for p in ROOT.iterdir() if p.name != "__pycache__")
    out = subprocess.run(
        [sys.executable, "-c", GUARD, str(ROOT), str(tmp_path / "models")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("OK []"), out.stdout  # not even torch is imported until a node runs
    assert list(home.iterdir()) == []  # no cache written
    assert (tmp_path / "models" / "deepgen").is_dir()  # the only side effect: the model folder exists
    assert sorted(p.name for p in ROOT.iterdir() if p.name != "__pycache__") == before


def test_workflows_live_in_one_folder_comfyui_serves():
    # ComfyUI 0.3.75 serves workflows/ (a legacy name it accepts) as this pack's templates; a second
    # example_workflows/ copy would list every workflow twice in the template browser.
    assert sorted((ROOT / "workflows").glob("*.json")) and not (ROOT / "example_workflows").exists()
