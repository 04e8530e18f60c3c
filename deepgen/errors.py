"""The one family of user-facing errors: what is wrong with what the user gave us, and what to do about it.

Every error a user can cause (a file, a config, a data set, an image, a size, a folder, a URL) is a
``DeepGenError``. Its message is the sentence the user reads: the CLI prints ``error: <message>`` and exits 2,
and ComfyUI shows it in its error dialog. Anything else that escapes is a bug in this project.

The subclasses keep their historical built-in bases (``ValueError``, ``RuntimeError``, ``OSError``), so code
that caught those still does.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable


class DeepGenError(Exception):
    """Base of every error that a user's input can cause; ``str(error)`` is the message to show."""


class CheckpointError(DeepGenError, ValueError):
    """A checkpoint, model folder or training checkpoint that cannot be loaded, saved or resumed."""


class ConfigError(DeepGenError, ValueError):
    """An invalid configuration (training config, a config inside a checkpoint)."""


class DataError(DeepGenError, ValueError):
    """A data set, prompt file or manifest that cannot be used."""


class InputError(DeepGenError, ValueError):
    """An argument or widget value that cannot be used (an empty prompt, a latent of the wrong shape...)."""


class InputImageError(InputError):
    """An image file or tensor that cannot be used as an input (unreadable, truncated, too large...)."""


class SizeError(InputError):
    """A size the model cannot take."""


class NotFoundError(DeepGenError, FileNotFoundError):
    """A file or folder the user named does not exist (the message says where we looked)."""


class UnsafePathError(DeepGenError, ValueError):
    """A name that would lead outside the folder it must stay in (``..``, absolute, a symlink pointing out)."""


class ResourceError(DeepGenError, OSError):
    """Something outside the inputs failed: a folder that cannot be written, a full disk, an unreachable host."""


class TrainingError(DeepGenError, RuntimeError):
    """A training run that cannot start or continue; the message says what to change."""


def format_keys(keys, limit: int = 12) -> str:
    """``a, b, c, … (N more)``: names in an error message, sorted and cut short."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def one_line(message: BaseException | str) -> str:
    """A message (or an exception's) on one line: detail lines joined with '; '."""
    lines = [line.strip().removeprefix("- ") for line in str(message).splitlines() if line.strip()]
    return "; ".join(lines) or (type(message).__name__ if isinstance(message, BaseException) else "")


def user_message(exc: BaseException) -> str | None:
    """The line to print for an error the user can fix, or None for a bug.

    OS errors about the user's files (missing, not allowed, disk full) count as the user's: they name the path.
    """
    if isinstance(exc, DeepGenError):
        return one_line(exc)
    if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)):
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        reason = exc.strerror or one_line(exc)
        return f"{reason}{where}"
    return None


def run_cli(func: Callable[[], int], *, debug: bool | None = None, stream=None) -> int:
    """Run a CLI command: user errors print one ``error:`` line and return 2; Ctrl-C returns 130; a bug prints
    one line asking for ``--debug`` and returns 1. With ``debug`` (or ``DEEPGEN_DEBUG=1``) tracebacks are shown."""
    stream = stream or sys.stderr
    if debug is None:
        debug = os.environ.get("DEEPGEN_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        return func()
    except KeyboardInterrupt:
        print("interrupted", file=stream)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if debug:
            traceback.print_exc(file=stream)
        message = user_message(exc)
        if message is not None:
            print(f"error: {message}", file=stream)
            return 2
        print(
            f"error: unexpected {type(exc).__name__}: {one_line(exc)} (a bug in ComfyUI-DeepGen: run again with "
            "--debug for the traceback and report it)",
            file=stream,
        )
        return 1
