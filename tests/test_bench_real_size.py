"""benchmarks/bench_real_size.py: the parts of it that need no real-size files (its counting), on the tiny model."""

from __future__ import annotations

import torch
from bench_kit import load_script


def test_memory_modes_replay_the_node_handle():
    bench = load_script("bench_real_size")
    parts = {"scb": 1, "vlm": 100, "dit": 50, "vae": 10}
    peaks = bench.mode_peaks(parts)
    assert peaks["keep_all_on_gpu"] == 161
    # the DiT and the VAE stay once loaded; the VLM comes back for the second image's encode
    assert peaks["offload_vlm_after_encode"] == 161
    assert peaks["sequential_offload"] == 101  # SCB + the largest stage part


def test_part_bytes_count_tied_and_fp8_weights_once():
    from deepgen.loading.fp8 import apply_fp8
    from deepgen.tiny import build_tiny_model

    bench = load_script("bench_real_size")
    model = build_tiny_model(seed=0)  # its own: recast below
    counted = bench.part_bytes(model)
    total = sum({t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}.values())
    assert sum(counted.values()) == total  # lm_head shares embed_tokens: once
    assert counted["vlm"] > counted["dit"] > 0 and counted["vae"] > 0 and counted["scb"] > 0
    copy = bench.part_bytes(model.to(torch.bfloat16))
    assert copy["dit"] * 2 == counted["dit"]
    apply_fp8(model, torch.bfloat16)
    fp8 = bench.part_bytes(model)
    assert fp8["dit"] < copy["dit"] and fp8["scb"] == copy["scb"]
