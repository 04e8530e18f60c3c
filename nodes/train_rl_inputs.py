"""DeepGenTrainRL's widget values → a stage-3 run: the prompt lines, the reward weights, where each reward's model
is, and the flat config dict that ``deepgen train --stage 3`` reads from a file (so a node run and a headless run
with the same settings are the same run; docs/nodes.md lists the mapping)."""

from __future__ import annotations

import json
from pathlib import Path

from deepgen.errors import InputError

from . import reward_sources as rs

TOY_REWARDS = "deepgen.train.grpo.toy_rewards"  # registers brightness and saturation (no model)
DEFAULT_CATEGORY = "general"
PROMPTS_FILE = "prompts.jsonl"
EVAL_PROMPTS_FILE = "eval_prompts.jsonl"
CONFIG_FILE = "stage3_config.json"


def parse_prompt_lines(text: str, what: str = "prompts") -> list[dict]:
    """One prompt per line; ``category<TAB>prompt`` gives the line a category (default ``general``, e.g.
    ``text_rendering<TAB>a sign that says "OPEN"``).  Blank lines and ``#`` comments are skipped."""
    out = []
    for line in (text or "").splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        category, tab, prompt = s.partition("\t")
        if tab and category.strip() and prompt.strip():
            out.append({"prompt": prompt.strip(), "category": category.strip()})
        else:
            out.append({"prompt": s.replace("\t", " ").strip(), "category": DEFAULT_CATEGORY})
    if not out:
        where = " or name a prompt file in prompts_file" if what == "prompts" else ""
        raise InputError(f"{what} is empty: write one prompt per line (optionally category<TAB>prompt){where}")
    return out


PROMPTS_FILE_HINT = 'a prompt file (.txt: one per line; .jsonl: {"prompt", "category"} per line; .json list)'


def read_prompts_file(name: str) -> list[dict]:
    """The prompts of a stage-3 prompt file inside ComfyUI's input folder (the same formats as
    ``deepgen train --stage 3``'s ``[[prompts]]`` files)."""
    from deepgen.train.grpo.prompts import read_prompt_file

    from .training_files import resolve_input

    path = resolve_input(name, "prompts_file", PROMPTS_FILE_HINT)
    return [{"prompt": r.prompt, "category": r.category} for r in read_prompt_file(path, DEFAULT_CATEGORY)]


def training_prompts(prompts: str, prompts_file: str = "") -> list[dict]:
    """The multiline prompts followed by those of ``prompts_file`` (either may be empty, not both)."""
    from_file = read_prompts_file(prompts_file) if (prompts_file or "").strip() else []
    written = any(s.strip() and not s.strip().startswith("#") for s in (prompts or "").splitlines())
    return (parse_prompt_lines(prompts) if written or not from_file else []) + from_file


def parse_reward_weights(text: str) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """``name=weight`` pairs (comma- or line-separated), e.g. ``brightness=1`` or ``clip=0.3, preference=0.7``.
    A line ``category: name=weight, ...`` gives that prompt category its own weights.
    Returns ``(weights for every other category, {category: weights})``."""
    from deepgen.rewards.base import canonical_reward_name

    default: dict[str, float] = {}
    per_category: dict[str, dict[str, float]] = {}
    for line in (text or "").splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        head, colon, rest = s.partition(":")
        target = default
        if colon and "=" not in head:
            target = per_category.setdefault(head.strip(), {})
            s = rest
        for part in s.replace(";", ",").split(","):
            if not part.strip():
                continue
            name, eq, value = part.partition("=")
            try:
                weight = float(value) if eq else float("nan")
            except ValueError:
                weight = float("nan")
            if not name.strip() or weight != weight:
                raise InputError(
                    f"rewards: '{part.strip()}' is not 'name=weight' (e.g. 'brightness=1' or 'clip=0.3, ocr=0.7'; "
                    "a line 'text_rendering: ocr=0.7, clip=0.3' sets one prompt category's weights)"
                )
            target[canonical_reward_name(name.strip())] = weight
    if not default and not per_category:
        raise InputError("rewards is empty: write e.g. 'brightness=1' (demo model) or 'clip=0.3, preference=0.7'")
    return default, per_category


def category_weights(prompts: list[dict], default: dict, per_category: dict) -> dict[str, dict[str, float]]:
    """Weights of every category the prompts use (a category without its own line gets the default line)."""
    from deepgen.train.grpo.prompts import canonical_category

    own = {canonical_category(c): w for c, w in per_category.items()}
    out = {}
    for p in prompts:
        c = canonical_category(p["category"])
        weights = own.get(c, default)
        if not weights or not any(v != 0 for v in weights.values()):
            raise InputError(
                f"prompt category {c!r} has no reward weights: add a line '{c}: name=weight' to rewards, or a line "
                "without a category for every category"
            )
        out[c] = dict(weights)
    return out


def reward_settings(names, judge_url: str = "", clip_model: str = rs.AUTO, judge: str = rs.AUTO) -> dict[str, dict]:
    """``[rewards.<name>]`` tables for the rewards that need a model, as RewardScore finds them: CLIP from
    ``clip_model`` (a models/deepgen folder, or a models/clip_vision file with ComfyUI's CLIP tokenizer), the judge
    from ``judge`` (auto: ``judge_url`` when set, else models/deepgen/unifiedreward-think; or this model's VLM)."""
    out: dict[str, dict] = {}
    if "clip" in names:
        out["clip"] = rs.clip_settings(clip_model)
    if "preference" in names:
        out["preference"] = rs.judge_settings(judge, judge_url)
    return out


def reward_problem(names, judge_url: str = "", clip_model: str = rs.AUTO, judge: str = rs.AUTO) -> str | None:
    """Why a reward cannot run here (unknown name, missing or unusable model, missing engine), or None: checked
    when the prompt is queued, so a missing reward model is not found after minutes of loading."""
    import importlib

    from deepgen.rewards import available_rewards

    importlib.import_module(TOY_REWARDS)
    known = set(available_rewards())
    unknown = sorted(set(names) - known)
    if unknown:
        return f"rewards: unknown reward {', '.join(unknown)}; registered rewards: {', '.join(sorted(known))}"
    if "clip" in names and (problem := rs.clip_problem(clip_model)):
        return problem
    if "preference" in names and (problem := rs.judge_problem(judge, judge_url)):
        return problem
    if "ocr" in names:
        return rs.ocr_problem()
    return None


def write_prompt_file(path: Path, prompts: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts), encoding="utf-8")
    return str(path)


def model_keys(handle) -> dict:
    """The config's model keys for the loader's model: its resolved checkpoint (and VLM / diffusion folders), so
    the written config loads the same model headless (LoRAs on the handle are not part of it)."""
    src = getattr(handle, "sources", None) or {}
    keys = {"model": str(src.get("checkpoint") or handle.name or "comfyui")}
    keys.update({k: str(src[k]) for k in ("vlm", "diffusion") if src.get(k)})
    return keys


def stage3_values(
    *,
    model: dict,
    run: Path,
    prompts_file: str,
    eval_file: str,
    weights: dict[str, dict[str, float]],
    rewards: dict[str, dict],
    steps: int,
    learning_rate: float,
    rank: int,
    group_size: int,
    prompts_per_step: int,
    kl_beta: float,
    sft_lambda: float,
    sft_data: str,
    save_every: int,
    eval_every: int,
    seed: int,
    resolution: int,
    sampling_steps: int,
    resume: bool,
    cpu: bool,
) -> dict:
    """The flat stage-3 config of a node run: configs/train/stage3_1gpu_lora.toml with the node's values (a DiT
    LoRA with α = 2·rank on the attention projections; the reference is the LoRA switched off)."""
    return {
        "stage": 3,
        **model,
        "seed": seed,
        "cpu": cpu,
        "mixed_precision": "auto",
        "gradient_checkpointing": True,
        "policy": "lora",
        "dit_lora_rank": rank,
        "dit_lora_alpha": 2.0 * rank,
        "dit_lora_targets": ["attn"],
        "reference": "disable_adapter",
        "reward_modules": [TOY_REWARDS],
        "prompts": [{"path": prompts_file, "category": DEFAULT_CATEGORY}],
        "category_weights": weights,
        "rewards": rewards,
        "group_size": group_size,
        "prompts_per_step": prompts_per_step,
        "rollout_micro_batch_size": 4,
        "train_micro_batch_size": 4,
        "num_steps": sampling_steps,
        "resolution": resolution,
        "kl_beta": kl_beta,
        "sft_lambda": sft_lambda,
        "sft_data": [sft_data] if sft_data else [],
        "sft_resolution": resolution,
        "sft_batch_size": 2,
        "val_loss_every": 0,
        "lr": learning_rate,
        "warmup_steps": min(20, steps // 10),  # the 1-GPU config's 20, less on short runs
        "max_steps": steps,
        "output_dir": str(run),
        "save_every": save_every if save_every < steps else 0,
        "keep_last": 2,
        "resume": "auto" if resume else "no",
        "trackers": ["none"],
        "eval_prompts": eval_file,
        "eval_every": eval_every,
        "eval_num_steps": sampling_steps,
        "eval_images_per_prompt": 1,
        "eval_before_training": True,
    }
