"""RewardScore: score an IMAGE batch against its prompt with deepgen.rewards.RewardMix and pick the best image."""

from __future__ import annotations

import math
import os

from deepgen.errors import InputError

from . import comfy_services as cs
from .types import IMAGE, category, display_name

AUTO = "auto"
REWARD_CHOICES = ["general", "text_rendering", "clip", "ocr", "preference", "custom"]
DEFAULT_CLIP_FOLDER = "clip"  # in models/deepgen
DEFAULT_JUDGE_FOLDER = "unifiedreward-think"  # in models/deepgen


def parse_weights(choice: str, custom: str):
    """Widget values -> a RewardMix weight spec (preset name or {reward: weight})."""
    if choice in ("general", "text_rendering"):
        return choice
    if choice != "custom":
        return {choice: 1.0}
    weights = {}
    for part in (custom or "").replace(";", ",").replace("\n", ",").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            name, sep, value = part.partition(":")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise InputError(
                f"custom_weights: '{part.strip()}' is not 'name=weight' (e.g. 'clip=0.3, ocr=0.7')"
            ) from None
    if not weights:
        raise InputError("custom_weights is empty: write e.g. 'preference=0.7, clip=0.3'")
    return weights


def _model_folder(choice: str, default: str) -> str:
    """A folder in models/deepgen (auto: `default`); when missing, the path it was looked for at (for the error)."""
    name = default if choice == AUTO else choice
    try:
        return cs.resolve_model_path("deepgen", name)
    except FileNotFoundError:
        folders = cs.model_folders("deepgen")
        return os.path.join(folders[0], name) if folders else name


def _folder_choices() -> list[str]:
    out = []
    for name in cs.list_models("deepgen"):
        try:
            path = cs.resolve_model_path("deepgen", name)
        except (OSError, ValueError):
            continue
        if os.path.isfile(os.path.join(path, "config.json")):
            out.append(name)
    return [AUTO] + sorted(out)


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def score(images, prompt: str, weights, clip_model=AUTO, judge_model=AUTO, judge_url="", seed=0, node_id=None):
    """-> (RewardResult, best index or None)."""
    from deepgen.rewards import RewardMix

    device = str(cs.torch_device())
    kwargs = {
        "clip": {"model_path": _model_folder(clip_model, DEFAULT_CLIP_FOLDER), "device": device},
        "preference": (
            {"url": judge_url.strip(), "seed": seed}
            if judge_url and judge_url.strip()
            else {"model_path": _model_folder(judge_model, DEFAULT_JUDGE_FOLDER), "device": device, "seed": seed}
        ),
    }
    mix = RewardMix(weights, reward_kwargs=kwargs)
    bar = cs.Progress(1, node_id=node_id, desc="DeepGen rewards")
    cs.check_interrupt()
    result = mix(images, prompt)
    bar.update(1)
    bar.close()
    totals = [_finite(t) for t in result.total.tolist()]
    ranked = [i for i, t in enumerate(totals) if t is not None]
    best = max(ranked, key=lambda i: totals[i]) if ranked else None  # ties: the first image
    return result, best, judge_notes(mix, result)


def judge_notes(mix, result) -> list[str]:
    """Say so in the report when the preference judge failed: its failures count as ties (0.5) and would
    otherwise pass unnoticed, e.g. with an unreachable judge_url."""
    if "preference" not in result.scores:
        return []
    comparisons = mix.reward("preference").last_comparisons
    failed = sum(c["verdict"] is None for c in comparisons)
    if not failed:
        return []
    return [
        f"WARNING: the preference judge failed or gave no readable answer on {failed} of {len(comparisons)} "
        "comparisons (counted as ties, 0.5). Check judge_url / judge_model; the server log has details."
    ]


def report(result, best, notes=()) -> tuple[list[dict], str]:
    """The web widget's rows and a plain-text table with the per-reward breakdown."""
    names = list(result.scores)
    n = result.total.shape[0]
    rows = []
    for i in range(n):
        rows.append(
            {
                "index": i,
                "total": _finite(result.total[i]),
                "rewards": {k: _finite(result.scores[k][i]) for k in names},
                "best": i == best,
            }
        )
    mean_weights = {k: float(result.weights[k].mean()) for k in names}
    lines = ["rewards: " + ", ".join(f"{k} (weight {mean_weights[k]:.2f})" for k in names)]
    lines.append("  #  " + "  ".join(f"{h:>10}" for h in ["total"] + names))
    for r in rows:
        cells = [_fmt(r["total"])] + [_fmt(r["rewards"][k]) for k in names]
        lines.append(f"{'*' if r['best'] else ' '}{r['index']:>2}  " + "  ".join(f"{c:>10}" for c in cells))
    lines.append(
        f"best: image {best} (total {_fmt(rows[best]['total'])})"
        if best is not None
        else "best: none (no reward applied to any image)"
    )
    return rows, "\n".join([*lines, *notes])


class RewardScore:
    DESCRIPTION = (
        "Scores each image of a batch against the prompt with DeepGen's RL rewards (CLIP similarity, OCR of "
        "the quoted text, pairwise VLM preference) mixed with the official presets, and picks the best "
        "image (best-of-N). Reward models are read from models/deepgen (clip/, unifiedreward-think/) or a "
        "judge endpoint; nothing is downloaded. OCR works offline out of the box."
    )
    CATEGORY = category("rewards")
    RETURN_TYPES = ("FLOAT", IMAGE, "STRING", "INT")
    RETURN_NAMES = ("scores", "best_image", "report", "best_index")
    OUTPUT_IS_LIST = (True, False, False, False)
    OUTPUT_TOOLTIPS = (
        "Weighted total per image (a list; NaN where no reward applied).",
        "The image with the highest total.",
        "A table with the per-reward breakdown.",
        "0-based batch index of the best image (-1 if none).",
    )
    OUTPUT_NODE = True
    FUNCTION = "score"

    def __init__(self):
        from .reward_models import RewardModelStore  # torch: not at import time

        # this node's reward models, held by ComfyUI's model manager; dropping the node (POST /free) frees them
        self.models = RewardModelStore()

    @classmethod
    def INPUT_TYPES(cls):
        folders = _folder_choices()
        return {
            "required": {
                "images": (IMAGE, {"tooltip": "The batch to score, e.g. DeepGenSampler with batch size N."}),
                "prompt": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "The prompt the images were made from. For OCR, put the text to "
                        "render in double quotes.",
                    },
                ),
                "rewards": (
                    REWARD_CHOICES,
                    {
                        "default": "general",
                        "tooltip": "general: preference 0.7 + clip 0.3. text_rendering: preference 0.2 + clip 0.1 + "
                        "ocr 0.7. clip / ocr / preference: that reward alone. custom: custom_weights.",
                    },
                ),
                "custom_weights": (
                    "STRING",
                    {
                        "default": "preference=0.7, clip=0.3",
                        "tooltip": "Used when rewards is custom: 'name=weight' pairs (clip, ocr, preference).",
                    },
                ),
                "clip_model": (
                    folders,
                    {"default": AUTO, "tooltip": "CLIP ViT-L/14 folder in models/deepgen. auto: models/deepgen/clip."},
                ),
                "judge_model": (
                    folders,
                    {
                        "default": AUTO,
                        "tooltip": "Preference judge (UnifiedReward-Think, Qwen2.5-VL) folder in "
                        "models/deepgen. auto: models/deepgen/unifiedreward-think. "
                        "Unused when judge_url is set.",
                    },
                ),
                "judge_url": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "Optional OpenAI-compatible endpoint (e.g. vLLM) serving the "
                        "preference judge; empty runs the local judge_model.",
                    },
                ),
                # No control_after_generate: a re-randomised seed would re-run the judge on every queue.
                "seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 0xFFFFFFFF,
                        "control_after_generate": False,
                        "tooltip": "Seed of the order in which the preference judge sees each pair.",
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def score(
        self,
        images,
        prompt,
        rewards="general",
        custom_weights="",
        clip_model=AUTO,
        judge_model=AUTO,
        judge_url="",
        seed=0,
        unique_id=None,
    ):
        from deepgen.rewards.base import use_model_store

        with use_model_store(self.models):
            result, best, notes = score(
                images,
                prompt,
                parse_weights(rewards, custom_weights),
                clip_model,
                judge_model,
                judge_url,
                seed,
                unique_id,
            )
        rows, text = report(result, best, notes)
        best_image = images[best : best + 1] if best is not None else images[:1]
        scores = [float(t) for t in result.total.tolist()]
        return {"ui": {"deepgen1_rewards": rows}, "result": (scores, best_image, text, -1 if best is None else best)}


NODE_CLASS_MAPPINGS = {"RewardScore": RewardScore}
NODE_DISPLAY_NAME_MAPPINGS = {"RewardScore": display_name("Reward Score")}
