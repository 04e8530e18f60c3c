"""deepgen.train.data: formats, bad rows, fix_pixels, task pattern, resume, sharding, caption dropout."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepgen.train.data import (
    IMAGE2IMAGE,
    TEXT2IMAGE,
    EditSample,
    EmptyDatasetError,
    MicroBatchLoader,
    TaskBatchSampler,
    TaskPattern,
    TextToImageSample,
    apply_caption_dropout,
    check_image_size,
    fix_pixels_size,
    image_to_tensor,
    load_datasets,
    load_training_image,
    write_synthetic_dataset,
)

RES = 64  # small fix_pixels target keeps the tests fast


def _img(path: Path, h: int = 96, w: int = 128, value: int | None = None, seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if value is None:
        arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        arr = np.full((h, w, 3), value, dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path.name


def _write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------
# sizes and pixels


@pytest.mark.parametrize(
    "hw, expected",
    [
        ((512, 512), (512, 512)),  # ratio 1
        ((1024, 1024), (512, 512)),  # ratio 1/2
        ((720, 1280), (384, 704)),  # sqrt = 960, ratio 8/15: 384 (exact) and 682.7 → 704
        ((1280, 720), (704, 384)),  # transposed
        ((1024, 768), (608, 448)),  # sqrt = 886.8: 591.2 → 608, 443.4 → 448
        ((2048, 512), (1024, 256)),  # sqrt = 1024, ratio 1/2
        ((100, 900), (192, 1536)),  # sqrt = 300: 170.7 → 192, 1536 (exact)
        ((96, 128), (448, 608)),  # upscales small images: 443.4 → 448, 591.2 → 608
    ],
)
def test_fix_pixels_size_hand_values(hw, expected):
    assert fix_pixels_size(*hw) == expected


def test_fix_pixels_size_other_target_and_unit():
    assert fix_pixels_size(512, 1024, target=256) == (192, 384)  # sqrt 724.1: 181.0 → 192, 362.0 → 384
    assert fix_pixels_size(720, 1280, target=512, unit=64) == (384, 704)  # 384 exact, 682.7 → 704 (= 11·64)
    assert fix_pixels_size(96, 128, target=64) == (64, 96)  # 55.4 → 64, 73.9 → 96
    with pytest.raises(ValueError):
        fix_pixels_size(0, 10)


def test_fix_pixels_size_agrees_with_deepgen_sizes():
    from deepgen import sizes

    for h in range(81, 2000, 37):
        for w in range(81, 2000, 41):
            assert fix_pixels_size(h, w) == sizes.fix_pixels_size(h, w), (h, w)


def test_check_image_size_official_limits():
    assert check_image_size(81, 81) is None
    assert check_image_size(80, 500) == "too_small"  # a side ≤ 80
    assert check_image_size(500, 80) == "too_small"
    assert check_image_size(1000, 100) == "bad_aspect"  # w/h = 10
    assert check_image_size(100, 1000) == "bad_aspect"  # w/h = 0.1
    assert check_image_size(999, 100) is None  # 9.99


def test_image_to_tensor_range_and_formula():
    arr = np.array([[[0, 128, 255]]], dtype=np.uint8)
    t = image_to_tensor(Image.fromarray(arr))
    assert t.shape == (3, 1, 1) and t.dtype == torch.float32
    assert t[0, 0, 0] == -1.0 and t[2, 0, 0] == 1.0
    assert t[1, 0, 0] == torch.tensor(128.0) / 255 * 2 - 1


def test_load_training_image_resizes_with_fix_pixels(tmp_path):
    p = tmp_path / "a.png"
    _img(p, 96, 128)
    t = load_training_image(p, resolution=RES)
    assert t.shape == (3, 64, 96) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1


def test_load_training_image_scales_16_bit_grey_instead_of_clipping(tmp_path):
    # PIL's convert("RGB") clips 16-bit greys to white; the loader converts with deepgen.images.to_rgb
    p = tmp_path / "grey16.png"
    Image.fromarray(np.full((96, 128), 32768, dtype=np.uint16)).save(p)
    t = load_training_image(p, resolution=RES)
    assert t.shape == (3, 64, 96)
    assert abs(float(t.mean())) < 0.02  # mid grey, not white (1.0)


def test_load_training_image_keeps_the_official_limits_below_open_images(tmp_path):
    # open_image would refuse 10 px (its 16-px minimum) as unreadable; the training data reports too_small (≤ 80)
    from deepgen.train.data import BadRowError

    p = tmp_path / "tiny.png"
    _img(p, 10, 10)
    with pytest.raises(BadRowError) as ei:
        load_training_image(p, resolution=RES)
    assert ei.value.reason == "too_small"
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(BadRowError) as ei:
        load_training_image(tmp_path / "empty.png", resolution=RES)
    assert ei.value.reason == "unreadable_image" and "empty.png" in str(ei.value)


# ----------------------------------------------------------------------------------------------------
# formats and bad rows


def _mixed_json(tmp_path: Path) -> Path:
    d = tmp_path / "ds"
    _img(d / "img" / "cap.png")
    (d / "ann").mkdir(parents=True)
    (d / "ann" / "cap.json").write_text(json.dumps({"caption": "  a caption  ", "prompt": "other"}))
    (d / "ann" / "nocap.json").write_text(json.dumps({"prompt": "only prompt"}))
    (d / "ann" / "broken.json").write_text("{not json")
    _img(d / "img" / "sft.jpg", 128, 96)
    _img(d / "img" / "inline.png")
    _img(d / "img" / "src0.png", seed=1)
    _img(d / "img" / "src1.png", 128, 128, seed=2)
    _img(d / "img" / "dst.png", seed=3)
    _img(d / "img" / "small.png", 80, 200)
    _img(d / "img" / "wide.png", 90, 950)
    (d / "img" / "corrupt.png").write_bytes(b"\x89PNG not really an image")
    rows = [
        {"image": "img/cap.png", "annotation": "ann/cap.json"},  # caption format
        {"type": "T2I_SFT", "txt": "sft caption", "image": "", "image_path": "img/sft.jpg"},  # SFT format
        {
            "input_image": ["img/src0.png", "img/src1.png"],
            "output_image": "img/dst.png",
            "instruction": "make it blue",
        },  # edit, 2 refs
        {"image": "img/inline.png", "caption": "inline caption"},  # inline caption
        {"input_image": "img/src0.png", "output_image": "img/dst.png", "instruction": "one ref as a string"},
        # bad rows:
        {"image": "img/missing.png", "annotation": "ann/cap.json"},  # missing_file
        {"image": "img/cap.png", "annotation": "ann/nocap.json"},  # missing_caption
        {"image": "img/cap.png", "annotation": "ann/broken.json"},  # bad_annotation
        {"txt": "", "image_path": "img/sft.jpg"},  # missing_caption
        {"txt": "corrupt", "image_path": "img/corrupt.png"},  # unreadable_image
        {"txt": "small", "image_path": "img/small.png"},  # too_small
        {"txt": "wide", "image_path": "img/wide.png"},  # bad_aspect
        {"input_image": [], "output_image": "img/dst.png", "instruction": "x"},  # missing_field
        {"input_image": ["img/src0.png"], "output_image": "img/dst.png"},  # missing_caption
        {"input_image": ["img/nope.png"], "output_image": "img/dst.png", "instruction": "x"},  # missing_file
        {"foo": 1},  # unknown_format
        ["not", "a", "dict"],  # bad_json_row
    ]
    return _write_json(d / "data.json", rows)


def test_json_formats_autodetected_and_bad_rows_counted(tmp_path):
    path = _mixed_json(tmp_path)
    ds = load_datasets(path, resolution=RES)
    assert ds.sizes() == {TEXT2IMAGE: 3, IMAGE2IMAGE: 2}
    r = ds.report
    assert r.rows_seen == 17 and r.bad == 12
    assert r.counts == Counter(
        {
            "missing_caption": 3,
            "missing_file": 2,
            "bad_annotation": 1,
            "unreadable_image": 1,
            "too_small": 1,
            "bad_aspect": 1,
            "missing_field": 1,
            "unknown_format": 1,
            "bad_json_row": 1,
        }
    )
    assert len(r.examples) == 10 and r.examples[0][1] == f"{path}[5]"
    text = r.summary()
    assert "missing_caption: 3" in text and "text2image: 3" in text

    captions = [ds.text2image.load(i).caption for i in range(3)]
    assert captions == ["a caption", "sft caption", "inline caption"]  # stripped, file order
    s = ds.text2image[1]
    assert isinstance(s, TextToImageSample) and s.task == "text2image"
    assert s.image.shape == (3, 96, 64)  # 128x96 (HxW) image at target 64
    e = ds.image2image[0]
    assert isinstance(e, EditSample) and e.task == "image2image"
    assert e.instruction == "make it blue"
    assert [tuple(x.shape) for x in e.references] == [(3, 64, 96), (3, 64, 64)]
    assert e.target.shape == (3, 64, 96)
    assert len(ds.image2image[1].references) == 1  # "input_image" given as a string


def test_max_references_cap_source_root_and_jsonl(tmp_path):
    d = tmp_path / "data"
    _img(d / "a.png"), _img(d / "b.png"), _img(d / "c.png")
    (d / "ann.json").write_text(json.dumps({"caption": "short", "caption_internlm2_short": "long one"}))
    lists = tmp_path / "lists"
    lists.mkdir()
    jl = lists / "rows.jsonl"
    jl.write_text(
        "\n".join(
            [
                json.dumps({"input_image": ["a.png", "b.png"], "output_image": "c.png", "instruction": "edit"}),
                "",
                "{broken json",
                json.dumps({"image": "a.png", "annotation": "ann.json"}),
            ]
        )
        + "\n"
    )
    ds = load_datasets(jl, root=d, max_references=1, cap_source="caption_internlm2_short", resolution=RES)
    assert ds.sizes() == {TEXT2IMAGE: 1, IMAGE2IMAGE: 1}
    assert ds.report.counts == Counter({"bad_json_row": 1})
    assert ds.report.examples[0][1] == f"{jl}:3"
    assert ds.text2image.load(0).caption == "long one"
    assert len(ds.image2image.load(0).references) == 1
    # without root the paths resolve against the JSON file's folder, where the images are not
    with pytest.raises(EmptyDatasetError) as ei:
        load_datasets(jl, resolution=RES)
    assert "missing_file" in str(ei.value) and str(jl) in str(ei.value)


def test_lazy_annotation_with_verify_none(tmp_path):
    d = tmp_path
    _img(d / "a.png")
    (d / "a.json").write_text(json.dumps({"caption": "lazy"}))
    ds = load_datasets(
        _write_json(d / "l.json", [{"image": "a.png", "annotation": "a.json"}]), verify="none", resolution=RES
    )
    assert ds.text2image.rows[0].caption is None  # not read at scan time
    assert ds.text2image[0].caption == "lazy"


def test_image_folder_with_captions(tmp_path):
    d = tmp_path / "art"
    _img(d / "b.png")
    (d / "b.txt").write_text("second image\n")
    _img(d / "a.jpg", 128, 96)
    (d / "a.txt").write_text("first image")
    _img(d / "no_caption.png")
    _img(d / "empty.png")
    (d / "empty.txt").write_text("   ")
    _img(d / "sub" / "c.png")
    (d / "sub" / "c.txt").write_text("in a sub-folder")
    (d / "notes.md").write_text("ignored")
    ds = load_datasets(d, resolution=RES)
    assert [r.caption for r in ds.text2image.rows] == ["first image", "second image"]  # sorted by path
    assert ds.report.counts == Counter({"missing_caption": 2})
    assert ds.sizes()[IMAGE2IMAGE] == 0
    ds_r = load_datasets(d, recursive=True, resolution=RES)
    assert [r.caption for r in ds_r.text2image.rows] == ["first image", "second image", "in a sub-folder"]


def test_folder_without_captions_raises_clear_error(tmp_path):
    d = tmp_path / "art"
    _img(d / "x.png")
    _img(d / "y.png")
    with pytest.raises(EmptyDatasetError, match=r"each image needs a same-named \.txt"):
        load_datasets(d)


def test_folder_without_images_hints_recursive(tmp_path):
    d = tmp_path / "art"
    _img(d / "sub" / "x.png")
    with pytest.raises(EmptyDatasetError, match="recursive"):
        load_datasets(d)


def test_empty_and_all_bad_datasets_raise(tmp_path):
    empty = _write_json(tmp_path / "empty.json", [])
    with pytest.raises(EmptyDatasetError, match="empty.json"):
        load_datasets(empty)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    allbad = _write_json(tmp_path / "bad.json", [{"txt": "c", "image_path": "bad.png"}] * 3)
    with pytest.raises(EmptyDatasetError) as ei:
        load_datasets(allbad)
    assert "unreadable_image: 3" in str(ei.value) and "bad.json" in str(ei.value)
    with pytest.raises(FileNotFoundError):
        load_datasets(tmp_path / "nope.json")
    (tmp_path / "notjson.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_datasets(tmp_path / "notjson.json")


def test_corrupt_image_found_at_load_time_is_replaced_and_reported(tmp_path):
    _img(tmp_path / "good0.png", seed=0)
    (tmp_path / "corrupt.png").write_bytes(b"garbage")
    _img(tmp_path / "good1.png", seed=1)
    rows = [
        {"txt": "g0", "image_path": "good0.png"},
        {"txt": "bad", "image_path": "corrupt.png"},
        {"txt": "g1", "image_path": "good1.png"},
    ]
    ds = load_datasets(_write_json(tmp_path / "l.json", rows), verify="none", resolution=RES)
    assert len(ds.text2image) == 3
    sample, failures = ds.text2image.get_with_fallback(1)
    assert sample.caption == "g1" and [f[0] for f in failures] == ["unreadable_image"]
    # through the loader: the failure lands in the batch and in the report
    ds = load_datasets(_write_json(tmp_path / "l.json", rows), verify="none", resolution=RES)
    loader = MicroBatchLoader(ds, {"t2i": 1}, 3, shuffle=False, caption_dropout=0.0)
    b = next(iter(loader))
    assert b.texts == ["g0", "g1", "g1"] and len(b.failures) == 1
    assert ds.report.counts["unreadable_image"] == 1


# ----------------------------------------------------------------------------------------------------
# task pattern, sampler, resume, sharding


def test_task_pattern_parsing():
    p = TaskPattern({"edit": 1, "t2i": 3})
    assert p.cycle() == [IMAGE2IMAGE] + [TEXT2IMAGE] * 3
    assert TaskPattern.parse("image2image:1, text2image:2").cycle() == [IMAGE2IMAGE, TEXT2IMAGE, TEXT2IMAGE]
    for bad in ({"edit": 0, "t2i": 0}, {"video": 1}, {"t2i": -1}, {"t2i": 1.5}):
        with pytest.raises(ValueError):
            TaskPattern(bad)
    with pytest.raises(ValueError):
        TaskPattern.parse("edit=1")


def test_sampler_follows_pattern_and_covers_each_epoch():
    s = TaskBatchSampler({TEXT2IMAGE: 10, IMAGE2IMAGE: 4}, {"image2image": 1, "text2image": 3}, 2, seed=3)
    plans = [next(s) for _ in range(20)]
    assert [p.task for p in plans] == ([IMAGE2IMAGE] + [TEXT2IMAGE] * 3) * 5
    assert [p.micro_step for p in plans] == list(range(20))
    t2i = [i for p in plans if p.task == TEXT2IMAGE for i in p.indices]  # 30 = 3 epochs of 10
    for e in range(3):
        assert sorted(t2i[10 * e : 10 * e + 10]) == list(range(10))
    assert t2i[:10] != list(range(10))  # shuffled
    edit = [i for p in plans if p.task == IMAGE2IMAGE for i in p.indices]
    assert sorted(edit[:4]) == [0, 1, 2, 3]
    # deterministic: same seed, same order; another seed, another order
    s2 = TaskBatchSampler({TEXT2IMAGE: 10, IMAGE2IMAGE: 4}, {"image2image": 1, "text2image": 3}, 2, seed=3)
    assert [next(s2).indices for _ in range(20)] == [p.indices for p in plans]
    s3 = TaskBatchSampler({TEXT2IMAGE: 10, IMAGE2IMAGE: 4}, {"image2image": 1, "text2image": 3}, 2, seed=4)
    assert [next(s3).indices for _ in range(20)] != [p.indices for p in plans]


def test_sampler_resume_is_exact_and_checked():
    sizes = {TEXT2IMAGE: 7, IMAGE2IMAGE: 5}
    a = TaskBatchSampler(sizes, {"edit": 1, "t2i": 2}, 3, seed=11)
    for _ in range(8):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))  # survives JSON
    expected = [(p.task, p.indices) for p in (next(a) for _ in range(12))]
    b = TaskBatchSampler(sizes, {"edit": 1, "t2i": 2}, 3, seed=11)
    b.load_state_dict(state)
    assert [(p.task, p.indices) for p in (next(b) for _ in range(12))] == expected
    c = TaskBatchSampler({TEXT2IMAGE: 8, IMAGE2IMAGE: 5}, {"edit": 1, "t2i": 2}, 3, seed=11)
    with pytest.raises(ValueError, match="dataset_sizes"):
        c.load_state_dict(state)
    with pytest.warns(UserWarning):
        c.load_state_dict(state, strict=False)
    assert c.micro_step == 8


def test_two_rank_sharding_equals_one_rank_global_batch():
    sizes = {TEXT2IMAGE: 9, IMAGE2IMAGE: 5}
    one = TaskBatchSampler(sizes, {"edit": 1, "t2i": 3}, 4, seed=5)
    r0 = TaskBatchSampler(sizes, {"edit": 1, "t2i": 3}, 2, seed=5, rank=0, world_size=2)
    r1 = TaskBatchSampler(sizes, {"edit": 1, "t2i": 3}, 2, seed=5, rank=1, world_size=2)
    for _ in range(13):
        a, b, c = next(one), next(r0), next(r1)
        assert a.task == b.task == c.task
        assert sorted(a.indices) == sorted(b.indices + c.indices)
        assert b.position == c.position == a.position  # same global position on every rank


def test_task_without_data_is_skipped_with_warning():
    with pytest.warns(UserWarning, match="no image2image data"):
        s = TaskBatchSampler({TEXT2IMAGE: 3, IMAGE2IMAGE: 0}, {"edit": 1, "t2i": 3}, 1)
    assert {next(s).task for _ in range(8)} == {TEXT2IMAGE}
    with pytest.raises(EmptyDatasetError), pytest.warns(UserWarning):
        TaskBatchSampler({TEXT2IMAGE: 0}, {"t2i": 1}, 1)


# ----------------------------------------------------------------------------------------------------
# loader, caption dropout


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return load_datasets(write_synthetic_dataset(root, n_text2image=10, n_edit=4, seed=1), resolution=RES)


def _key(b):
    return (b.task, b.micro_step, tuple(b.indices), tuple(b.texts))


def test_loader_batches_are_single_task_lists_of_variable_size_tensors(synthetic):
    loader = MicroBatchLoader(synthetic, {"edit": 1, "t2i": 2}, 3, seed=0, caption_dropout=0.0)
    it = iter(loader)
    batches = [next(it) for _ in range(6)]
    assert [b.task for b in batches] == [IMAGE2IMAGE, TEXT2IMAGE, TEXT2IMAGE] * 2
    sizes = {tuple(t.shape) for b in batches for t in b.targets}
    assert len(sizes) > 1 and all(s[0] == 3 and s[1] % 32 == 0 and s[2] % 32 == 0 for s in sizes)
    edit = batches[0]
    assert all(len(r) == 1 for r in edit.references) and all(t.startswith("make the") for t in edit.texts)
    assert batches[1].references == [[], [], []]
    assert loader.state_dict()["micro_step"] == 6


def test_loader_resume_exact(synthetic):
    loader = MicroBatchLoader(synthetic, {"edit": 1, "t2i": 3}, 2, seed=9, caption_dropout=0.5)
    it = iter(loader)
    for _ in range(5):
        next(it)
    position = json.loads(json.dumps(loader.state_dict()))
    expected = [_key(next(it)) for _ in range(7)]
    again = MicroBatchLoader(synthetic, {"edit": 1, "t2i": 3}, 2, seed=9, caption_dropout=0.5)
    again.load_state_dict(position)
    it2 = iter(again)
    assert [_key(next(it2)) for _ in range(7)] == expected


def test_loader_with_worker_keeps_order_and_position(synthetic):
    ref = MicroBatchLoader(synthetic, {"edit": 1, "t2i": 2}, 2, seed=2)
    it = iter(ref)
    expected = [_key(next(it)) for _ in range(4)]
    loader = MicroBatchLoader(synthetic, {"edit": 1, "t2i": 2}, 2, seed=2, num_workers=1, prefetch_factor=4)
    it = iter(loader)
    got = [_key(next(it)) for _ in range(2)]
    assert loader.state_dict()["micro_step"] == 2  # prefetching does not move the saved position
    got += [_key(next(it)) for _ in range(2)]
    del it
    assert got == expected


def test_loader_two_ranks_equal_one_rank_including_caption_dropout(synthetic):
    one = iter(MicroBatchLoader(synthetic, {"edit": 1, "t2i": 2}, 4, seed=7, caption_dropout=0.5))
    r0 = iter(MicroBatchLoader(synthetic, {"edit": 1, "t2i": 2}, 2, seed=7, rank=0, world_size=2, caption_dropout=0.5))
    r1 = iter(MicroBatchLoader(synthetic, {"edit": 1, "t2i": 2}, 2, seed=7, rank=1, world_size=2, caption_dropout=0.5))
    for _ in range(6):
        a, b, c = next(one), next(r0), next(r1)
        assert a.task == b.task == c.task
        assert sorted(zip(a.indices, a.texts)) == sorted(zip(b.indices + c.indices, b.texts + c.texts))


def test_caption_dropout_only_on_text2image(synthetic):
    it = iter(MicroBatchLoader(synthetic, {"edit": 1, "t2i": 1}, 4, caption_dropout=1.0))
    edit, t2i = next(it), next(it)
    assert edit.task == IMAGE2IMAGE and all(edit.texts)
    assert t2i.task == TEXT2IMAGE and t2i.texts == [""] * 4


def test_apply_caption_dropout():
    caps = [f"c{i}" for i in range(4000)]
    assert apply_caption_dropout(caps, 0.0) == caps
    assert apply_caption_dropout(caps, 1.0) == [""] * 4000
    a = apply_caption_dropout(caps, 0.1, torch.Generator().manual_seed(0))
    b = apply_caption_dropout(caps, 0.1, torch.Generator().manual_seed(0))
    assert a == b
    dropped = sum(c == "" for c in a)
    assert 300 < dropped < 500  # ~10 %
    assert all(x == c for x, c in zip(a, caps) if x)
    with pytest.raises(ValueError):
        apply_caption_dropout(caps, 1.5)


def test_synthetic_dataset_writer(tmp_path):
    p = write_synthetic_dataset(tmp_path, n_text2image=2, n_edit=1)
    rows = [json.loads(x) for x in p.read_text().splitlines()]
    assert len(rows) == 3 and "txt" in rows[0] and "input_image" in rows[2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_datasets(p, resolution=RES)
    assert ds.report.bad == 0
