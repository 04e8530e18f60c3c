"""DeepGenLoader: pick a DeepGen 1.0 release from the model folders and load it (deepgen.loading.load_model)."""

from __future__ import annotations

import importlib.util
import json
import os

from . import comfy_services as cs
from .model_handle import MEMORY_MODES, DeepGenModelHandle
from .types import DEEPGEN_MODEL, TINY_CHOICE, category, display_name

AUTO = "auto"
PRECISIONS = ["auto", "bf16", "fp16", "fp32"]
ATTENTION = ["sdpa", "eager", "flash_attention_2"]
_CHECKPOINT_EXTS = {".safetensors", ".sft", ".pt", ".pth", ".bin", ".ckpt"}
_PREFERRED_CHECKPOINTS = ("model.safetensors", "model.pt", "DeepGen-1.0.safetensors", "DeepGen-1.0.pt")
_LOAD_PHASES = 7  # load_model reports at most 6 phases; the last step is placing the parts on devices


# ---- what the folders hold -----------------------------------------------------------------------------

def _is_hf_folder(path: str) -> bool:
    """A transformers/diffusers *model* folder (Qwen, a DiT, a VAE...), not a DeepGen release that happens to ship
    a config.json: its config names a model type or class, or it has a diffusers model_index.json."""
    if os.path.isfile(os.path.join(path, "model_index.json")):
        return True
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and any(k in config for k in ("model_type", "_class_name", "architectures"))


def _is_diffusers_release(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "connector")) and os.path.isdir(os.path.join(path, "transformer"))


def _is_diffusion_folder(path: str) -> bool:
    return all(os.path.isdir(os.path.join(path, sub)) for sub in ("transformer", "vae", "scheduler"))


def _is_qwen_folder(path: str) -> bool:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("model_type") == "qwen2_5_vl"
    except (OSError, ValueError, AttributeError):
        return False


def _checkpoint_in(folder: str) -> str | None:
    """The DeepGen checkpoint file directly inside an official release folder, if there is exactly one."""
    for name in _PREFERRED_CHECKPOINTS:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    files = [e.path for e in os.scandir(folder) if e.is_file() and os.path.splitext(e.name)[1].lower() in _CHECKPOINT_EXTS]
    return files[0] if len(files) == 1 else None


def _safe_resolve(kind: str, name: str) -> str | None:
    try:
        return cs.resolve_model_path(kind, name)
    except (OSError, ValueError):
        return None


def checkpoint_choices() -> list[str]:
    """The tiny demo, then releases in the deepgen folder: checkpoint files and release folders."""
    entries = [(name, _safe_resolve("deepgen", name)) for name in cs.list_models("deepgen")]
    releases = [name for name, path in entries if path and os.path.isdir(path) and _is_diffusers_release(path)]
    folders = releases + [name for name, path in entries if path and os.path.isdir(path)
                          and not _is_hf_folder(path) and not _is_diffusers_release(path) and _checkpoint_in(path)]
    files = [name for name, path in entries if path and os.path.isfile(path)
             and os.path.splitext(name)[1].lower() in _CHECKPOINT_EXTS
             and not _is_hf_folder(os.path.dirname(path))]

    def inside_release(name: str) -> bool:
        return any(name.startswith(folder + "/") for folder in folders)

    return [TINY_CHOICE] + sorted(n for n in folders + files if not inside_release(n))


def _folder_choices(kind: str, accept) -> list[str]:
    out = set()
    for name in cs.list_models(kind):
        path = _safe_resolve(kind, name)
        if not path or not os.path.isdir(path):
            continue
        if accept(path):
            out.add(name)
        parent, leaf = os.path.split(path)
        if leaf in ("transformer", "vae", "scheduler") and "/" in name and accept(parent):
            out.add(name.rsplit("/", 1)[0])  # a diffusers folder without model_index.json lists its parts
    return [AUTO] + sorted(out)


def vlm_choices() -> list[str]:
    return _folder_choices("text_encoders", _is_qwen_folder)


def diffusion_choices() -> list[str]:
    return _folder_choices("diffusion_models", _is_diffusion_folder)


def vae_choices() -> list[str]:
    return _folder_choices("vae", _is_hf_folder)


# ---- resolving a selection -------------------------------------------------------------------------------

def resolve_sources(checkpoint: str, vlm: str = AUTO, diffusion: str = AUTO, vae: str = AUTO) -> dict:
    """Widget values -> the paths load_model takes, with plain-words errors for what is missing."""
    from deepgen.loading import CheckpointError, detect_layout

    if checkpoint == TINY_CHOICE:
        return {"checkpoint": "tiny", "layout": "tiny", "vlm": None, "diffusion": None, "vae": None,
                "connector_config": None}
    path = cs.resolve_model_path("deepgen", checkpoint)
    if os.path.isdir(path) and not _is_diffusers_release(path):
        inner = _checkpoint_in(path)
        if inner is None:
            raise CheckpointError(f"The folder {path} is neither a DeepGen-1.0-diffusers release (vlm/, transformer/, "
                                  "vae/, connector/, scheduler/) nor an official release folder with one checkpoint "
                                  "file (model.pt or model.safetensors) in it")
        path = inner
    layout = detect_layout(path)
    out = {"checkpoint": path, "layout": layout, "vlm": None, "diffusion": None, "vae": None, "connector_config": None}
    if layout in ("diffusers", "single"):
        for label, value in (("vlm", vlm), ("diffusion", diffusion)):
            if value != AUTO:
                raise CheckpointError(f"{checkpoint} is a {layout} release that brings its own "
                                      f"{'Qwen2.5-VL' if label == 'vlm' else 'DiT and VAE'}: set '{label}' to auto")
    else:
        here = os.path.dirname(path)
        out["vlm"] = _pick_folder("text_encoders", vlm, here, _is_qwen_folder, (), "vlm",
                                  "the Qwen2.5-VL-3B-Instruct folder (models/text_encoders)")
        out["diffusion"] = _pick_folder("diffusion_models", diffusion, here, _is_diffusion_folder,
                                        ("transformer", "vae", "scheduler"), "diffusion",
                                        "the UniPic2-SD3.5M-Kontext diffusers folder with transformer/, vae/, "
                                        "scheduler/ (models/diffusion_models)")
        extra = os.path.join(here, "connector_config.json")
        if os.path.isfile(extra):  # non-official connector widths (the tiny release) need their head count
            with open(extra, encoding="utf-8") as f:
                out["connector_config"] = json.load(f)
    if vae != AUTO:
        folder = cs.resolve_model_path("vae", vae)
        if not os.path.isfile(os.path.join(folder, "config.json")) and os.path.isdir(os.path.join(folder, "vae")):
            folder = os.path.join(folder, "vae")  # a diffusers pipeline folder: its vae/ part
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise CheckpointError(f"{folder} is not a diffusers VAE folder (config.json + weights)")
        out["vae"] = folder
    return out


def _pick_folder(kind, choice, beside, accept, parts, label, what) -> str:
    from deepgen.loading import CheckpointError

    if choice != AUTO:
        folder = cs.resolve_model_path(kind, choice)
        parent, leaf = os.path.split(folder)
        if not accept(folder) and leaf in parts and accept(parent):
            folder = parent
        if not accept(folder):
            raise CheckpointError(f"'{choice}' ({folder}) is not {what}")
        return folder
    candidates = [e.path for e in os.scandir(beside) if e.is_dir() and accept(e.path)]
    if not candidates:  # nothing beside the checkpoint: the only suitable folder of its kind, if just one
        names = _folder_choices(kind, accept)[1:]
        candidates = [p for p in (_safe_resolve(kind, n) for n in names) if p]
        where = f"next to the checkpoint ({beside}) or in the {kind} folders"
    else:
        where = f"next to the checkpoint ({beside})"
    if len(candidates) == 1:
        return candidates[0]
    found = "several candidates are" if candidates else "nothing suitable is"
    raise CheckpointError(f"The official DeepGen checkpoint holds only the trained tensors and needs {what}. "
                          f"'{label}' is auto but {found} {where}: choose one in '{label}'.")


def _fingerprint(path: str | None) -> str:
    """Cheap change key: size and mtime of the file, or of every file under the folder (no hashing)."""
    if not path:
        return "-"
    try:
        if os.path.isfile(path):
            st = os.stat(path)
            return f"{st.st_size}:{st.st_mtime_ns}"
        parts = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                st = os.stat(os.path.join(root, name))
                parts.append(f"{os.path.relpath(os.path.join(root, name), path)}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)
    except OSError as exc:
        return f"error:{exc}"


def resolve_dtype(precision: str):
    import torch

    if precision != "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    device = cs.torch_device()
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "mps":
        return torch.float16
    return torch.float32


# ---- the node ------------------------------------------------------------------------------------------

class DeepGenLoader:
    DESCRIPTION = ("Loads DeepGen 1.0 (Qwen2.5-VL + think tokens + SCB + SD3.5-M DiT + VAE). Official layout: the "
                   "checkpoint from models/deepgen plus the Qwen2.5-VL folder (models/text_encoders) and the "
                   "UniPic2/SD3.5 diffusers folder (models/diffusion_models), found automatically when they sit next "
                   "to the checkpoint. Diffusers layout: one folder in models/deepgen. The demo choice builds a tiny "
                   "random-weight model, so workflows run without downloads (its pictures are noise). About 10 GB of "
                   "VRAM in bf16 with the VLM offloaded after encoding.")
    CATEGORY = category("loaders")
    RETURN_TYPES = (DEEPGEN_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded DeepGen model; feed it to every other DeepGen node.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "checkpoint": (checkpoint_choices(), {
                    "default": TINY_CHOICE,
                    "tooltip": "DeepGen checkpoint or release folder in models/deepgen. "
                               f"'{TINY_CHOICE}' needs no files."}),
                "vlm": (vlm_choices(), {
                    "default": AUTO,
                    "tooltip": "Qwen2.5-VL-3B-Instruct folder in models/text_encoders (official layout only). "
                               "auto: the one next to the checkpoint."}),
                "diffusion": (diffusion_choices(), {
                    "default": AUTO,
                    "tooltip": "UniPic2-SD3.5M-Kontext diffusers folder (transformer/, vae/, scheduler/) in "
                               "models/diffusion_models (official layout only). auto: the one next to the checkpoint."}),
                "vae": (vae_choices(), {
                    "default": AUTO,
                    "tooltip": "Optional SD3.5 VAE folder (diffusers) in models/vae replacing the release's own. "
                               "auto: the release's VAE."}),
                "precision": (PRECISIONS, {
                    "default": "auto",
                    "tooltip": "Weight dtype. auto: bf16 on recent NVIDIA GPUs, fp16 on older GPUs and Apple, "
                               "fp32 on CPU."}),
                "memory_mode": (MEMORY_MODES, {
                    "default": "offload_vlm_after_encode",
                    "tooltip": "keep_all_on_gpu: fastest, most VRAM. offload_vlm_after_encode: the VLM leaves the "
                               "GPU once the prompt is encoded. sequential_offload: only the part in use is on the "
                               "GPU (least VRAM, slowest)."}),
                "attention": (ATTENTION, {
                    "default": "sdpa",
                    "tooltip": "Attention kernel of the VLM. sdpa works everywhere; flash_attention_2 needs the "
                               "flash-attn package; eager is the slow reference."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, attention):
        if attention not in ATTENTION:
            return f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}"
        if attention == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            return "attention flash_attention_2 needs the flash-attn package, which is not installed; use sdpa"
        return True

    @classmethod
    def IS_CHANGED(cls, checkpoint, vlm=AUTO, diffusion=AUTO, vae=AUTO, precision="auto",
                   memory_mode="offload_vlm_after_encode", attention="sdpa", **_):
        try:
            src = resolve_sources(checkpoint, vlm, diffusion, vae)
        except Exception as exc:  # the run reports it properly
            return f"unresolved:{exc}"
        keys = [src["checkpoint"], src["vlm"], src["diffusion"], src["vae"]]
        return "\n".join([checkpoint, precision, memory_mode, attention]
                         + [f"{k}={_fingerprint(k if k != 'tiny' else None)}" for k in keys if k])

    def load(self, checkpoint, vlm=AUTO, diffusion=AUTO, vae=AUTO, precision="auto",
             memory_mode="offload_vlm_after_encode", attention="sdpa", unique_id=None):
        from deepgen.loading import load_model

        src = resolve_sources(checkpoint, vlm, diffusion, vae)
        dtype = resolve_dtype(precision)
        bar = cs.Progress(_LOAD_PHASES, node_id=unique_id, desc="DeepGen load")

        def say(message: str) -> None:
            cs.check_interrupt()
            cs.send_progress_text(f"DeepGen: {message}", unique_id)
            bar.update(1)

        model = load_model(src["checkpoint"], src["vlm"], src["diffusion"], dtype=dtype, device="cpu",
                           connector_config=src["connector_config"], attn_implementation=attention, progress=say,
                           # The graph has no place for a Python opt-in: a checkpoint without DiT or LoRA
                           # tensors (stage-1 output, a tiny release) loads, and the loader logs what it lacks.
                           allow_pretrain_checkpoint=True)
        if src["vae"]:
            model.vae = _load_vae(src["vae"], dtype)
        handle = DeepGenModelHandle(model, name=checkpoint, memory_mode=memory_mode, dtype=dtype,
                                    attention=attention, sources=src).place()
        bar.update_absolute(_LOAD_PHASES)
        bar.close()
        return (handle,)


def _load_vae(folder: str, dtype):
    from diffusers import AutoencoderKL

    from deepgen.loading import CheckpointError

    vae = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    if vae.config.latent_channels != 16:
        raise CheckpointError(f"{folder} is a {vae.config.latent_channels}-channel VAE; DeepGen needs the 16-channel "
                              "SD3/SD3.5 VAE")
    return vae.eval()


NODE_CLASS_MAPPINGS = {"DeepGenLoader": DeepGenLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"DeepGenLoader": display_name("DeepGen Loader")}
