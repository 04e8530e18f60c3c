"""Every bad data set of the training surface ends in one clear line: unreadable or empty data sets, and rows
whose paths leave the chosen folder.  Part of the training surface's table (tests/bad_inputs_training_kit.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_inputs_training_kit import (
    WARNING,
    Built,
    ModelLoaded,
    case_table,
    forbid_model_load,
    one_good_image,
    png_bytes,
    rows_file,
    run_case,
    sft_run,
)
from trainer_kit import base_config, write_folder_dataset

from deepgen.errors import DataError
from deepgen.train.data import DataSourceNotFoundError, EmptyDatasetError, load_datasets

CASES, case = case_table()


# ---- data sets: found in one pass before the model loads


@case("empty-folder", EmptyDatasetError)
def _(tmp, mp):
    (tmp / "data").mkdir()
    forbid_model_load(mp)
    return Built(
        lambda: sft_run(base_config(tmp / "data", tmp / "out", data_verify="header", task_pattern={"text2image": 1})),
        [str(tmp / "data"), "No images"],
    )


@case("folder-without-captions", EmptyDatasetError)
def _(tmp, mp):
    data = write_folder_dataset(tmp / "data", n=2, captions=False)
    forbid_model_load(mp)
    return Built(
        lambda: sft_run(base_config(data, tmp / "out", data_verify="header", task_pattern={"text2image": 1})),
        [str(data), "img0.png", "img0.txt"],
    )


@case("missing-image-every-row", EmptyDatasetError)
def _(tmp, mp):
    data = rows_file(tmp / "data", [{"txt": "a cat", "image_path": "img/gone.png"}] * 2)
    forbid_model_load(mp)
    return Built(
        lambda: sft_run(base_config(data, tmp / "out", data_verify="header", task_pattern={"text2image": 1})),
        ["rows.jsonl", "missing_file: 2", "gone.png"],
    )


@case("truncated-png-alone", EmptyDatasetError)
def _(tmp, mp):
    (tmp / "data").mkdir()
    whole = png_bytes()
    (tmp / "data" / "cut.png").write_bytes(whole[: len(whole) // 2])
    data = rows_file(tmp / "data", [{"txt": "a cat", "image_path": "cut.png"}])
    forbid_model_load(mp)
    # the header of a truncated PNG reads fine: the TrainConfig default data_verify ("header") must find it
    return Built(
        lambda: sft_run(base_config(data, tmp / "out", data_verify="header", task_pattern={"text2image": 1})),
        ["cut.png", "unreadable_image: 1", "truncated"],
    )


@case("truncated-jpeg-among-good", WARNING)
def _(tmp, mp):
    data = write_folder_dataset(tmp / "data", n=3)
    whole = png_bytes(fmt="JPEG", seed=5)
    (data / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    (data / "cut.txt").write_text("a cut photo", encoding="utf-8")
    (data / "junk.png").write_bytes(b"not an image at all")
    (data / "junk.txt").write_text("junk", encoding="utf-8")
    forbid_model_load(mp)

    def run():
        with pytest.raises(ModelLoaded):  # the scan ran, warned, and only then the model was asked for
            sft_run(base_config(data, tmp / "out", data_verify="header", task_pattern={"text2image": 1}))

    return Built(run, ["skipped 2", "unreadable_image: 2", "cut.jpg", "junk.png", "usable text2image: 3"])


@case("empty-caption", EmptyDatasetError)
def _(tmp, mp):
    data = write_folder_dataset(tmp / "data", n=1)
    (data / "img0.txt").write_text("  \n", encoding="utf-8")
    return Built(lambda: load_datasets(data), ["img0.png", "missing_caption: 1", "img0.txt is empty"])


@case("non-utf8-caption", EmptyDatasetError)
def _(tmp, mp):
    data = write_folder_dataset(tmp / "data", n=1)
    (data / "img0.txt").write_bytes("un caf\u00e9 cr\u00e8me".encode("latin-1"))
    return Built(lambda: load_datasets(data), ["img0.txt", "unreadable_caption: 1", "not UTF-8"])


@case("non-utf8-manifest", DataError)
def _(tmp, mp):
    (tmp / "data").mkdir()
    (tmp / "data" / "rows.jsonl").write_bytes(
        b'{"txt": "ok", "image_path": "a.png"}\n{"txt": "caf\xe9", "image_path": "b.png"}\n'
    )
    return Built(lambda: load_datasets(tmp / "data" / "rows.jsonl"), ["rows.jsonl", "UTF-8", "line 2"])


@case("invalid-json-manifest", DataError)
def _(tmp, mp):
    (tmp / "data").mkdir()
    (tmp / "data" / "rows.json").write_text('[{"txt": "a", "image_path": "a.png"},', encoding="utf-8")
    return Built(lambda: load_datasets(tmp / "data" / "rows.json"), ["rows.json", "not valid JSON"])


@case("missing-data-source", DataSourceNotFoundError)
def _(tmp, mp):
    forbid_model_load(mp)
    return Built(
        lambda: sft_run(base_config(tmp / "nowhere.jsonl", tmp / "out", task_pattern={"text2image": 1})),
        ["nowhere.jsonl", "data"],
    )


# ---- dataset paths stay inside the chosen folder


def _outside(tmp: Path) -> Path:
    (tmp / "outside").mkdir(exist_ok=True)
    (tmp / "outside" / "secret.png").write_bytes(png_bytes(seed=9))
    return tmp / "outside" / "secret.png"


@case("absolute-path-in-row", EmptyDatasetError)
def _(tmp, mp):
    secret = _outside(tmp)
    data = rows_file(tmp / "data", [{"txt": "x", "image_path": str(secret)}])
    return Built(lambda: load_datasets(data), ["outside_root: 1", "image_path", "absolute"])


@case("dotdot-path-in-edit-row", EmptyDatasetError)
def _(tmp, mp):
    _outside(tmp)
    good = one_good_image(tmp / "data")
    data = rows_file(
        tmp / "data", [{"input_image": ["../outside/secret.png"], "output_image": good, "instruction": "make it blue"}]
    )
    return Built(lambda: load_datasets(data), ["outside_root: 1", "input_image", "../outside/secret.png"])


@case("symlink-out-in-row", WARNING)
def _(tmp, mp):
    secret = _outside(tmp)
    good = one_good_image(tmp / "data")
    (tmp / "data" / "link.png").symlink_to(secret)
    (tmp / "data" / "ann.json").write_text(json.dumps({"caption": "a caption"}), encoding="utf-8")
    (tmp / "outside" / "ann.json").write_text(json.dumps({"caption": "outside"}), encoding="utf-8")
    (tmp / "data" / "ann_link.json").symlink_to(tmp / "outside" / "ann.json")
    data = rows_file(
        tmp / "data",
        [
            {"txt": "fine", "image_path": good},
            {"txt": "x", "image_path": "link.png"},
            {"image": good, "annotation": "ann_link.json"},
        ],
    )
    forbid_model_load(mp)

    def run():
        with pytest.raises(ModelLoaded):
            sft_run(base_config(data, tmp / "out", data_verify="header", task_pattern={"text2image": 1}))

    return Built(run, ["outside_root: 2", "link.png", "ann_link.json", "symlink", "usable text2image: 1"])


@case("symlink-out-in-image-folder", EmptyDatasetError)
def _(tmp, mp):
    secret = _outside(tmp)
    (tmp / "data").mkdir()
    (tmp / "data" / "cat.png").symlink_to(secret)
    (tmp / "data" / "cat.txt").write_text("a cat", encoding="utf-8")
    return Built(lambda: load_datasets(tmp / "data"), ["outside_root: 1", "cat.png", "symlink"])


@pytest.mark.parametrize("build, expect", CASES)
def test_bad_input_gives_one_clear_line(build, expect, request, tmp_path, monkeypatch, caplog):
    run_case(build, expect, request, tmp_path, monkeypatch, caplog)
