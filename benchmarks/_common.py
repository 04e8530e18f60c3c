"""Helpers shared by the benchmarks: machine facts, medians and spreads, a plain table, JSON results, scaled models.

Every benchmark reports RATIOS against a baseline measured side by side in the same run (the machine is
shared, so absolute seconds drift between runs; ratios much less so).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache"  # generated checkpoints (git-ignored)

if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from the repository root
    sys.path.insert(0, str(ROOT))


def machine() -> dict:
    import torch

    return {
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


def proc_status() -> dict[str, int]:
    """This process image's VmRSS (now), VmHWM (peak RSS), RssAnon (private) and RssFile (file-backed), in bytes.
    Not ru_maxrss: Linux carries the parent's peak over fork+exec into a child's ru_maxrss. Linux only."""
    fields = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    lines = Path("/proc/self/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines if line.startswith(fields)}


def positive(kind):
    """An argparse type: `kind(text)`, refused unless > 0, with a message that names the value."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def median(values) -> float:
    return float(statistics.median(values))


def spread(values) -> dict:
    """Median and range of repeated measurements. A single run on the shared machine is no figure: runs of
    the same benchmark have differed by more than the effect measured, so every figure carries its range."""
    values = [float(v) for v in values]
    return {"median": median(values), "min": min(values), "max": max(values), "n": len(values)}


def spread_cell(values, digits: int = 2) -> str:
    """'median (min–max)' for a table cell; the median alone when the range rounds to one value (e.g. a ratio
    to itself, or a single run)."""
    s = spread(values)
    low, mid, high = (f"{s[k]:.{digits}f}" for k in ("min", "median", "max"))
    return mid if low == high else f"{mid} ({low}–{high})"


def repeat_within(fn, reps: int, budget_s: float, started: float | None = None) -> list:
    """Call fn() up to `reps` times (at least once), stopping early when one more call, as long as the longest so
    far, would end more than budget_s after `started` (default: now). Keeps a run on a loaded machine short."""
    import time

    started = time.perf_counter() if started is None else started
    results, longest = [], 0.0
    for _ in range(reps):
        if results and time.perf_counter() + longest - started > budget_s:
            break
        t = time.perf_counter()
        results.append(fn())
        longest = max(longest, time.perf_counter() - t)
    return results


def table(headers: list[str], rows: list[list], markdown: bool = False, align: str | None = None) -> str:
    """Aligned plain text, or a markdown table. align: one 'l' or 'r' per column (default: the first column
    left-aligned, the others, numbers, right-aligned)."""
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(items):
        text = (" | " if markdown else "  ").join(
            s.rjust(w) if a == "r" else s.ljust(w) for s, w, a in zip(items, widths, align)
        )
        return f"| {text} |" if markdown else text

    rule = [("-" * (w - 1) + ":" if a == "r" else "-" * w) if markdown else "-" * w for w, a in zip(widths, align)]
    return "\n".join([line(headers), line(rule), *(line(r) for r in cells)])


def write_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def build_model(
    transformer: dict | None = None, connector: dict | None = None, num_queries: int | None = None, seed: int = 0
):
    """A random DeepGenModel like `deepgen.tiny.build_tiny_model` (tiny VLM and VAE, official scheduler),
    with the DiT config and connector sizes overridden. float32, eval mode."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

    from deepgen import tiny
    from deepgen.model.connector import ConnectorConfig
    from deepgen.model.deepgen import DeepGenModel
    from deepgen.model.dit import DeepGenTransformer2DModel
    from deepgen.tokenizer import demo_tokenizer

    connector_config = ConnectorConfig(**{**tiny.TINY_CONNECTOR.to_dict(), **(connector or {})})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lmm = AutoModelForImageTextToText.from_config(
            Qwen2_5_VLConfig.from_dict(tiny.TINY_VLM), attn_implementation="sdpa"
        )
        dit = DeepGenTransformer2DModel.from_config({**tiny.TINY_TRANSFORMER, **(transformer or {})})
        vae = AutoencoderKL.from_config(tiny.TINY_VAE)
        model = DeepGenModel(
            lmm,
            demo_tokenizer(),
            dit,
            vae,
            connector_config,
            num_queries=num_queries or tiny.TINY_NUM_QUERIES,
            scheduler_config=tiny.SCHEDULER_CONFIG,
        )
        for head in (model.projector_2, model.projector_3):  # as tiny.py: make the output depend on the prompt
            torch.nn.init.normal_(head.weight, std=0.2)
    return model.float().eval()


def lora_tensors(model, rank: int = 8, seed: int = 0) -> dict:
    """Random official-style VLM LoRA keys (`lmm.<module>.lora_{A,B}.default.weight`) on every Linear of the
    text tower's attention and MLP, so the loader's LoRA-merge path runs as it does on the real checkpoint."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.lmm.named_modules():
        if ".language_model.layers." in name and isinstance(module, torch.nn.Linear):
            out_features, in_features = module.weight.shape
            tensors[f"lmm.{name}.lora_A.default.weight"] = torch.randn(rank, in_features, generator=generator) * 0.01
            tensors[f"lmm.{name}.lora_B.default.weight"] = torch.randn(out_features, rank, generator=generator) * 0.01
    return tensors


def save_official_release(model, folder: Path, lora_rank: int = 8) -> dict[str, Path]:
    """Write `model` in the official layout, as `deepgen.tiny.save_tiny_release` does, plus LoRA keys.

    folder/Qwen2.5-VL (save_pretrained + tokenizer), folder/UniPic2/{transformer,vae,scheduler} and
    folder/model.safetensors (meta_queries, projector_*, connector.*, transformer.*, lmm.*lora*).
    transformer/ holds only its config.json: when the checkpoint has transformer.* the loader never reads the
    base DiT weights, so writing them would only cost disk and time.
    """
    from safetensors.torch import save_file

    from deepgen.tiny import SCHEDULER_CONFIG

    vlm_dir, diffusion_dir = folder / "Qwen2.5-VL", folder / "UniPic2"
    model.lmm.save_pretrained(vlm_dir)
    model.tokenizer.save_pretrained(vlm_dir)
    model.transformer.save_config(diffusion_dir / "transformer")
    model.vae.save_pretrained(diffusion_dir / "vae")
    (diffusion_dir / "scheduler").mkdir(parents=True, exist_ok=True)
    (diffusion_dir / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    tensors = {k: v.contiguous() for k, v in model.trained_state_dict().items()}
    tensors.update(lora_tensors(model, lora_rank))
    checkpoint = folder / "model.safetensors"
    save_file(tensors, str(checkpoint))
    return {"checkpoint": checkpoint, "vlm": vlm_dir, "diffusion": diffusion_dir}


class Clock:
    """Wall time of a block, with CUDA synchronised at both ends; and the peak CUDA memory of a stretch."""

    def __init__(self, device):
        import torch

        self.torch, self.cuda = torch, torch.device(device).type == "cuda"
        self.device = device

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def time(self, into: dict, key: str):
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        into[key] = into.get(key, 0.0) + time.perf_counter() - start

    def reset_peak(self):
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> tuple[float | None, float | None]:
        """(allocated, reserved) peak in GiB since reset_peak; None without CUDA."""
        if not self.cuda:
            return None, None
        cuda = self.torch.cuda
        return cuda.max_memory_allocated(self.device) / 2**30, cuda.max_memory_reserved(self.device) / 2**30
