"""RewardScore: score an IMAGE batch against its prompt with deepgen.rewards.RewardMix and pick the best image."""

from __future__ import annotations

import math

from deepgen.errors import DeepGenError, InputError

from . import comfy_services as cs
from . import reward_sources as rs
from .types import DEEPGEN_MODEL, IMAGE, category, display_name

AUTO = rs.AUTO
REWARD_CHOICES = ["general", "text_rendering", "clip", "ocr", "preference", "custom"]


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


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def reward_names(weights) -> set[str]:
    """The rewards a weight spec uses (non-zero weights), by canonical name."""
    from deepgen.rewards.mix import resolve_weights

    return {k for k, v in resolve_weights(weights).items() if v != 0}


def score(
    images, prompt: str, weights, clip_model=AUTO, judge_model=AUTO, judge_url="", seed=0, node_id=None, judge_vlm=None
):
    """-> (RewardResult, best index or None, report notes). ``judge_vlm``: a DEEPGEN_MODEL whose own VLM judges
    the pairs instead of judge_model / judge_url."""
    from deepgen.rewards import DeepGenVLMJudge, RewardMix

    device = str(cs.torch_device())
    names = reward_names(weights)
    kwargs: dict[str, dict] = {}
    if "clip" in names:
        kwargs["clip"] = {**rs.clip_settings(clip_model), "device": device}
    if "preference" in names and judge_vlm is not None:
        kwargs["preference"] = {"judge": DeepGenVLMJudge(judge_vlm.model), "seed": seed}
    elif "preference" in names:
        kwargs["preference"] = {**rs.judge_settings(rs.AUTO, judge_url, judge_model), "seed": seed}
        if "model_path" in kwargs["preference"]:
            kwargs["preference"]["device"] = device
    mix = RewardMix(weights, reward_kwargs=kwargs)
    bar = cs.Progress(1, node_id=node_id, desc="DeepGen rewards")
    cs.check_interrupt()
    if judge_vlm is not None and "preference" in names:
        with judge_vlm.stage("judge"):  # the model's VLM on the compute device, as for encoding
            result = mix(images, prompt)
    else:
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
    reward = mix.reward("preference")
    comparisons = reward.last_comparisons
    failed = sum(c["verdict"] is None for c in comparisons)
    if not failed:
        return []
    if getattr(reward.judge, "uses_policy_model", False):
        return [
            f"NOTE: the DeepGen model's VLM gave no readable verdict on {failed} of {len(comparisons)} comparisons "
            "(counted as ties, 0.5): its base VLM is not a trained judge (docs/rewards.md)."
        ]
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
        "image (best-of-N). Reward models are read from models/deepgen (clip/, unifiedreward-think/) or "
        "models/clip_vision (a CLIP file with both towers), a judge endpoint, or a connected DeepGen model's own "
        "VLM; nothing is downloaded. OCR works offline out of the box."
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
        folders = [AUTO] + rs.deepgen_folder_choices()
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
                    rs.clip_choices(),
                    {
                        "default": AUTO,
                        "tooltip": "CLIP ViT-L/14: a transformers folder in models/deepgen (auto: models/deepgen/clip) "
                        "or a clip_vision/ file with both towers (openai/clip-vit-large-patch14's model.safetensors; "
                        "ComfyUI's own CLIP tokenizer is used with it).",
                    },
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
            "optional": {
                "model": (
                    DEEPGEN_MODEL,
                    {
                        "tooltip": "Optional: a DeepGen model whose own VLM (Qwen2.5-VL-3B) judges the pairs for the "
                        "preference reward, instead of judge_model / judge_url. No extra memory, but it is not a "
                        "trained reward model (docs/rewards.md).",
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, rewards=None, custom_weights=None, clip_model=None):
        """When the prompt is queued: the reward choice and, if CLIP is used, its model (folder or file header).
        The judge is checked when the node runs: whether a DeepGen model is connected is not known here."""
        if rewards is None:
            return True
        if rewards not in REWARD_CHOICES:
            return f"rewards must be one of {', '.join(REWARD_CHOICES)} (got {rewards!r})"
        try:
            names = reward_names(parse_weights(rewards, custom_weights or ""))
        except DeepGenError as exc:
            return str(exc)
        if "clip" in names and (problem := rs.clip_problem(clip_model or AUTO)):
            return problem
        if "ocr" in names and (problem := rs.ocr_problem()):
            return problem
        return True

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
        model=None,
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
                judge_vlm=model,
            )
        rows, text = report(result, best, notes)
        best_image = images[best : best + 1] if best is not None else images[:1]
        scores = [float(t) for t in result.total.tolist()]
        return {"ui": {"deepgen1_rewards": rows}, "result": (scores, best_image, text, -1 if best is None else best)}


NODE_CLASS_MAPPINGS = {"RewardScore": RewardScore}
NODE_DISPLAY_NAME_MAPPINGS = {"RewardScore": display_name("Reward Score")}
