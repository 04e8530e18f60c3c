"""The JSONL step log every trainer writes (stages 1-2: ``train_log.jsonl``, stage 3: ``log.jsonl``).

A run that starts at ``step`` keeps only the records of steps up to ``step``: a killed run may have logged steps
after its last checkpoint, and the resumed run logs them again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["truncate_step_log"]


def truncate_step_log(path: str | os.PathLike, step: int) -> None:
    """Drop the records of ``path`` whose ``"step"`` is after ``step`` (all of them for ``step`` 0).

    The file is replaced atomically (a temporary file, then ``os.replace``), so a crash leaves the old or the new
    log, never half of one.  A missing file stays missing; a record without a step is kept, and a line that is
    not JSON (the last line of a run killed while writing it) is dropped.
    """
    path = Path(path)
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("step", 0) <= step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
    os.replace(tmp, path)
