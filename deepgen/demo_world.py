"""The demo model's world: coloured shapes on coloured backgrounds, their captions and edit instructions, and the
pixel rule that reads a picture back (which colour and shape it shows). scripts/train_demo_model.py makes the demo's
training data with it; tests/test_demo_model.py judges the shipped demo's pictures with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")


def caption(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def instruction(shape: str, new_colour: str) -> str:
    return f"make the {shape} {new_colour}"


def draw(shape: str, colour: str, background: str, size: int, rng: np.random.Generator | None = None) -> Image.Image:
    """One picture: the shape about half the side wide, near the centre (a small seeded jitter when ``rng``
    is given), drawn at 4x and downsampled so the edges are smooth."""
    big = size * 4
    jitter = (lambda: float(rng.uniform(-0.06, 0.06))) if rng is not None else (lambda: 0.0)
    half = big * (0.26 + (float(rng.uniform(-0.03, 0.03)) if rng is not None else 0.0))
    cx, cy = big * (0.5 + jitter()), big * (0.5 + jitter())
    image = Image.new("RGB", (big, big), COLOURS[background])
    pen = ImageDraw.Draw(image)
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        pen.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        pen.rectangle(box, fill=COLOURS[colour])
    elif shape == "triangle":
        pen.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=COLOURS[colour])
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return image.resize((size, size), Image.Resampling.LANCZOS)


def every_picture() -> list[tuple[str, str, str]]:
    """(shape, colour, background) for every shape and every colour on every other background: 90 pictures, in the
    order the data sets are written (their seeded jitter depends on it)."""
    return [(s, c, b) for s in SHAPES for c in COLOURS for b in COLOURS if c != b]


def write_caption_folder(root: str | Path, size: int = 128, seed: int = 0, copies: int = 1) -> int:
    """Every (shape, colour, background) with colour != background as ``NNNNN.png`` + ``NNNNN.txt`` (its caption):
    a folder dataset to try DeepGenTrainLoRA or `deepgen train` on the demo model. Refuses a folder that already
    holds files (nothing is overwritten). Returns how many pictures it wrote."""
    from .errors import InputError

    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InputError(f"{root} is not an empty folder: give a new folder for the demo pictures")
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = 0
    for _ in range(copies):
        for shape, colour, background in every_picture():
            draw(shape, colour, background, size, rng).save(root / f"{n:05d}.png")
            (root / f"{n:05d}.txt").write_text(caption(colour, shape, background), encoding="utf-8")
            n += 1
    return n


def write_dataset(root: str | Path, size: int, seed: int = 0, copies: int = 2) -> Path:
    """Every (shape, colour, background) with colour != background, ``copies`` jittered pictures each (text-to-
    image rows), and as many edit rows (the shape recoloured, all else kept). Returns the data.jsonl path."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    rows: list[dict] = []
    n = 0
    for _ in range(copies):
        for shape, colour, background in every_picture():
            state = rng.bit_generator.state
            path = f"images/{n:05d}.png"
            draw(shape, colour, background, size, rng).save(root / path)
            rows.append({"txt": caption(colour, shape, background), "image_path": path})
            new = str(rng.choice([c for c in names if c not in (colour, background)]))
            after = np.random.default_rng()  # replay the same jitter for the edited picture
            after.bit_generator.state = state
            target = f"images/{n:05d}_edit.png"
            draw(shape, new, background, size, after).save(root / target)
            rows.append({"input_image": [path], "output_image": target, "instruction": instruction(shape, new)})
            n += 1
    out = root / "data.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


# ---- the pixel rule --------------------------------------------------------------------------------------


def nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    table = np.array([COLOURS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((table - rgb.astype(np.float32)) ** 2).sum(-1)))]


def read_picture(image: Image.Image) -> dict[str, str | float]:
    """What a picture shows, by a simple pixel rule: the background is the median colour of a border strip,
    the shape's colour the median of the central tenth; the pixels nearer the shape's colour than the
    background's form the shape. How much of the corners of its bounding box (a quarter of the side) the
    shape fills names it: all four (square), the two bottom ones only (an upright triangle), none (circle).
    Robust to the soft edges of a 64 px picture."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w, _ = arr.shape
    b = max(1, h // 16)
    border = np.concatenate([arr[:b].reshape(-1, 3), arr[-b:].reshape(-1, 3), arr[:, :b].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    centre = arr[int(h * 0.45) : int(h * 0.55) + 1, int(w * 0.45) : int(w * 0.55) + 1].reshape(-1, 3)
    fg = np.median(centre, axis=0)
    mask = ((arr - fg) ** 2).sum(-1) < ((arr - bg) ** 2).sum(-1)
    ys, xs = np.nonzero(mask)
    top = bottom = 0.0
    shape = "none"
    if len(ys) > 16:
        y0, y1 = (int(v) for v in np.percentile(ys, [1, 99]))
        x0, x1 = (int(v) for v in np.percentile(xs, [1, 99]))
        box = mask[y0 : y1 + 1, x0 : x1 + 1].astype(np.float32)
        k, j = max(1, round(box.shape[0] / 4)), max(1, round(box.shape[1] / 4))
        top = float((box[:k, :j].mean() + box[:k, -j:].mean()) / 2)
        bottom = float((box[-k:, :j].mean() + box[-k:, -j:].mean()) / 2)
        shape = "square" if min(top, bottom) > 0.55 else "triangle" if bottom - top > 0.25 else "circle"
    return {
        "colour": nearest_colour(fg),
        "background": nearest_colour(bg),
        "shape": shape,
        "top_corners": top,
        "bottom_corners": bottom,
    }


# ---- measuring a model on the world ------------------------------------------------------------------------


def grid(backgrounds: int = 2) -> list[tuple[str, str, str]]:
    """(colour, shape, background) over the colour x shape grid, ``backgrounds`` backgrounds per cell."""
    names = list(COLOURS)
    cells = []
    for i, colour in enumerate(names):
        for j, shape in enumerate(SHAPES):
            others = [c for c in names if c != colour]
            cells += [(colour, shape, others[(i + j + k * 2) % len(others)]) for k in range(backgrounds)]
    return cells


def measure(pipe, *, backgrounds: int = 2, steps: int = 20, seed: int = 0, batch: int = 18) -> dict[str, dict]:
    """How often ``pipe`` (a DeepGenPipeline) draws what it is asked, judged by :func:`read_picture`:
    text-to-image over :func:`grid`, and an edit ("make the circle green") of a drawn picture of each cell
    to another colour. Returns {task: {"colour": rate, "shape": rate, "both": rate, "background": rate, "pair": rate,
    "n": n}}, where "pair" counts pictures whose shape and background show the two asked colours, either way round."""
    from .images import to_pil

    size = pipe.default_size
    names = list(COLOURS)
    cells = grid(backgrounds)
    jobs: dict[str, list[tuple]] = {"text-to-image": [], "edit": []}
    for i, (colour, shape, background) in enumerate(cells):
        jobs["text-to-image"].append((caption(colour, shape, background), None, colour, shape, background))
        new = [c for c in names if c not in (colour, background)][i % (len(names) - 2)]
        source = draw(shape, colour, background, size)
        jobs["edit"].append((instruction(shape, new), source, new, shape, background))
    results = {}
    for task, rows in jobs.items():
        counts = {"colour": 0, "shape": 0, "both": 0, "background": 0, "pair": 0}
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            refs = [[r[1]] for r in chunk] if task == "edit" else None
            cond = pipe.encode([r[0] for r in chunk], references=refs)
            latents = pipe.sample(cond, size, size, num_steps=steps, seed=seed + start)
            for image, (_, _, colour, shape, background) in zip(to_pil(pipe.decode(latents)), chunk):
                seen = read_picture(image)
                counts["colour"] += seen["colour"] == colour
                counts["shape"] += seen["shape"] == shape
                counts["both"] += seen["colour"] == colour and seen["shape"] == shape
                counts["background"] += seen["background"] == background
                counts["pair"] += {seen["colour"], seen["background"]} == {colour, background}
        results[task] = {**{k: v / len(rows) for k, v in counts.items()}, "n": len(rows)}
    return results


def table(results: dict[str, dict]) -> str:
    """The README's table of :func:`measure`'s rates."""
    lines = [
        "| task | n | colour right | shape right | both right | background right | both colours, either way |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, r in results.items():
        rates = " | ".join(f"{r[k]:.0%}" for k in ("colour", "shape", "both", "background", "pair"))
        lines.append(f"| {task} | {r['n']} | {rates} |")
    return "\n".join(lines)
