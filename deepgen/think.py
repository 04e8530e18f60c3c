"""The VLM half of `DeepGenPipeline.encode`, split in two steps the ComfyUI nodes expose separately.

`encode_think` runs the VLM with the think tokens (ThinkTokenEncode); `bridge_think` runs SCB and makes the
reference latents (SCBBridge). `bridge_think(pipe, encode_think(pipe, ...))` equals `pipe.encode(...)` with
the same arguments: the positive and negative rows are co-batched in one VLM call, as in the official code
(pads leak into SCB, so encoding them apart would change the result).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from . import constants as C
from .images import ImageLike, prepare_reference
from .pipeline import Conditioning, DeepGenPipeline
from .sizes import check_reference_size


@dataclass
class Think:
    """Stacked VLM hidden states (think tokens included) for B prompts and, after them, their B negatives."""

    scb_input: torch.Tensor  # (rows, L + num_queries, taps * vlm_hidden); rows = B prompts [+ B negatives]
    prompts: list[str]
    negative_prompts: list[str] | None  # None: no guidance rows were encoded
    references: list[list[torch.Tensor]]  # per prompt: the (3, H, W) [-1, 1] references the VLM saw
    reference_seed: int = 0  # the VAE posterior draw of the reference latents (made by bridge_think)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def has_negative(self) -> bool:
        return self.negative_prompts is not None

    @property
    def has_references(self) -> bool:
        return any(self.references)

    def to(self, device=None) -> Think:
        return replace(self, scb_input=self.scb_input.to(device),
                       references=[[r.to(device) for r in row] for row in self.references])


def encode_think(pipe: DeepGenPipeline, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None,
                 references: Sequence[Sequence[ImageLike]] | None = None, *, guidance: bool = True,
                 reference_resize: str = "fix_pixels", reference_seed: int = 0) -> Think:
    """Prompts (+ per-prompt references) -> Think. Arguments as in `DeepGenPipeline.encode`."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("No prompts given: pass at least one prompt")
    refs = [[] for _ in prompts] if references is None else [list(r) for r in references]
    if len(refs) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(refs)} reference lists")
    refs = [[prepare_reference(image, reference_resize) for image in row] for row in refs]
    for row in refs:
        for image in row:
            check_reference_size(*image.shape[-2:])
    negatives = None
    if guidance:
        if negative_prompts is None:
            negative_prompts = [C.EDIT_NEGATIVE_PROMPT if row else C.T2I_NEGATIVE_PROMPT for row in refs]
        negatives = list(negative_prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(negatives)} negative prompts")
    rows = prompts + negatives if guidance else prompts
    with torch.no_grad():
        out = pipe.model.think(rows, refs + refs if guidance else refs)
    return Think(scb_input=out.scb_input, prompts=prompts, negative_prompts=negatives, references=refs,
                 reference_seed=reference_seed)


def bridge_think(pipe: DeepGenPipeline, think: Think,
                 reference_noise: Sequence[Sequence[torch.Tensor]] | None = None) -> Conditioning:
    """Think -> Conditioning: SCB (connector + projectors) on every row, then the reference latents."""
    b = len(think)
    with torch.no_grad():
        context, pooled = pipe.model.bridge(think.scb_input.to(pipe.device))
        ref_latents = (pipe.encode_references(think.references, reference_noise, think.reference_seed)
                       if think.has_references else None)
    return Conditioning(context=context[:b], pooled=pooled[:b],
                        negative_context=context[b:] if think.has_negative else None,
                        negative_pooled=pooled[b:] if think.has_negative else None,
                        reference_latents=ref_latents, prompts=list(think.prompts))
