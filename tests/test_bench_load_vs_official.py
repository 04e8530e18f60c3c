"""benchmarks/bench_load_vs_official.py: argument parsing, its refusal without the official code, and the report's
paired ratios. The official code is not part of this repository, so the loads themselves are not run here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from bench_kit import assert_argparse_error, load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_load_vs_official")


@pytest.fixture
def official_src(tmp_path, bench) -> Path:
    """The two files the script checks for, empty: enough for argument parsing."""
    for name in (bench.OFFICIAL_MODEL, bench.OFFICIAL_CONFIG):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    return tmp_path


def test_defaults(bench, official_src):
    args = bench.parse_args(["--official-src", str(official_src), "--official-python", sys.executable])
    assert args.official_src == official_src and args.official_python == Path(sys.executable)
    assert args.reps == 5 and args.threads == 1 and args.checkpoint == "model.pt" and args.child is None
    assert args.fixture == bench.FIXTURE and (bench.FIXTURE / "model.pt").is_file()


def test_values(bench, official_src):
    argv = ["--official-src", str(official_src), "--official-python", sys.executable]
    args = bench.parse_args([*argv, "--reps", "3", "--threads", "2", "--checkpoint", "model.safetensors"])
    assert (args.reps, args.threads, args.checkpoint) == (3, 2, "model.safetensors")


def test_refused_without_the_official_code(bench, capsys):
    assert_argparse_error(bench.parse_args, [], "needs --official-src", capsys)
    assert_argparse_error(bench.main, [], "this repository ships neither", capsys)
    assert_argparse_error(bench.parse_args, ["--official-python", sys.executable], "--official-src", capsys)


def test_refused_without_the_official_python(bench, official_src, capsys):
    assert_argparse_error(bench.parse_args, ["--official-src", str(official_src)], "--official-python", capsys)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--reps", "0"], "must be > 0"),
        (["--threads", "one"], "is not an integer"),
        (["--checkpoint", "model.bin"], "invalid choice"),
    ],
)
def test_bad_values_are_argparse_errors(bench, official_src, capsys, extra, message):
    argv = ["--official-src", str(official_src), "--official-python", sys.executable, *extra]
    assert_argparse_error(bench.parse_args, argv, message, capsys)


def test_a_folder_that_is_not_the_official_checkout(bench, tmp_path, capsys):
    argv = ["--official-src", str(tmp_path), "--official-python", sys.executable]
    assert_argparse_error(bench.parse_args, argv, "not a deepgenteam/deepgen checkout", capsys)


def test_an_official_python_that_cannot_run(bench, official_src, tmp_path, capsys):
    not_executable = tmp_path / "python"
    not_executable.write_text("")
    for python in (not_executable, tmp_path / "missing", tmp_path):
        argv = ["--official-src", str(official_src), "--official-python", str(python)]
        assert_argparse_error(bench.parse_args, argv, "is not an executable file", capsys)


def test_a_child_needs_no_official_arguments(bench):
    assert bench.parse_args(["--child", "ours"]).child == "ours"


def test_report_pairs_each_rep(bench):
    """Ratios are taken within each rep, then summarised: not the ratio of the two medians."""

    def run(load_s, peak_mb):
        return {"import_s": 1.0, "load_s": load_s, "peak_delta": peak_mb * 1e6, "rss_after_imports": 4e8}

    runs = {
        "ours": [run(1.0, 100), run(4.0, 200), run(2.0, 150)],
        "official": [run(2.0, 200), run(2.0, 100), run(4.0, 100)],
    }
    rows = {
        cells[0]: cells[1:]
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in bench.report(runs).splitlines())
    }
    assert rows["ours"] == ["1.00 (1.00–1.00)", "2.00 (1.00–4.00)", "150 (100–200)", "400"]
    # load s: 0.5, 2.0, 0.5 (the medians' ratio would be 1.0); peak: 0.5, 2.0, 1.5
    assert rows["ours / official"] == ["1.00 (1.00–1.00)", "0.50 (0.50–2.00)", "1.50 (0.50–2.00)", ""]
