"""DeepGenEdit: reference images + instruction -> edited images, in one node.

It runs exactly ThinkTokenEncode -> SCBBridge -> DeepGenSampler (the same functions), so the composed graph
with the same settings and seed gives the same latents. The conditioning (VLM, vision tower, SCB, reference VAE
encode) is cached by its inputs, so a new seed, size, step count, CFG or shift runs only the DiT and the decode.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict

from .encode import bridge, check_prompt, encode_prompt, reference_inputs
from .sampler import generate, validate_size
from .types import DEEPGEN_MODEL, IMAGE, LATENT, category, display_name, reference_resize_input, sampler_inputs

CONDITIONING_CACHE_SIZE = 4  # per model handle: the last few instructions / reference sets
# handle -> LRU {conditioning_key: Conditioning on the intermediate device}. Weak: an entry goes with its handle, and
# every handle of a model goes before the model does, so an unloaded model leaves no cache behind.
_CONDITIONING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def image_fingerprint(image) -> tuple | None:
    """An IMAGE's exact content: shape, dtype and the SHA-256 of its bytes (about 14 ms for a 1024x1024 IMAGE on
    one CPU core). Identity is not enough: ComfyUI may hand a reused or modified tensor to the same input."""
    if image is None:
        return None
    import torch

    data = image.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
    return tuple(image.shape), str(image.dtype), hashlib.sha256(data.numpy()).hexdigest()


def conditioning_key(handle, instruction, negative_prompt, images, reference_resize) -> tuple:
    """Everything DeepGenEdit's conditioning depends on besides the handle (the cache's outer key): the LoRAs the
    handle puts on the weights (adapter identity, which the handle keeps alive, and strength), the texts, the
    resize rule and each reference's content. The seed is not in it: the reference latents' VAE posterior draw
    always uses seed 0 (deepgen.pipeline.Think.reference_seed), whatever the node's seed."""
    loras = tuple((id(adapter), float(strength)) for adapter, strength in handle.loras)
    return loras, instruction, negative_prompt, reference_resize, tuple(image_fingerprint(i) for i in images)


def cached_conditioning(handle, instruction, negative_prompt, images, reference_resize, node_id=None):
    """encode_prompt -> bridge (ThinkTokenEncode -> SCBBridge), or the cached result for the same inputs."""
    key = conditioning_key(handle, instruction, negative_prompt, images, reference_resize)
    owner = handle.speed_base or handle  # the speed switches change sampling only: share the handle's entries
    cache = _CONDITIONING.get(owner)
    if cache is None:
        cache = _CONDITIONING[owner] = OrderedDict()
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    think = encode_prompt(handle, instruction, negative_prompt, images, reference_resize, node_id)
    cond, _, _ = bridge(handle, think, node_id)
    cache[key] = cond
    while len(cache) > CONDITIONING_CACHE_SIZE:
        cache.popitem(last=False)
    return cond


def clear_conditioning_cache(handle=None) -> None:
    """Forget the cached conditioning of one handle (shared with the handle its speed switches were put on), or of
    all."""
    if handle is None:
        _CONDITIONING.clear()
    else:
        _CONDITIONING.pop(handle.speed_base or handle, None)


class DeepGenEdit:
    DESCRIPTION = (
        "Edits one or more reference images following an instruction (DeepGen 1.0 image editing): encodes "
        "the instruction with the references through the VLM and think tokens, bridges it with SCB, and "
        "samples with the reference latents as extra DiT tokens. The same result as ThinkTokenEncode "
        "(with the images) -> SCBBridge -> DeepGenSampler. Width and height 0 keep the first reference's "
        "size (after reference_resize). The encoded conditioning is cached by its inputs, so a new "
        "seed (or size, steps, CFG, shift) runs only the DiT and the decode."
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
                        "default": "",
                        "tooltip": "What to avoid. Empty: the model's own edit negative (DeepGen 1.0's is the "
                        "official one, 'blurry, low quality, …'; the demo model's is empty).",
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
        errors = [m for m in (check_prompt(instruction), validate_size(width, height)) if m is not True]
        return "; ".join(str(m) for m in errors) if errors else True

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
        cond = cached_conditioning(
            model, instruction, negative_prompt, [image_1, image_2, image_3, image_4], reference_resize, unique_id
        )
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
