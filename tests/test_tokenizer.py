"""deepgen.tokenizer: the shipped demo tokenizer must encode exactly like the official Qwen2.5-VL one.

The reference is the official tokenizer folder in tests/fixtures (it also holds special_tokens_map.json,
which the package does not ship); the library never reads the fixture.
"""

import sys
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from deepgen import constants as C
from deepgen.tokenizer import TOKENIZER_DIR, demo_tokenizer

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "deepgen-official-tiny" / "Qwen2.5-VL-tiny"

_VISION = "<|vision_start|>" + "<|image_pad|>" * 3 + "<|vision_end|>"
TEXTS = [
    "",
    "a red cat",
    "A sign that reads \"OPEN 24/7\", I'm sure you're right; 3.14159 -42 1,000,000 $19.99",
    "一只红色的猫坐在窗台上，阳光明媚。日本語のテキスト。한국어 텍스트입니다.",
    "emoji: 🐱🐶 👩‍👩‍👧‍👦 🇯🇵 👍🏽 ❤️ ✨",
    "def f(x):\n\treturn {'a': [x, *args]}  # comment\r\n\n",
    "cafe\u0301 nai\u0308ve ﬁ ＦＵＬＬ zero\u200bwidth   spaces  ",
    C.INSTRUCTION_TEMPLATE.format(input=C.GENERATION_TEMPLATE.format(input="a red cat")),
    C.INSTRUCTION_TEMPLATE.format(input=_VISION + "Make the sky purple."),
    "<|object_ref_start|>dog<|object_ref_end|><tool_call>x</tool_call><|fim_pad|><|file_sep|><|endoftext|>",
]


@pytest.fixture(scope="module")
def official():
    return AutoTokenizer.from_pretrained(str(FIXTURE), local_files_only=True)


def test_packaged_files_are_found_through_importlib_resources():
    folder = resources.files("deepgen").joinpath("assets").joinpath("qwen2_5_vl_tokenizer")
    assert sorted(f.name for f in folder.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert Path(str(folder)) == Path(str(TOKENIZER_DIR)) and Path(str(folder)).is_dir()
    assert demo_tokenizer() is demo_tokenizer()  # loaded once
    toml = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    patterns = toml.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["deepgen"]
    for f in folder.iterdir():  # declared as package data, so a non-editable install carries them
        assert any(fnmatch(f"assets/qwen2_5_vl_tokenizer/{f.name}", p) for p in patterns), f.name


def test_vocabulary_and_special_tokens_match(official):
    ours = demo_tokenizer()
    assert type(ours) is type(official)
    assert len(ours) == len(official) == 151665 and ours.get_vocab() == official.get_vocab()
    assert ours.added_tokens_decoder == official.added_tokens_decoder
    assert ours.all_special_tokens == official.all_special_tokens
    assert (ours.pad_token_id, ours.eos_token_id, ours.bos_token) == (C.PAD_TOKEN_ID, C.IM_END_TOKEN_ID, None)
    for name in ("IM_START", "IM_END", "VISION_START", "VISION_END", "IMAGE_PAD"):
        assert ours.convert_tokens_to_ids(f"<|{name.lower()}|>") == getattr(C, f"{name}_TOKEN_ID")


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_and_decodes_back(official, text):
    ours = demo_tokenizer()
    ids = ours.encode(text)
    assert ids == official.encode(text)
    assert ours.decode(ids) == official.decode(ids)
    assert ours.decode(ids) == official.backend_tokenizer.normalizer.normalize_str(text)  # NFC, else lossless


def test_left_padded_batch_matches(official):
    kwargs = dict(padding=True, padding_side="left", return_tensors="pt", add_special_tokens=True)
    ours, ref = demo_tokenizer()(TEXTS, **kwargs), official(TEXTS, **kwargs)
    assert ours["input_ids"].equal(ref["input_ids"]) and ours["attention_mask"].equal(ref["attention_mask"])
    assert ours["input_ids"][0, 0].item() == C.PAD_TOKEN_ID  # "" is all padding, on the left
