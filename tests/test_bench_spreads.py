"""The per-rep pairing helpers of benchmarks/bench_sampler.py and benchmarks/bench_load_steps.py.

No benchmark runs here and nothing is timed: the values are made up.
"""

from __future__ import annotations

import pytest
from bench_kit import load_script


def test_sampler_pairs_each_run_with_its_own_bare_steps():
    bench = load_script("bench_sampler")
    # the second run is twice as slow on both sides: its ratio does not move
    runs = [[(2.0, 1.0), (4.0, 3.0)], [(4.0, 2.0), (8.0, 6.0)], [(1.0, 1.0)]]
    assert bench.run_ratios(runs) == [1.5, 1.5, 1.0]


def test_load_steps_pairs_processes_of_the_same_rep():
    bench = load_script("bench_load_steps")
    runs = {"old": [{"s": 4.0}, {"s": 8.0}], "new": [{"s": 1.0}, {"s": 4.0}]}
    assert bench.paired_ratios(runs, "new", "old") == [0.25, 0.5]
    assert bench.paired_ratios(runs, "old", "old") == [1.0, 1.0]
    with pytest.raises(ValueError):  # a mode with a missing process is not paired silently
        bench.paired_ratios({**runs, "new": runs["new"][:1]}, "new", "old")
