"""ThinkTokenEncode (VLM + think tokens, deepgen.think.encode_think) and SCBBridge (deepgen.think.bridge_think)."""

from __future__ import annotations

from deepgen.errors import InputError

from . import comfy_services as cs
from .types import (
    CONDITIONING,
    DEEPGEN_COND,
    DEEPGEN_MODEL,
    DEEPGEN_THINK,
    IMAGE,
    category,
    display_name,
    reference_resize_input,
)

NUM_REFERENCE_INPUTS = 4


def reference_inputs(first_required: bool) -> tuple[dict, dict]:
    """(required, optional) IMAGE inputs image_1..image_4."""
    required, optional = {}, {}
    for i in range(1, NUM_REFERENCE_INPUTS + 1):
        spec = (
            IMAGE,
            {
                "tooltip": f"Reference image {i}. Every image of a batch counts as one more reference, "
                "in order." + (" Required." if i == 1 and first_required else " Optional.")
            },
        )
        (required if i == 1 and first_required else optional)[f"image_{i}"] = spec
    return required, optional


EMPTY_PROMPT = "The prompt is empty: describe the image, or the edit to make"


def check_prompt(prompt) -> str | bool:
    """VALIDATE_INPUTS body for a prompt widget: refuse an empty prompt when the graph is queued."""
    if prompt is None:  # a linked input: checked when the node runs
        return True
    return True if isinstance(prompt, str) and prompt.strip() else EMPTY_PROMPT


def encode_prompt(
    handle, prompt: str, negative_prompt: str, images, reference_resize: str = "fix_pixels", node_id=None
):
    """One prompt (+ its negative, + references from IMAGE batches) -> Think on the intermediate device.

    An empty negative means the model's own for the task: the empty prompt for text-to-image, for edits the fixed
    quality negative (deepgen.constants.EDIT_NEGATIVE_PROMPT; the demo model's is empty).
    """
    from deepgen.images import from_comfy_image
    from deepgen.think import encode_think

    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(EMPTY_PROMPT)
    references = [frame for image in images if image is not None for frame in from_comfy_image(image)]
    negatives = [negative_prompt] if negative_prompt and negative_prompt.strip() else None
    bar = cs.Progress(2, node_id=node_id, desc="DeepGen encode")
    cs.check_interrupt()
    with handle.stage("encode"):
        bar.update(1)
        think = encode_think(handle.pipe, [prompt], negatives, [references], reference_resize=reference_resize)
    bar.update(1)
    bar.close()
    return think.to(cs.intermediate_device())


def bridge(handle, think, node_id=None):
    """Think -> (Conditioning, positive CONDITIONING, negative CONDITIONING), all on the intermediate device."""
    from deepgen.comfy_latents import to_comfy_conditioning
    from deepgen.think import bridge_think

    bar = cs.Progress(1, node_id=node_id, desc="DeepGen SCB")
    cs.check_interrupt()
    device = cs.intermediate_device()
    with handle.stage("references" if think.has_references else "bridge"):  # the VAE encodes the references
        cond = bridge_think(handle.pipe, think).to(device)
    scale, shift = handle.model.latent_scale
    positive, negative = to_comfy_conditioning(cond, scale, shift, device)
    bar.update(1)
    bar.close()
    return cond, positive, negative


class ThinkTokenEncode:
    DESCRIPTION = (
        "Runs Qwen2.5-VL on the prompt (and the reference images, for edits) with DeepGen's 128 learnable "
        "think tokens appended, and stacks six of its hidden layers for SCB. The prompt and the negative "
        "are encoded in one batch, as the official code does. With references the prompt is an edit "
        "instruction; without, a text-to-image prompt."
    )
    CATEGORY = category("conditioning")
    RETURN_TYPES = (DEEPGEN_THINK,)
    RETURN_NAMES = ("think",)
    OUTPUT_TOOLTIPS = (
        (
            "Stacked VLM hidden states (think tokens included) of the prompt and the negative, plus the "
            "references; connect to SCBBridge."
        ),
    )
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        _, optional = reference_inputs(first_required=False)
        return {
            "required": {
                "model": (DEEPGEN_MODEL, {"tooltip": "The model from DeepGenLoader."}),
                "prompt": (
                    "STRING",
                    {
                        "multiline": True,
                        "dynamicPrompts": True,
                        "default": "A red fox sitting in a snowy forest at sunrise, soft light",
                        "tooltip": "What to generate, or, with reference images, the edit to make "
                        "(e.g. 'Replace the sky with a starry night').",
                    },
                ),
                "negative_prompt": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "What to avoid (the CFG negative). Empty: the model's own "
                        "negative, which is the empty prompt for text-to-image and, for edits, "
                        "DeepGen 1.0's fixed quality negative (the demo model's is empty).",
                    },
                ),
                "reference_resize": reference_resize_input(),
            },
            "optional": optional,
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, prompt=None):
        return check_prompt(prompt)

    def encode(
        self,
        model,
        prompt,
        negative_prompt="",
        reference_resize="fix_pixels",
        image_1=None,
        image_2=None,
        image_3=None,
        image_4=None,
        unique_id=None,
    ):
        images = [image_1, image_2, image_3, image_4]
        return (encode_prompt(model, prompt, negative_prompt, images, reference_resize, unique_id),)


class SCBBridge:
    DESCRIPTION = (
        "Stacked Channel Bridging: the connector and projectors turn the stacked VLM states into the DiT's "
        "context sequence and pooled vector, and the reference images into VAE latents. Also outputs "
        "ComfyUI CONDITIONING ([[context, {'pooled_output', 'reference_latents'}]]) for native SD3 "
        "nodes."
    )
    CATEGORY = category("conditioning")
    RETURN_TYPES = (DEEPGEN_COND, CONDITIONING, CONDITIONING)
    RETURN_NAMES = ("cond", "positive", "negative")
    OUTPUT_TOOLTIPS = (
        "DeepGen conditioning (prompt, negative and reference latents) for DeepGenSampler.",
        (
            "The prompt as native CONDITIONING: context [B, L, 4096] with pooled_output [B, 2048]; edits also carry "
            "reference_latents (raw VAE latents, as ComfyUI's ReferenceLatent stores them)."
        ),
        "The negative prompt as native CONDITIONING (use it instead of ConditioningZeroOut).",
    )
    FUNCTION = "bridge"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (DEEPGEN_MODEL, {"tooltip": "The model from DeepGenLoader (the same one that encoded)."}),
                "think": (DEEPGEN_THINK, {"tooltip": "The output of ThinkTokenEncode."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def bridge(self, model, think, unique_id=None):
        return bridge(model, think, unique_id)


NODE_CLASS_MAPPINGS = {"ThinkTokenEncode": ThinkTokenEncode, "SCBBridge": SCBBridge}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ThinkTokenEncode": display_name("Think Token Encode"),
    "SCBBridge": display_name("SCB Bridge"),
}
