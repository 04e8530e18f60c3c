"""Tests of nodes/comfy_services.py: standalone fallbacks, and the ComfyUI path against test doubles.

The doubles (fixture ``fake_comfy``) imitate ComfyUI's documented API surface -- ``comfy.utils``,
``comfy.model_management``, ``folder_paths`` and ``server`` -- not our code; they record the calls
the adapter makes.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nodes import comfy_services as cs  # noqa: E402

COMFY_MODULES = ("comfy", "comfy.utils", "comfy.model_management", "folder_paths", "server")


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for name in COMFY_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    for var in ("DEEPGEN_MODELS_DIR", "DEEPGEN_DEVICE", "DEEPGEN_ALLOW_EXTERNAL_SYMLINKS"):
        monkeypatch.delenv(var, raising=False)
    cs.clear_interrupt()
    cs._listeners.clear()
    yield
    cs._interrupt_flag.clear()
    cs._listeners.clear()


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------------
# Outside ComfyUI


def test_not_in_comfyui_by_default():
    assert cs.in_comfyui() is False


def test_progress_counts_and_clamps():
    with cs.Progress(10) as p:
        p.update()
        p.update(3)
        assert (p.current, p.total) == (4, 10)
        p.update_absolute(25)
        assert p.current == 10  # clamped like ComfyUI's ProgressBar
        p.update_absolute(5, total=20, preview=("JPEG", object(), 512))  # preview ignored outside
        assert (p.current, p.total) == (5, 20)


def test_progress_tqdm_bar_follows(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # tqdm is a dependency: the bar must be there
    p = cs.Progress(8, desc="test")
    try:
        assert p._tqdm is not None and not p._tqdm.disable
        p.update(2)
        p.update_absolute(6)
        assert p._tqdm.n == 6 and p._tqdm.total == 8
    finally:
        p.close()


def test_progress_callback_zero_based_and_comfy_signature():
    p = cs.Progress(4)
    cb = p.callback()
    cb(0)
    assert p.current == 1
    cb(2, "x0", "x", 6)  # ComfyUI's callback(step, x0, x, total_steps)
    assert (p.current, p.total) == (3, 6)
    cb(4, total_steps=10)
    assert (p.current, p.total) == (5, 10)
    seen = []
    cb = p.callback(preview_fn=lambda step, *a, **k: seen.append(step), zero_based=False)
    cb(7)
    assert p.current == 7 and seen == [7]


def test_interrupt_flag_raises_inside_loop_and_resets():
    done = []
    with pytest.raises(cs.DeepGenInterrupted):
        for step in range(10):
            cs.check_interrupt()
            done.append(step)
            if step == 3:
                cs.request_interrupt()
    assert done == [0, 1, 2, 3]
    assert cs.interrupted() is False  # raising consumed the request, like ComfyUI
    cs.check_interrupt()  # next run starts clean


def test_interrupt_from_another_thread_and_clear():
    t = threading.Thread(target=cs.request_interrupt)
    t.start()
    t.join()
    assert cs.interrupted() is True
    cs.clear_interrupt()
    cs.check_interrupt()
    cs.request_interrupt()
    p = cs.Progress(3)
    with pytest.raises(cs.DeepGenInterrupted):
        p.callback()(0)
    assert cs.interrupt_exception_types() == (cs.DeepGenInterrupted,)
    assert not issubclass(cs.DeepGenInterrupted, OSError)


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


def test_devices_and_memory_outside(monkeypatch):
    import torch

    monkeypatch.setenv("DEEPGEN_DEVICE", "cpu")
    assert cs.torch_device() == torch.device("cpu")
    assert cs.offload_device() == torch.device("cpu")
    assert cs.intermediate_device() == torch.device("cpu")
    cs.free_memory()
    cs.free_memory(1 << 20)
    cs.soft_empty_cache()
    monkeypatch.delenv("DEEPGEN_DEVICE")
    assert isinstance(cs.torch_device(), torch.device)


def test_send_event_outside_reaches_listeners_only():
    import torch

    got = []

    def listener(event, payload):
        got.append((event, payload))

    def broken(event, payload):
        raise RuntimeError("listener bug")

    cs.add_event_listener(broken)
    cs.add_event_listener(listener)
    cs.add_event_listener(listener)  # registered once
    cs.send_event(
        "deepgen1.train_loss",
        {
            "node": "7",
            "step": torch.tensor(3),
            "loss": float("nan"),
            "lr": torch.tensor(1e-4),
            "extra": (1, float("inf")),
            "path": Path("a/b"),
        },
    )
    assert len(got) == 1
    event, payload = got[0]
    assert event == "deepgen1.train_loss"
    assert payload["step"] == 3 and payload["loss"] is None and payload["extra"] == [1, None]
    assert math.isclose(payload["lr"], 1e-4, rel_tol=1e-6) and payload["path"] == os.path.join("a", "b")
    cs.remove_event_listener(listener)
    cs.send_event("deepgen1.train_done", {"node": "7"})
    assert len(got) == 1
    cs.send_progress_text("hello", "7")  # no-op outside


@pytest.mark.parametrize("event", ["train_loss", "deepgen.train_loss", "deepgen1.", None])
def test_send_event_requires_namespace(event):
    with pytest.raises(ValueError, match="deepgen1"):
        cs.send_event(event, {})  # type: ignore[arg-type]


def test_send_event_payload_checks():
    with pytest.raises(TypeError):
        cs.send_event("deepgen1.x", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cs.send_event("deepgen1.x", {"obj": object()})


# --------------------------------------------------------------------------------------------------
# Inside ComfyUI, against test doubles of its API


class FakeComfy:
    """Records what the adapter does with ComfyUI's modules."""

    def __init__(self, tmp_path: Path):
        self.calls: list[tuple] = []
        self.interrupt = False
        self.models_dir = tmp_path / "ComfyUI" / "models"
        self.models_dir.mkdir(parents=True)
        self.device = object()
        self.offload = object()
        self.intermediate = object()
        self.sent: list[tuple] = []
        self.texts: list[tuple] = []
        self.modules = self._build()

    def _build(self):
        fake = self
        comfy = types.ModuleType("comfy")
        comfy.__path__ = []  # a package

        utils = types.ModuleType("comfy.utils")

        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total, self.node_id, self.current = total, node_id, 0
                fake.calls.append(("ProgressBar", total, node_id))

            def update_absolute(self, value, total=None, preview=None):
                if total is not None:
                    self.total = total
                self.current = min(value, self.total)
                fake.calls.append(("update_absolute", value, total, preview))

            def update(self, value):
                self.update_absolute(self.current + value)

        utils.ProgressBar = ProgressBar
        comfy.utils = utils

        mm = types.ModuleType("comfy.model_management")

        class InterruptProcessingException(Exception):
            pass

        def throw_exception_if_processing_interrupted():
            fake.calls.append(("throw_if_interrupted",))
            if fake.interrupt:
                fake.interrupt = False
                raise InterruptProcessingException()

        def interrupt_current_processing(value=True):
            fake.interrupt = value

        mm.InterruptProcessingException = InterruptProcessingException
        mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
        mm.interrupt_current_processing = interrupt_current_processing
        mm.processing_interrupted = lambda: fake.interrupt
        mm.get_torch_device = lambda: fake.device
        mm.unet_offload_device = lambda: fake.offload
        mm.intermediate_device = lambda: fake.intermediate
        mm.free_memory = lambda memory_required, device, keep_loaded=[]: fake.calls.append(
            ("free_memory", memory_required, device)
        )
        mm.soft_empty_cache = lambda force=False: fake.calls.append(("soft_empty_cache",))
        comfy.model_management = mm

        fp = types.ModuleType("folder_paths")
        fp.supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
        fp.models_dir = str(self.models_dir)
        m = str(self.models_dir)
        fp.folder_names_and_paths = {
            "loras": ([os.path.join(m, "loras")], fp.supported_pt_extensions),
            "vae": ([os.path.join(m, "vae")], fp.supported_pt_extensions),
            "text_encoders": ([os.path.join(m, "text_encoders"), os.path.join(m, "clip")], fp.supported_pt_extensions),
            "diffusion_models": (
                [os.path.join(m, "unet"), os.path.join(m, "diffusion_models")],
                fp.supported_pt_extensions,
            ),
        }

        def map_legacy(name):
            return {"unet": "diffusion_models", "clip": "text_encoders"}.get(name, name)

        def add_model_folder_path(folder_name, full_folder_path, is_default=False):
            folder_name = map_legacy(folder_name)
            if folder_name in fp.folder_names_and_paths:
                paths = fp.folder_names_and_paths[folder_name][0]
                if full_folder_path not in paths:
                    paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)
            else:
                fp.folder_names_and_paths[folder_name] = ([full_folder_path], set())

        def get_folder_paths(folder_name):
            return fp.folder_names_and_paths[map_legacy(folder_name)][0][:]

        def get_filename_list(folder_name):
            fake.calls.append(("get_filename_list", folder_name))
            paths, exts = fp.folder_names_and_paths[map_legacy(folder_name)]
            out = set()
            for base in paths:
                for dirpath, subdirs, files in os.walk(base, followlinks=True):
                    subdirs[:] = [s for s in subdirs if s != ".git"]
                    for f in files:
                        if len(exts) == 0 or os.path.splitext(f)[1].lower() in exts:
                            out.add(os.path.relpath(os.path.join(dirpath, f), base))
            return sorted(out)

        fp.map_legacy = map_legacy
        fp.add_model_folder_path = add_model_folder_path
        fp.get_folder_paths = get_folder_paths
        fp.get_filename_list = get_filename_list

        server = types.ModuleType("server")

        class PromptServer:
            instance = None

            def __init__(self):
                self.client_id = "tab-1"

            def send_sync(self, event, data, sid=None):
                fake.sent.append((event, data, sid))

            def send_progress_text(self, text, node_id, sid=None):
                fake.texts.append((text, node_id, sid))

        PromptServer.instance = PromptServer()
        server.PromptServer = PromptServer
        self.PromptServer = PromptServer
        return {
            "comfy": comfy,
            "comfy.utils": utils,
            "comfy.model_management": mm,
            "folder_paths": fp,
            "server": server,
        }

    @property
    def fp(self):
        return self.modules["folder_paths"]

    @property
    def mm(self):
        return self.modules["comfy.model_management"]


@pytest.fixture
def fake_comfy(tmp_path, monkeypatch):
    fake = FakeComfy(tmp_path)
    for name, mod in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return fake


def test_in_comfyui_with_doubles(fake_comfy):
    assert cs.in_comfyui() is True


def test_progress_wraps_comfy_progressbar(fake_comfy):
    p = cs.Progress(5, node_id="12")
    p.update()
    p.update(2)
    preview = ("JPEG", object(), 512)
    p.update_absolute(4, total=8, preview=preview)
    p.update_absolute(99)
    assert p._tqdm is None
    assert fake_comfy.calls == [
        ("ProgressBar", 5, "12"),
        ("update_absolute", 1, None, None),
        ("update_absolute", 3, None, None),
        ("update_absolute", 4, 8, preview),
        ("update_absolute", 8, None, None),
    ]
    assert p.current == 8


def test_progress_old_core_without_node_id(fake_comfy):
    class OldBar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            fake_comfy.calls.append(("old", value))

    fake_comfy.modules["comfy.utils"].ProgressBar = OldBar
    cs.Progress(3, node_id="1").update()
    assert fake_comfy.calls == [("old", 1)]


def test_check_interrupt_raises_native_exception(fake_comfy):
    native = fake_comfy.mm.InterruptProcessingException
    cs.check_interrupt()
    assert fake_comfy.calls == [("throw_if_interrupted",)]
    cs.request_interrupt()
    assert fake_comfy.interrupt is True and cs.interrupted() is True
    assert cs._interrupt_flag.is_set() is False  # ComfyUI's flag, not ours
    with pytest.raises(native):
        cs.check_interrupt()
    cs.request_interrupt()
    cs.clear_interrupt()
    assert fake_comfy.interrupt is False
    assert cs.interrupt_exception_types() == (cs.DeepGenInterrupted, native)
    cs.request_interrupt()
    with pytest.raises(cs.interrupt_exception_types()):
        cs.Progress(2).callback()(0)


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


def test_devices_and_memory_inside(fake_comfy):
    assert cs.torch_device() is fake_comfy.device
    assert cs.offload_device() is fake_comfy.offload
    assert cs.intermediate_device() is fake_comfy.intermediate
    cs.free_memory()
    assert fake_comfy.calls == [("soft_empty_cache",)]  # no eviction without an amount
    fake_comfy.calls.clear()
    cs.free_memory(3 << 30)
    assert fake_comfy.calls == [("free_memory", 3 << 30, fake_comfy.device), ("soft_empty_cache",)]
    fake_comfy.calls.clear()
    marker = object()
    cs.free_memory(10, device=marker)
    assert fake_comfy.calls[0] == ("free_memory", 10, marker)


def test_send_event_inside_uses_prompt_server(fake_comfy):
    got = []
    cs.add_event_listener(lambda e, p: got.append(e))
    cs.send_event("deepgen1.train_loss", {"node": "5", "step": 1, "loss": float("nan")})
    cs.send_event("deepgen1.train_done", {"node": "5", "lora_path": "x.safetensors"}, broadcast=True)
    assert fake_comfy.sent == [
        ("deepgen1.train_loss", {"node": "5", "step": 1, "loss": None}, "tab-1"),
        ("deepgen1.train_done", {"node": "5", "lora_path": "x.safetensors"}, None),
    ]
    assert got == ["deepgen1.train_loss", "deepgen1.train_done"]
    cs.send_progress_text("step 1/10", 5)
    assert fake_comfy.texts == [("step 1/10", "5", "tab-1")]

    fake_comfy.PromptServer.instance = None  # in-process / headless use: no server
    cs.send_event("deepgen1.train_loss", {"node": "5"})
    cs.send_progress_text("x", "5")
    assert len(fake_comfy.sent) == 2


def test_previews_follow_comfyui_preview_method(fake_comfy, monkeypatch):
    import enum
    import types

    class LatentPreviewMethod(enum.Enum):
        NoPreviews = "none"
        Auto = "auto"

    cli_args = types.ModuleType("comfy.cli_args")
    cli_args.args = types.SimpleNamespace(preview_method=LatentPreviewMethod.NoPreviews)
    monkeypatch.setitem(sys.modules, "comfy.cli_args", cli_args)
    assert not cs.previews_enabled()  # the server default: no previews, so none are sent
    cli_args.args.preview_method = LatentPreviewMethod.Auto
    assert cs.previews_enabled()


def test_no_previews_outside_comfyui():
    assert not cs.previews_enabled()
