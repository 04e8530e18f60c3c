"""DeepGenEdit: reference images + instruction -> edited images, in one node.

It runs exactly ThinkTokenEncode -> SCBBridge -> DeepGenSampler (the same functions), so the composed graph
with the same settings and seed gives the same latents.
"""

from __future__ import annotations

from .encode import bridge, check_prompt, encode_prompt, reference_inputs
from .sampler import generate, validate_size
from .types import DEEPGEN_MODEL, IMAGE, LATENT, category, display_name, reference_resize_input, sampler_inputs


def _official_edit_negative() -> str:
    from deepgen import constants

    return constants.EDIT_NEGATIVE_PROMPT


class DeepGenEdit:
    DESCRIPTION = (
        "Edits one or more reference images following an instruction (DeepGen 1.0 image editing): encodes "
        "the instruction with the references through the VLM and think tokens, bridges it with SCB, and "
        "samples with the reference latents as extra DiT tokens. The same result as ThinkTokenEncode "
        "(with the images) -> SCBBridge -> DeepGenSampler. Width and height 0 keep the first reference's "
        "size (after reference_resize)."
    )
    CATEGORY = category("editing")
    RETURN_TYPES = (IMAGE, LATENT)
    RETURN_NAMES = ("images", "latent")
    OUTPUT_TOOLTIPS = ("The edited images [B, H, W, 3].", "Their latents (raw SD3 VAE space).")
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls):
        required_images, optional_images = reference_inputs(first_required=True)
        return {
            "required": {
                "model": (DEEPGEN_MODEL, {"tooltip": "The model from DeepGenLoader."}),
                **required_images,
                "instruction": (
                    "STRING",
                    {
                        "multiline": True,
                        "dynamicPrompts": True,
                        "default": "Change the season to winter and cover the ground in snow",
                        "tooltip": "The edit to make, in plain words. With several images, refer "
                        "to them in order (e.g. 'Put the cat from the second image on "
                        "the sofa in the first').",
                    },
                ),
                "negative_prompt": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": _official_edit_negative(),
                        "tooltip": "What to avoid. The default is the official edit negative; "
                        "empty also means the official one.",
                    },
                ),
                **sampler_inputs(default_size=0),
                "reference_resize": reference_resize_input(),
            },
            "optional": optional_images,
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, width, height, instruction=None):
        prompt_ok = check_prompt(instruction)
        return validate_size(width, height) if prompt_ok is True else prompt_ok

    def edit(
        self,
        model,
        image_1,
        instruction,
        negative_prompt,
        width,
        height,
        batch_size,
        steps,
        cfg,
        shift,
        seed,
        reference_resize="fix_pixels",
        image_2=None,
        image_3=None,
        image_4=None,
        unique_id=None,
    ):
        think = encode_prompt(
            model, instruction, negative_prompt, [image_1, image_2, image_3, image_4], reference_resize, unique_id
        )
        cond, _, _ = bridge(model, think, unique_id)
        return generate(
            model,
            cond,
            width=width,
            height=height,
            batch_size=batch_size,
            steps=steps,
            cfg=cfg,
            shift=shift,
            seed=seed,
            node_id=unique_id,
        )


NODE_CLASS_MAPPINGS = {"DeepGenEdit": DeepGenEdit}
NODE_DISPLAY_NAME_MAPPINGS = {"DeepGenEdit": display_name("DeepGen Edit")}
