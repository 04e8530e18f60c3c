"""Model folders and name resolution: ComfyUI's ``folder_paths`` inside ComfyUI, ``DEEPGEN_MODELS_DIR`` (default
``./models``) outside.  Names are checked by :mod:`deepgen.paths` (no absolute names, no ``..``, no symlinks out of
the model folders unless ``DEEPGEN_ALLOW_EXTERNAL_SYMLINKS=1``)."""

from __future__ import annotations

import os
from typing import Iterable

from deepgen.errors import InputError, NotFoundError, UnsafePathError
from deepgen.paths import allow_external_symlinks, is_inside, safe_relative_name

from .detection import comfy_module, in_comfyui

__all__ = [
    "MODEL_KINDS",
    "DEEPGEN_FOLDER",
    "DEEPGEN_EXTENSIONS",
    "register_model_folders",
    "model_folders",
    "list_models",
    "resolve_model_path",
    "clip_tokenizer_dir",
]

DEEPGEN_FOLDER = "deepgen"
#: folder kinds this pack uses: ``folder_paths`` names (legacy aliases ``clip``/``unet`` accepted)
MODEL_KINDS = ("deepgen", "text_encoders", "diffusion_models", "vae", "loras", "clip_vision")
_LEGACY_KINDS = {"clip": "text_encoders", "unet": "diffusion_models"}
#: sub-folders of a models root searched outside ComfyUI (mirrors ComfyUI's defaults)
_STANDALONE_SUBDIRS = {
    "deepgen": ("deepgen",),
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("unet", "diffusion_models"),
    "vae": ("vae",),
    "loras": ("loras",),
    "clip_vision": ("clip_vision",),
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
    ``text_encoders``, ``diffusion_models``, ``vae``, ``loras`` and ``clip_vision`` folders are ComfyUI's own
    and are left untouched.
    """
    if not in_comfyui():
        return
    fp = comfy_module("folder_paths")
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
        return list(comfy_module("folder_paths").get_folder_paths(k))
    roots = os.environ.get("DEEPGEN_MODELS_DIR") or "./models"
    out = []
    for root in roots.split(os.pathsep):
        if root:
            out.extend(os.path.abspath(os.path.join(os.path.expanduser(root), d)) for d in _STANDALONE_SUBDIRS[k])
    return out


def _extensions(kind: str) -> frozenset[str]:
    if in_comfyui():
        entry = comfy_module("folder_paths").folder_names_and_paths.get(kind)
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
        for name in comfy_module("folder_paths").get_filename_list(k):
            rel = name.replace("\\", "/")
            if any(p.startswith(".") for p in rel.split("/")):
                continue
            try:
                _resolve(k, _normalise_name(rel), rel, folders, roots)
            except (ValueError, FileNotFoundError):
                continue
            files.add(rel)
    return sorted(files | dirs)


#: ComfyUI ships OpenAI's CLIP tokenizer (vocab.json + merges.txt) here, inside its ``comfy`` package
_COMFY_CLIP_TOKENIZER = "sd1_tokenizer"


def clip_tokenizer_dir() -> str | None:
    """ComfyUI's own copy of OpenAI's CLIP tokenizer (``comfy/sd1_tokenizer/``, the one its SD1 CLIP uses), for
    a single-file CLIP from ``models/clip_vision`` (such a file holds no tokenizer); None outside ComfyUI or when
    this ComfyUI has none."""
    if not in_comfyui():
        return None
    try:
        package_dirs = list(getattr(comfy_module("comfy"), "__path__", []))
    except ImportError:
        return None
    for base in package_dirs:
        folder = os.path.join(base, _COMFY_CLIP_TOKENIZER)
        if all(os.path.isfile(os.path.join(folder, f)) for f in ("vocab.json", "merges.txt")):
            return os.path.abspath(folder)
    return None
