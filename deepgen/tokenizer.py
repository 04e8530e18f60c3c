"""The Qwen2.5-VL-3B-Instruct tokenizer of the demo model, shipped as package data.

`deepgen/assets/qwen2_5_vl_tokenizer/` holds the official `tokenizer.json` and `tokenizer_config.json`
(the same bytes as tests/fixtures/deepgen-official-tiny/Qwen2.5-VL-tiny). `special_tokens_map.json` and a
chat template are left out: tokenizer_config.json already names the special tokens, and DeepGen writes its
own prompt templates (deepgen.constants). Real checkpoints bring their own tokenizer (deepgen.loading); this
one serves the random-weight tiny model (deepgen.tiny) and the benchmarks. tests/test_tokenizer.py checks
that it encodes like the official one.
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["TOKENIZER_DIR", "demo_tokenizer"]

# A folder on disk in a source checkout and in an installed wheel (declared as package data in pyproject.toml).
TOKENIZER_DIR = resources.files("deepgen") / "assets" / "qwen2_5_vl_tokenizer"


@functools.lru_cache(maxsize=1)
def demo_tokenizer():
    """The shipped tokenizer (a `Qwen2Tokenizer`), loaded once (~0.5 s) and shared by every caller.

    Do not mutate it (set padding_side, add tokens): pass options per call, as DeepGenModel does
    (`padding_side="left"`).
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
