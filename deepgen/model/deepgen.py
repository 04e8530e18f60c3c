"""DeepGenModel: Qwen2.5-VL + think tokens + Stacked Channel Bridging + SD3 DiT + VAE.

Children carry the official names (`lmm`, `meta_queries`, `projector_1/2/3`, `connector`, `transformer`,
`vae`), so `trained_state_dict()` keys are the keys of the official `model.pt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, cast

import torch
from torch import nn

from .. import constants as C
from . import vlm as V
from .connector import ConnectorConfig, ConnectorEncoder
from .dit import DeepGenTransformer2DModel

if TYPE_CHECKING:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from transformers import PreTrainedModel

References = Sequence[Sequence[torch.Tensor]]


@dataclass
class ThinkOutput:
    """What the VLM produced for a batch of prompt rows: the stacked taps SCB reads, plus the inputs for checks.

    The sequence the text tower saw is the L templated, left-padded prompt tokens followed by the
    `num_think_tokens` think tokens (`model.meta_queries`, appended as embeddings: they have no token ids).
    """

    scb_input: torch.Tensor  # (rows, L + num_queries, 6 * vlm_hidden): hidden_states[taps] concatenated, deepest first
    input_ids: torch.Tensor  # (rows, L), templated prompt tokens, left-padded
    attention_mask: torch.Tensor  # (rows, L + num_queries): the tokenizer's mask, then ones for the think tokens
    position_ids: torch.Tensor  # (3, rows, L + num_queries): M-RoPE (t, h, w) positions, left pads at 1

    @property
    def num_think_tokens(self) -> int:
        return self.attention_mask.shape[1] - self.input_ids.shape[1]

    @property
    def think_slice(self) -> slice:
        """Where the think tokens sit on the sequence axis of `attention_mask`, `position_ids` and `scb_input`."""
        length = self.input_ids.shape[1]
        return slice(length, length + self.num_think_tokens)

    @property
    def text_attention_mask(self) -> torch.Tensor:
        """(rows, L): the tokenizer's mask of the prompt tokens (1 = token, 0 = left pad)."""
        return self.attention_mask[:, : self.input_ids.shape[1]]

    @property
    def think_position_ids(self) -> torch.Tensor:
        """(3, rows, num_think_tokens): the think tokens' M-RoPE positions (they continue the prompt's)."""
        return self.position_ids[:, :, self.think_slice]

    def scb_taps(self) -> list[torch.Tensor]:
        """`scb_input` split back into its six (rows, L + num_queries, vlm_hidden) hidden-state taps, deepest
        first: the i-th is hidden_states[constants.scb_tap_indices(num_layers)[i]]."""
        return list(self.scb_input.chunk(C.SCB_NUM_TAPS, dim=-1))

    def to(self, device=None) -> "ThinkOutput":
        return ThinkOutput(
            *(t.to(device) for t in (self.scb_input, self.input_ids, self.attention_mask, self.position_ids))
        )


class DeepGenModel(nn.Module):
    def __init__(
        self,
        lmm: PreTrainedModel,
        tokenizer,
        transformer: DeepGenTransformer2DModel,
        vae: AutoencoderKL,
        connector_config: ConnectorConfig,
        num_queries: int = 128,
        scheduler_config: dict | None = None,
    ):
        super().__init__()
        self.lmm = lmm
        self.tokenizer = tokenizer
        self.transformer = transformer
        self.vae = vae
        self.scheduler_config = dict(scheduler_config or {})
        self.default_size: int | None = None  # the side it was trained at, if not the official 512 (the demo's)
        # The negative an edit gets when none is given: the official one, but the demo's is empty (release.py)
        self.edit_negative_prompt: str = C.EDIT_NEGATIVE_PROMPT
        vlm_hidden = lmm.config.text_config.hidden_size
        width = connector_config.hidden_size
        self.meta_queries = nn.Parameter(torch.randn(num_queries, vlm_hidden) / vlm_hidden**0.5)
        self.projector_1 = nn.Linear(vlm_hidden * C.SCB_NUM_TAPS, width)
        self.connector = ConnectorEncoder(connector_config)
        self.projector_2 = nn.Linear(width, transformer.config.pooled_projection_dim)
        self.projector_3 = nn.Linear(width, transformer.config.joint_attention_dim)
        # Both heads start at zero, as in the official init (matters only for fresh pre-training).
        for head in (self.projector_2, self.projector_3):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    # ---- facts -------------------------------------------------------------------------------------
    @property
    def num_queries(self) -> int:
        return self.meta_queries.shape[0]

    @property
    def vision_config(self):
        return self.lmm.config.vision_config

    @property
    def num_vlm_layers(self) -> int:
        return self.lmm.config.text_config.num_hidden_layers

    @property
    def dtype(self) -> torch.dtype:
        return self.projector_1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.projector_1.weight.device

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors the official checkpoint holds besides the LoRA: think tokens, SCB and the DiT."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("lmm.", "vae."))}

    # ---- VLM: prompts (+ references) -> stacked hidden states -----------------------------------------
    def tokenize(self, prompts: Sequence[str], image_token_counts: Sequence[Sequence[int]]):
        texts = [V.template_prompt(p, counts) for p, counts in zip(prompts, image_token_counts)]
        batch = self.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=True)
        return batch["input_ids"], batch["attention_mask"]

    def think(self, prompts: Sequence[str], references: References | None = None) -> ThinkOutput:
        """Run the VLM on templated prompt rows, with the think tokens appended, and stack the SCB taps.

        references[i] is the list of [-1, 1] (3, H, W) reference images of row i (empty for text-to-image).
        Rows are encoded together and left-padded to the longest, as the official code co-batches the
        conditional and negative prompts (pads leak into SCB, so this matters for exact outputs).
        """
        references = references if references is not None else [[] for _ in prompts]
        if len(references) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(references)} reference lists")
        device = self.device
        embeds_per_row, grids, counts = [], [], []
        cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # the same image in cond and negative rows
        for refs in references:
            row_counts = []
            for image in refs:
                if id(image) not in cache:
                    patches, grid = V.vision_patches(image.to(device), self.vision_config)
                    with torch.no_grad():  # the vision tower never trains (official: no_grad)
                        cache[id(image)] = (V.vision_features(self.lmm, patches, grid[None].to(device)), grid)
                features, grid = cache[id(image)]
                embeds_per_row.append(features)
                grids.append(grid)
                row_counts.append(features.shape[0])
            counts.append(row_counts)

        input_ids, text_mask = self.tokenize(prompts, counts)
        input_ids, text_mask = input_ids.to(device), text_mask.to(device)
        rows = input_ids.shape[0]
        ids_with_queries = torch.cat([input_ids, input_ids.new_zeros(rows, self.num_queries)], dim=1)
        attention_mask = torch.cat([text_mask, text_mask.new_ones(rows, self.num_queries)], dim=1)
        image_grid_thw = torch.stack(grids).to(device) if grids else None
        position_ids = V.rope_positions(self.lmm, ids_with_queries, attention_mask, image_grid_thw)

        text_model = V.text_tower(self.lmm)
        embeds = cast(nn.Embedding, text_model.embed_tokens)(input_ids)  # torch: child attrs are Tensor | Module
        if embeds_per_row:
            image_slots = input_ids == C.IMAGE_PAD_TOKEN_ID
            vision = torch.cat(embeds_per_row).to(embeds.dtype)
            if int(image_slots.sum()) != vision.shape[0]:
                raise RuntimeError(f"{int(image_slots.sum())} image slots for {vision.shape[0]} vision tokens")
            embeds = embeds.masked_scatter(image_slots[..., None], vision)
        queries = self.meta_queries[None].expand(rows, -1, -1).to(embeds.dtype)
        embeds = torch.cat([embeds, queries], dim=1)

        out = text_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=True,
            use_cache=False,
        )
        scb_input = V.stack_taps(out.hidden_states, self.num_vlm_layers)
        return ThinkOutput(scb_input, input_ids, attention_mask, position_ids)

    # ---- SCB: stacked states -> DiT context and pooled vector -----------------------------------------
    def bridge(self, scb_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(context (B, L, joint_dim), pooled (B, pooled_dim)). No mask anywhere: pads count, as officially."""
        hidden = self.connector(self.projector_1(scb_input.to(self.dtype)))
        pooled = self.projector_2(hidden.mean(dim=1))
        context = self.projector_3(hidden)
        return context, pooled

    def connector_output(self, scb_input: torch.Tensor) -> torch.Tensor:
        return self.connector(self.projector_1(scb_input.to(self.dtype)))

    # ---- VAE ----------------------------------------------------------------------------------------
    @property
    def latent_scale(self) -> tuple[float, float]:
        cfg: Any = self.vae.config  # diffusers types it as a dict; its FrozenDict also reads fields as attributes
        return cfg.scaling_factor, (cfg.shift_factor or 0.0)

    def encode_image(
        self,
        pixels: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> torch.Tensor:
        """[-1, 1] pixels (B, 3, H, W) -> DiT latents (z - shift) * scale, z a posterior *sample* (as officially).

        `noise` (the standard-normal draw) or a CPU `generator` makes the sample reproducible.
        """
        scale, shift = self.latent_scale
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        if sample:
            if noise is None:
                noise = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32)
            z = dist.mean + dist.std * noise.to(dist.mean)
        else:
            z = dist.mean
        return ((z - shift) * scale).to(self.dtype)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        scale, shift = self.latent_scale
        return self.vae.decode((latents / scale + shift).to(self.vae.dtype)).sample

    # ---- DiT ----------------------------------------------------------------------------------------
    def velocity(
        self,
        latents,
        timestep: torch.Tensor,
        context: torch.Tensor,
        pooled: torch.Tensor,
        reference_latents: References | None = None,
    ):
        dtype = self.transformer.dtype
        if isinstance(latents, torch.Tensor):
            latents = latents.to(dtype)
        else:
            latents = [x.to(dtype) for x in latents]
        # references keep their tensor identity (the DiT casts each to the latents' dtype as it embeds it), so
        # inside transformer.reference_tokens_once() the steps of a run find them in its memo
        return self.transformer(
            latents,
            encoder_hidden_states=context.to(dtype),
            pooled_projections=pooled.to(dtype),
            timestep=timestep,
            reference_latents=reference_latents,
        ).sample
