"""Rewards for the DeepGen RL stage (MR-GRPO) and the RewardScore node.

Every reward is ``reward(images, prompts, group_ids=None) -> torch.Tensor (B,)`` on PIL
images or a ComfyUI IMAGE tensor; NaN marks "not applicable". Built-ins: ``clip``,
``ocr``, ``preference`` (official names ``clip_sim``, ``ocr``, ``unifiedreward_think``).
Models load lazily from local folders or files only (CLIP also from one safetensors file, the preference
judge also from the loaded DeepGen model's VLM); see docs/rewards.md.
"""

from .base import (
    FunctionReward,
    ModelStore,
    Reward,
    RewardModelNotFound,
    available_rewards,
    cached_model,
    canonical_reward_name,
    clear_model_cache,
    create_reward,
    register_reward,
    unregister_reward,
    use_model_store,
)
from .clip import CLIP_REPO_ID, DEFAULT_CLIP_DIR, CLIPReward
from .deepgen_judge import DEEPGEN_JUDGE, DeepGenVLMJudge
from .images import image_to_data_url, to_pil_images
from .judges import DEFAULT_JUDGE_DIR, JUDGE_REPO_ID, EndpointJudge, QwenVLJudge
from .mix import PRESET_SAMPLE_WEIGHTS, PRESETS, RewardMix, RewardResult, resolve_weights
from .ocr import OCRReward, levenshtein, quoted_targets
from .preference import PROMPT_TEMPLATE, PreferenceReward, pair_plan, parse_preference, win_rates

__all__ = [
    "Reward",
    "FunctionReward",
    "RewardModelNotFound",
    "register_reward",
    "unregister_reward",
    "create_reward",
    "available_rewards",
    "canonical_reward_name",
    "clear_model_cache",
    "cached_model",
    "ModelStore",
    "use_model_store",
    "to_pil_images",
    "image_to_data_url",
    "CLIPReward",
    "DEFAULT_CLIP_DIR",
    "CLIP_REPO_ID",
    "OCRReward",
    "quoted_targets",
    "levenshtein",
    "PreferenceReward",
    "PROMPT_TEMPLATE",
    "parse_preference",
    "pair_plan",
    "win_rates",
    "EndpointJudge",
    "QwenVLJudge",
    "DeepGenVLMJudge",
    "DEEPGEN_JUDGE",
    "DEFAULT_JUDGE_DIR",
    "JUDGE_REPO_ID",
    "RewardMix",
    "RewardResult",
    "PRESETS",
    "PRESET_SAMPLE_WEIGHTS",
    "resolve_weights",
]
