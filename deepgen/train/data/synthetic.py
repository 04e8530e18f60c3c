"""A small random data set on disk, for tests and the tiny config."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .rows import PathLike


def write_synthetic_dataset(
    root: PathLike,
    *,
    n_text2image: int = 8,
    n_edit: int = 4,
    sizes: Iterable[tuple[int, int]] = ((96, 128), (128, 96), (112, 112)),
    seed: int = 0,
) -> Path:
    """Write a small random dataset under ``root``; returns the path of its ``data.jsonl``.

    T2I rows use the SFT format, edit rows the official edit format; images are PNGs (H, W from
    ``sizes``, cycled) with a coloured square whose colour/position the captions describe.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = list(sizes)
    colours = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
    names = list(colours)

    def make(path: Path, h: int, w: int, colour: str) -> None:
        arr = (rng.random((h, w, 3)) * 60 + 100).astype(np.uint8)
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        arr[y : y + h // 3, x : x + w // 3] = colours[colour]
        Image.fromarray(arr).save(path)

    rows: list[dict[str, Any]] = []
    for i in range(n_text2image):
        h, w = sizes[i % len(sizes)]
        c = names[i % len(names)]
        make(root / "images" / f"t2i_{i:04d}.png", h, w, c)
        rows.append({"txt": f"a {c} square on a grey noisy background", "image_path": f"images/t2i_{i:04d}.png"})
    for i in range(n_edit):
        h, w = sizes[i % len(sizes)]
        c0, c1 = names[i % len(names)], names[(i + 1) % len(names)]
        make(root / "images" / f"edit_{i:04d}_src.png", h, w, c0)
        make(root / "images" / f"edit_{i:04d}_dst.png", h, w, c1)
        rows.append(
            {
                "input_image": [f"images/edit_{i:04d}_src.png"],
                "output_image": f"images/edit_{i:04d}_dst.png",
                "instruction": f"make the {c0} square {c1}",
            }
        )
    out = root / "data.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out
