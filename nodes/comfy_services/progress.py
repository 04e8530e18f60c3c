"""Step progress for one node: ComfyUI's progress bar inside ComfyUI, a tqdm bar outside."""

from __future__ import annotations

from typing import Any, Callable

from .detection import comfy_module, in_comfyui
from .interrupt import check_interrupt

__all__ = ["Progress"]


class Progress:
    """Step progress for one node.

    Inside ComfyUI this wraps ``comfy.utils.ProgressBar`` (the node's bar in the UI, websocket
    ``progress``/``progress_state`` messages, previews; its hook also checks for interrupts).  Outside
    ComfyUI it drives a ``tqdm`` bar on stderr (silent if tqdm is missing or ``TQDM_DISABLE=1``).

    ``preview`` is ComfyUI's tuple ``(format, PIL.Image, max_size)`` with format ``"JPEG"``/``"PNG"``;
    it is ignored outside ComfyUI.  ``current``/``total`` are tracked in both modes and values are
    clamped to ``total`` like ComfyUI does.
    """

    def __init__(self, total: int, node_id: str | None = None, desc: str | None = None):
        self.total = int(total)
        self.current = 0
        self.node_id = node_id
        self._bar = None
        self._tqdm = None
        if in_comfyui():
            utils = comfy_module("comfy.utils")
            try:
                self._bar = utils.ProgressBar(self.total, node_id=node_id)
            except TypeError:  # cores older than the node_id argument
                self._bar = utils.ProgressBar(self.total)
        else:
            try:
                from tqdm.auto import tqdm

                self._tqdm = tqdm(total=self.total, desc=desc or "DeepGen", leave=False)
            except Exception:  # tqdm missing or unusable: stay silent
                self._tqdm = None

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps."""
        self.update_absolute(self.current + n)

    def update_absolute(self, value: int, total: int | None = None, preview: tuple | None = None) -> None:
        """Set the position to ``value`` (optionally a new ``total``) and show ``preview``."""
        if total is not None:
            self.total = int(total)
        value = min(int(value), self.total)
        if self._bar is not None:
            self._bar.update_absolute(value, total, preview)
        elif self._tqdm is not None:
            if total is not None and self._tqdm.total != self.total:
                self._tqdm.total = self.total
            self._tqdm.update(value - self._tqdm.n)
        self.current = value

    def callback(
        self,
        preview_fn: Callable[..., tuple | None] | None = None,
        zero_based: bool = True,
        check_interrupts: bool = True,
    ) -> Callable[..., None]:
        """A per-step callback ``cb(step, *args, total_steps=None, **kwargs)`` for sampler loops.

        The step index is 0-based by default (``step + 1`` steps are then done, like ComfyUI's
        ``latent_preview.prepare_callback``).  A ``total_steps``/``total`` keyword, or a fourth
        positional argument as in ComfyUI's ``callback(step, x0, x, total_steps)``, updates the total.
        ``preview_fn(step, *args, **kwargs)`` may return a preview tuple.  The callback also calls
        :func:`check_interrupt` (outside ComfyUI nothing else would).
        """

        def cb(step: int, *args: Any, **kwargs: Any) -> None:
            total = kwargs.get("total_steps", kwargs.get("total"))
            if total is None and len(args) >= 3 and isinstance(args[2], int):
                total = args[2]
            preview = preview_fn(step, *args, **kwargs) if preview_fn is not None else None
            self.update_absolute(int(step) + (1 if zero_based else 0), total, preview)
            if check_interrupts:
                check_interrupt()

        return cb

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
