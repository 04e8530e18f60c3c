"""The per-rep pairing helpers of benchmarks/bench_sampler.py.

No benchmark runs here and nothing is timed: the values are made up.
"""

from __future__ import annotations

from bench_kit import load_script


def test_sampler_pairs_each_run_with_its_own_bare_steps():
    bench = load_script("bench_sampler")
    # the second run is twice as slow on both sides: its ratio does not move
    runs = [[(2.0, 1.0), (4.0, 3.0)], [(4.0, 2.0), (8.0, 6.0)], [(1.0, 1.0)]]
    assert bench.run_ratios(runs) == [1.5, 1.5, 1.0]
