"""The `deepgen` command line, run in-process through its real entry point."""

from __future__ import annotations

import json

from official_fixture import OFFICIAL
from PIL import Image

from deepgen.cli import main


def test_generate_on_tiny_writes_pngs(tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            [
                "generate",
                "--prompt",
                "a red cat",
                "--prompt",
                "a blue dog",
                "--steps",
                "2",
                "--width",
                "64",
                "--height",
                "48",
                "--num-images",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    files = sorted(out.glob("*.png"))
    assert len(files) == 4
    assert Image.open(files[0]).size == (64, 48)


def test_edit_on_tiny(tmp_path):
    ref = tmp_path / "ref.png"
    Image.new("RGB", (100, 60), (200, 30, 30)).save(ref)
    out = tmp_path / "edited.png"
    assert (
        main(
            [
                "edit",
                "--image",
                str(ref),
                "--prompt",
                "make it blue",
                "--steps",
                "2",
                "--reference-size",
                "64",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    # The output takes the (resized) reference's size: about 64² pixels, sides multiples of 32.
    assert Image.open(out).size == (96, 64)


def test_bad_size_is_a_clean_error(tmp_path, capsys):
    assert main(["generate", "--prompt", "x", "--width", "70", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "multiple of 16" in capsys.readouterr().err


def test_info_names_layout_and_groups(capsys):
    assert main(["info", str(OFFICIAL / "model.pt")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "official"
    assert info["groups"] == {"scb": 39, "transformer": 159, "lora": 532}
    assert info["kind"].startswith("SFT/RL")


def test_convert_then_info(tmp_path, capsys):
    out = tmp_path / "tiny.safetensors"
    assert (
        main(
            [
                "convert",
                str(OFFICIAL / "model.safetensors"),
                str(out),
                "--vlm",
                str(OFFICIAL / "Qwen2.5-VL-tiny"),
                "--diffusion",
                str(OFFICIAL / "UniPic2-tiny"),
                "--connector-heads",
                "4",
                "--dtype",
                "fp32",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "single"
    assert info["metadata"]["format_version"] == "1" and info["metadata"]["dtype"] == "float32"
    assert info["components"] == [
        "connector",
        "lmm",
        "meta_queries",
        "projector_1",
        "projector_2",
        "projector_3",
        "transformer",
        "vae",
    ]


def test_demo_data_writes_a_folder_dataset_the_trainer_reads(tmp_path, capsys):
    from deepgen.demo_world import read_picture
    from deepgen.train.data import load_datasets

    folder = tmp_path / "deepgen_lora_dataset"
    assert main(["demo-data", str(folder)]) == 0
    data = load_datasets([folder], resolution=64, verify="header")
    assert data.sizes()["text2image"] == 90  # 3 shapes x 6 colours x 5 other backgrounds
    caption = (folder / "00007.txt").read_text(encoding="utf-8")
    seen = read_picture(Image.open(folder / "00007.png"))
    assert caption == f"a {seen['colour']} {seen['shape']} on a {seen['background']} background"
    # a folder that holds files is refused, and nothing in it is touched
    before = (folder / "00000.png").read_bytes()
    assert main(["demo-data", str(folder)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert (folder / "00000.png").read_bytes() == before
