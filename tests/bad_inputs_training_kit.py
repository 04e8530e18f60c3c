"""The bad-input table of the training surface: the runner, what a case returns, helpers (issue "Safe by construction").

The table spans three modules (tests/test_bad_inputs_data.py: data sets and their paths;
tests/test_bad_inputs_checkpoints.py: checkpoints; tests/test_bad_inputs_training.py: output folders, remote
judge, download, configs, CLI); each registers its cases with :func:`case_table` and runs them with
:func:`run_case`.  Each case builds a bad input under ``tmp_path`` and runs the library (or, for one case, the
CLI) on it.  A case expects either a :class:`~deepgen.errors.DeepGenError` subclass or one warning line (bad rows
among good ones, a broken latest checkpoint under ``resume = "auto"``).  Every case checks that the message names
the offending thing (file, key, URL, host), is one line, and that no file appeared outside ``tmp_path``.  Cases
that must fail before the model loads run with the model loader replaced by a tripwire.

Runtime on 2 shared cores: ~30 s for the three modules (the SIGKILL and CLI cases start a Python process each).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image
from trainer_kit import one_thread

from deepgen.errors import DeepGenError, one_line

ROOT = Path(__file__).resolve().parents[1]
WARNING = "warning"  # expectation of a case that must go on with one warning line
CLEAN = "clean"  # expectation of a case that must go on without any warning (its own asserts inside)


class ModelLoaded(Exception):
    """The tripwire: the model loader was called (so the bad input was not found before it)."""


def forbid_model_load(mp) -> None:
    def tripwire(*args, **kwargs):
        raise ModelLoaded("the model loader was called")

    mp.setattr("deepgen.train.trainer.load_model_for_training", tripwire)
    mp.setattr("deepgen.train.runtime.load_model_for_training", tripwire)


def sft_run(cfg) -> None:
    from deepgen.train.trainer import SFTTrainer

    SFTTrainer(dataclasses.replace(cfg, export_checkpoint=False, export_lora=False), cpu=True).run()


def png_bytes(size: int = 96, seed: int = 0, fmt: str = "PNG") -> bytes:
    arr = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def free_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_no_proxy(mp) -> None:
    """Connections to 127.0.0.1 go direct even where a proxy is set (else the probe would test the proxy)."""
    for name in ("no_proxy", "NO_PROXY"):
        mp.setenv(name, "127.0.0.1,localhost")


def rows_file(folder: Path, rows: list, name: str = "rows.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def one_good_image(folder: Path, name: str = "good.png") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(png_bytes())
    return name


# ---------------------------------------------------------------------------------------------------- the table


@dataclass
class Built:
    run: Callable[[], object]  # raises the expected error (or logs the expected warning)
    names: list[str]  # what the message must name
    after: Callable[[], None] | None = None  # further checks once it ran


def case_table():
    """A module's table: the list of cases (pytest params) and the decorator ``@case(case_id, expect)`` that adds one."""
    cases = []

    def case(case_id: str, expect):
        def register(build):
            cases.append(pytest.param(build, expect, id=case_id))
            return build

        return register

    return cases, case


# configs keep their documented layout: a title line and one "  - problem" line per problem; the CLI joins them
# with errors.one_line, so the one-line check is on that (these cases are in tests/test_bad_inputs_training.py)
MULTI_LINE_BY_DESIGN = {"config-unknown-key", "config-wrong-type", "stage3-config-unknown-key"}


# ---------------------------------------------------------------------------------------------------- the runner


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def run_case(build, expect, request, tmp_path, monkeypatch, caplog) -> None:
    """Run one case of a table and check its message, its `after` checks and that nothing appeared outside."""
    with one_thread():  # the tiny model is latency-bound: one thread is faster on a shared 2-core machine
        _run_case(build, expect, request, tmp_path, monkeypatch, caplog)


def _run_case(build, expect, request, tmp_path, monkeypatch, caplog) -> None:
    case_id = request.node.callspec.id
    outside = [Path.cwd(), ROOT, tmp_path.parent]
    before = {str(p): _listing(p) for p in outside}
    built = build(tmp_path, monkeypatch)
    if expect in (WARNING, CLEAN):
        with caplog.at_level(logging.WARNING, logger="deepgen"):
            built.run()
        lines = [
            r.getMessage() for r in caplog.records if r.name.startswith("deepgen") and r.levelno == logging.WARNING
        ]
        assert len(lines) == (1 if expect is WARNING else 0), lines
        message = lines[0] if lines else ""
    else:
        with pytest.raises(expect) as info:
            built.run()
        error = info.value
        if not isinstance(error, SystemExit):
            assert isinstance(error, DeepGenError), type(error).__mro__
        message = str(error)
        if case_id in MULTI_LINE_BY_DESIGN:
            message = one_line(error)
    print(f"{case_id}: {message}")  # shown on failure (and with -s): the line a user reads
    assert "\n" not in message, message
    for name in built.names:
        assert name in message, (name, message)
    if built.after is not None:
        built.after()
    for p in outside:  # nothing new next to tmp_path, in the repository or in the working folder
        new = _listing(p) - before[str(p)]
        assert not new, (p, new)
