"""Interruption: ComfyUI's global flag inside ComfyUI, a module flag (thread-safe) outside."""

from __future__ import annotations

import threading

from .detection import comfy_module, in_comfyui

__all__ = [
    "DeepGenInterrupted",
    "check_interrupt",
    "interrupted",
    "request_interrupt",
    "clear_interrupt",
    "interrupt_exception_types",
]


class DeepGenInterrupted(Exception):
    """Raised by :func:`check_interrupt` outside ComfyUI after :func:`request_interrupt`.

    Inside ComfyUI the native ``comfy.model_management.InterruptProcessingException`` is raised
    instead, so the executor reports ``execution_interrupted`` rather than an error.  Catch
    ``interrupt_exception_types()`` when code must handle both; prefer ``finally`` for cleanup.
    """


_interrupt_flag = threading.Event()


def check_interrupt() -> None:
    """Raise if the user asked to stop; call it once per step in every long loop.

    Inside ComfyUI: ``comfy.model_management.throw_exception_if_processing_interrupted()``.
    Outside: raises :class:`DeepGenInterrupted` if the module flag is set, and clears the flag (as
    ComfyUI does) so the next run starts clean.
    """
    if in_comfyui():
        comfy_module("comfy.model_management").throw_exception_if_processing_interrupted()
        return
    if _interrupt_flag.is_set():
        _interrupt_flag.clear()
        raise DeepGenInterrupted("DeepGen processing interrupted")


def interrupted() -> bool:
    """Poll without raising (and without clearing the flag)."""
    if in_comfyui():
        return bool(comfy_module("comfy.model_management").processing_interrupted())
    return _interrupt_flag.is_set()


def request_interrupt() -> None:
    """Ask running loops to stop (thread-safe).  Inside ComfyUI this sets ComfyUI's global flag."""
    if in_comfyui():
        comfy_module("comfy.model_management").interrupt_current_processing(True)
    else:
        _interrupt_flag.set()


def clear_interrupt() -> None:
    if in_comfyui():
        comfy_module("comfy.model_management").interrupt_current_processing(False)
    else:
        _interrupt_flag.clear()


def interrupt_exception_types() -> tuple[type[BaseException], ...]:
    """Exception classes that mean "interrupted" in the current environment."""
    types: list[type[BaseException]] = [DeepGenInterrupted]
    if in_comfyui():
        exc = getattr(comfy_module("comfy.model_management"), "InterruptProcessingException", None)
        if isinstance(exc, type):
            types.append(exc)
    return tuple(types)
