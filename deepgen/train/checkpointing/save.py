"""Writing a checkpoint: the output folder check, the atomic write of one step's folder, then ``latest``."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import CheckpointError, ResourceError
from .. import checkpointing as package  # holds the test hook _after_file_hook
from .layout import (
    CHECKPOINT_PREFIX,
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    LATEST_FILE,
    OPTIMIZER_FILE,
    OPTIMIZER_SHARDS_DIR,
    RNG_FILE,
    SHARDS_PREFIX,
    STATE_FILE,
    TMP_PREFIX,
    TRAINABLE_FILE,
    TRASH_PREFIX,
    PathLike,
    checkpoint_dir_name,
    find_latest_checkpoint,
    prune_checkpoints,
    trainable_parameters,
)
from .rng import capture_rng_state, gather_rng_states

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _os_reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; rename durability is then up to the OS
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def check_output_dir_writable(path: PathLike) -> Path:
    """Create ``path`` if needed and prove a file can be written there; else raise :class:`CheckpointError`.

    Call it before training starts so a bad ``output_dir`` fails in a second, not at the first save.
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise CheckpointError(f"Output folder {p} exists but is a file; choose another output_dir.")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(
            f"Cannot create the output folder {p} ({_os_reason(e)}); choose another "
            "output_dir or fix the permissions of its parent."
        ) from e
    probe = p / f".write-test-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(probe, "wb") as f:
            f.write(b"deepgen")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise ResourceError(
                f"disk full: cannot write in the output folder {p} ({_os_reason(e)}); "
                "free space, or choose another output_dir"
            ) from e
        raise CheckpointError(
            f"The output folder {p} is not writable ({_os_reason(e)}); choose another "
            "output_dir or fix its permissions."
        ) from e
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return p


def _cpu_tensors(trainable: Mapping[str, Tensor] | nn.Module) -> dict[str, Tensor]:
    """The tensors to save, on the CPU, each with storage of its own (safetensors refuses shared storage)."""
    if isinstance(trainable, nn.Module):
        trainable = trainable_parameters(trainable)
    out: dict[str, Tensor] = {}
    seen_storage: set[int] = set()
    for name, t in trainable.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"trainable[{name!r}] is a {type(t).__name__}, not a tensor")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.untyped_storage().data_ptr() in seen_storage or not t.is_contiguous():
            t = t.contiguous().clone()
        seen_storage.add(t.untyped_storage().data_ptr())
        out[name] = t
    if not out:
        raise CheckpointError("nothing to save: the trainable parameter dict is empty")
    return out


def _written(path: Path) -> None:
    """Make a file just written into the temp folder durable; tests interrupt the write here."""
    _fsync_file(path)
    if package._after_file_hook is not None:
        package._after_file_hook(path)


def _remove_stale(output_dir: Path, keep: Path | None = None) -> None:
    """Remove the temp, trash and shard folders that a crashed save left behind (all but ``keep``)."""
    prefixes = (TMP_PREFIX + CHECKPOINT_PREFIX, TRASH_PREFIX, SHARDS_PREFIX)
    for p in output_dir.iterdir():
        if p.is_dir() and p.name.startswith(prefixes) and (keep is None or p != keep):
            shutil.rmtree(p, ignore_errors=True)


def _write_error(e: OSError, final: Path, out: Path, previous: Path | None) -> ResourceError:
    """The one-line error of a checkpoint write that failed (the temp folder is already removed)."""
    kept = (
        f"the previous checkpoint {previous.name} is intact" if previous is not None else "no earlier checkpoint exists"
    )
    if e.errno in _DISK_FULL:
        what = f"disk full while writing checkpoint {final.name} in {out} ({_os_reason(e)})"
        todo = "free space and run the same command to resume"
    else:
        where = f": {e.filename}" if e.filename else ""
        what = f"cannot write checkpoint {final.name} in {out} ({_os_reason(e)}{where})"
        todo = "fix the output folder and run the same command to resume"
    if previous is None:
        todo = todo.replace(" to resume", " again")
    return ResourceError(f"{what}; {kept}; nothing of the new checkpoint was kept; {todo}")


def _write_files(
    folder: Path,
    step: int,
    tensors: dict[str, Tensor],
    optimizer: Any,
    lr_scheduler: Any,
    grad_scaler: Any,
    rng_states: Sequence[Mapping] | None,
    config_json: str | None,
    state_json: str,
    shards: Path | None = None,
) -> None:
    """Every file of a checkpoint into ``folder``, each made durable; ``state.json`` last marks it complete."""
    from safetensors.torch import save_file

    if shards is not None:  # written by every process beside the temp folder: one rename moves it in
        for f in sorted(q for q in shards.rglob("*") if q.is_file()):
            _fsync_file(f)
        os.rename(shards, folder / OPTIMIZER_SHARDS_DIR)

    save_file(tensors, str(folder / TRAINABLE_FILE), metadata={"format": FORMAT, "step": str(int(step))})
    _written(folder / TRAINABLE_FILE)
    if optimizer is not None or lr_scheduler is not None or grad_scaler is not None:
        torch.save(
            {
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
                "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else None,
            },
            folder / OPTIMIZER_FILE,
        )
        _written(folder / OPTIMIZER_FILE)
    torch.save({"per_rank": list(rng_states) if rng_states is not None else [capture_rng_state()]}, folder / RNG_FILE)
    _written(folder / RNG_FILE)
    if config_json is not None:
        (folder / CONFIG_FILE).write_text(config_json, encoding="utf-8")
        _written(folder / CONFIG_FILE)
    (folder / STATE_FILE).write_text(state_json, encoding="utf-8")
    _written(folder / STATE_FILE)
    _fsync_dir(folder)


def save_checkpoint(
    output_dir: PathLike,
    step: int,
    *,
    trainable: Mapping[str, Tensor] | nn.Module,
    optimizer: Any = None,
    lr_scheduler: Any = None,
    grad_scaler: Any = None,
    data_position: Mapping | None = None,
    config: Mapping | None = None,
    rng_states: Sequence[Mapping] | None = None,
    extra: Mapping | None = None,
    keep_last: int | None = None,
    shards: Path | None = None,
) -> Path:
    """Write ``output_dir/checkpoint-<step>`` atomically and point ``latest`` at it; returns its path.

    Call on the main process only (or use :func:`save_checkpoint_accelerate`).  ``trainable`` is a
    ``{name: tensor}`` dict (or a module, whose ``requires_grad`` parameters are taken).  ``rng_states``
    defaults to this process's state as rank 0.  ``data_position``, ``config`` and ``extra`` must be
    JSON-able.  ``keep_last`` ≥ 1 prunes older checkpoints afterwards (None/0 keeps all).  Stale temp
    folders of crashed writes are removed first (one trainer per output folder).  Saving a step that
    already exists replaces it.  ``shards``: a folder in ``output_dir`` holding a sharded optimizer state
    (FSDP runs, written by every process); it moves into the checkpoint as ``optimizer_shards/``.
    """
    if step < 0:
        raise ValueError(f"step must be ≥ 0, got {step}")
    out = check_output_dir_writable(output_dir)
    _remove_stale(out, keep=shards)
    final = out / checkpoint_dir_name(step)
    tmp = out / f"{TMP_PREFIX}{final.name}-{os.getpid()}-{secrets.token_hex(4)}"
    tensors = _cpu_tensors(trainable)
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "data_position": dict(data_position) if data_position is not None else None,
        "extra": dict(extra) if extra is not None else {},
        "num_trainable_tensors": len(tensors),
        "num_trainable_elements": int(sum(t.numel() for t in tensors.values())),
        "has_optimizer": optimizer is not None or shards is not None,
        "optimizer_shards": shards is not None,
        "world_size": len(rng_states) if rng_states is not None else 1,
        "torch_version": torch.__version__,
    }
    try:
        state_json = json.dumps(state, indent=2)
        config_json = json.dumps(dict(config), indent=2) if config is not None else None
    except TypeError as e:
        raise TypeError(f"data_position, extra and config must be JSON-able: {e}") from e
    previous = find_latest_checkpoint(out)
    try:
        tmp.mkdir()
    except OSError as e:
        raise _write_error(e, final, out, previous) from e
    try:
        _write_files(
            tmp, step, tensors, optimizer, lr_scheduler, grad_scaler, rng_states, config_json, state_json, shards
        )
        if final.exists():  # re-saving a step: swap the old folder out
            trash = out / f"{TRASH_PREFIX}{final.name}-{secrets.token_hex(4)}"
            os.rename(final, trash)
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if shards is not None:
            shutil.rmtree(shards, ignore_errors=True)
        raise _write_error(e, final, out, previous) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if shards is not None:
            shutil.rmtree(shards, ignore_errors=True)
        raise
    try:
        _write_text_atomic(out / LATEST_FILE, final.name + "\n")
    except OSError as e:
        raise ResourceError(
            f"{_os_reason(e)} while pointing {out / LATEST_FILE} at {final.name}; the checkpoint itself is "
            f"complete: free space, then resume with resume = '{final}'"
        ) from e
    if keep_last:
        prune_checkpoints(out, keep_last)
    return final


def save_checkpoint_accelerate(
    accelerator: Any, output_dir: PathLike, step: int, *, trainable: Mapping[str, Tensor] | nn.Module, **kwargs
) -> Path | None:
    """:func:`save_checkpoint` from an ``accelerate.Accelerator`` run.  Call on **every** rank.

    Gathers every rank's RNG state (collective), saves on the main process only (a module is unwrapped
    first and its ``requires_grad`` parameters saved), then waits for everyone.  Returns the path on the
    main process, None elsewhere.  Other keyword arguments go to :func:`save_checkpoint`.
    """
    rng_states = gather_rng_states(accelerator)
    path = None
    if accelerator.is_main_process:
        if isinstance(trainable, nn.Module):
            trainable = trainable_parameters(accelerator.unwrap_model(trainable))
        path = save_checkpoint(output_dir, step, trainable=trainable, rng_states=rng_states, **kwargs)
    accelerator.wait_for_everyone()
    return path
