"""The one adapter through which DeepGen nodes reach ComfyUI services.

Every node (and nothing in ``deepgen/``) goes through this module for progress, interruption, model
folders, devices/memory and websocket events.  It imports without ComfyUI: outside ComfyUI (unit tests,
the headless trainer, scripts) each service falls back to a small standalone equivalent.

Detection
    :func:`in_comfyui` is True when ComfyUI's own ``folder_paths`` and ``comfy.model_management``
    modules are already imported, which is always the case while ComfyUI loads custom nodes.  It is
    evaluated on every call and never imports ComfyUI itself, so importing this module has no side
    effects and tests can inject test doubles into ``sys.modules``.

Contract (other modules code against these names)
    in_comfyui()
    Progress(total, node_id=None) .update(n=1) .update_absolute(value, total=None, preview=None)
        .callback(...) .close(); context manager
    check_interrupt(), interrupted(), request_interrupt(), clear_interrupt(), DeepGenInterrupted,
        interrupt_exception_types()
    MODEL_KINDS, register_model_folders(), model_folders(kind), list_models(kind),
        resolve_model_path(kind, name)
    torch_device(), offload_device(), intermediate_device(), free_memory(bytes_needed=None),
        soft_empty_cache()
    send_event(event, payload), send_progress_text(text, node_id), add_event_listener(fn),
        remove_event_listener(fn); EVENT_PREFIX = "deepgen1."

Environment variables (outside ComfyUI only)
    DEEPGEN_MODELS_DIR      model root(s), ``os.pathsep``-separated; default ``./models``
    DEEPGEN_DEVICE          overrides :func:`torch_device` (e.g. ``cpu``, ``cuda:1``)
Environment variables (everywhere)
    DEEPGEN_ALLOW_EXTERNAL_SYMLINKS=1   let model names resolve through symlinks that point outside
                                        the model folders (e.g. into a Hugging Face cache)
"""

from __future__ import annotations

import gc
import importlib
import logging
import math
import os
import sys
import threading
from typing import Any, Callable, Iterable

from deepgen.errors import InputError, NotFoundError, UnsafePathError
from deepgen.paths import allow_external_symlinks, is_inside, safe_relative_name

log = logging.getLogger(__name__)

__all__ = [
    "in_comfyui",
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


# --------------------------------------------------------------------------------------------------
# Detection


def in_comfyui() -> bool:
    """True when running inside a ComfyUI process (its core modules are already loaded)."""
    return "folder_paths" in sys.modules and "comfy.model_management" in sys.modules


def _comfy(name: str):
    """ComfyUI module ``name`` (already imported inside ComfyUI, so this is a dict lookup)."""
    mod = sys.modules.get(name)
    return mod if mod is not None else importlib.import_module(name)


def previews_enabled() -> bool:
    """Whether ComfyUI wants latent previews (its --preview-method; the server default is none)."""
    if not in_comfyui():
        return False
    try:
        method = _comfy("comfy.cli_args").args.preview_method
    except (ImportError, AttributeError):
        return True  # a ComfyUI without that setting: previews as before
    return getattr(method, "value", method) != "none"


# --------------------------------------------------------------------------------------------------
# Progress


class Progress:
    """Step progress for one node.

    Inside ComfyUI this wraps ``comfy.utils.ProgressBar`` (the node's bar in the UI, websocket
    ``progress``/``progress_state`` messages, previews; its hook also checks for interrupts).  Outside
    ComfyUI it drives a ``tqdm`` bar on stderr (silent if tqdm is missing or ``TQDM_DISABLE=1``).

    ``preview`` is ComfyUI's tuple ``(format, PIL.Image, max_size)`` with format ``"JPEG"``/``"PNG"``;
    it is ignored outside ComfyUI.  ``current``/``total`` are tracked in both modes and values are
    clamped to ``total`` like ComfyUI does.
    """

    def __init__(self, total: int, node_id: str | None = None, desc: str | None = None):
        self.total = int(total)
        self.current = 0
        self.node_id = node_id
        self._bar = None
        self._tqdm = None
        if in_comfyui():
            utils = _comfy("comfy.utils")
            try:
                self._bar = utils.ProgressBar(self.total, node_id=node_id)
            except TypeError:  # cores older than the node_id argument
                self._bar = utils.ProgressBar(self.total)
        else:
            try:
                from tqdm.auto import tqdm

                self._tqdm = tqdm(total=self.total, desc=desc or "DeepGen", leave=False)
            except Exception:  # tqdm missing or unusable: stay silent
                self._tqdm = None

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps."""
        self.update_absolute(self.current + n)

    def update_absolute(self, value: int, total: int | None = None, preview: tuple | None = None) -> None:
        """Set the position to ``value`` (optionally a new ``total``) and show ``preview``."""
        if total is not None:
            self.total = int(total)
        value = min(int(value), self.total)
        if self._bar is not None:
            self._bar.update_absolute(value, total, preview)
        elif self._tqdm is not None:
            if total is not None and self._tqdm.total != self.total:
                self._tqdm.total = self.total
            self._tqdm.update(value - self._tqdm.n)
        self.current = value

    def callback(
        self,
        preview_fn: Callable[..., tuple | None] | None = None,
        zero_based: bool = True,
        check_interrupts: bool = True,
    ) -> Callable[..., None]:
        """A per-step callback ``cb(step, *args, total_steps=None, **kwargs)`` for sampler loops.

        The step index is 0-based by default (``step + 1`` steps are then done, like ComfyUI's
        ``latent_preview.prepare_callback``).  A ``total_steps``/``total`` keyword, or a fourth
        positional argument as in ComfyUI's ``callback(step, x0, x, total_steps)``, updates the total.
        ``preview_fn(step, *args, **kwargs)`` may return a preview tuple.  The callback also calls
        :func:`check_interrupt` (outside ComfyUI nothing else would).
        """

        def cb(step: int, *args: Any, **kwargs: Any) -> None:
            total = kwargs.get("total_steps", kwargs.get("total"))
            if total is None and len(args) >= 3 and isinstance(args[2], int):
                total = args[2]
            preview = preview_fn(step, *args, **kwargs) if preview_fn is not None else None
            self.update_absolute(int(step) + (1 if zero_based else 0), total, preview)
            if check_interrupts:
                check_interrupt()

        return cb

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# Interruption


class DeepGenInterrupted(Exception):
    """Raised by :func:`check_interrupt` outside ComfyUI after :func:`request_interrupt`.

    Inside ComfyUI the native ``comfy.model_management.InterruptProcessingException`` is raised
    instead, so the executor reports ``execution_interrupted`` rather than an error.  Catch
    ``interrupt_exception_types()`` when code must handle both; prefer ``finally`` for cleanup.
    """


_interrupt_flag = threading.Event()


def check_interrupt() -> None:
    """Raise if the user asked to stop; call it once per step in every long loop.

    Inside ComfyUI: ``comfy.model_management.throw_exception_if_processing_interrupted()``.
    Outside: raises :class:`DeepGenInterrupted` if the module flag is set, and clears the flag (as
    ComfyUI does) so the next run starts clean.
    """
    if in_comfyui():
        _comfy("comfy.model_management").throw_exception_if_processing_interrupted()
        return
    if _interrupt_flag.is_set():
        _interrupt_flag.clear()
        raise DeepGenInterrupted("DeepGen processing interrupted")


def interrupted() -> bool:
    """Poll without raising (and without clearing the flag)."""
    if in_comfyui():
        return bool(_comfy("comfy.model_management").processing_interrupted())
    return _interrupt_flag.is_set()


def request_interrupt() -> None:
    """Ask running loops to stop (thread-safe).  Inside ComfyUI this sets ComfyUI's global flag."""
    if in_comfyui():
        _comfy("comfy.model_management").interrupt_current_processing(True)
    else:
        _interrupt_flag.set()


def clear_interrupt() -> None:
    if in_comfyui():
        _comfy("comfy.model_management").interrupt_current_processing(False)
    else:
        _interrupt_flag.clear()


def interrupt_exception_types() -> tuple[type[BaseException], ...]:
    """Exception classes that mean "interrupted" in the current environment."""
    types: list[type[BaseException]] = [DeepGenInterrupted]
    if in_comfyui():
        exc = getattr(_comfy("comfy.model_management"), "InterruptProcessingException", None)
        if isinstance(exc, type):
            types.append(exc)
    return tuple(types)


# --------------------------------------------------------------------------------------------------
# Model folders

DEEPGEN_FOLDER = "deepgen"
#: folder kinds this pack uses: ``folder_paths`` names (legacy aliases ``clip``/``unet`` accepted)
MODEL_KINDS = ("deepgen", "text_encoders", "diffusion_models", "vae", "loras")
_LEGACY_KINDS = {"clip": "text_encoders", "unet": "diffusion_models"}
#: sub-folders of a models root searched outside ComfyUI (mirrors ComfyUI's defaults)
_STANDALONE_SUBDIRS = {
    "deepgen": ("deepgen",),
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("unet", "diffusion_models"),
    "vae": ("vae",),
    "loras": ("loras",),
}
_PT_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})
#: extensions listed in the ``deepgen`` folder (sub-folders are listed separately)
DEEPGEN_EXTENSIONS = frozenset(_PT_EXTENSIONS | {".gguf", ".json"})
#: a folder directly holding one of these is a model folder (its sub-folders are not listed)
_MODEL_MARKERS = ("config.json", "model_index.json")


def _kind(kind: str) -> str:
    k = _LEGACY_KINDS.get(kind, kind)
    if k not in MODEL_KINDS:
        raise InputError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    return k


def register_model_folders() -> None:
    """Register ``models/deepgen`` with ComfyUI's ``folder_paths`` (idempotent; no-op outside).

    Paths that users added for ``deepgen`` in ``extra_model_paths.yaml`` are kept.  The standard
    ``text_encoders``, ``diffusion_models``, ``vae`` and ``loras`` folders are ComfyUI's own and are
    left untouched.
    """
    if not in_comfyui():
        return
    fp = _comfy("folder_paths")
    default = os.path.join(fp.models_dir, DEEPGEN_FOLDER)
    exts = set(getattr(fp, "supported_pt_extensions", ())) | set(DEEPGEN_EXTENSIONS)
    entry = fp.folder_names_and_paths.get(DEEPGEN_FOLDER)
    if entry is None:
        fp.folder_names_and_paths[DEEPGEN_FOLDER] = ([default], exts)
    else:
        paths, old_exts = entry
        # An empty set means "every file" (what add_model_folder_path creates for a new key): keep it.
        # Never mutate the old set in place: it may be ComfyUI's shared supported_pt_extensions.
        new_exts = old_exts if len(old_exts) == 0 or exts <= set(old_exts) else set(old_exts) | exts
        if default not in paths or new_exts is not old_exts:
            fp.folder_names_and_paths[DEEPGEN_FOLDER] = (
                list(paths) + ([default] if default not in paths else []),
                new_exts,
            )
    try:
        os.makedirs(default, exist_ok=True)
    except OSError:  # read-only install: the folder is optional
        pass


def model_folders(kind: str) -> list[str]:
    """Search folders of ``kind``, in priority order."""
    k = _kind(kind)
    if in_comfyui():
        register_model_folders()
        return list(_comfy("folder_paths").get_folder_paths(k))
    roots = os.environ.get("DEEPGEN_MODELS_DIR") or "./models"
    out = []
    for root in roots.split(os.pathsep):
        if root:
            out.extend(os.path.abspath(os.path.join(os.path.expanduser(root), d)) for d in _STANDALONE_SUBDIRS[k])
    return out


def _extensions(kind: str) -> frozenset[str]:
    if in_comfyui():
        entry = _comfy("folder_paths").folder_names_and_paths.get(kind)
        if entry is not None:
            return frozenset(e.lower() for e in entry[1])
    return DEEPGEN_EXTENSIONS if kind == DEEPGEN_FOLDER else _PT_EXTENSIONS


def _trusted_roots() -> list[str]:
    """Real paths of every folder of every kind: a name may resolve anywhere inside them."""
    roots: list[str] = []
    for k in MODEL_KINDS:
        try:
            roots.extend(os.path.realpath(p) for p in model_folders(k))
        except (KeyError, ValueError):  # a kind the running core does not know
            continue
    return roots


def _inside(path: str, roots: Iterable[str]) -> bool:
    return any(is_inside(path, root) for root in roots)


def _normalise_name(name: str) -> str:
    """A safe relative name with ``/`` separators, or UnsafePathError."""
    return safe_relative_name(name, "model name")


def _check_link(real: str, name: str, kind: str, roots: list[str] | None) -> None:
    if roots is not None and not _inside(real, roots):
        raise UnsafePathError(
            f"model {name!r} resolves through a symlink to {real}, outside the model folders. "
            f"Add that location as a '{kind}' folder (extra_model_paths.yaml inside ComfyUI, "
            f"DEEPGEN_MODELS_DIR outside) or set DEEPGEN_ALLOW_EXTERNAL_SYMLINKS=1"
        )


def _resolve(kind: str, rel: str, name: str, folders: list[str], roots: list[str] | None) -> str:
    for folder in folders:
        candidate = os.path.join(folder, *rel.split("/"))
        if not os.path.lexists(candidate):
            continue
        real = os.path.realpath(candidate)
        _check_link(real, name, kind, roots)
        if not os.path.exists(real):
            continue  # dangling symlink
        return os.path.abspath(candidate)
    raise NotFoundError(f"{kind} model {name!r} not found in: {', '.join(folders) or '(no folders)'}")


def resolve_model_path(kind: str, name: str) -> str:
    """Absolute path of file or folder ``name`` (as returned by :func:`list_models`) of ``kind``.

    Folders are searched in order and the first match wins.  Refuses, with ValueError, names that
    are absolute, contain ``..``, or resolve through a symlink to a place outside every model folder
    of every kind (unless DEEPGEN_ALLOW_EXTERNAL_SYMLINKS=1).  Backslashes count as separators, so
    workflows saved on Windows work elsewhere.  Raises FileNotFoundError when no folder of ``kind``
    holds ``name``.
    """
    k = _kind(kind)
    rel = _normalise_name(name)
    roots = None if allow_external_symlinks() else _trusted_roots()
    return _resolve(k, rel, name, model_folders(k), roots)


def _walk(folder: str, exts: frozenset[str], any_folder: bool, roots: list[str] | None) -> tuple[set[str], set[str]]:
    """(files, folders) under ``folder`` as ``/``-separated relative names (see :func:`list_models`)."""
    files: set[str] = set()
    dirs: set[str] = set()

    def wanted(name: str) -> bool:  # an empty extension set means "every file", as in folder_paths
        return not exts or os.path.splitext(name)[1].lower() in exts

    def visit(path: str, rel: str, seen: frozenset[str], in_model: bool) -> bool:
        """Walk one directory; True if it holds a listed file at any depth."""
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            return False
        names = {e.name for e in entries}
        marker = any(m in names for m in _MODEL_MARKERS)
        direct = marker or any(e.is_file() and wanted(e.name) for e in entries)
        is_model = bool(rel) and (direct if any_folder else marker)
        found = False
        for e in entries:
            if e.name.startswith("."):  # .git, .cache (Hugging Face downloads), ...
                continue
            child = os.path.join(path, e.name)
            child_rel = f"{rel}/{e.name}" if rel else e.name
            if roots is not None and e.is_symlink() and not _inside(os.path.realpath(child), roots):
                continue
            if e.is_dir():
                real = os.path.realpath(child)
                if real in seen:  # symlink loop
                    continue
                if visit(child, child_rel, seen | {real}, in_model or is_model):
                    found = True
            elif e.is_file() and wanted(e.name):
                files.add(child_rel)
                found = True
        if rel and not in_model and (found if any_folder else is_model):
            dirs.add(rel)
        return found or is_model

    visit(folder, "", frozenset({os.path.realpath(folder)}), False)
    return files, dirs


def list_models(kind: str) -> list[str]:
    """Sorted names of model files **and folders** of ``kind`` (releases are folders).

    Files: every file with a supported extension at any depth, as ``sub/dir/file.ext``; inside
    ComfyUI they come from ``folder_paths.get_filename_list`` (cached, honours extra_model_paths).
    Folders: in ``deepgen``, every sub-folder holding a supported file at any depth; in the other
    kinds, Hugging Face / diffusers folders (those directly holding ``config.json`` or
    ``model_index.json``).  Folders nested in a model folder (one directly holding such a marker or,
    in ``deepgen``, a supported file) are not listed: a release ``DeepGen-1.0`` is listed, its
    ``vae``/``transformer`` sub-folders are not.  Names use ``/``; every name is accepted by
    :func:`resolve_model_path`.  Hidden entries and symlinks escaping the model folders are skipped.
    """
    k = _kind(kind)
    folders = model_folders(k)
    exts = _extensions(k)
    roots = None if allow_external_symlinks() else _trusted_roots()
    files: set[str] = set()
    dirs: set[str] = set()
    for folder in folders:
        f, d = _walk(folder, exts, k == DEEPGEN_FOLDER, roots)
        files |= f
        dirs |= d
    if in_comfyui():
        files = set()
        for name in _comfy("folder_paths").get_filename_list(k):
            rel = name.replace("\\", "/")
            if any(p.startswith(".") for p in rel.split("/")):
                continue
            try:
                _resolve(k, _normalise_name(rel), rel, folders, roots)
            except (ValueError, FileNotFoundError):
                continue
            files.add(rel)
    return sorted(files | dirs)


# --------------------------------------------------------------------------------------------------
# Devices and memory


def torch_device():
    """The compute device: ComfyUI's ``get_torch_device()``; else DEEPGEN_DEVICE, cuda, mps, cpu."""
    import torch

    if in_comfyui():
        return _comfy("comfy.model_management").get_torch_device()
    override = os.environ.get("DEEPGEN_DEVICE", "").strip()
    if override:
        return torch.device(override)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def offload_device():
    """Where idle weights live: ComfyUI's ``unet_offload_device()`` (CPU unless --highvram); else CPU."""
    import torch

    if in_comfyui():
        return _comfy("comfy.model_management").unet_offload_device()
    return torch.device("cpu")


def intermediate_device():
    """Where node outputs (IMAGE, LATENT, CONDITIONING) should live: ComfyUI's choice; else CPU."""
    import torch

    if in_comfyui():
        return _comfy("comfy.model_management").intermediate_device()
    return torch.device("cpu")


def soft_empty_cache() -> None:
    """Return cached allocator blocks to the driver."""
    if in_comfyui():
        _comfy("comfy.model_management").soft_empty_cache()
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def free_memory(bytes_needed: int | None = None, device=None) -> None:
    """Make room on ``device`` (default :func:`torch_device`).

    ``bytes_needed`` given: inside ComfyUI, ``comfy.model_management.free_memory(bytes_needed,
    device)`` unloads other models until that much is free.  ``None``: only garbage-collect and
    :func:`soft_empty_cache` -- other models are never evicted without an amount (evicting the
    artist's models is what users complain about; ask for what you need).
    """
    gc.collect()
    if bytes_needed is not None and in_comfyui():
        target = device if device is not None else torch_device()
        _comfy("comfy.model_management").free_memory(int(bytes_needed), target)
    soft_empty_cache()


# --------------------------------------------------------------------------------------------------
# Websocket events

EVENT_PREFIX = "deepgen1."
_listeners: list[Callable[[str, dict], None]] = []


def add_event_listener(fn: Callable[[str, dict], None]) -> None:
    """Call ``fn(event, payload)`` for every :func:`send_event` (both inside and outside ComfyUI)."""
    if fn not in _listeners:
        _listeners.append(fn)


def remove_event_listener(fn: Callable[[str, dict], None]) -> None:
    if fn in _listeners:
        _listeners.remove(fn)


def _jsonable(value: Any) -> Any:
    """JSON-safe copy: tensors/numpy scalars become numbers, NaN/inf become None (JSON.parse rejects NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        return _jsonable(value.tolist())
    if hasattr(value, "item"):
        return _jsonable(value.item())
    raise TypeError(f"cannot send {type(value).__name__} in a websocket event")


def send_event(event: str, payload: dict, broadcast: bool = False) -> None:
    """Send a custom websocket event to the front end.

    Inside ComfyUI: ``PromptServer.instance.send_sync(event, payload, sid)`` with ``sid`` the client
    that queued the prompt (``PromptServer.instance.client_id``; every client if ``broadcast`` or
    none is known).  Outside ComfyUI: only the Python listeners are called.  ``event`` must start
    with ``deepgen1.``; the payload is made JSON-safe first (NaN/inf become null).
    """
    if not isinstance(event, str) or not event.startswith(EVENT_PREFIX) or event == EVENT_PREFIX:
        raise ValueError(f"event name {event!r} must start with {EVENT_PREFIX!r}")
    if not isinstance(payload, dict):
        raise TypeError("event payload must be a dict")
    data = _jsonable(payload)
    for fn in list(_listeners):
        try:
            fn(event, data)
        except Exception:  # a broken listener must not break a render or a training run
            log.exception("deepgen event listener failed for %s", event)
    if not in_comfyui():
        return
    server = _prompt_server()
    if server is None:
        return
    sid = None if broadcast else getattr(server, "client_id", None)
    server.send_sync(event, data, sid)


def send_progress_text(text: str, node_id: str | None) -> None:
    """Free-text status under the node (``PromptServer.send_progress_text``); no-op outside ComfyUI."""
    if node_id is None or not in_comfyui():
        return
    server = _prompt_server()
    if server is not None and hasattr(server, "send_progress_text"):
        server.send_progress_text(str(text), str(node_id), getattr(server, "client_id", None))


def _prompt_server():
    """``PromptServer.instance`` or None (headless in-process use has no server)."""
    try:
        mod = _comfy("server")
    except ImportError:
        return None
    cls = getattr(mod, "PromptServer", None)
    return getattr(cls, "instance", None)
