"""Where the reward nodes (RewardScore, DeepGenTrainRL) find their reward models, and the check, when the prompt is
queued, that they are there.

CLIP: a transformers folder in models/deepgen (``auto``: models/deepgen/clip) or one safetensors file with both
towers in models/clip_vision, listed as ``clip_vision/<name>``; such a file holds no tokenizer, so the node passes
ComfyUI's own copy of OpenAI's (comfy/sd1_tokenizer, found by comfy_services).  The preference judge: a folder in
models/deepgen (``auto``: unifiedreward-think), a judge server URL, or the DeepGen model's own VLM.  A name from a
workflow resolves inside its model folders only (comfy_services.resolve_model_path refuses anything else).
"""

from __future__ import annotations

import os

from deepgen.errors import DeepGenError, InputError

from . import comfy_services as cs

AUTO = "auto"
CLIP_FOLDER = "clip"  # models/deepgen/clip
JUDGE_FOLDER = "unifiedreward-think"  # models/deepgen/unifiedreward-think
CLIP_VISION = "clip_vision/"  # a choice naming a file of models/clip_vision
JUDGE_LOCAL, JUDGE_URL, JUDGE_VLM = "local folder", "judge_url", "this model's VLM"
JUDGE_SOURCES = [AUTO, JUDGE_LOCAL, JUDGE_URL, JUDGE_VLM]  # auto: judge_url when set, else the local folder
CLIP_REPO_ID = "openai/clip-vit-large-patch14"
JUDGE_REPO_ID = "CodeGoat24/UnifiedReward-Think-qwen-7b"


def deepgen_folder(name: str) -> str:
    """models/deepgen/<name> (when missing, the path it was looked for at, for the error)."""
    try:
        return cs.resolve_model_path("deepgen", name)
    except FileNotFoundError:
        folders = cs.model_folders("deepgen")
        return os.path.join(folders[0], name) if folders else name


def deepgen_folder_choices() -> list[str]:
    """Folders of models/deepgen holding a config.json (transformers models: CLIP, a judge)."""
    out = []
    for name in cs.list_models("deepgen"):
        try:
            path = cs.resolve_model_path("deepgen", name)
        except (OSError, ValueError):
            continue
        if os.path.isfile(os.path.join(path, "config.json")):
            out.append(name)
    return sorted(out)


def clip_choices() -> list[str]:
    """auto, the models/deepgen folders, then the safetensors files of models/clip_vision."""
    from deepgen.rewards.clip_file import CLIP_FILE_SUFFIXES

    files = [f"{CLIP_VISION}{n}" for n in cs.list_models("clip_vision") if n.lower().endswith(CLIP_FILE_SUFFIXES)]
    return [AUTO] + deepgen_folder_choices() + sorted(files)


def clip_settings(choice: str) -> dict:
    """The clip reward's arguments for a ``clip_model`` choice: ``model_path`` (and, for a clip_vision file,
    ``tokenizer_path``: ComfyUI's own CLIP tokenizer, when running inside ComfyUI)."""
    choice = (choice or AUTO).strip()
    if choice.startswith(CLIP_VISION):
        out = {"model_path": cs.resolve_model_path("clip_vision", choice[len(CLIP_VISION) :])}
        tokenizer = cs.clip_tokenizer_dir()
        if tokenizer:
            out["tokenizer_path"] = tokenizer
        return out
    return {"model_path": deepgen_folder(CLIP_FOLDER if choice == AUTO else choice)}


def clip_problem(choice: str) -> str | None:
    """Why the clip reward cannot load ``choice``, or None: checked from the folder and the file header (no
    tensor is read, nothing loads)."""
    from deepgen.rewards import clip_file
    from deepgen.rewards.base import require_model_dir

    try:
        settings = clip_settings(choice)
        path = settings["model_path"]
        if not clip_file.is_single_file(path):
            require_model_dir(path, "CLIP", CLIP_REPO_ID)
            return None
        clip_file.check_clip_file(path)
    except DeepGenError as exc:  # missing, outside the model folders, not a usable CLIP
        hint = (
            " (or pick openai's model.safetensors in models/clip_vision as clip_model)" if "folder" in str(exc) else ""
        )
        return f"{exc}{hint}"
    if "tokenizer_path" not in settings:
        where = "" if cs.in_comfyui() else " (this is not running inside ComfyUI)"
        return (
            f"clip_model {choice!r} is a single CLIP file, which holds no tokenizer, and ComfyUI's own CLIP "
            f"tokenizer (comfy/sd1_tokenizer) was not found{where}: use a transformers folder in models/deepgen "
            f"(e.g. `hf download {CLIP_REPO_ID} --local-dir models/deepgen/clip`)"
        )
    return None


def judge_settings(source: str = AUTO, judge_url: str = "", judge_model: str = AUTO) -> dict:
    """The preference reward's arguments: ``{"url"}``, ``{"model_path"}`` or ``{"judge": "deepgen"}`` (the
    model's own VLM; RewardScore passes the judge object itself)."""
    from deepgen.rewards.deepgen_judge import DEEPGEN_JUDGE

    source = (source or AUTO).strip()
    if source not in JUDGE_SOURCES:
        raise InputError(f"judge {source!r} is not one of: {', '.join(JUDGE_SOURCES)}")
    url = (judge_url or "").strip()
    if source == JUDGE_VLM:
        return {"judge": DEEPGEN_JUDGE}
    if source == JUDGE_URL and not url:
        raise InputError("judge is judge_url, but judge_url is empty: give the judge server's URL")
    if url and source in (AUTO, JUDGE_URL):
        return {"url": url}
    return {"model_path": deepgen_folder(JUDGE_FOLDER if judge_model in (AUTO, "", None) else judge_model)}


def judge_problem(source: str = AUTO, judge_url: str = "", judge_model: str = AUTO) -> str | None:
    """Why the preference judge cannot run, or None (a URL is probed when training starts, not here)."""
    from deepgen.rewards.base import require_model_dir

    try:
        settings = judge_settings(source, judge_url, judge_model)
        if "model_path" in settings:
            require_model_dir(settings["model_path"], "preference judge", JUDGE_REPO_ID)
    except DeepGenError as exc:
        return f"{exc} (or set judge_url, or judge = {JUDGE_VLM!r})" if "folder" in str(exc) else str(exc)
    return None


def ocr_problem() -> str | None:
    import importlib.util

    if importlib.util.find_spec("rapidocr_onnxruntime") is None:
        return "the ocr reward needs its offline engine: pip install rapidocr-onnxruntime"
    return None
