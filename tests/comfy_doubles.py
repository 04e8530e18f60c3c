"""Test doubles of ComfyUI's API for the tests of nodes/comfy_services (tests/test_comfy_services_*.py).

The doubles (:class:`FakeComfy`, installed by tests/conftest.py's fixture ``fake_comfy``) imitate ComfyUI's
documented API surface -- ``comfy.utils``, ``comfy.model_management``, ``folder_paths`` and ``server`` -- not our
code; they record the calls the adapter makes.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

COMFY_MODULES = ("comfy", "comfy.utils", "comfy.model_management", "folder_paths", "server")


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


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
            "clip_vision": ([os.path.join(m, "clip_vision")], fp.supported_pt_extensions),
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
