"""The loaded DeepGen model's own VLM as the pairwise preference judge (``judge="deepgen"``).

Why: a separate judge (UnifiedReward-Think-7B, about 16 GB in bf16) may not fit next to the model being trained;
DeepGen already holds a Qwen2.5-VL-3B that can read two images and a question. This judge runs that VLM --
``model.lmm`` with ``model.tokenizer``, the very modules the model encodes prompts with, so nothing is loaded
twice -- through :class:`~deepgen.rewards.judges.QwenVLJudge`'s generate path and the reward's answer parser.
Images enter the VLM as the model's reference images do (``deepgen.model.vlm.vision_patches`` after the
``fix_pixels`` resize to about ``image_size``²).

What it is not: the 3B base VLM was never trained as a reward model (DeepGen fine-tunes it, with a LoRA, only to
condition the DiT), so its verdicts are weaker and more position-biased than the official judge's; its agreement
with UnifiedReward-Think has not been measured (docs/rewards.md).

The stage-3 trainer binds the policy model after loading it (``bind``); the policy must leave the VLM unchanged
(a DiT policy), which the trainer checks.
"""

from __future__ import annotations

import torch
from PIL import Image

from .. import constants as C
from ..errors import ResourceError
from .judges import QwenVLJudge, image_chat_inputs

__all__ = ["DEEPGEN_JUDGE", "DeepGenVLMJudge"]

DEEPGEN_JUDGE = "deepgen"  # the preference reward's judge="deepgen"


class DeepGenVLMJudge(QwenVLJudge):
    """Pairwise judge on a loaded :class:`~deepgen.model.deepgen.DeepGenModel`'s VLM (greedy decoding).

    ``model``: the DeepGen model, or None until :meth:`bind` (the trainer binds its policy model).
    ``image_size``: each image is resized to about ``image_size``² pixels (sides multiples of 32), as references
    are; 512 gives 256 vision tokens per image. ``max_new_tokens``: the base VLM answers in a few sentences.
    """

    uses_policy_model = True  # the trainer binds its model; preflight has nothing to load
    label = "this DeepGen model's VLM"

    def __init__(
        self,
        model=None,
        *,
        image_size: int = 512,
        max_new_tokens: int = 512,
        max_pixels: int | None = None,
        system_prompt: str | None = "You are a helpful assistant.",
    ):
        self.model = model
        self.image_size = int(image_size)
        self.max_new_tokens = int(max_new_tokens)
        self.max_pixels = max_pixels
        self.system_prompt = system_prompt

    def bind(self, model) -> DeepGenVLMJudge:
        self.model = model
        return self

    def load(self):
        """(the model's VLM, an input builder on its tokenizer): the loaded modules themselves."""
        if self.model is None:
            raise ResourceError(
                "the preference judge is this DeepGen model's VLM (judge = 'deepgen'), but no model was given: "
                "pass one (DeepGenVLMJudge(model)) or let the stage-3 trainer bind its policy model"
            )
        return self.model.lmm, _DeepGenJudgeInputs(self.model, self.image_size)

    def generation_kwargs(self) -> dict:
        # the model may carry no generation config of its own (a converted file, the tiny model): Qwen2.5-VL's
        # chat stops at <|im_end|> (or <|endoftext|>), and pads with <|endoftext|>
        return {"eos_token_id": [C.IM_END_TOKEN_ID, C.PAD_TOKEN_ID], "pad_token_id": C.PAD_TOKEN_ID}

    def generate(self, text: str, images: list[Image.Image]) -> str:
        # generation caches its M-RoPE offsets on the VLM (rope_deltas); leave the shared model as it was
        inner = getattr(self.model, "lmm", None)
        inner = getattr(inner, "model", None)
        saved = getattr(inner, "rope_deltas", None)
        try:
            return super().generate(text, images)
        finally:
            if inner is not None and hasattr(inner, "rope_deltas"):
                inner.rope_deltas = saved


class _DeepGenJudgeInputs:
    """The processor half of QwenVLJudge's generate path, built from the DeepGen model's own preprocessing."""

    chat_template = None  # QwenVLJudge then writes Qwen2.5-VL's chat text (system prompt, two image blocks)

    def __init__(self, model, image_size: int):
        self.model = model
        self.image_size = image_size

    def __call__(self, text: list[str], images: list[Image.Image], return_tensors: str = "pt"):
        from ..images import prepare_reference
        from ..model.vlm import vision_patches

        vcfg = self.model.vision_config
        patches, grids = [], []
        for im in images:
            p, g = vision_patches(prepare_reference(im, "fix_pixels", self.image_size), vcfg)
            patches.append(p)
            grids.append(g)
        counts = [int(g.prod()) // vcfg.spatial_merge_size**2 for g in grids]
        vision = {"pixel_values": torch.cat(patches), "image_grid_thw": torch.stack(grids)}
        return image_chat_inputs(
            self.model.tokenizer, text, counts, C.IMAGE_CONTEXT_TOKEN, C.IMAGE_PAD_TOKEN_ID, vision
        )

    def batch_decode(self, ids, **kw):
        return self.model.tokenizer.batch_decode(ids, **kw)
