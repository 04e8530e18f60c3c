"""Where the real ComfyUI for these tests comes from.

1. `DEEPGEN_COMFYUI_DIR`: an unpacked ComfyUI source tree (the folder holding main.py).
2. Else the source snapshot `../shared/comfyui/ComfyUI-*.tar.gz` beside this repository (CI has no network beyond
   package registries), unpacked once into a cache folder and reused.

`locate()` returns the tree, or raises Missing with a reason the conftest turns into a skip (a user's clone) or a
failure (CI).
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "comfyui"
ENV_DIR = "DEEPGEN_COMFYUI_DIR"


class Missing(RuntimeError):
    pass


def _is_tree(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir() and (path / "folder_paths.py").is_file()


def cache_root() -> Path:
    base = os.environ.get("DEEPGEN_TEST_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deepgen-tests"


def unpack(tarball: Path, cache: Path | None = None) -> Path:
    """Unpack the snapshot once (a marker file says the unpack finished); returns the tree (its comfyui/ folder)."""
    target = (cache or cache_root()) / tarball.name.removesuffix(".tar.gz")
    tree = target / "comfyui"
    marker = target / ".unpacked"
    if marker.is_file() and _is_tree(tree):
        return tree
    target.parent.mkdir(parents=True, exist_ok=True)
    # unpack beside the target and rename, so an interrupted unpack never looks complete
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    with tarfile.open(tarball) as tar:
        tar.extractall(staging, filter="data")
    if not _is_tree(staging / "comfyui"):
        raise Missing(f"{tarball} does not unpack to a comfyui/ folder with main.py")
    (staging / ".unpacked").write_text(str(tarball.stat().st_size))
    if target.exists():
        import shutil

        shutil.rmtree(target)
    staging.rename(target)
    return tree


def locate() -> Path:
    explicit = os.environ.get(ENV_DIR)
    if explicit:
        path = Path(explicit).expanduser()
        if not _is_tree(path):
            raise Missing(f"{ENV_DIR}={explicit} is not a ComfyUI source tree (no main.py, comfy/, folder_paths.py)")
        return path.resolve()
    tarballs = sorted(SHARED.glob("ComfyUI-*.tar.gz"))
    if not tarballs:
        raise Missing(
            f"no ComfyUI found: set {ENV_DIR} to an unpacked ComfyUI tree, or put the source snapshot "
            f"ComfyUI-*.tar.gz in {SHARED}"
        )
    return unpack(tarballs[-1])


if __name__ == "__main__":  # .ci/run: print the tree (unpacking the snapshot if needed); an error exits non-zero
    try:
        print(locate())
    except Missing as exc:
        raise SystemExit(f"error: {exc}") from None
