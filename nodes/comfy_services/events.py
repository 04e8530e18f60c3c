"""Websocket events to the front end (``PromptServer`` inside ComfyUI) and to Python listeners (everywhere)."""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable

from .detection import comfy_module, in_comfyui

log = logging.getLogger(__package__)  # the package's logger, as before the split

__all__ = ["EVENT_PREFIX", "send_event", "send_progress_text", "add_event_listener", "remove_event_listener"]

EVENT_PREFIX = "deepgen1."
_listeners: list[Callable[[str, dict], None]] = []


def add_event_listener(fn: Callable[[str, dict], None]) -> None:
    """Call ``fn(event, payload)`` for every :func:`send_event` (both inside and outside ComfyUI)."""
    if fn not in _listeners:
        _listeners.append(fn)


def remove_event_listener(fn: Callable[[str, dict], None]) -> None:
    if fn in _listeners:
        _listeners.remove(fn)


def _jsonable(value: Any) -> Any:
    """JSON-safe copy: tensors/numpy scalars become numbers, NaN/inf become None (JSON.parse rejects NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        return _jsonable(value.tolist())
    if hasattr(value, "item"):
        return _jsonable(value.item())
    raise TypeError(f"cannot send {type(value).__name__} in a websocket event")


def send_event(event: str, payload: dict, broadcast: bool = False) -> None:
    """Send a custom websocket event to the front end.

    Inside ComfyUI: ``PromptServer.instance.send_sync(event, payload, sid)`` with ``sid`` the client
    that queued the prompt (``PromptServer.instance.client_id``; every client if ``broadcast`` or
    none is known).  Outside ComfyUI: only the Python listeners are called.  ``event`` must start
    with ``deepgen1.``; the payload is made JSON-safe first (NaN/inf become null).
    """
    if not isinstance(event, str) or not event.startswith(EVENT_PREFIX) or event == EVENT_PREFIX:
        raise ValueError(f"event name {event!r} must start with {EVENT_PREFIX!r}")
    if not isinstance(payload, dict):
        raise TypeError("event payload must be a dict")
    data = _jsonable(payload)
    for fn in list(_listeners):
        try:
            fn(event, data)
        except Exception:  # a broken listener must not break a render or a training run
            log.exception("deepgen event listener failed for %s", event)
    if not in_comfyui():
        return
    server = _prompt_server()
    if server is None:
        return
    sid = None if broadcast else getattr(server, "client_id", None)
    server.send_sync(event, data, sid)


def send_progress_text(text: str, node_id: str | None) -> None:
    """Free-text status under the node (``PromptServer.send_progress_text``); no-op outside ComfyUI."""
    if node_id is None or not in_comfyui():
        return
    server = _prompt_server()
    if server is not None and hasattr(server, "send_progress_text"):
        server.send_progress_text(str(text), str(node_id), getattr(server, "client_id", None))


def _prompt_server():
    """``PromptServer.instance`` or None (headless in-process use has no server)."""
    try:
        mod = comfy_module("server")
    except ImportError:
        return None
    cls = getattr(mod, "PromptServer", None)
    return getattr(cls, "instance", None)
