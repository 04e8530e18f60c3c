"""Every bad input a user can hand us ends in one clear line, and writes nothing outside the output folder.

Table-driven over the generation and node surface: input images, sizes and prompts through `deepgen
edit/generate`, the image reader, the pipeline and the nodes' name and dataset resolution.  The other surfaces:
loading in tests/test_bad_inputs_loading.py, training in tests/test_bad_inputs_training.py and its siblings; the
machinery in tests/bad_inputs_kit.py.

Each case returns a callable and what must come of it: a DeepGenError subclass raised with a message naming the
offending thing, or (CLI cases) exit status 2 with exactly one `error:` line naming it and no traceback. After
every case, the files under the test's folder outside `out/` are the ones the case made itself, and the paths
a crafted file aims at do not exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_inputs_kit import Sandbox, name_of, png_bytes, run_case, save_image, truncate
from PIL import Image
from test_bad_inputs_loading import LOADING

from deepgen import errors as E

ROOT = Path(__file__).resolve().parents[1]


# ---- generation and node surface ------------------------------------------------------------------------


def edit_cli(s, image):
    return s.cli("edit", "--image", image, "--prompt", "make it blue", "--steps", "1")


def case_edit_empty_image(s):
    (s.inputs / "empty.png").write_bytes(b"")
    return edit_cli(s, s.inputs / "empty.png"), None, ["empty.png", "empty"]


def case_edit_not_an_image(s):
    (s.inputs / "notes.png").write_bytes(b"these are my notes, not a picture" * 10)
    return edit_cli(s, s.inputs / "notes.png"), None, ["notes.png", "not an image"]


def case_edit_truncated_png(s):
    return edit_cli(s, truncate(save_image(s.inputs / "half.png"))), None, ["half.png", "truncated"]


def case_edit_truncated_jpeg(s):
    return edit_cli(s, truncate(save_image(s.inputs / "half.jpg", size=(256, 256)))), None, ["half.jpg"]


def case_edit_decompression_bomb(s):
    (s.inputs / "bomb.png").write_bytes(png_bytes(40000, 40000))
    return edit_cli(s, s.inputs / "bomb.png"), None, ["bomb.png", "too large"]


def case_edit_huge_image(s):
    (s.inputs / "poster.png").write_bytes(png_bytes(9000, 9000))
    return edit_cli(s, s.inputs / "poster.png"), None, ["poster.png", "megapixels"]


def case_edit_one_pixel(s):
    return edit_cli(s, save_image(s.inputs / "dot.png", size=(1, 1))), None, ["dot.png", "1x1"]


def case_edit_missing_image(s):
    return edit_cli(s, s.inputs / "gone.png"), None, ["gone.png", "not found"]


def case_generate_size_not_multiple(s):
    return s.cli("generate", "--prompt", "a cat", "--width", "500", "--steps", "1"), None, ["500", "multiple of 16"]


def case_generate_empty_prompt(s):
    return s.cli("generate", "--prompt", "  ", "--steps", "1"), None, ["--prompt is empty"]


def case_generate_zero_steps(s):
    return s.cli("generate", "--prompt", "a cat", "--steps", "0"), None, ["--steps"]


def case_reference_tensor_with_nan(s):
    from deepgen.images import prepare_reference

    pixels = torch.zeros(3, 64, 64)
    pixels[0, 0, 0] = float("nan")
    return (lambda: prepare_reference(pixels)), E.InputImageError, ["NaN"]


def case_reference_tensor_one_pixel(s):
    from deepgen.images import from_comfy_image, prepare_reference

    return (lambda: prepare_reference(from_comfy_image(torch.rand(1, 1, 1, 3))[0])), E.InputImageError, ["1x1"]


def case_comfy_image_wrong_shape(s):
    from deepgen.images import from_comfy_image

    return (lambda: from_comfy_image(torch.rand(64, 64, 3))), E.InputImageError, ["(64, 64, 3)"]


@pytest.fixture
def comfy_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPGEN_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("DEEPGEN_INPUT_DIR", str(tmp_path / "inputs"))
    monkeypatch.delenv("DEEPGEN_ALLOW_EXTERNAL_SYMLINKS", raising=False)
    (tmp_path / "models" / "deepgen").mkdir(parents=True)


def resolve(name, kind="deepgen"):
    from nodes import comfy_services as cs

    return lambda: cs.resolve_model_path(kind, name)


def case_node_model_name_climbs_out(s):
    return resolve("../../secrets.safetensors"), E.UnsafePathError, ["../../secrets.safetensors", ".."]


def case_node_model_name_absolute(s):
    return resolve("/etc/passwd"), E.UnsafePathError, ["/etc/passwd", "absolute"]


def case_node_model_name_windows_climb(s):
    return resolve("..\\..\\secrets.safetensors"), E.UnsafePathError, ["secrets.safetensors"]


def case_node_model_symlink_out(s):
    outside = s.root / "elsewhere"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(b"x")
    (s.root / "models" / "deepgen" / "linked").symlink_to(outside, target_is_directory=True)
    return resolve("linked/model.safetensors"), E.UnsafePathError, ["linked/model.safetensors", "symlink"]


def case_node_model_missing(s):
    return resolve("DeepGen-1.0/model.pt"), E.NotFoundError, ["DeepGen-1.0/model.pt", "not found"]


def dataset(name):
    from nodes.training_files import resolve_dataset

    return lambda: resolve_dataset(name)


def case_node_dataset_climbs_out(s):
    return dataset("../../etc"), E.UnsafePathError, ["../../etc"]


def case_node_dataset_absolute_outside(s):
    return dataset(str(s.root / "out")), E.UnsafePathError, [str(s.root / "out"), "outside"]


def case_node_dataset_symlink_out(s):
    (s.inputs / "photos").symlink_to(s.root / "out", target_is_directory=True)
    return dataset("photos"), E.UnsafePathError, ["photos", "symlink"]


def case_node_dataset_missing(s):
    return dataset("my_photos"), E.NotFoundError, ["my_photos", "not found"]


def case_node_edit_empty_instruction(s):
    from nodes.edit import DeepGenEdit

    def validate():
        message = DeepGenEdit.VALIDATE_INPUTS(512, 512, instruction="   ")
        raise E.InputError(message)  # ComfyUI shows the returned sentence; raised here to check it like the rest

    return validate, E.InputError, ["prompt is empty"]


GENERATION = [
    case_edit_empty_image,
    case_edit_not_an_image,
    case_edit_truncated_png,
    case_edit_truncated_jpeg,
    case_edit_decompression_bomb,
    case_edit_huge_image,
    case_edit_one_pixel,
    case_edit_missing_image,
    case_generate_size_not_multiple,
    case_generate_empty_prompt,
    case_generate_zero_steps,
    case_reference_tensor_with_nan,
    case_reference_tensor_one_pixel,
    case_comfy_image_wrong_shape,
]
NODES = [
    case_node_model_name_climbs_out,
    case_node_model_name_absolute,
    case_node_model_name_windows_climb,
    case_node_model_symlink_out,
    case_node_model_missing,
    case_node_dataset_climbs_out,
    case_node_dataset_absolute_outside,
    case_node_dataset_symlink_out,
    case_node_dataset_missing,
    case_node_edit_empty_instruction,
]


@pytest.mark.parametrize("case", GENERATION, ids=name_of)
def test_bad_input_gives_one_clear_line(case, converted, tmp_path, capsys):
    run_case(Sandbox(tmp_path, converted), case, capsys)


@pytest.mark.parametrize("case", NODES, ids=name_of)
def test_bad_node_input_gives_one_clear_line(case, converted, tmp_path, comfy_folders, capsys):
    run_case(Sandbox(tmp_path, converted), case, capsys)


def test_the_table_is_large_enough():
    """Counted over both modules of the table: the loading cases live in tests/test_bad_inputs_loading.py."""
    assert len(LOADING) + len(GENERATION) + len(NODES) >= 40


# ---- inputs that are converted, not refused -------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, check",
    [
        ("CMYK", lambda rgb: rgb.shape[-1] == 3),
        ("P", lambda rgb: rgb.shape[-1] == 3),
        ("LA", lambda rgb: rgb.shape[-1] == 3),
        ("RGBA", lambda rgb: rgb.shape[-1] == 3),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_other_modes_convert_to_rgb(tmp_path, mode, check):
    from deepgen.images import open_image

    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = save_image(tmp_path / f"in{suffix}", mode=mode, size=(40, 32))
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (40, 32) and check(np.asarray(image))


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    from deepgen.images import open_image

    Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16)).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    value = np.asarray(open_image(tmp_path / "grey16.png"))[0, 0]
    assert list(value) == [128, 128, 128]  # PIL's own convert("RGB") gives 255 (clipped)


def test_animated_image_gives_its_first_frame(tmp_path):
    from deepgen.images import open_image

    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    red, _, blue = np.asarray(open_image(tmp_path / "anim.gif"))[0, 0]
    assert red > 200 and blue < 50


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    """`python -m deepgen` as a user runs it: exit 2 and one line; --debug shows the traceback."""
    (tmp_path / "notes.png").write_text("not a picture")
    cmd = [
        sys.executable,
        "-m",
        "deepgen",
        "edit",
        "--image",
        str(tmp_path / "notes.png"),
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "out"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    plain = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 2, plain.stderr
    assert plain.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'notes.png'} is not an image that can be read (PNG, JPEG, WebP, BMP, TIFF, GIF...)"
    ]
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, env=env, timeout=120)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert not (tmp_path / "out").exists()
