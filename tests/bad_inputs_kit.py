"""The machinery of the bad-input tables (tests/test_bad_inputs.py, tests/test_bad_inputs_loading.py).

Crafted files (a converted checkpoint with its header edited, PNG headers that claim any size, truncated
files), the :class:`Sandbox` a case runs in, and :func:`run_case`, which runs one case and checks what must come of
it: a DeepGenError subclass raised with a one-line message naming the offending thing, or (CLI cases) exit status 2
with exactly one `error:` line naming it and no traceback; no file made outside `out/`, and the paths a crafted
file aims at do not exist.  The converted tiny model the cases edit is tests/conftest.py's `converted` fixture.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from deepgen import errors as E
from deepgen.cli import main as cli_main

EVIL_NAMES = ("deepgen-evil-relative.txt", "deepgen-evil-absolute.txt")


# ---- crafted material -----------------------------------------------------------------------------------


def crafted(converted, folder: Path, name: str = "crafted.safetensors", tensors=None, **changes) -> Path:
    """The converted file with header fields replaced (a value of None removes the field)."""
    _, real_tensors, metadata = converted
    meta = {k: v for k, v in {**metadata, **changes}.items() if v is not None}
    path = folder / name
    save_file(real_tensors if tensors is None else tensors, str(path), metadata=meta)
    return path


def header_json(converted, field: str, edit) -> str:
    value = json.loads(converted[2][field])
    edit(value)
    return json.dumps(value)


def png_bytes(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (the pixel data is one row: only the header is ever read)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4)) + chunk(b"IEND", b"")
    )


def save_image(path: Path, mode: str = "RGB", size=(64, 48), **kwargs) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path, **kwargs)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ---- running a case -------------------------------------------------------------------------------------


class Sandbox:
    def __init__(self, root: Path, converted):
        self.root, self.converted = root, converted
        self.inputs, self.out = root / "inputs", root / "out"
        self.inputs.mkdir()
        self.out.mkdir()

    def cli(self, *argv) -> tuple:
        return ("cli", [str(a) for a in argv])


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def evil_targets(root: Path) -> list[Path]:
    return [folder / name for name in EVIL_NAMES for folder in (root, root.parent, Path("/tmp"), Path("/"))]


def run_case(sandbox: Sandbox, case, capsys):
    action, expected, names = case(sandbox)
    before = files_under(sandbox.root)
    if isinstance(action, tuple) and action[0] == "cli":
        capsys.readouterr()
        status = cli_main(
            action[1] + ["--out", str(sandbox.out / "x.png")] if action[1][0] in ("generate", "edit") else action[1]
        )
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert status == 2, err
        assert len(lines) == 1 and "Traceback" not in err, err
        message = lines[0]
    else:
        with pytest.raises(expected) as info:
            action()
        assert isinstance(info.value, E.DeepGenError), type(info.value).__mro__
        message = str(info.value)
        assert "\n" not in message, message
    for name in names:
        assert name in message, (name, message)
    made = files_under(sandbox.root) - before
    assert all(p == "out" or p.startswith("out" + os.sep) for p in made), made
    assert not any(t.exists() for t in evil_targets(sandbox.root))
    return message


def name_of(case) -> str:
    return case.__name__.removeprefix("case_")
