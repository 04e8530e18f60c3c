"""Names that must stay inside a folder: a name read from a UI, a workflow, a manifest or a file's metadata is
joined to the folder the user chose, and refused if it would lead anywhere else."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UnsafePathError

ALLOW_EXTERNAL_SYMLINKS_ENV = "DEEPGEN_ALLOW_EXTERNAL_SYMLINKS"


def allow_external_symlinks() -> bool:
    """A user's explicit opt-in (environment) to follow symlinks that point outside the chosen folders."""
    return os.environ.get(ALLOW_EXTERNAL_SYMLINKS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path`` is ``root`` or below it (both compared as given: resolve them first for symlinks)."""
    try:
        return os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) == os.path.abspath(root)
    except ValueError:  # different drives on Windows
        return False


def safe_relative_name(name: str, what: str = "name") -> str:
    """``name`` as a clean ``/``-separated relative path; UnsafePathError if absolute, with ``..`` or NUL."""
    if not isinstance(name, str) or not name.strip():
        raise UnsafePathError(f"{what} must be a non-empty relative path")
    if "\x00" in name:
        raise UnsafePathError(f"{what} {name!r} contains a NUL character")
    raw = name.strip().replace("\\", "/")  # names saved on Windows use backslashes
    if raw.startswith("/") or os.path.isabs(name) or (len(raw) >= 2 and raw[1] == ":"):
        raise UnsafePathError(f"{what} {name!r} is an absolute path; give a path relative to its folder")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError(f"{what} {name!r} contains '..'; it must stay inside its folder")
    if not parts:
        raise UnsafePathError(f"{what} {name!r} names the folder itself")
    return "/".join(parts)


def join_inside(root: str | os.PathLike, name: str, what: str = "name") -> Path:
    """``root / name``, refused (UnsafePathError) when ``name`` is absolute, climbs out with ``..``, or reaches
    outside ``root`` through a symlink (unless DEEPGEN_ALLOW_EXTERNAL_SYMLINKS=1). The target need not exist."""
    rel = safe_relative_name(name, what)
    root = Path(root)
    path = root.joinpath(*rel.split("/"))
    if not allow_external_symlinks() and not is_inside(os.path.realpath(path), os.path.realpath(root)):
        raise UnsafePathError(
            f"{what} {name!r} leads through a symlink to {os.path.realpath(path)}, outside "
            f"{root}; move the files inside, or set {ALLOW_EXTERNAL_SYMLINKS_ENV}=1"
        )
    return path


def check_inside(path: str | os.PathLike, root: str | os.PathLike, what: str = "path") -> Path:
    """``path`` itself (absolute or relative to the working folder), refused unless it lies inside ``root``
    after resolving symlinks (unless DEEPGEN_ALLOW_EXTERNAL_SYMLINKS=1)."""
    path = Path(path)
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if not is_inside(os.path.abspath(path), os.path.abspath(root)) and not is_inside(real, real_root):
        raise UnsafePathError(f"{what} {str(path)!r} is outside {root}; use a path inside that folder")
    if not allow_external_symlinks() and not is_inside(real, real_root):
        raise UnsafePathError(
            f"{what} {str(path)!r} leads through a symlink to {real}, outside {root}; move the "
            f"files inside, or set {ALLOW_EXTERNAL_SYMLINKS_ENV}=1"
        )
    return path
