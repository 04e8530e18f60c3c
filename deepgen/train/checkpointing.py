"""Training checkpoints: one folder per step, written atomically, loadable with ``weights_only=True``.

Layout of ``output_dir``::

    output_dir/
      latest                       text file: name of the newest complete checkpoint folder
      checkpoint-00001000/
        trainable.safetensors      the TRAINABLE parameters only, {name: tensor}, as they are (fp32 masters)
        optimizer.pt               {"optimizer", "lr_scheduler", "grad_scaler"} state dicts (torch.save)
        rng.pt                     {"per_rank": [rng state of rank 0, rank 1, ...]} (tensors, ints, floats)
        config.json                the run's config (TrainConfig.to_dict())
        state.json                 {"format", "format_version", "step", "data_position", "extra", ...}
      checkpoint-00002000/ ...
      .tmp-checkpoint-00003000-<pid>-<hex>/   an unfinished write (ignored, removed by the next save)

Atomicity: a checkpoint is written into a temporary folder in the same parent, every file and the
folder are fsync'ed, then the folder is renamed to ``checkpoint-<step>`` (one atomic rename), then
``latest`` is rewritten atomically (temp file + fsync + ``os.replace``).  A crash at any point leaves the
previous checkpoint and ``latest`` intact; :func:`find_latest_checkpoint` never returns a temp folder.
``keep_last`` older complete checkpoints are pruned only after ``latest`` points at the new one.

Everything loads with ``torch.load(weights_only=True)``: optimizer and LR-scheduler state dicts are
plain tensors/numbers/strings (the LR lambda is a plain object, see ``optim.py``), and RNG states are
stored as tensors and ints (python's ``random`` state as an int64 tensor, numpy's MT19937 keys as an
int64 tensor, torch CPU/CUDA states as uint8 tensors).

Why not ``accelerator.save_state``: it pickles the whole (wrapped) model including frozen weights — the
3B VLM and the VAE — into ``model.safetensors`` and names files by position.  Our own format keeps only
the trainable tensors, by name, in one safetensors file that the release loaders can read, and makes the
atomic-write/``latest`` guarantees explicit.  The price: with plain DDP (accelerate's multi-GPU default)
optimizer state is replicated, so saving it from the main process is complete; ZeRO/FSDP-sharded
optimizers are not supported by this format.  Per-rank RNG states are gathered to the main process
(:func:`gather_rng_states`, a collective) so each rank can restore its own.

With accelerate::

    path = save_checkpoint_accelerate(accelerator, out, step, trainable=model, optimizer=opt,
                                      lr_scheduler=sched, data_position=loader.state_dict(), config=cfg)
    ...
    ckpt = load_checkpoint(find_latest_checkpoint(out))
    restore_training_state(ckpt, params=trainable_parameters(accelerator.unwrap_model(model)),
                           optimizer=opt, lr_scheduler=sched, rank=accelerator.process_index)
    loader.load_state_dict(ckpt.data_position)

Build the optimizer with the same trainable parameters in the same order on resume: the optimizer
state is matched by position, and :func:`restore_training_state` checks the recorded parameter names.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CHECKPOINT_PREFIX",
    "LATEST_FILE",
    "TRAINABLE_FILE",
    "OPTIMIZER_FILE",
    "RNG_FILE",
    "CONFIG_FILE",
    "STATE_FILE",
    "CheckpointError",
    "Checkpoint",
    "check_output_dir_writable",
    "checkpoint_dir_name",
    "trainable_parameters",
    "capture_rng_state",
    "restore_rng_state",
    "gather_rng_states",
    "save_checkpoint",
    "save_checkpoint_accelerate",
    "list_checkpoints",
    "find_latest_checkpoint",
    "prune_checkpoints",
    "load_checkpoint",
    "load_latest_intact",
    "load_trainable_into",
    "restore_training_state",
]

FORMAT = "deepgen-train-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
LATEST_FILE = "latest"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"

PathLike = Union[str, os.PathLike]

# Test hook: called with the path of each file just written into the temp folder.
_after_file_hook: Callable[[Path], None] | None = None


from ..errors import CheckpointError, ResourceError  # noqa: E402 - a checkpoint that cannot be written, found or restored

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


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


# ----------------------------------------------------------------------------------------------------
# small file-system helpers


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
        raise CheckpointError(f"Cannot create the output folder {p} ({e.strerror or e}); choose another "
                              "output_dir or fix the permissions of its parent.") from e
    probe = p / f".write-test-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(probe, "wb") as f:
            f.write(b"deepgen")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise ResourceError(f"disk full: cannot write in the output folder {p} ({e.strerror or e}); free "
                                "space, or choose another output_dir") from e
        raise CheckpointError(f"The output folder {p} is not writable ({e.strerror or e}); choose another "
                              "output_dir or fix its permissions.") from e
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return p


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{int(step):08d}"


def _parse_step(name: str) -> int | None:
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    tail = name[len(CHECKPOINT_PREFIX):]
    return int(tail) if tail.isdigit() else None


# ----------------------------------------------------------------------------------------------------
# parameters and RNG


def trainable_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` of the parameters with ``requires_grad`` (unwrap DDP/accelerate first)."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU, CUDA if available), weights_only-loadable."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": py_gauss},
        "numpy": {"kind": str(np_kind), "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states restored for the devices present)."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        k = min(len(cuda), torch.cuda.device_count())
        for i in range(k):
            torch.cuda.set_rng_state(cuda[i].to(torch.uint8), i)


def gather_rng_states(accelerator: Any = None) -> list[dict]:
    """RNG states of all ranks, in rank order.  A collective: call it on every rank.

    Without an accelerator (or with one process) it is ``[capture_rng_state()]``.
    """
    local = capture_rng_state()
    if accelerator is None or getattr(accelerator, "num_processes", 1) == 1:
        return [local]
    from accelerate.utils import gather_object

    return list(gather_object([local]))


# ----------------------------------------------------------------------------------------------------
# save


def _cpu_tensors(trainable: Mapping[str, Tensor] | nn.Module) -> dict[str, Tensor]:
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
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen_storage or not t.is_contiguous():
            t = t.contiguous().clone()  # safetensors refuses shared storage
        seen_storage.add(t.untyped_storage().data_ptr())
        out[name] = t
    if not out:
        raise CheckpointError("nothing to save: the trainable parameter dict is empty")
    return out


def _written(path: Path) -> None:
    _fsync_file(path)
    if _after_file_hook is not None:
        _after_file_hook(path)


def _remove_stale(output_dir: Path) -> None:
    for p in output_dir.iterdir():
        if p.is_dir() and (p.name.startswith(TMP_PREFIX + CHECKPOINT_PREFIX) or p.name.startswith(TRASH_PREFIX)):
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(output_dir: PathLike, step: int, *, trainable: Mapping[str, Tensor] | nn.Module,
                    optimizer: Any = None, lr_scheduler: Any = None, grad_scaler: Any = None,
                    data_position: Mapping | None = None, config: Mapping | None = None,
                    rng_states: Sequence[Mapping] | None = None, extra: Mapping | None = None,
                    keep_last: int | None = None) -> Path:
    """Write ``output_dir/checkpoint-<step>`` atomically and point ``latest`` at it; returns its path.

    Call on the main process only (or use :func:`save_checkpoint_accelerate`).  ``trainable`` is a
    ``{name: tensor}`` dict (or a module, whose ``requires_grad`` parameters are taken).  ``rng_states``
    defaults to this process's state as rank 0.  ``data_position``, ``config`` and ``extra`` must be
    JSON-able.  ``keep_last`` ≥ 1 prunes older checkpoints afterwards (None/0 keeps all).  Stale temp
    folders of crashed writes are removed first (one trainer per output folder).  Saving a step that
    already exists replaces it.
    """
    if step < 0:
        raise ValueError(f"step must be ≥ 0, got {step}")
    out = check_output_dir_writable(output_dir)
    _remove_stale(out)
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
        "has_optimizer": optimizer is not None,
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
        from safetensors.torch import save_file

        save_file(tensors, str(tmp / TRAINABLE_FILE), metadata={"format": FORMAT, "step": str(int(step))})
        _written(tmp / TRAINABLE_FILE)
        if optimizer is not None or lr_scheduler is not None or grad_scaler is not None:
            torch.save({
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
                "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else None,
            }, tmp / OPTIMIZER_FILE)
            _written(tmp / OPTIMIZER_FILE)
        torch.save({"per_rank": list(rng_states) if rng_states is not None else [capture_rng_state()]},
                   tmp / RNG_FILE)
        _written(tmp / RNG_FILE)
        if config_json is not None:
            (tmp / CONFIG_FILE).write_text(config_json, encoding="utf-8")
            _written(tmp / CONFIG_FILE)
        (tmp / STATE_FILE).write_text(state_json, encoding="utf-8")  # last: marks the folder complete
        _written(tmp / STATE_FILE)
        _fsync_dir(tmp)
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
        raise _write_error(e, final, out, previous) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _write_text_atomic(out / LATEST_FILE, final.name + "\n")
    except OSError as e:
        raise ResourceError(
            f"{_os_reason(e)} while pointing {out / LATEST_FILE} at {final.name}; the checkpoint itself is "
            f"complete: free space, then resume with resume = '{final}'") from e
    if keep_last:
        prune_checkpoints(out, keep_last)
    return final


def _os_reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def _write_error(e: OSError, final: Path, out: Path, previous: Path | None) -> ResourceError:
    """The one-line error of a checkpoint write that failed (the temp folder is already removed)."""
    kept = (f"the previous checkpoint {previous.name} is intact" if previous is not None
            else "no earlier checkpoint exists")
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


def save_checkpoint_accelerate(accelerator: Any, output_dir: PathLike, step: int, *,
                               trainable: Mapping[str, Tensor] | nn.Module, **kwargs) -> Path | None:
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


# ----------------------------------------------------------------------------------------------------
# find, prune, load


def _is_complete(path: Path) -> bool:
    return path.is_dir() and (path / STATE_FILE).is_file() and (path / TRAINABLE_FILE).is_file()


def list_checkpoints(output_dir: PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoint folders ``[(step, path)]`` sorted by step (temp folders ignored)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        step = _parse_step(p.name)
        if step is not None and _is_complete(p):
            found.append((step, p))
    return sorted(found)


def find_latest_checkpoint(output_dir: PathLike) -> Path | None:
    """The checkpoint ``latest`` names, if complete; else the highest complete step; else None."""
    out = Path(output_dir)
    pointer = out / LATEST_FILE
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
        cand = out / name
        if name and _parse_step(name) is not None and _is_complete(cand):
            return cand
    found = list_checkpoints(out)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: PathLike, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest complete checkpoints (never the one ``latest`` names)."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be ≥ 1, got {keep_last}")
    latest = find_latest_checkpoint(output_dir)
    found = list_checkpoints(output_dir)
    removed = []
    for _, p in found[:-keep_last]:
        if latest is not None and p.resolve() == latest.resolve():
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


class _UnreadableCheckpoint(CheckpointError):
    """A checkpoint file that cannot be read; ``problem`` is the message without the advice."""

    def __init__(self, message: str, problem: str):
        super().__init__(message)
        self.problem = problem


def _unreadable(p: Path, name: str, e: BaseException) -> CheckpointError:
    reason = " ".join(str(e).split())
    if ". " in reason[20:]:  # the first sentence is the reason; libraries append advice that is not ours
        reason = reason[:20 + reason[20:].index(". ")]
    reason = (reason[:157] + "…" if len(reason) > 160 else reason) or type(e).__name__
    problem = (f"{name} in the checkpoint {p} cannot be read ({type(e).__name__}: {reason}): it is truncated, "
               "damaged or not a DeepGen training checkpoint file")
    mine = _parse_step(p.name)
    earlier = [c.name for step, c in list_checkpoints(p.parent) if c != p and (mine is None or step < mine)][-3:]
    todo = (f"resume from an earlier checkpoint (resume = '{p.parent / earlier[-1]}'; others: "
            f"{', '.join(earlier[:-1]) or 'none'}) or start anew (resume = 'no')" if earlier
            else "start anew with resume = 'no' (or another output_dir)")
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


def load_checkpoint(path: PathLike, *, map_location: Any = "cpu", load_trainable: bool = True,
                    load_optimizer: bool = True) -> Checkpoint:
    """Load a checkpoint folder, or the latest one if ``path`` is an output folder.

    Everything is read with ``weights_only=True``.  Raises :class:`CheckpointError` if none is found, or if a
    file of it is truncated, damaged or foreign (the message names the file and what to do).
    """
    p = Path(path)
    if not (p / STATE_FILE).is_file():
        latest = find_latest_checkpoint(p)
        if latest is None:
            raise CheckpointError(f"No complete checkpoint in {p} (looked for {CHECKPOINT_PREFIX}*/ with "
                                  f"{STATE_FILE}).")
        p = latest
    state = _read_json(p, STATE_FILE)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{p} is not a DeepGen training checkpoint ({STATE_FILE} format {found!r}); "
                              "point resume / init_from at a folder written by deepgen train.")
    try:
        version, step = int(state.get("format_version", 0)), int(state["step"])
    except (KeyError, TypeError, ValueError) as e:
        raise _unreadable(p, STATE_FILE, e) from e
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{p} has format version {state['format_version']}; this code reads ≤ "
                              f"{FORMAT_VERSION}. Update ComfyUI-DeepGen.")
    trainable: dict[str, Tensor] = {}
    if load_trainable:
        from safetensors.torch import load_file

        device = map_location if isinstance(map_location, str) else "cpu"
        if not (p / TRAINABLE_FILE).is_file():
            raise _unreadable(p, TRAINABLE_FILE, FileNotFoundError("missing"))
        try:
            trainable = load_file(str(p / TRAINABLE_FILE), device=device)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - SafetensorError and friends
            raise _unreadable(p, TRAINABLE_FILE, e) from e
    opt = {}
    if load_optimizer and (p / OPTIMIZER_FILE).is_file():
        opt = _torch_load(p, OPTIMIZER_FILE, map_location)
    rng = _torch_load(p, RNG_FILE, "cpu") if (p / RNG_FILE).is_file() else {}
    config = _read_json(p, CONFIG_FILE) if (p / CONFIG_FILE).is_file() else None
    data_position, extra = state.get("data_position"), state.get("extra") or {}
    if not isinstance(data_position, (dict, type(None))) or not isinstance(extra, dict):
        raise _unreadable(p, STATE_FILE, TypeError("data_position / extra are not objects"))
    return Checkpoint(path=p, step=step, trainable=trainable, optimizer=opt.get("optimizer"),
                      lr_scheduler=opt.get("lr_scheduler"), grad_scaler=opt.get("grad_scaler"),
                      rng_states=list(rng.get("per_rank", [])), data_position=data_position,
                      config=config, extra=extra)


def load_latest_intact(output_dir: PathLike, *, warn: Callable[[str], None] | None = None,
                       **kwargs) -> Checkpoint | None:
    """``resume = "auto"``: the newest checkpoint of ``output_dir`` that loads, or None if there is none.

    A checkpoint that cannot be read (a truncated or foreign file) is skipped with one ``warn`` line naming it,
    and the next older complete one is tried; if every one is broken, :class:`CheckpointError` names them.
    """
    out = Path(output_dir)
    first = find_latest_checkpoint(out)
    if first is None:
        return None
    candidates = [first] + [c for _, c in reversed(list_checkpoints(out))
                            if c != first and (_parse_step(c.name) or 0) < (_parse_step(first.name) or 0)]
    broken = []
    for cand in candidates:
        try:
            ckpt = load_checkpoint(cand, **kwargs)
        except CheckpointError as e:
            broken.append(cand.name)
            if warn is not None:
                nxt = candidates[len(broken)].name if len(broken) < len(candidates) else None
                warn(f"skipping the broken checkpoint {cand.name}: {getattr(e, 'problem', e)}"
                     + (f"; resuming from the earlier {nxt} instead" if nxt else ""))
            continue
        return ckpt
    raise CheckpointError(f"no checkpoint in {out} can be read ({', '.join(broken)} are truncated or damaged); "
                          "delete them to start anew, or set resume = 'no' with another output_dir")


def load_trainable_into(params: Mapping[str, Tensor] | nn.Module, tensors: Mapping[str, Tensor], *,
                        strict: bool = True) -> tuple[list[str], list[str]]:
    """Copy saved tensors into the live parameters (by name); returns ``(missing, unexpected)``.

    ``strict`` raises :class:`CheckpointError` on missing/unexpected names; shape mismatches always raise.
    """
    if isinstance(params, nn.Module):
        params = trainable_parameters(params)
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"checkpoint parameters do not match the trainable parameters: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). Train the same "
            "parts (train_* / LoRA settings) as the saved run.")
    with torch.no_grad():
        for name in params.keys() & tensors.keys():
            dst, src = params[name], tensors[name]
            if dst.shape != src.shape:
                raise CheckpointError(f"{name}: checkpoint shape {tuple(src.shape)} != parameter shape "
                                      f"{tuple(dst.shape)}")
            dst.copy_(src.to(device=dst.device, dtype=dst.dtype))
    return missing, unexpected


def _group_names(groups: Sequence[Mapping]) -> list[list[str] | None]:
    return [list(g["param_names"]) if "param_names" in g else None for g in groups]


def restore_training_state(ckpt: Checkpoint, *, params: Mapping[str, Tensor] | nn.Module | None = None,
                           optimizer: Any = None, lr_scheduler: Any = None, grad_scaler: Any = None,
                           rank: int = 0, restore_rng: bool = True, strict: bool = True) -> None:
    """Put a loaded checkpoint back: parameters, optimizer, LR schedule, grad scaler and RNG of ``rank``.

    The optimizer must have been built the same way (same trainable parameters in the same order);
    recorded parameter names are checked and a mismatch raises :class:`CheckpointError`.  If the
    checkpoint has fewer RNG states than ``rank + 1`` (resumed with more processes) a warning is given
    and rank 0's state is used.  The data position is not restored here: pass ``ckpt.data_position`` to
    ``MicroBatchLoader.load_state_dict``.
    """
    if params is not None:
        load_trainable_into(params, ckpt.trainable, strict=strict)
    if optimizer is not None:
        if ckpt.optimizer is None:
            raise CheckpointError(f"{ckpt.path} holds no optimizer state")
        saved = _group_names(ckpt.optimizer.get("param_groups", []))
        live_opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
        current = _group_names(live_opt.state_dict()["param_groups"])
        if all(n is not None for n in saved + current) and saved != current:
            raise CheckpointError(
                "the optimizer's parameters differ from the checkpoint's (by name or order): saved "
                f"{[len(n) for n in saved]} per group, now {[len(n) for n in current]}; build the optimizer "
                "with deepgen.train.optim.build_optimizer over the same trainable parameters.")
        optimizer.load_state_dict(ckpt.optimizer)
    if lr_scheduler is not None:
        if ckpt.lr_scheduler is None:
            raise CheckpointError(f"{ckpt.path} holds no LR-scheduler state")
        lr_scheduler.load_state_dict(ckpt.lr_scheduler)
    if grad_scaler is not None and ckpt.grad_scaler is not None:
        grad_scaler.load_state_dict(ckpt.grad_scaler)
    if restore_rng and ckpt.rng_states:
        if rank < len(ckpt.rng_states):
            restore_rng_state(ckpt.rng_states[rank])
        else:
            import warnings

            warnings.warn(f"checkpoint has RNG states for {len(ckpt.rng_states)} process(es); rank {rank} "
                          "uses rank 0's, so random draws on this rank will not continue the saved run",
                          stacklevel=2)
            restore_rng_state(ckpt.rng_states[0])
