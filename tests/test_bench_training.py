"""benchmarks/_common.py's spread helpers and benchmarks/bench_training.py's arguments and per-repeat pairing.

No benchmark runs here and nothing is timed: the results fed to `summarize` are made up.
"""

from __future__ import annotations

import json
import sys

import pytest
from bench_kit import assert_argparse_error, load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_training")


@pytest.fixture(scope="module")
def common(bench):  # bench_training put benchmarks/ on sys.path for its helpers
    return load_script("_common")


def test_spread_and_its_cell(common):
    assert common.spread([3.0, 1, 2]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert common.spread_cell([6.44, 5.8, 6.61]) == "6.44 (5.80–6.61)"
    assert common.spread_cell([783.2, 790.6], 0) == "787 (783–791)"
    # a range that rounds to one value (a ratio to itself, one run) is printed alone
    assert common.spread_cell([1.0, 1.0, 1.0]) == "1.00"
    assert common.spread_cell([0.551]) == "0.55"


def test_arguments(bench, capsys):
    args = bench.parse_args([])
    assert (args.steps, args.resolution, args.threads, args.repeats) == (5, 256, 1, 3)
    assert args.runs == ["stage1", "stage2", "stage2_dit_lora"] and args.worker is None
    assert bench.parse_args(["--repeats", "2", "--runs", "stage1"]).repeats == 2
    assert_argparse_error(bench.parse_args, ["--repeats", "0"], "must be at least 1", capsys)
    assert_argparse_error(bench.parse_args, ["--runs", "stage9"], "invalid choice", capsys)


def result(run, checkpointing, repeat, step_s, training_mib, step_peak_mib):
    return dict(
        run=run,
        checkpointing=checkpointing,
        repeat=repeat,
        trainable_params=1_000_000,
        step_s=step_s,
        training_mib=training_mib,
        step_peak_mib=step_peak_mib,
    )


# repeat 1 runs on/off (interleaved order) and everything in it is twice as slow: paired ratios do not move
RESULTS = [
    result("stage1", False, 0, 10.0, 800.0, 200.0),
    result("stage1", True, 0, 13.0, 500.0, 100.0),
    result("stage2", False, 0, 20.0, 1600.0, 400.0),
    result("stage2", True, 0, 30.0, 1200.0, 300.0),
    result("stage1", True, 1, 26.0, 520.0, 110.0),
    result("stage1", False, 1, 20.0, 800.0, 220.0),
    result("stage2", True, 1, 60.0, 1200.0, 200.0),
    result("stage2", False, 1, 40.0, 1600.0, 400.0),
]


def test_summarize_pairs_ratios_within_a_repeat(bench):
    summary = bench.summarize(RESULTS)
    assert [(s["run"], s["checkpointing"], s["repeats"]) for s in summary] == [
        ("stage1", False, 2),
        ("stage1", True, 2),
        ("stage2", False, 2),
        ("stage2", True, 2),
    ]
    s1_on, s2_off, s2_on = summary[1]["values"], summary[2]["values"], summary[3]["values"]
    assert s1_on["step_s"] == [13.0, 26.0]
    assert s1_on["time_vs_off"] == [1.3, 1.3]  # unpaired, min/max would give 13/20 .. 26/10
    assert s1_on["step_peak_vs_off"] == [0.5, 0.5]
    assert s2_off["time_vs_ref"] == [2.0, 2.0] and s2_off["train_vs_ref"] == [2.0, 2.0]
    assert s2_on["step_peak_vs_off"] == [0.75, 0.5] and s2_on["train_vs_off"] == [0.75, 0.75]
    assert summary[3]["spread"]["step_peak_vs_off"] == {"median": 0.625, "min": 0.5, "max": 0.75, "n": 2}
    assert summary[0]["values"]["time_vs_off"] == [1.0, 1.0]


def test_report_rewrites_the_summary_of_a_results_file(bench, tmp_path, monkeypatch, capsys):
    path = tmp_path / "bench_training.json"
    path.write_text(json.dumps({"machine": {"cpu_cores": 2}, "results": RESULTS}))
    monkeypatch.setattr(sys, "argv", ["bench_training.py", "--report", str(path)])
    bench.main()
    data = json.loads(path.read_text())
    assert data["machine"] == {"cpu_cores": 2} and data["results"] == RESULTS
    assert [s["run"] for s in data["summary"]] == ["stage1", "stage1", "stage2", "stage2"]
    row = data["table"]["rows"][3]  # stage2 ckpt on
    assert row[0] == "stage2 ckpt on" and row[7:] == ["0.75", "0.62 (0.50–0.75)", "1.50"]
    assert "stage2 ckpt on" in capsys.readouterr().out


def test_bench_plan_summarizes_measured_repeats_against_one_plan():
    plan = load_script("bench_plan")
    results = [
        dict(result("stage1", False, 0, 10.0, 800.0, 200.0), plan_train_mib=720.0, plan_activations_mib=500.0),
        dict(result("stage1", True, 0, 13.0, 500.0, 100.0), plan_train_mib=350.0, plan_activations_mib=150.0),
        dict(result("stage1", True, 1, 13.0, 700.0, 120.0), plan_train_mib=350.0, plan_activations_mib=150.0),
        dict(result("stage1", False, 1, 10.0, 900.0, 240.0), plan_train_mib=720.0, plan_activations_mib=500.0),
    ]
    summary = plan.summarize(results)
    assert [(s["run"], s["checkpointing"], s["repeats"], s["plan_train_mib"]) for s in summary] == [
        ("stage1", False, 2, 720.0),
        ("stage1", True, 2, 350.0),
    ]
    assert summary[0]["values"]["training_mib"] == [800.0, 900.0]  # in repeat order
    assert summary[0]["values"]["plan_x_measured"] == [0.9, 0.8]
    assert summary[1]["spread"]["plan_x_measured"] == {"median": 0.6, "min": 0.5, "max": 0.7, "n": 2}
