"""Every bad input a user can hand us ends in one clear line, and writes nothing outside the output folder.

Table-driven over two surfaces (the training surface is tests/test_bad_inputs_training.py):
- loading: crafted and damaged checkpoints, through the loader, `deepgen info` and `deepgen generate`;
- generation and nodes: input images, sizes and prompts through `deepgen edit/generate`, the image reader, the
  pipeline and the nodes' name and dataset resolution.

Each case returns a callable and what must come of it: a DeepGenError subclass raised with a message naming the
offending thing, or (CLI cases) exit status 2 with exactly one `error:` line naming it and no traceback. After
every case, the files under the test's folder outside `out/` are the ones the case made itself, and the paths
a crafted file aims at do not exist.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from official_fixture import OFFICIAL, official_paths
from PIL import Image
from safetensors.torch import load_file, save_file

from deepgen import errors as E
from deepgen.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
EVIL_NAMES = ("deepgen-evil-relative.txt", "deepgen-evil-absolute.txt")


# ---- shared material ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A genuine converted single file of the tiny model: (path, tensors, metadata)."""
    from deepgen.loading import convert_model
    from deepgen.loading.state_dict_io import read_state_dict
    from deepgen.tiny import build_tiny_model

    path = convert_model(build_tiny_model(seed=0), tmp_path_factory.mktemp("converted") / "tiny.safetensors")
    tensors, metadata = read_state_dict(path)
    return path, {k: v.contiguous() for k, v in tensors.items()}, metadata


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


# ---- loading surface ------------------------------------------------------------------------------------


def load(path, **kw):
    from deepgen.loading import load_model

    return lambda: load_model(path, dtype=torch.float32, **kw)


def load_official_file(path):
    from deepgen.loading import load_model

    paths = official_paths()
    return lambda: load_model(
        path, paths["vlm"], paths["diffusion"], dtype=torch.float32, connector_config={"num_attention_heads": 4}
    )


def official_tensors():
    return load_file(str(OFFICIAL / "model.safetensors"))


def case_tokenizer_name_climbs_out(s):
    files = header_json(s.converted, "tokenizer_files", lambda f: f.update({f"../../{EVIL_NAMES[0]}": "pwned"}))
    return load(crafted(s.converted, s.inputs, tokenizer_files=files)), E.CheckpointError, ["../../" + EVIL_NAMES[0]]


def case_tokenizer_name_absolute(s):
    target = str(Path("/tmp") / EVIL_NAMES[1])
    files = header_json(s.converted, "tokenizer_files", lambda f: f.update({target: "pwned"}))
    return load(crafted(s.converted, s.inputs, tokenizer_files=files)), E.CheckpointError, [target]


def case_tokenizer_name_through_cli_info(s):
    files = header_json(s.converted, "tokenizer_files", lambda f: f.update({f"../{EVIL_NAMES[0]}": "x"}))
    return s.cli("info", crafted(s.converted, s.inputs, tokenizer_files=files)), None, [f"../{EVIL_NAMES[0]}"]


def case_tokenizer_name_through_cli_generate(s):
    files = header_json(s.converted, "tokenizer_files", lambda f: f.update({f"/tmp/{EVIL_NAMES[1]}": "x"}))
    path = crafted(s.converted, s.inputs, tokenizer_files=files)
    return s.cli("generate", "--checkpoint", path, "--prompt", "a cat", "--steps", "1"), None, [EVIL_NAMES[1]]


def case_metadata_only_file(s):
    return (
        load(crafted(s.converted, s.inputs, "empty-model.safetensors", tensors={})),
        E.CheckpointError,
        ["empty-model.safetensors", "no tensors"],
    )


def case_future_format_version(s):
    return load(crafted(s.converted, s.inputs, format_version="99")), E.CheckpointError, ["'99'", "convert again"]


def case_header_configs_not_json(s):
    return load(crafted(s.converted, s.inputs, configs="{not json")), E.CheckpointError, ["'configs'", "JSON"]


def case_header_lacks_tokenizer(s):
    return load(crafted(s.converted, s.inputs, tokenizer_files=None)), E.CheckpointError, ["tokenizer_files"]


def case_header_unknown_config_part(s):
    configs = header_json(s.converted, "configs", lambda c: c.update({"plugin": {"x": 1}}))
    return load(crafted(s.converted, s.inputs, configs=configs)), E.CheckpointError, ["plugin"]


def case_header_absurd_size(s):
    configs = header_json(s.converted, "configs", lambda c: c["transformer"].update({"pos_embed_max_size": 10**6}))
    return load(crafted(s.converted, s.inputs, configs=configs)), E.CheckpointError, ["pos_embed_max_size", "1000000"]


def case_header_negative_size(s):
    configs = header_json(s.converted, "configs", lambda c: c["connector"].update({"num_hidden_layers": -3}))
    return load(crafted(s.converted, s.inputs, configs=configs)), E.CheckpointError, ["num_hidden_layers"]


def case_header_unknown_dit_field(s):
    configs = header_json(s.converted, "configs", lambda c: c["transformer"].update({"run_this": "rm -rf /"}))
    return load(crafted(s.converted, s.inputs, configs=configs)), E.CheckpointError, ["run_this"]


def case_header_foreign_tokenizer_class(s):
    def edit(files):
        config = json.loads(files["tokenizer_config.json"])
        config["tokenizer_class"] = "SomeRemoteTokenizer"
        files["tokenizer_config.json"] = json.dumps(config)

    files = header_json(s.converted, "tokenizer_files", edit)
    return load(crafted(s.converted, s.inputs, tokenizer_files=files)), E.CheckpointError, ["SomeRemoteTokenizer"]


def case_header_config_not_object(s):
    configs = header_json(s.converted, "configs", lambda c: c.update({"vae": [1, 2]}))
    return load(crafted(s.converted, s.inputs, configs=configs)), E.CheckpointError, ["vae", "list"]


def case_official_truncated_safetensors(s):
    path = s.inputs / "model.safetensors"
    path.write_bytes((OFFICIAL / "model.safetensors").read_bytes()[:5000])
    return load_official_file(path), E.CheckpointError, ["model.safetensors", "truncated"]


def case_official_truncated_pt(s):
    path = s.inputs / "model.pt"
    path.write_bytes((OFFICIAL / "model.pt").read_bytes()[:20000])
    return load_official_file(path), E.CheckpointError, ["model.pt", "truncated"]


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch /tmp/{EVIL_NAMES[0]}",))


def case_pickle_with_code(s):
    path = s.inputs / "evil.pt"
    torch.save({"meta_queries": torch.zeros(2, 2), "payload": Payload()}, path)
    return load_official_file(path), E.CheckpointError, ["evil.pt", "Refused"]


def case_empty_checkpoint(s):
    (s.inputs / "zero.safetensors").write_bytes(b"")
    return load_official_file(s.inputs / "zero.safetensors"), E.CheckpointError, ["zero.safetensors", "empty"]


def case_unsupported_extension(s):
    (s.inputs / "model.onnx").write_bytes(b"onnx")
    return load_official_file(s.inputs / "model.onnx"), E.CheckpointError, ["'.onnx'"]


def case_missing_checkpoint(s):
    return load_official_file(s.inputs / "nowhere.safetensors"), E.NotFoundError, ["nowhere.safetensors"]


def case_foreign_model(s):
    path = s.inputs / "sdxl.safetensors"
    save_file({"conditioner.embedders.0.weight": torch.zeros(2), "model.diffusion_model.x": torch.zeros(2)}, str(path))
    return load_official_file(path), E.CheckpointError, ["sdxl.safetensors", "conditioner.embedders.0.weight"]


def case_missing_tensor(s):
    tensors = official_tensors()
    del tensors["projector_2.weight"]
    save_file(tensors, str(s.inputs / "model.safetensors"))
    return load_official_file(s.inputs / "model.safetensors"), E.CheckpointError, ["projector_2.weight"]


def case_wrong_shape(s):
    tensors = official_tensors()
    tensors["projector_3.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(s.inputs / "model.safetensors"))
    return load_official_file(s.inputs / "model.safetensors"), E.CheckpointError, ["projector_3.weight"]


def case_official_without_vlm_folder(s):
    from deepgen.loading import load_model

    (s.inputs / "model.safetensors").write_bytes((OFFICIAL / "model.safetensors").read_bytes())
    return (lambda: load_model(s.inputs / "model.safetensors")), E.CheckpointError, ["Qwen2.5-VL-3B-Instruct"]


def case_truncated_lora(s):
    from deepgen.lora import load_lora

    path = s.inputs / "style.safetensors"
    save_file(
        {"transformer.a.lora_A.weight": torch.zeros(4, 8), "transformer.a.lora_B.weight": torch.zeros(8, 4)}, str(path)
    )
    truncate(path)
    return (lambda: load_lora(path)), E.CheckpointError, ["style.safetensors"]


def case_cli_info_truncated(s):
    path = s.inputs / "model.safetensors"
    path.write_bytes((OFFICIAL / "model.safetensors").read_bytes()[:3000])
    return s.cli("info", path), None, ["model.safetensors"]


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


LOADING = [
    case_tokenizer_name_climbs_out,
    case_tokenizer_name_absolute,
    case_tokenizer_name_through_cli_info,
    case_tokenizer_name_through_cli_generate,
    case_metadata_only_file,
    case_future_format_version,
    case_header_configs_not_json,
    case_header_lacks_tokenizer,
    case_header_unknown_config_part,
    case_header_absurd_size,
    case_header_negative_size,
    case_header_unknown_dit_field,
    case_header_foreign_tokenizer_class,
    case_header_config_not_object,
    case_official_truncated_safetensors,
    case_official_truncated_pt,
    case_pickle_with_code,
    case_empty_checkpoint,
    case_unsupported_extension,
    case_missing_checkpoint,
    case_foreign_model,
    case_missing_tensor,
    case_wrong_shape,
    case_official_without_vlm_folder,
    case_truncated_lora,
    case_cli_info_truncated,
]
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


def name_of(case) -> str:
    return case.__name__.removeprefix("case_")


@pytest.mark.parametrize("case", LOADING + GENERATION, ids=name_of)
def test_bad_input_gives_one_clear_line(case, converted, tmp_path, capsys):
    run_case(Sandbox(tmp_path, converted), case, capsys)


@pytest.mark.parametrize("case", NODES, ids=name_of)
def test_bad_node_input_gives_one_clear_line(case, converted, tmp_path, comfy_folders, capsys):
    run_case(Sandbox(tmp_path, converted), case, capsys)


def test_the_table_is_large_enough():
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


def test_tokenizer_config_paths_are_ignored(converted, tmp_path):
    """A header's tokenizer_config naming files elsewhere loads with the header's own tokenizer, reading nothing."""
    from deepgen.loading import load_model

    secret = tmp_path / "secret.json"
    secret.write_text("{not a tokenizer")

    def edit(files):
        config = json.loads(files["tokenizer_config.json"])
        config.update({"tokenizer_file": str(secret), "vocab_file": str(secret), "auto_map": {"AutoTokenizer": "x.Y"}})
        files["tokenizer_config.json"] = json.dumps(config)

    path = crafted(converted, tmp_path, tokenizer_files=header_json(converted, "tokenizer_files", edit))
    model = load_model(path, dtype=torch.float32)
    assert model.tokenizer("a red cat")["input_ids"]


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
