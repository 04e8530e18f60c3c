"""Where the training nodes read and write: datasets inside ComfyUI's input folder, LoRAs in
``output/loras/deepgen/``, resumable runs in ``output/deepgen_training/<lora_name>/`` (outside ComfyUI:
``$DEEPGEN_INPUT_DIR`` / ``$DEEPGEN_OUTPUT_DIR``), and the LoRA files read back (cached by path, size and time)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from deepgen.errors import InputError, NotFoundError

from . import comfy_services as cs

LORA_SUBFOLDER = "deepgen"
RUNS_SUBFOLDER = "deepgen_training"
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,120}$")
_ADAPTER_CACHE: dict[tuple[str, int, int], object] = {}


def _folder_paths():
    return sys.modules.get("folder_paths") if cs.in_comfyui() else None


def output_root() -> Path:
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.get_output_directory())
    return Path(os.environ.get("DEEPGEN_OUTPUT_DIR") or "output").expanduser().absolute()


def lora_output_dir() -> Path:
    """Where trained LoRAs are written: ``output/loras/deepgen`` (ComfyUI lists ``output/loras`` as a loras folder)."""
    if _folder_paths() is not None:
        return output_root() / "loras" / LORA_SUBFOLDER
    folders = cs.model_folders("loras")
    return (Path(folders[0]) if folders else output_root() / "loras") / LORA_SUBFOLDER


def run_dir(lora_name: str) -> Path:
    return output_root() / RUNS_SUBFOLDER / lora_name


def input_root() -> Path:
    """The folder datasets are read from: ComfyUI's input folder (outside ComfyUI: $DEEPGEN_INPUT_DIR, else the
    working folder)."""
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.get_input_directory())
    return Path(os.environ.get("DEEPGEN_INPUT_DIR") or os.getcwd()).expanduser().absolute()


DATASET_HINT = "a folder of images with same-named .txt captions, or a .json/.jsonl list"


def resolve_dataset(path: str) -> Path:
    """A folder or a .json/.jsonl list inside the input folder (see :func:`resolve_input`)."""
    return resolve_input(path, "dataset", DATASET_HINT)


def resolve_input(path: str, what: str, hint: str) -> Path:
    """A file or folder inside the input folder: a relative name, or an absolute path that lies inside it. A name
    from a (shared) workflow never reaches files elsewhere.  ``what`` names the input, ``hint`` what to put there."""
    from deepgen.paths import check_inside, join_inside

    text = (path or "").strip().strip('"').strip("'")
    if not text:
        raise InputError(f"{what} is empty: give {hint}, inside ComfyUI's input folder")
    root = input_root()
    given = Path(text).expanduser()
    found = check_inside(given, root, what) if given.is_absolute() else join_inside(root, text, what)
    if not found.exists():
        raise NotFoundError(f"{what} {text!r} not found in {root}; put {hint} in ComfyUI's input folder")
    return found


def start_over(runs: Path, lora_name: str) -> None:
    """Resume off: move an earlier run of this name out of the way (kept, renamed) so the new one starts at 0."""
    import time

    from deepgen.train.checkpointing import find_latest_checkpoint

    if find_latest_checkpoint(runs) is not None:
        runs.rename(runs.with_name(f"{lora_name}.previous-{time.strftime('%Y%m%d-%H%M%S')}"))


def check_lora_name(name: str) -> str | None:
    if not isinstance(name, str) or not _NAME_OK.match(name.strip()) or ".." in name:
        return (
            f"lora_name {name!r} must be a plain file name (letters, digits, space . _ + -; no folders), "
            "e.g. my_deepgen_lora"
        )
    return None


def load_adapter_cached(path: str):
    from deepgen.lora import load_lora

    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _ADAPTER_CACHE:
        if len(_ADAPTER_CACHE) > 16:
            _ADAPTER_CACHE.clear()
        _ADAPTER_CACHE[key] = load_lora(path)
    return _ADAPTER_CACHE[key]
