"""DeepGenLoader: pick a DeepGen 1.0 release from the model folders and load it (deepgen.loading.load_model)."""

from __future__ import annotations

import importlib.util
import os

from . import comfy_services as cs
from .model_handle import MEMORY_MODES, DeepGenModelHandle
from .native import native_outputs
from .types import DEEPGEN_MODEL, LEGACY_TINY_CHOICES, MODEL, TINY_CHOICE, VAE, category, display_name

AUTO = "auto"
PRECISIONS = ["auto", "bf16", "fp16", "fp32"]
ATTENTION = ["sdpa", "eager", "flash_attention_2"]
_LOAD_PHASES = 7  # load_model reports at most 6 phases; the last step is placing the parts on devices


# ---- what the folders hold -----------------------------------------------------------------------------


def _safe_resolve(kind: str, name: str) -> str | None:
    try:
        return cs.resolve_model_path(kind, name)
    except (OSError, ValueError):
        return None


def _checkpoint_in(folder: str) -> str | None:
    from deepgen.loading.sources import checkpoint_in

    try:
        found = checkpoint_in(folder)
    except (OSError, ValueError):  # several checkpoint files: not offered as a release folder
        return None
    return str(found) if found else None


def checkpoint_choices() -> list[str]:
    """The tiny demo, then releases in the deepgen folder: checkpoint files and release folders."""
    from deepgen.loading.sources import CHECKPOINT_EXTS, is_diffusers_release, is_model_folder

    entries = [(name, _safe_resolve("deepgen", name)) for name in cs.list_models("deepgen")]
    releases = [name for name, path in entries if path and os.path.isdir(path) and is_diffusers_release(path)]
    folders = releases + [
        name
        for name, path in entries
        if path
        and os.path.isdir(path)
        and not is_model_folder(path)
        and not is_diffusers_release(path)
        and _checkpoint_in(path)
    ]
    files = [
        name
        for name, path in entries
        if path
        and os.path.isfile(path)
        and os.path.splitext(name)[1].lower() in CHECKPOINT_EXTS
        and not is_model_folder(os.path.dirname(path))
    ]

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


def _accept(kind: str):
    from deepgen.loading import sources

    return {
        "text_encoders": sources.is_qwen_folder,
        "diffusion_models": sources.is_diffusion_folder,
        "vae": sources.is_model_folder,
    }[kind]


def vlm_choices() -> list[str]:
    return _folder_choices("text_encoders", _accept("text_encoders"))


def diffusion_choices() -> list[str]:
    return _folder_choices("diffusion_models", _accept("diffusion_models"))


def vae_choices() -> list[str]:
    return _folder_choices("vae", _accept("vae"))


# ---- resolving a selection -------------------------------------------------------------------------------

FOLDER_KINDS = {"vlm": "text_encoders", "diffusion": "diffusion_models"}


def _chosen_folder(label: str, choice: str) -> str | None:
    """A widget's folder name as a path (None for auto); a diffusers part picked by mistake means its parent."""
    if choice == AUTO:
        return None
    kind = FOLDER_KINDS[label]
    folder = cs.resolve_model_path(kind, choice)
    parent, leaf = os.path.split(folder)
    accept = _accept(kind)
    return parent if not accept(folder) and leaf in ("transformer", "vae", "scheduler") and accept(parent) else folder


def _candidates(label: str) -> list[str]:
    kind = FOLDER_KINDS[label]
    return [p for p in (_safe_resolve(kind, n) for n in _folder_choices(kind, _accept(kind))[1:]) if p]


def resolve_sources(checkpoint: str, vlm: str = AUTO, diffusion: str = AUTO, vae: str = AUTO) -> dict:
    """Widget values -> the paths load_model takes (deepgen.loading.resolve_source), with plain-words errors."""
    from deepgen.loading import CheckpointError, resolve_source

    if checkpoint == TINY_CHOICE or checkpoint in LEGACY_TINY_CHOICES:
        return {
            "checkpoint": "tiny",
            "layout": "tiny",
            "vlm": None,
            "diffusion": None,
            "vae": None,
            "connector_config": None,
        }
    source = resolve_source(
        cs.resolve_model_path("deepgen", checkpoint),
        _chosen_folder("vlm", vlm),
        _chosen_folder("diffusion", diffusion),
        candidates=_candidates,
    )
    out = {
        "checkpoint": source.checkpoint,
        "layout": source.layout,
        "vlm": source.vlm,
        "diffusion": source.diffusion,
        "vae": None,
        "connector_config": source.connector_config,
    }
    if vae != AUTO:
        folder = cs.resolve_model_path("vae", vae)
        if not os.path.isfile(os.path.join(folder, "config.json")) and os.path.isdir(os.path.join(folder, "vae")):
            folder = os.path.join(folder, "vae")  # a diffusers pipeline folder: its vae/ part
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise CheckpointError(f"{folder} is not a diffusers VAE folder (config.json + weights)")
        out["vae"] = folder
    return out


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
    from deepgen.devices import pick_dtype

    return pick_dtype(precision, cs.torch_device())


# ---- the node ------------------------------------------------------------------------------------------


class DeepGenLoader:
    DESCRIPTION = (
        "Loads DeepGen 1.0 (Qwen2.5-VL + think tokens + SCB + SD3.5-M DiT + VAE). Official layout: the "
        "checkpoint from models/deepgen plus the Qwen2.5-VL folder (models/text_encoders) and the "
        "UniPic2/SD3.5 diffusers folder (models/diffusion_models), found automatically when they sit next "
        "to the checkpoint. Diffusers layout: one folder in models/deepgen. The demo choice builds a tiny "
        "random-weight model, so workflows run without downloads (its pictures are noise). About 10 GB of "
        "VRAM in bf16 with the VLM offloaded after encoding."
    )
    CATEGORY = category("loaders")
    RETURN_TYPES = (DEEPGEN_MODEL, MODEL, VAE)
    RETURN_NAMES = ("model", "MODEL", "VAE")
    OUTPUT_TOOLTIPS = (
        "The loaded DeepGen model; feed it to every other DeepGen node.",
        "The DeepGen DiT as a native MODEL (flow matching, shift 3) for KSampler, LoRA and model-patch nodes; "
        "condition it with SCBBridge's positive/negative. Scheduler 'normal' + sampler 'euler' reproduce "
        "DeepGenSampler.",
        "The DeepGen VAE (SD3.5, 16 channels) as a native VAE for VAEDecode/VAEEncode.",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "checkpoint": (
                    checkpoint_choices(),
                    {
                        "default": TINY_CHOICE,
                        "tooltip": "DeepGen checkpoint or release folder in models/deepgen. "
                        f"'{TINY_CHOICE}' needs no files.",
                    },
                ),
                "vlm": (
                    vlm_choices(),
                    {
                        "default": AUTO,
                        "tooltip": "Qwen2.5-VL-3B-Instruct folder in models/text_encoders (official layout only). "
                        "auto: the one next to the checkpoint.",
                    },
                ),
                "diffusion": (
                    diffusion_choices(),
                    {
                        "default": AUTO,
                        "tooltip": "UniPic2-SD3.5M-Kontext diffusers folder (transformer/, vae/, scheduler/) in "
                        "models/diffusion_models (official layout only). auto: the one next to the checkpoint.",
                    },
                ),
                "vae": (
                    vae_choices(),
                    {
                        "default": AUTO,
                        "tooltip": "Optional SD3.5 VAE folder (diffusers) in models/vae replacing the release's own. "
                        "auto: the release's VAE.",
                    },
                ),
                "precision": (
                    PRECISIONS,
                    {
                        "default": "auto",
                        "tooltip": "Weight dtype. auto: bf16 on recent NVIDIA GPUs, fp16 on older GPUs and Apple, "
                        "fp32 on CPU.",
                    },
                ),
                "memory_mode": (
                    MEMORY_MODES,
                    {
                        "default": "offload_vlm_after_encode",
                        "tooltip": "keep_all_on_gpu: fastest, most VRAM. offload_vlm_after_encode: the VLM leaves the "
                        "GPU once the prompt is encoded. sequential_offload: only the part in use is on the "
                        "GPU (least VRAM, slowest).",
                    },
                ),
                "attention": (
                    ATTENTION,
                    {
                        "default": "sdpa",
                        "tooltip": "Attention kernel of the VLM. sdpa works everywhere; flash_attention_2 needs the "
                        "flash-attn package; eager is the slow reference.",
                    },
                ),
                "weight_dtype": (
                    ["default", "fp8_e4m3fn"],
                    {
                        "default": "default",
                        "tooltip": "fp8_e4m3fn: the DiT and the VLM text tower stored in fp8 (about half their "
                        "memory), each layer upcast to the precision above when it runs. Slightly different images.",
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, attention, checkpoint):
        # Naming `checkpoint` here makes ComfyUI skip its own list check for it, so that workflows saved with an
        # older name of the demo choice still load; any other value must be one of the listed choices.
        if checkpoint not in LEGACY_TINY_CHOICES and checkpoint not in checkpoint_choices():
            return f"checkpoint {checkpoint!r} is not in models/deepgen (choices: {', '.join(checkpoint_choices())})"
        if attention not in ATTENTION:
            return f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}"
        if attention == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            return "attention flash_attention_2 needs the flash-attn package, which is not installed; use sdpa"
        return True

    @classmethod
    def IS_CHANGED(
        cls,
        checkpoint,
        vlm=AUTO,
        diffusion=AUTO,
        vae=AUTO,
        precision="auto",
        memory_mode="offload_vlm_after_encode",
        attention="sdpa",
        weight_dtype="default",
        **_,
    ):
        try:
            src = resolve_sources(checkpoint, vlm, diffusion, vae)
        except Exception as exc:  # the run reports it properly
            return f"unresolved:{exc}"
        keys = [src["checkpoint"], src["vlm"], src["diffusion"], src["vae"]]
        return "\n".join(
            [checkpoint, precision, memory_mode, attention, weight_dtype]
            + [f"{k}={_fingerprint(k if k != 'tiny' else None)}" for k in keys if k]
        )

    def load(
        self,
        checkpoint,
        vlm=AUTO,
        diffusion=AUTO,
        vae=AUTO,
        precision="auto",
        memory_mode="offload_vlm_after_encode",
        attention="sdpa",
        weight_dtype="default",
        unique_id=None,
    ):
        from deepgen.loading import load_model

        src = resolve_sources(checkpoint, vlm, diffusion, vae)
        dtype = resolve_dtype(precision)
        bar = cs.Progress(_LOAD_PHASES, node_id=unique_id, desc="DeepGen load")

        def say(message: str) -> None:
            cs.check_interrupt()
            cs.send_progress_text(f"DeepGen: {message}", unique_id)
            bar.update(1)

        model = load_model(
            src["checkpoint"],
            src["vlm"],
            src["diffusion"],
            dtype=dtype,
            device="cpu",
            connector_config=src["connector_config"],
            attn_implementation=attention,
            weight_dtype=weight_dtype,
            progress=say,
            # The graph has no place for a Python opt-in: a checkpoint without DiT or LoRA
            # tensors (stage-1 output, a tiny release) loads, and the loader logs what it lacks.
            allow_pretrain_checkpoint=True,
        )
        if src["vae"]:
            model.vae = _load_vae(src["vae"], dtype)
        handle = DeepGenModelHandle(
            model, name=checkpoint, memory_mode=memory_mode, dtype=dtype, attention=attention, sources=src
        )
        native_model, native_vae = native_outputs(handle)
        bar.update_absolute(_LOAD_PHASES)
        bar.close()
        return (handle, native_model, native_vae)


def _load_vae(folder: str, dtype):
    from diffusers import AutoencoderKL

    from deepgen.loading import CheckpointError

    vae = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    if vae.config.latent_channels != 16:
        raise CheckpointError(
            f"{folder} is a {vae.config.latent_channels}-channel VAE; DeepGen needs the 16-channel SD3/SD3.5 VAE"
        )
    return vae.eval()


NODE_CLASS_MAPPINGS = {"DeepGenLoader": DeepGenLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"DeepGenLoader": display_name("DeepGen Loader")}
