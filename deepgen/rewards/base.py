"""Reward base class, reward registry and the lazy model cache.

Why: the RL stage, the RewardScore node and user code all need the same contract -
``reward(images, prompts, group_ids=None) -> torch.Tensor (B,)`` - and a way to plug in a
reward by name. Heavy reward models are loaded once, on first use, and shared between
reward objects that ask for the same (path, device, dtype): in this module's cache, or in the
model store that the caller set with :func:`use_model_store` (the ComfyUI nodes hand theirs to
ComfyUI's model manager, so it can evict and free them; this library never imports ComfyUI).

NaN in a reward's output means "not applicable to this sample" (e.g. OCR on a prompt with
no quoted text); the mixture renormalises weights over the applicable rewards.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import threading
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Protocol, Sequence

import torch

from ..errors import NotFoundError
from .images import to_pil_images

__all__ = [
    "Reward",
    "FunctionReward",
    "RewardModelNotFound",
    "register_reward",
    "unregister_reward",
    "create_reward",
    "available_rewards",
    "canonical_reward_name",
    "cached_model",
    "clear_model_cache",
    "ModelStore",
    "use_model_store",
    "require_model_dir",
    "default_device",
]


class RewardModelNotFound(NotFoundError):
    """A reward model folder is missing or incomplete (nothing is ever downloaded for you)."""


class Reward:
    """Base class: subclasses set ``name`` and implement :meth:`score` on PIL images.

    ``__call__`` accepts PIL images or a ComfyUI IMAGE tensor (B,H,W,3 in 0..1), broadcasts a
    single prompt, and checks that ``score`` returned one float per image.
    """

    name: str = "reward"

    def score(self, images: list, prompts: list[str], group_ids: list | None) -> Any:
        raise NotImplementedError

    def __call__(self, images, prompts, group_ids=None) -> torch.Tensor:
        pil = to_pil_images(images)
        prompts = _broadcast_prompts(prompts, len(pil))
        gids = _normalise_group_ids(group_ids, len(pil))
        out = self.score(pil, prompts, gids)
        return _as_scores(out, len(pil), self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class FunctionReward(Reward):
    """Wraps a plain callable ``fn(images, prompts[, group_ids])`` as a :class:`Reward`."""

    def __init__(self, name: str, fn: Callable):
        self.name = name
        self.fn = fn
        try:
            params = inspect.signature(fn).parameters
            self._wants_groups = "group_ids" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        except (TypeError, ValueError):
            self._wants_groups = True

    def score(self, images, prompts, group_ids):
        if self._wants_groups:
            return self.fn(images, prompts, group_ids=group_ids)
        return self.fn(images, prompts)


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Any] = {}
_ALIASES = {"unifiedreward_think": "preference", "clip_sim": "clip"}  # official reward names


def canonical_reward_name(name: str) -> str:
    """Maps the official names (``unifiedreward_think``, ``clip_sim``) to ours."""
    key = str(name).strip()
    return _ALIASES.get(key, key)


def register_reward(name: str, obj: Any = None, *, overwrite: bool = True):
    """Registers a reward under ``name``.

    ``obj`` may be a :class:`Reward` subclass (instantiated with the kwargs given to
    :func:`create_reward`), a :class:`Reward` instance (shared), or a plain callable
    ``fn(images, prompts, group_ids=None) -> (B,)`` (wrapped in :class:`FunctionReward`).
    Without ``obj`` it returns a decorator.
    """
    if obj is None:
        return lambda o: register_reward(name, o, overwrite=overwrite) or o
    key = canonical_reward_name(name)
    if not key:
        raise ValueError("reward name must be a non-empty string")
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"reward {key!r} is already registered")
    if not (isinstance(obj, type) or callable(obj)):
        raise TypeError(f"cannot register {obj!r} as a reward: not a class or callable")
    _REGISTRY[key] = obj
    return obj


def unregister_reward(name: str) -> None:
    """Removes a registered reward (no error if absent)."""
    _REGISTRY.pop(canonical_reward_name(name), None)


def registered_reward(name: str) -> Any:
    """What is registered under `name` (a Reward subclass, instance or callable), or None."""
    return _REGISTRY.get(canonical_reward_name(name))


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


def create_reward(name: str, **kwargs) -> Reward:
    """Builds the registered reward ``name`` (construction never loads a model)."""
    key = canonical_reward_name(name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown reward {name!r}; available rewards: {', '.join(available_rewards()) or '(none)'}")
    obj = _REGISTRY[key]
    if isinstance(obj, type):
        inst = obj(**kwargs)
    elif isinstance(obj, Reward):
        if kwargs:
            raise TypeError(f"reward {key!r} is a registered instance and takes no arguments")
        inst = obj
    else:
        if kwargs:
            raise TypeError(f"reward {key!r} is a registered function and takes no arguments")
        inst = FunctionReward(key, obj)
    if not isinstance(inst, Reward):
        inst = FunctionReward(key, inst)
    return inst


# --------------------------------------------------------------------------- model cache

_CACHE: dict[Hashable, Any] = {}
_CACHE_LOCK = threading.Lock()


class ModelStore(Protocol):
    """Where reward models live instead of this module's cache: ``get`` returns the object for ``key``, built with
    ``loader(some device)`` the first time and ready on ``device`` when returned."""

    def get(self, key: Hashable, loader: Callable[[Any], Any], device: Any) -> Any: ...


_STORE: contextvars.ContextVar[ModelStore | None] = contextvars.ContextVar("deepgen_reward_model_store", default=None)


@contextlib.contextmanager
def use_model_store(store: ModelStore | None) -> Iterator[None]:
    """Within the block, :func:`cached_model` asks ``store`` instead of this module's cache."""
    token = _STORE.set(store)
    try:
        yield
    finally:
        _STORE.reset(token)


def cached_model(key: Hashable, loader: Callable[[Any], Any], device: Any = None) -> Any:
    """The object cached under ``key``, built with ``loader(device)`` the first time.

    ``device`` is where the caller will run it; a store set with :func:`use_model_store` may build it elsewhere
    (its offload device) and bring it onto ``device`` on each call."""
    store = _STORE.get()
    if store is not None:
        return store.get(key, loader, device)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = loader(device)
        return _CACHE[key]


def clear_model_cache() -> None:
    """Drops every cached reward model (frees memory; the next call reloads)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def require_model_dir(path, what: str, repo_id: str, required: Sequence[str] = ("config.json",)) -> Path:
    """Checks a local model folder and raises a helpful :class:`RewardModelNotFound` if not usable."""
    p = Path(path).expanduser()
    missing = [f for f in required if not (p / f).is_file()] if p.is_dir() else list(required)
    if missing:
        state = "is missing" if not p.is_dir() else f"lacks {', '.join(missing)}"
        raise RewardModelNotFound(
            f"{what} model folder '{p}' {state}. Expected a transformers save_pretrained folder "
            f"(with {', '.join(required)}). Nothing is downloaded automatically; get it yourself, e.g.\n"
            f"    hf download {repo_id} --local-dir {p}\n"
            f"(older huggingface_hub: huggingface-cli download {repo_id} --local-dir {p})"
        )
    return p.resolve()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- helpers


def _broadcast_prompts(prompts, n: int) -> list[str]:
    if isinstance(prompts, str):
        return [prompts] * n
    prompts = [str(p) for p in prompts]
    if len(prompts) == 1 and n > 1:
        return prompts * n
    if len(prompts) != n:
        raise ValueError(f"got {n} images but {len(prompts)} prompts")
    return prompts


def _normalise_group_ids(group_ids, n: int):
    if group_ids is None:
        return None
    if isinstance(group_ids, torch.Tensor):
        group_ids = group_ids.tolist()
    group_ids = list(group_ids)
    if len(group_ids) != n:
        raise ValueError(f"got {n} images but {len(group_ids)} group ids")
    return group_ids


def _as_scores(out, n: int, name: str) -> torch.Tensor:
    t = out if isinstance(out, torch.Tensor) else torch.as_tensor(list(out), dtype=torch.float32)
    t = t.detach().to("cpu", torch.float32).reshape(-1)
    if t.numel() != n:
        raise ValueError(f"reward {name!r} returned {t.numel()} scores for {n} images")
    return t
