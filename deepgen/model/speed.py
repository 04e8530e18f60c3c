"""DiT speed switches, each off by default: regional `torch.compile`, a forced SDPA backend, and a step cache.

- **compile** (`compile_blocks`): diffusers' `compile_repeated_blocks`, i.e. `torch.compile` of each
  `JointTransformerBlock` on its own (regional compilation): the 24 identical blocks share one compiled graph, so
  compiling costs one block's worth, not the whole model's, and the Python around the blocks (reference tokens,
  padding, unpatchify) stays eager.
- **SDPA backend** (`sdpa_backend`): "auto" lets torch pick; "flash", "efficient" or "math" forces that one kernel
  through `torch.nn.attention.sdpa_kernel` for the DiT's attention. A forced kernel that cannot take the inputs
  fails loudly (flash: CUDA, fp16/bf16, no mask, so not with references of mixed sizes; efficient: CUDA).
- **step cache** (`step_cache`): diffusers' First Block Cache (`diffusers.hooks.apply_first_block_cache`, TeaCache's
  simpler cousin). Every step runs the first block; when its output residual changed, relative to the last fully
  computed step, by less than `threshold` (mean |Δ| / mean |previous|), the remaining blocks are skipped and their
  last residual is added instead. SD3's last block is `context_pre_only` (it returns no context), which diffusers'
  hook cannot cache, so the cache spans blocks 0 … n-2 and the last block always runs. The CFG rows share one
  forward, so they skip or compute together.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from torch import nn

from ..errors import InputError

SDPA_BACKENDS = ("auto", "flash", "efficient", "math")
_FBC_HEAD = "fbc_leader_block_hook"
_FBC_BLOCK = "fbc_block_hook"


def check_sdpa_backend(name: str) -> str:
    if name not in SDPA_BACKENDS:
        raise InputError(f"sdpa_backend must be one of {', '.join(SDPA_BACKENDS)}, not {name!r}")
    return name


def sdpa_context(name: str):
    """The `sdpa_kernel` context that forces backend `name`; a no-op for "auto"."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }.get(check_sdpa_backend(name))
    return contextlib.nullcontext() if backend is None else sdpa_kernel(backend)


# Dynamo keys its cache on the code of JointTransformerBlock.forward, shared by every block: SD3.5-M has three
# kinds (dual-attention, plain, the context_pre_only last one), each recompiled once more for dynamic shapes and
# again per batch or token count (t2i / edit / another size). torch's default of 8 entries runs out and the rest
# of the blocks silently fall back to eager, so allow more.
RECOMPILE_LIMIT = 64


def compile_blocks(transformer, **compile_kwargs) -> None:
    """`torch.compile` each transformer block in place (regional compilation); kwargs go to torch.compile.
    The first forward at each new shape compiles (seconds to minutes); later ones run the compiled code."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    transformer.compile_repeated_blocks(**compile_kwargs)


def uncompile_blocks(transformer) -> None:
    """Undo `compile_blocks`: the blocks run eagerly again (what `nn.Module.compile` set is dropped)."""
    for block in transformer.transformer_blocks:
        block._compiled_call_impl = None


def compiled_blocks(transformer) -> int:
    """How many of the DiT's blocks are compiled (for tests and reports)."""
    return sum(getattr(b, "_compiled_call_impl", None) is not None for b in transformer.transformer_blocks)


@dataclass
class StepCacheStats:
    """What the step cache did during one run: per DiT forward, whether the cached residual was reused."""

    threshold: float
    reused: list[bool] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return sum(self.reused)

    @property
    def computed(self) -> int:
        return len(self.reused) - self.skipped


class _Blocks(nn.Module):
    """A container diffusers' cache finds blocks in, holding all but the DiT's last (context_pre_only) block.
    The hooks live on the blocks themselves, so the DiT's own forward triggers them."""

    def __init__(self, blocks):
        super().__init__()
        self.transformer_blocks = nn.ModuleList(blocks)


@contextlib.contextmanager
def step_cache(transformer, threshold: float):
    """Within this block the DiT runs with First Block Cache at `threshold` (> 0); yields a `StepCacheStats` that
    `record` fills after each forward. The hooks are removed on exit, so nothing carries over to the next run."""
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache
    from diffusers.hooks.hooks import CacheContext

    if not threshold > 0:
        raise InputError(f"the step cache threshold must be > 0 (0 turns the cache off), got {threshold}")
    blocks = list(transformer.transformer_blocks)
    if len(blocks) < 3:
        raise InputError("the step cache needs a DiT of at least 3 blocks (first, cached, last)")
    cached = blocks[:-1]
    apply_first_block_cache(_Blocks(cached), FirstBlockCacheConfig(threshold=float(threshold)))
    head = cached[0]._diffusers_hook.get_hook(_FBC_HEAD)
    head.state_manager.set_context(CacheContext("cfg"))  # one state: the CFG rows are one forward
    stats = StepCacheStats(float(threshold))
    stats._state = head.state_manager  # type: ignore[attr-defined]
    try:
        yield stats
    finally:
        cached[0]._diffusers_hook.remove_hook(_FBC_HEAD, recurse=False)
        for block in cached[1:]:
            block._diffusers_hook.remove_hook(_FBC_BLOCK, recurse=False)


def record(stats: StepCacheStats | None) -> bool:
    """After a DiT forward inside `step_cache`: note and return whether it reused the cache."""
    if stats is None:
        return False
    reused = not stats._state.get_state().should_compute  # type: ignore[attr-defined]
    stats.reused.append(reused)
    return reused


def configure(transformer, *, compile: bool = False, sdpa_backend: str = "auto", **compile_kwargs) -> None:
    """Apply the load-time switches to a DiT that is already on its compute device."""
    transformer.sdpa_backend = check_sdpa_backend(sdpa_backend)
    if compile:
        compile_blocks(transformer, **compile_kwargs)
