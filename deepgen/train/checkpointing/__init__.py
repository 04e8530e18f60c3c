"""Training checkpoints: one folder per step, written atomically, loadable with ``weights_only=True``.

Layout of ``output_dir``::

    output_dir/
      latest                       text file: name of the newest complete checkpoint folder
      checkpoint-00001000/
        trainable.safetensors      the TRAINABLE parameters only, {name: tensor}, as they are (fp32 masters)
        optimizer.pt               {"optimizer", "lr_scheduler", "grad_scaler"} state dicts (torch.save)
        optimizer_shards/          FSDP runs only: the optimizer state, one shard per process (torch DCP)
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
optimizer state is replicated, so saving it from the main process is complete.  Under FSDP the trainable
tensors are gathered into ``trainable.safetensors`` and the optimizer state stays sharded: every process writes
its shard (accelerate's ``save_fsdp_optimizer``) into a folder that moves into the checkpoint as
``optimizer_shards/`` before the atomic rename (``CheckpointManager``).  Per-rank RNG states are gathered to the main process
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

Modules: ``layout.py`` (names, folders, finding and pruning), ``save.py`` (the atomic write), ``load.py``
(reading, and the newest intact checkpoint), ``rng.py`` (RNG states), ``restore.py`` (back into a live run).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...errors import CheckpointError
from .layout import (
    CHECKPOINT_PREFIX,
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    LATEST_FILE,
    OPTIMIZER_FILE,
    RNG_FILE,
    STATE_FILE,
    TRAINABLE_FILE,
    checkpoint_dir_name,
    find_latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    trainable_parameters,
)
from .load import Checkpoint, load_checkpoint, load_latest_intact
from .restore import load_trainable_into, restore_training_state
from .rng import capture_rng_state, gather_rng_states, restore_rng_state
from .save import check_output_dir_writable, save_checkpoint, save_checkpoint_accelerate

# Test hook, read by save.py at each file: called with the path of each file just written into the temp folder
# (tests set it here to interrupt a save at a chosen file).
_after_file_hook: Callable[[Path], None] | None = None

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
