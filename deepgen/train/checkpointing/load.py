"""Reading a checkpoint (every file with ``weights_only=True``), and ``resume = "auto"``: the newest that loads."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...errors import CheckpointError
from .layout import (
    CHECKPOINT_PREFIX,
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    OPTIMIZER_FILE,
    RNG_FILE,
    STATE_FILE,
    TRAINABLE_FILE,
    PathLike,
    find_latest_checkpoint,
    list_checkpoints,
    parse_step,
)


@dataclass
class Checkpoint:
    """A loaded checkpoint (see :func:`load_checkpoint`)."""

    path: Path
    step: int
    trainable: dict[str, Tensor]
    optimizer: dict | None = None
    lr_scheduler: dict | None = None
    grad_scaler: dict | None = None
    rng_states: list[dict] = field(default_factory=list)
    data_position: dict | None = None
    config: dict | None = None
    extra: dict = field(default_factory=dict)


class _UnreadableCheckpoint(CheckpointError):
    """A checkpoint file that cannot be read; ``problem`` is the message without the advice."""

    def __init__(self, message: str, problem: str):
        super().__init__(message)
        self.problem = problem


def _unreadable(p: Path, name: str, e: BaseException) -> CheckpointError:
    """The error for file ``name`` of checkpoint ``p`` that cannot be read, naming the earlier ones to use."""
    reason = " ".join(str(e).split())
    if ". " in reason[20:]:  # the first sentence is the reason; libraries append advice that is not ours
        reason = reason[: 20 + reason[20:].index(". ")]
    reason = (reason[:157] + "…" if len(reason) > 160 else reason) or type(e).__name__
    problem = (
        f"{name} in the checkpoint {p} cannot be read ({type(e).__name__}: {reason}): it is truncated, "
        "damaged or not a DeepGen training checkpoint file"
    )
    mine = parse_step(p.name)
    earlier = [c.name for step, c in list_checkpoints(p.parent) if c != p and (mine is None or step < mine)][-3:]
    todo = (
        f"resume from an earlier checkpoint (resume = '{p.parent / earlier[-1]}'; others: "
        f"{', '.join(earlier[:-1]) or 'none'}) or start anew (resume = 'no')"
        if earlier
        else "start anew with resume = 'no' (or another output_dir)"
    )
    return _UnreadableCheckpoint(f"{problem}; {todo}", problem)


def _read_json(p: Path, name: str) -> Any:
    try:
        return json.loads((p / name).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise _unreadable(p, name, e) from e


def _torch_load(p: Path, name: str, map_location: Any) -> Any:
    try:
        data = torch.load(p / name, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a truncated zip gives OSError(EINVAL), RuntimeError, pickle errors...
        raise _unreadable(p, name, e) from e
    if not isinstance(data, dict):
        raise _unreadable(p, name, TypeError(f"holds a {type(data).__name__}, not a dict"))
    return data


def _load_trainable(p: Path, map_location: Any) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    device = map_location if isinstance(map_location, str) else "cpu"
    if not (p / TRAINABLE_FILE).is_file():
        raise _unreadable(p, TRAINABLE_FILE, FileNotFoundError("missing"))
    try:
        return load_file(str(p / TRAINABLE_FILE), device=device)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends
        raise _unreadable(p, TRAINABLE_FILE, e) from e


def load_checkpoint(
    path: PathLike, *, map_location: Any = "cpu", load_trainable: bool = True, load_optimizer: bool = True
) -> Checkpoint:
    """Load a checkpoint folder, or the latest one if ``path`` is an output folder.

    Everything is read with ``weights_only=True``.  Raises :class:`CheckpointError` if none is found, or if a
    file of it is truncated, damaged or foreign (the message names the file and what to do).
    """
    p = Path(path)
    if not (p / STATE_FILE).is_file():
        latest = find_latest_checkpoint(p)
        if latest is None:
            raise CheckpointError(
                f"No complete checkpoint in {p} (looked for {CHECKPOINT_PREFIX}*/ with {STATE_FILE})."
            )
        p = latest
    state = _read_json(p, STATE_FILE)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{p} is not a DeepGen training checkpoint ({STATE_FILE} format {found!r}); "
            "point resume / init_from at a folder written by deepgen train."
        )
    try:
        version, step = int(state.get("format_version", 0)), int(state["step"])
    except (KeyError, TypeError, ValueError) as e:
        raise _unreadable(p, STATE_FILE, e) from e
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{p} has format version {state['format_version']}; this code reads ≤ "
            f"{FORMAT_VERSION}. Update ComfyUI-DeepGen."
        )
    trainable = _load_trainable(p, map_location) if load_trainable else {}
    opt = {}
    if load_optimizer and (p / OPTIMIZER_FILE).is_file():
        opt = _torch_load(p, OPTIMIZER_FILE, map_location)
    rng = _torch_load(p, RNG_FILE, "cpu") if (p / RNG_FILE).is_file() else {}
    config = _read_json(p, CONFIG_FILE) if (p / CONFIG_FILE).is_file() else None
    data_position, extra = state.get("data_position"), state.get("extra") or {}
    if not isinstance(data_position, (dict, type(None))) or not isinstance(extra, dict):
        raise _unreadable(p, STATE_FILE, TypeError("data_position / extra are not objects"))
    return Checkpoint(
        path=p,
        step=step,
        trainable=trainable,
        optimizer=opt.get("optimizer"),
        lr_scheduler=opt.get("lr_scheduler"),
        grad_scaler=opt.get("grad_scaler"),
        rng_states=list(rng.get("per_rank", [])),
        data_position=data_position,
        config=config,
        extra=extra,
    )


def load_latest_intact(
    output_dir: PathLike, *, warn: Callable[[str], None] | None = None, **kwargs
) -> Checkpoint | None:
    """``resume = "auto"``: the newest checkpoint of ``output_dir`` that loads, or None if there is none.

    A checkpoint that cannot be read (a truncated or foreign file) is skipped with one ``warn`` line naming it,
    and the next older complete one is tried; if every one is broken, :class:`CheckpointError` names them.
    """
    out = Path(output_dir)
    first = find_latest_checkpoint(out)
    if first is None:
        return None
    candidates = [first] + [
        c
        for _, c in reversed(list_checkpoints(out))
        if c != first and (parse_step(c.name) or 0) < (parse_step(first.name) or 0)
    ]
    broken = []
    for candidate in candidates:
        try:
            ckpt = load_checkpoint(candidate, **kwargs)
        except CheckpointError as e:
            broken.append(candidate.name)
            if warn is not None:
                following = candidates[len(broken)].name if len(broken) < len(candidates) else None
                warn(
                    f"skipping the broken checkpoint {candidate.name}: {getattr(e, 'problem', e)}"
                    + (f"; resuming from the earlier {following} instead" if following else "")
                )
            continue
        return ckpt
    raise CheckpointError(
        f"no checkpoint in {out} can be read ({', '.join(broken)} are truncated or damaged); "
        "delete them to start anew, or set resume = 'no' with another output_dir"
    )
