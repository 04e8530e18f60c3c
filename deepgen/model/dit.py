"""The DeepGen DiT: diffusers' SD3 transformer with Kontext-style reference tokens.

Differences from `diffusers.SD3Transformer2DModel`, as in the official `transformer_sd3_dynamic.py`:
- every sample is patch-embedded on its own, with the *same* `pos_embed` (same conv, same centre-cropped
  2-D sin-cos grid, no offset) for the noisy target and each reference latent;
- reference tokens are appended after the target's tokens, samples are right-padded to the longest one
  and a key-padding mask keeps pads out of attention (context tokens are never masked);
- only the target's tokens are unpatchified.
The parameters are diffusers' own, so diffusers/UniPic2 weights and the official `transformer.*` keys load
unchanged.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0
from diffusers.models.modeling_outputs import Transformer2DModelOutput

# from the defining module: for type checkers diffusers' top-level names are its torch-missing placeholders
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from torch.nn.utils.rnn import pad_sequence

from .speed import sdpa_context

LatentBatch = torch.Tensor | Sequence[torch.Tensor]
# id(reference latent) -> (that latent, target dtype, its patch-embedded tokens): one memo per `forward` call, or one
# for a whole sampling run inside `reference_tokens_once()`. It holds the latent, so the id is not reused meanwhile.
ReferenceMemo = dict[int, tuple[torch.Tensor, torch.dtype, torch.Tensor]]


class MaskedJointAttnProcessor(JointAttnProcessor2_0):
    """diffusers' joint attention with an optional (B, N_image) key-padding mask.

    The mask is extended with True for the context tokens, turned into the outer product m_i & m_j and its
    diagonal is forced True so that padded query rows stay finite (their output is discarded anyway).
    Without a mask this is exactly `JointAttnProcessor2_0`.
    """

    def __call__(
        self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs
    ):
        if attention_mask is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states)
        batch_size, num_image_tokens = hidden_states.shape[:2]
        heads = attn.heads

        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch_size, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        query, key, value = (
            split_heads(attn.to_q(hidden_states)),
            split_heads(attn.to_k(hidden_states)),
            split_heads(attn.to_v(hidden_states)),
        )
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        key_mask = attention_mask.bool()
        if encoder_hidden_states is not None:
            c_query = split_heads(attn.add_q_proj(encoder_hidden_states))
            c_key = split_heads(attn.add_k_proj(encoder_hidden_states))
            c_value = split_heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                c_query = attn.norm_added_q(c_query)
            if attn.norm_added_k is not None:
                c_key = attn.norm_added_k(c_key)
            query, key, value = (
                torch.cat([query, c_query], 2),
                torch.cat([key, c_key], 2),
                torch.cat([value, c_value], 2),
            )
            context_mask = key_mask.new_ones(batch_size, encoder_hidden_states.shape[1])
            key_mask = torch.cat([key_mask, context_mask], dim=1)
        pair_mask = key_mask[:, :, None] & key_mask[:, None, :]
        pair_mask |= torch.eye(pair_mask.shape[-1], dtype=torch.bool, device=pair_mask.device)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=pair_mask[:, None], dropout_p=0.0)
        out = out.transpose(1, 2).reshape(batch_size, -1, heads * out.shape[-1]).to(query.dtype)
        if encoder_hidden_states is not None:
            out, context_out = out[:, :num_image_tokens], out[:, num_image_tokens:]
            if not attn.context_pre_only:
                context_out = attn.to_add_out(context_out)
        out = attn.to_out[1](attn.to_out[0](out))
        return (out, context_out) if encoder_hidden_states is not None else out


class DeepGenTransformer2DModel(SD3Transformer2DModel):
    """SD3 MMDiT that also takes per-sample reference latents (Kontext-style)."""

    _repeated_blocks = ["JointTransformerBlock"]  # what `compile_repeated_blocks` compiles (deepgen.model.speed)
    sdpa_backend = "auto"  # "flash" / "efficient" / "math" forces that SDPA kernel (deepgen.model.speed)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_attn_processor(MaskedJointAttnProcessor())
        self._reference_memo: ReferenceMemo | None = None  # set inside reference_tokens_once()

    # diffusers reads config fields from the __init__ signature: expose the parent's.
    __init__.__signature__ = inspect.signature(SD3Transformer2DModel.__init__)  # type: ignore[attr-defined]

    if TYPE_CHECKING:

        @property
        def config(self) -> Any:  # diffusers types it as a dict; its FrozenDict also reads fields as attributes
            ...

    @contextlib.contextmanager
    def reference_tokens_once(self):
        """Within this block each reference latent (by tensor identity) is patch-embedded once and its tokens are
        reused by every later forward: the steps of a sampling run and its CFG rows. The memo is dropped on exit,
        so nothing outlives the run. Nested blocks share the outer memo. With grad enabled (training) nothing is
        reused across forwards. Results are bit-identical: the same `pos_embed` call on the same tensor."""
        if getattr(self, "_reference_memo", None) is not None:
            yield
            return
        self._reference_memo = {}
        try:
            yield
        finally:
            self._reference_memo = None

    def _embed_reference(self, ref: torch.Tensor, dtype: torch.dtype, memo: ReferenceMemo | None) -> torch.Tensor:
        """`pos_embed` of one (C, h, w) reference latent in `dtype`, memoised by tensor identity in `memo`."""
        if memo is None:
            return self.pos_embed(ref.unsqueeze(0).to(dtype))[0]
        hit = memo.get(id(ref))
        if hit is not None and hit[0] is ref and hit[1] == dtype:
            return hit[2]
        tokens = self.pos_embed(ref.unsqueeze(0).to(dtype))[0]
        memo[id(ref)] = (ref, dtype, tokens)
        return tokens

    def _embed_samples(self, hidden_states: LatentBatch, reference_latents):
        """Patch-embed each target and its references with the shared pos_embed; pad right; build the mask.

        Without grad, a reference tensor shared by several samples (CFG rows, images of one prompt) is embedded
        once per call, or once per run inside `reference_tokens_once()`. With grad (training) every use is embedded
        on its own, as before, so gradients are summed in the same order."""
        memo: ReferenceMemo | None = None
        if not torch.is_grad_enabled():
            run_memo = getattr(self, "_reference_memo", None)
            memo = run_memo if run_memo is not None else {}
        tokens, grid_sizes = [], []
        for i, latent in enumerate(hidden_states):
            parts = [self.pos_embed(latent.unsqueeze(0))[0]]
            grid_sizes.append((latent.shape[-2] // self.config.patch_size, latent.shape[-1] // self.config.patch_size))
            for ref in reference_latents[i] if reference_latents is not None else ():
                parts.append(self._embed_reference(ref, latent.dtype, memo))
            tokens.append(torch.cat(parts) if len(parts) > 1 else parts[0])
        lengths = [t.shape[0] for t in tokens]
        if len(set(lengths)) == 1:
            # Nothing padded: an all-True mask changes nothing, so skip it and keep the fast SDPA kernels.
            return torch.stack(tokens), None, grid_sizes
        padded = pad_sequence(tokens, batch_first=True)
        positions = torch.arange(padded.shape[1], device=padded.device)
        mask = positions[None, :] < torch.tensor(lengths, device=padded.device)[:, None]
        return padded, mask, grid_sizes

    def forward(
        self,
        hidden_states: LatentBatch,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        reference_latents: Sequence[Sequence[torch.Tensor]] | None = None,
        return_dict: bool = True,
        **unused,
    ):
        """Predict the flow velocity of each target.

        hidden_states: (B, C, H, W) or a list of B tensors (C, h_i, w_i) of different sizes.
        reference_latents: None, or for each sample a list (possibly empty) of (C, h, w) reference latents.
        Returns the velocity for the target tokens only: a (B, C, H, W) tensor if all targets share a size,
        otherwise a list.
        """
        if reference_latents is not None and len(reference_latents) != len(hidden_states):
            raise ValueError(f"reference_latents has {len(reference_latents)} entries for {len(hidden_states)} samples")
        tokens, key_mask, grid_sizes = self._embed_samples(hidden_states, reference_latents)
        temb = self.time_text_embed(timestep, pooled_projections)
        context = self.context_embedder(encoder_hidden_states)
        attention_kwargs = {"attention_mask": key_mask} if key_mask is not None else None

        with sdpa_context(self.sdpa_backend):
            for block in self.transformer_blocks:
                if torch.is_grad_enabled() and self.gradient_checkpointing:
                    context, tokens = self._gradient_checkpointing_func(block, tokens, context, temb, attention_kwargs)
                else:
                    context, tokens = block(
                        hidden_states=tokens,
                        encoder_hidden_states=context,
                        temb=temb,
                        joint_attention_kwargs=attention_kwargs,
                    )

        tokens = self.proj_out(self.norm_out(tokens, temb))
        outputs = [self._unpatchify(tokens[i], h, w) for i, (h, w) in enumerate(grid_sizes)]
        same_size = len({o.shape for o in outputs}) == 1
        sample = torch.stack(outputs) if same_size else outputs
        return Transformer2DModelOutput(sample=sample) if return_dict else (sample,)

    def _unpatchify(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(N, p*p*C) -> (C, h*p, w*p), keeping only the first h*w (target) tokens."""
        p, c = self.config.patch_size, self.out_channels
        x = tokens[: h * w].reshape(h, w, p, p, c)
        return torch.einsum("hwpqc->chpwq", x).reshape(c, h * p, w * p)
