"""What the user pointed at, resolved: which release layout it is and the paths `load_model` needs.

One resolver for the CLI (`--checkpoint`), the trainer (the config's `model`) and DeepGenLoader (its widgets):
- `"tiny"`: the embedded demo, the tiny architecture trained on coloured shapes (deepgen.loading.demo_file);
- `"tiny-random"` / `"tiny:<seed>"`: the tiny architecture with random weights (tests, training from scratch);
- a demo file (scripts/train_demo_model.py writes one): everything inside;
- a DeepGen-1.0-diffusers folder (`connector/` + `transformer/` ...): everything inside;
- a `deepgen convert` single file: everything inside;
- an official checkpoint file, or a folder holding one (`model.safetensors`, `model.pt`, ... or the only
  checkpoint file): the Qwen2.5-VL folder and the diffusion folder (`transformer/ vae/ scheduler/`) are the ones
  given, else the one found next to the checkpoint, else the only one among `candidates` (the node's model
  folders); `connector_config.json` next to it (non-official connector widths) is read;
- with `allow_bases`, a folder with no checkpoint but the two base folders (stage-1 training from scratch).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..errors import CheckpointError, NotFoundError
from .demo_file import is_demo_file
from .single_file import is_single_file
from .state_dict_io import read_metadata

CHECKPOINT_NAMES = ("model.safetensors", "model.pt", "DeepGen-1.0.safetensors", "DeepGen-1.0.pt")
CHECKPOINT_EXTS = (".safetensors", ".sft", ".pt", ".pth", ".bin", ".ckpt")
CONNECTOR_CONFIG = "connector_config.json"
VLM_WHAT = "the Qwen2.5-VL-3B-Instruct folder (config.json with model_type qwen2_5_vl)"
DIFFUSION_WHAT = "the UniPic2-SD3.5M-Kontext diffusers folder (transformer/, vae/, scheduler/)"

PathLike = str | os.PathLike


@dataclass(frozen=True)
class ModelSource:
    """A resolved model source (`deepgen.loading.load_model` resolves and builds one)."""

    layout: str  # tiny | demo | official | diffusers | single | bases
    checkpoint: str | None = None  # checkpoint file (official, single) or release folder (diffusers)
    vlm: str | None = None  # Qwen2.5-VL folder (official, bases)
    diffusion: str | None = None  # folder with transformer/ vae/ scheduler/ (official, bases)
    connector_config: dict | None = None
    seed: int = 0  # tiny (random weights) only

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def path_of(self, field: str) -> str:
        """The path ``field`` (``checkpoint``, ``vlm`` or ``diffusion``) that this layout needs; a clear
        :class:`CheckpointError` if a hand-built source lacks it."""
        value = getattr(self, field)
        if not value:
            raise CheckpointError(f"A {self.layout!r} model source needs a {field} path; it has none")
        return str(value)


# ---- what a folder is ------------------------------------------------------------------------------------


def _config(folder: Path) -> dict:
    try:
        value = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def is_qwen_folder(path: PathLike) -> bool:
    return _config(Path(path)).get("model_type") == "qwen2_5_vl"


def is_diffusion_folder(path: PathLike) -> bool:
    return all((Path(path) / sub).is_dir() for sub in ("transformer", "vae", "scheduler"))


def is_diffusers_release(path: PathLike) -> bool:
    return (Path(path) / "connector").is_dir() and (Path(path) / "transformer").is_dir()


def is_model_folder(path: PathLike) -> bool:
    """A transformers/diffusers *model* folder (Qwen, a DiT, a VAE...), not a DeepGen release that happens to ship
    a config.json: its config names a model type or class, or it has a diffusers model_index.json."""
    path = Path(path)
    return (path / "model_index.json").is_file() or any(
        k in _config(path) for k in ("model_type", "_class_name", "architectures")
    )


def checkpoint_in(folder: PathLike) -> Path | None:
    """The DeepGen checkpoint directly inside a release folder: a usual name, else the only checkpoint file."""
    folder = Path(folder)
    for name in CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return folder / name
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CHECKPOINT_EXTS)
    if len(files) > 1:
        raise CheckpointError(
            f"{folder} holds several checkpoint files ({', '.join(p.name for p in files)}); point at the one to use"
        )
    return files[0] if files else None


def read_connector_config(folder: PathLike) -> dict | None:
    path = Path(folder) / CONNECTOR_CONFIG
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f'{path} must hold a JSON object such as {{"num_attention_heads": 4}}')
    return value


def detect_layout(checkpoint: str | os.PathLike) -> str:
    """'diffusers' | 'single' | 'demo' | 'official', from the path alone (cheap: reads at most a safetensors header)."""
    path = Path(checkpoint)
    if path.is_dir():
        if (path / "connector").is_dir() and (path / "transformer").is_dir():
            return "diffusers"
        raise CheckpointError(
            f"{path} is a folder but not a DeepGen-1.0-diffusers release "
            "(expected vlm/, transformer/, vae/, connector/, scheduler/)"
        )
    if path.suffix == ".safetensors" and path.is_file():
        metadata = read_metadata(path)
        if is_single_file(metadata):
            return "single"
        if is_demo_file(metadata):
            return "demo"
    return "official"


# ---- the resolver ----------------------------------------------------------------------------------------


def resolve_source(
    checkpoint: PathLike,
    vlm: PathLike | None = None,
    diffusion: PathLike | None = None,
    *,
    candidates: Callable[[str], Iterable[PathLike]] | None = None,
    allow_bases: bool = False,
) -> ModelSource:
    """Resolve what the user pointed at (see the module doc). `candidates(kind)` (kind "vlm" or "diffusion")
    lists folders to pick from when none is given or found next to the checkpoint."""
    text = os.fspath(checkpoint).strip()
    if text == "tiny":
        from .demo_file import DEMO_FILE

        if not DEMO_FILE.is_file():
            raise NotFoundError(
                f"The embedded demo model {DEMO_FILE} is missing (a damaged install?): reinstall ComfyUI-DeepGen, "
                "run scripts/train_demo_model.py, or use 'tiny-random' for random weights"
            )
        return ModelSource("demo", checkpoint=str(DEMO_FILE))
    if text == "tiny-random":
        return ModelSource("tiny", seed=0)
    if text.startswith("tiny:"):
        seed = text.split(":", 1)[1]
        if not seed.isdigit():
            raise CheckpointError(f"{text!r}: the tiny model's seed must be a whole number, e.g. tiny:1")
        return ModelSource("tiny", seed=int(seed))
    path = Path(text).expanduser()
    if not path.exists():
        raise NotFoundError(
            f"model {text!r} does not exist: give a DeepGen checkpoint file, a release folder, a "
            "converted file, 'tiny' (the demo) or 'tiny-random'"
        )
    if path.is_dir() and is_diffusers_release(path):
        _refuse_parts(path, "diffusers", vlm, diffusion)
        return ModelSource("diffusers", checkpoint=str(path))
    folder, file = (path.parent, path) if path.is_file() else (path, checkpoint_in(path))
    if file is None and not allow_bases:
        raise CheckpointError(
            f"The folder {path} is neither a DeepGen-1.0-diffusers release (vlm/, transformer/, "
            "vae/, connector/, scheduler/) nor a release folder with one checkpoint file "
            "(model.pt or model.safetensors) in it"
        )
    layout = detect_layout(file) if file is not None else None
    if file is not None and layout in ("single", "demo"):
        _refuse_parts(file, str(layout), vlm, diffusion)
        return ModelSource(str(layout), checkpoint=str(file))
    return ModelSource(
        "official" if file is not None else "bases",
        checkpoint=str(file) if file is not None else None,
        vlm=str(_base_folder(vlm, folder, is_qwen_folder, "vlm", VLM_WHAT, candidates)),
        diffusion=str(_base_folder(diffusion, folder, is_diffusion_folder, "diffusion", DIFFUSION_WHAT, candidates)),
        connector_config=read_connector_config(folder),
    )


def _refuse_parts(path: Path, layout: str, vlm, diffusion) -> None:
    for label, value in (("vlm", vlm), ("diffusion", diffusion)):
        if value is not None:
            brings = "Qwen2.5-VL" if label == "vlm" else "DiT and VAE"
            raise CheckpointError(
                f"{path} is a {layout} release that brings its own {brings}: do not give a {label} folder"
            )


def _base_folder(given, beside: Path, accept, label: str, what: str, candidates) -> Path:
    if given is not None:
        folder = Path(given)
        if not accept(folder):
            raise CheckpointError(f"{folder} is not {what}")
        return folder
    found = [p for p in sorted(beside.iterdir()) if p.is_dir() and accept(p)]
    where = f"next to the checkpoint ({beside})"
    if not found and candidates is not None:
        found = sorted({Path(p) for p in candidates(label) if accept(p)})
        where += " or in the model folders"
    if len(found) == 1:
        return found[0]
    several = f"several ({', '.join(p.name for p in found)}) are" if found else "none is"
    raise CheckpointError(
        f"The official DeepGen checkpoint holds only the trained tensors and needs {what}; "
        f"{several} {where}: choose one ('{label}')"
    )
