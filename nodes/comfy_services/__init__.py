"""The one adapter through which DeepGen nodes reach ComfyUI services.

Every node (and nothing in ``deepgen/``) goes through this package for progress, interruption, model
folders, devices/memory and websocket events.  It imports without ComfyUI: outside ComfyUI (unit tests,
the headless trainer, scripts) each service falls back to a small standalone equivalent.  Nodes use
``from . import comfy_services as cs; cs.X``; each service lives in its own module:

    detection.py      in_comfyui(), previews_enabled() (and comfy_module(), for the modules below)
    progress.py       Progress(total, node_id=None) .update(n=1) .update_absolute(value, total=None,
                      preview=None) .callback(...) .close(); context manager
    interrupt.py      check_interrupt(), interrupted(), request_interrupt(), clear_interrupt(),
                      DeepGenInterrupted, interrupt_exception_types()
    model_folders.py  MODEL_KINDS, register_model_folders(), model_folders(kind), list_models(kind),
                      resolve_model_path(kind, name), clip_tokenizer_dir()
    devices.py        torch_device(), offload_device(), intermediate_device(),
                      free_memory(bytes_needed=None), soft_empty_cache()
    managed_models.py manage(module, load_device, offload_device), load_models(patchers),
                      unload_models(patchers), lora_patch(patcher, patches, strength), loaded_model_names():
                      ComfyUI's model manager (ModelPatcher, load_models_gpu) or StandalonePatcher
    events.py         send_event(event, payload), send_progress_text(text, node_id),
                      add_event_listener(fn), remove_event_listener(fn); EVENT_PREFIX = "deepgen1."

Environment variables (outside ComfyUI only)
    DEEPGEN_MODELS_DIR      model root(s), ``os.pathsep``-separated; default ``./models``
    DEEPGEN_DEVICE          overrides :func:`torch_device` (e.g. ``cpu``, ``cuda:1``)
Environment variables (everywhere)
    DEEPGEN_ALLOW_EXTERNAL_SYMLINKS=1   let model names resolve through symlinks that point outside
                                        the model folders (e.g. into a Hugging Face cache)
"""

from __future__ import annotations

from .detection import in_comfyui, previews_enabled
from .devices import free_memory, intermediate_device, offload_device, soft_empty_cache, torch_device
from .events import (
    EVENT_PREFIX,
    _listeners,  # noqa: F401 - the listener list itself (tests clear it)
    add_event_listener,
    remove_event_listener,
    send_event,
    send_progress_text,
)
from .interrupt import (
    DeepGenInterrupted,
    _interrupt_flag,  # noqa: F401 - the standalone flag itself (tests clear it)
    check_interrupt,
    clear_interrupt,
    interrupt_exception_types,
    interrupted,
    request_interrupt,
)
from .model_folders import (
    DEEPGEN_EXTENSIONS,
    DEEPGEN_FOLDER,
    MODEL_KINDS,
    clip_tokenizer_dir,
    list_models,
    model_folders,
    register_model_folders,
    resolve_model_path,
)
from .progress import Progress

__all__ = [
    "in_comfyui",
    "previews_enabled",
    "Progress",
    "DeepGenInterrupted",
    "check_interrupt",
    "interrupted",
    "request_interrupt",
    "clear_interrupt",
    "interrupt_exception_types",
    "MODEL_KINDS",
    "DEEPGEN_FOLDER",
    "DEEPGEN_EXTENSIONS",
    "register_model_folders",
    "model_folders",
    "list_models",
    "resolve_model_path",
    "clip_tokenizer_dir",
    "torch_device",
    "offload_device",
    "intermediate_device",
    "free_memory",
    "soft_empty_cache",
    "EVENT_PREFIX",
    "send_event",
    "send_progress_text",
    "add_event_listener",
    "remove_event_listener",
]
