"""DiT speed switches, each off by default: regional `torch.compile`, a forced SDPA backend, and a step cache.

- **compile** (`compile_blocks`): diffusers' `compile_repeated_blocks`, i.e. `torch.compile` of each
  `JointTransformerBlock` on its own (regional compilation): the 24 identical blocks share one compiled graph, so
  compiling costs one block's worth, not the whole model's, and the Python around the blocks (reference tokens,
  padding, unpatchify) stays eager.
- **SDPA backend** (`sdpa_backend`): "auto" lets torch pick; "flash", "efficient" or "math" forces that one kernel
  through `torch.nn.attention.sdpa_kernel` for the DiT's attention. A forced kernel that cannot take the inputs
  raises an InputError saying what each kernel needs (flash: no mask, so not with references of mixed sizes, and
  fp16/bf16 on CUDA; efficient: CUDA).
- **step cache** (`step_cache`): diffusers' First Block Cache (`diffusers.hooks.apply_first_block_cache`, TeaCache's
  simpler cousin). Every step runs the first block; when its output residual changed, relative to the last fully
  computed step, by less than `threshold` (mean |Δ| / mean |previous|), the remaining blocks are skipped and their
  last residual is added instead. SD3's last block is `context_pre_only` (it returns no context), which diffusers'
  hook cannot cache, so the cache spans blocks 0 … n-2 and the last block always runs. The CFG rows share one
  forward, so they skip or compute together.

`load_model(compile_dit=..., sdpa_backend=...)` sets compile and SDPA on the DiT for good (`configure`). `Switches`
(the ComfyUI speed node's) sets all three for one sampling run only and undoes them after it, so handles with and
without them share one DiT; its compiled blocks are kept with the DiT, so they compile once per shape.
"""

from __future__ import annotations

import contextlib
import re
import weakref
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


# torch's words when the forced kernel cannot take the inputs ("No viable backend for scaled_dot_product_attention
# was found" on the CPU, "No available kernel. Aborting execution." on CUDA); under torch.compile they are quoted
# inside dynamo's own error
_NO_KERNEL = re.compile(r"(?i)no (viable|available) (backend|kernel)[^.'\"\n]*")
_KERNEL_NEEDS = (
    "flash needs no attention mask (references of different sizes add one) and, on CUDA, fp16 or bf16 on an "
    "Ampere or newer GPU; efficient needs a CUDA GPU; math runs everywhere; auto lets torch pick one that can run"
)


def _sdp_backend(name: str):
    """torch's SDPBackend for `name`, None for "auto"."""
    from torch.nn.attention import SDPBackend

    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }.get(check_sdpa_backend(name))


@contextlib.contextmanager
def sdpa_context(name: str):
    """Within this block SDPA uses backend `name` (a no-op for "auto"). A forced kernel that cannot take the inputs
    raises an InputError that says what each kernel needs, instead of torch's bare "no viable backend"."""
    from torch.nn.attention import sdpa_kernel

    backend = _sdp_backend(name)
    if backend is None:
        yield
        return
    try:
        with sdpa_kernel(backend):
            yield
    except RuntimeError as exc:
        said = _NO_KERNEL.search(str(exc))
        if said is None:
            raise
        raise InputError(
            f"sdpa_backend {name!r} cannot run the DiT's attention here ({_KERNEL_NEEDS}). Choose another "
            f"sdpa_backend. torch said: {said.group(0)}."
        ) from exc


# Dynamo keys its cache on the code of JointTransformerBlock.forward, shared by every block: SD3.5-M has three
# kinds (dual-attention, plain, the context_pre_only last one), each recompiled once more for dynamic shapes and
# again per batch or token count (t2i / edit / another size). torch's default of 8 entries runs out and the rest
# of the blocks silently fall back to eager, so allow more.
RECOMPILE_LIMIT = 64


def compile_blocks(transformer, **compile_kwargs) -> None:
    """`torch.compile` each transformer block in place (regional compilation); kwargs go to torch.compile.
    The first forward at each new shape compiles (seconds to minutes); later ones run the compiled code."""
    _allow_recompiles()
    transformer.compile_repeated_blocks(**compile_kwargs)


def _allow_recompiles() -> None:
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)


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


# ---- switches for one sampling run (the ComfyUI speed node): on for the run, undone after it ---------------
# transformer -> {(compile backend, sdpa backend): each block's compiled call}. Kept with the DiT (weakly: they go
# when the model goes) so that a new seed, a re-queue or a second handle with the same switches compiles nothing new.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _under_kernel(call, name: str):
    """`call` with SDPA backend `name` forced inside it. Inside, not around: dynamo keeps one code cache for every
    compiled block call, and a graph traced under one forced kernel would otherwise serve another; traced inside,
    the kernel is part of the graph and of its guards."""
    backend = _sdp_backend(name)
    if backend is None:
        return call

    def run(*args, **kwargs):
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(backend):
            return call(*args, **kwargs)

    return run


def _compiled_calls(transformer, backend, sdpa_backend: str) -> list:
    """Each block's call compiled with `backend` (as `nn.Module.compile` does: regional compilation), with
    `sdpa_backend` forced inside; made on first use and kept with the DiT."""
    import torch

    cache = _COMPILED.setdefault(transformer, {})
    key = (backend, sdpa_backend)
    if key not in cache:
        _allow_recompiles()
        cache[key] = [
            torch.compile(_under_kernel(block._call_impl, sdpa_backend), backend=backend)
            for block in transformer.transformer_blocks
        ]
    return cache[key]


@dataclass(frozen=True)
class Switches:
    """The DiT speed switches of one model handle; the defaults change nothing.

    compile: run the blocks through `torch.compile(backend=compile_backend)` (regional, as `compile_blocks`).
    sdpa_backend: "auto" keeps the DiT's own setting (torch's choice unless the loader forced one).
    step_cache: the First Block Cache threshold for `DeepGenPipeline.sample`, 0 = off."""

    compile: bool = False
    sdpa_backend: str = "auto"
    step_cache: float = 0.0
    compile_backend: object = "inductor"  # a name or a torch.compile backend callable

    def __post_init__(self):
        check_sdpa_backend(self.sdpa_backend)
        if not self.step_cache >= 0:
            raise InputError(f"step_cache must be 0 (off) or a positive threshold such as 0.1, got {self.step_cache}")

    @contextlib.contextmanager
    def applied(self, transformer):
        """Within this block `transformer` runs with the compile and SDPA switches; on exit its blocks and SDPA
        setting are what they were, so another handle on the same weights runs as if this never happened."""
        blocks = list(transformer.transformer_blocks)
        before = [getattr(b, "_compiled_call_impl", None) for b in blocks], transformer.sdpa_backend
        backend = transformer.sdpa_backend if self.sdpa_backend == "auto" else self.sdpa_backend
        try:
            transformer.sdpa_backend = backend
            if self.compile:
                for block, call in zip(blocks, _compiled_calls(transformer, self.compile_backend, backend)):
                    block._compiled_call_impl = call
            yield
        finally:
            for block, call in zip(blocks, before[0]):
                block._compiled_call_impl = call
            transformer.sdpa_backend = before[1]
