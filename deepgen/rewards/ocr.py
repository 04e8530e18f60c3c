"""OCR reward: does the image spell the quoted text of the prompt?

Why: text-rendering prompts carry their target text in double quotes; the reward is
``1 - edit_distance / len(target)`` in [0, 1] (reference §2.3). The engine is the offline
``rapidocr-onnxruntime`` (PP-OCRv4 det/rec ONNX models inside the wheel; the official code
used PaddleOCR 2.9.1 with ``lang="en"``, which downloads its models). The angle classifier is
off (official ``use_angle_cls=False``) and lines below confidence 0.5 are dropped, which is
PaddleOCR's own ``drop_score`` default.

Two scorers, as in the official service:

* ``impl="old"`` (official default): target = the FIRST ``"..."`` span; recognised text =
  all OCR lines with confidence > 0 joined; both lower-cased with spaces removed;
  distance = 0 if the target is a substring of the recognised text, else Levenshtein,
  capped at len(target).
* ``impl="new"``: targets = ALL ``"..."`` spans, whitespace and (by default) everything but
  [A-Za-z0-9] removed, case-sensitive; candidates = single OCR tokens, 2-3 adjacent
  tokens and the full concatenation; best distance also tried after folding confusable
  characters (0->o, 1->l, i->l, j->l, 5->s, v->w); reward = length-weighted mean over spans.

Only ASCII double quotes count, as in the official code (``smart_quotes=True`` also
accepts the curly pair). An OCR engine error on one image scores 0 (official behaviour).

**No-quote policy (deviation, on purpose).** A prompt with no usable quoted target (no
closed ``"..."`` pair, or a target that normalises to empty) is *not applicable*: its score
is NaN, the OCR engine is not run for it, and :class:`~deepgen.rewards.mix.RewardMix`
renormalises that image's weights over its applicable rewards. The official "old" service
instead raises on such a prompt and the trainer zeroes the OCR column of the whole batch,
text-rendering prompts included; the "new" one scores it 0.0.
"""

from __future__ import annotations

import io
import logging
import math
import re
from typing import Any

import torch

from .base import Reward, cached_model, register_reward

__all__ = ["OCRReward", "quoted_targets", "levenshtein", "score_old", "score_new", "fold_confusables"]

log = logging.getLogger(__name__)

_QUOTE_RE = re.compile(r'"([^"]*)"')
_CONFUSABLE = str.maketrans({"0": "o", "1": "l", "i": "l", "j": "l", "5": "s", "v": "w"})


def quoted_targets(prompt: str, smart_quotes: bool = False) -> list[str]:
    """All closed ``"..."`` spans of the prompt, in order (empty spans included)."""
    if smart_quotes:
        prompt = prompt.replace("\u201c", '"').replace("\u201d", '"')
    return _QUOTE_RE.findall(prompt)


def levenshtein(a: str, b: str) -> int:
    """Plain edit distance (insert/delete/substitute, unit costs)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def fold_confusables(text: str) -> str:
    return text.translate(_CONFUSABLE)


def _norm_old(text: str) -> str:
    return text.replace(" ", "").lower()


def _norm_new(text: str, case_sensitive: bool = True, ignore_punct: bool = True) -> str:
    s = re.sub(r"\s+", "", text)
    if ignore_punct:
        s = re.sub(r"[^A-Za-z0-9]+", "", s)
    return s if case_sensitive else s.lower()


def score_old(lines: list[tuple[str, float]], target: str) -> float:
    """Official default scorer; ``target`` is the raw first quoted span (must normalise non-empty)."""
    tgt = _norm_old(target)
    rec = _norm_old("".join(t for t, c in lines if c > 0))
    dist = 0 if tgt in rec else min(levenshtein(rec, tgt), len(tgt))
    return 1.0 - dist / len(tgt)


def score_new(
    lines: list[tuple[str, float]],
    targets: list[str],
    case_sensitive: bool = True,
    ignore_punct: bool = True,
    min_conf: float = 0.0,
    ngram_max: int = 3,
    confusion_fold: bool = True,
) -> float:
    """Official "new" scorer: length-weighted mean of per-span ``1 - min(dist, len)/len``."""
    toks = [_norm_new(t, case_sensitive, ignore_punct) for t, c in lines if t and c >= min_conf]
    toks = [t for t in toks if t]
    cands = list(toks)
    for n in range(2, max(1, ngram_max) + 1):
        cands += ["".join(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    if toks:
        cands.append("".join(toks))
    cands = list(dict.fromkeys(cands))
    total, acc = 0, 0.0
    for raw in targets:
        tgt = _norm_new(raw, case_sensitive, ignore_punct)
        if not tgt:
            continue
        best = len(tgt)
        for c in cands:
            d = levenshtein(c, tgt)
            if confusion_fold:
                d = min(d, levenshtein(fold_confusables(c), fold_confusables(tgt)))
            best = min(best, d)
            if best == 0:
                break
        acc += (1.0 - best / len(tgt)) * len(tgt)
        total += len(tgt)
    return acc / total if total else 0.0


class OCRReward(Reward):
    """1 - normalised edit distance between OCR'd text and the quoted prompt text; NaN if no quote."""

    name = "ocr"

    def __init__(
        self,
        impl: str = "old",
        text_score: float = 0.5,
        use_cls: bool = False,
        smart_quotes: bool = False,
        jpeg_quality: int | None = None,
        case_sensitive: bool = True,
        ignore_punct: bool = True,
        min_conf: float = 0.0,
        ngram_max: int = 3,
        confusion_fold: bool = True,
    ):
        if impl not in ("old", "new"):
            raise ValueError(f"impl must be 'old' or 'new', got {impl!r}")
        self.impl = impl
        self.text_score = float(text_score)
        self.use_cls = bool(use_cls)
        self.smart_quotes = smart_quotes
        self.jpeg_quality = jpeg_quality  # the official service received JPEG q75; None = no re-encode
        self.new_kwargs: dict[str, Any] = dict(
            case_sensitive=case_sensitive,
            ignore_punct=ignore_punct,
            min_conf=min_conf,
            ngram_max=ngram_max,
            confusion_fold=confusion_fold,
        )

    def targets(self, prompt: str) -> list[str] | None:
        """The target spans this scorer uses, or None when the prompt is not applicable."""
        spans = quoted_targets(prompt, self.smart_quotes)
        if self.impl == "old":
            spans = spans[:1]
            ok = bool(spans) and bool(_norm_old(spans[0]))
        else:
            ok = any(_norm_new(s, self.new_kwargs["case_sensitive"], self.new_kwargs["ignore_punct"]) for s in spans)
        return spans if ok else None

    def engine(self):
        key = ("rapidocr", self.use_cls, self.text_score)
        return cached_model(key, lambda _device: _make_engine(self.use_cls, self.text_score))  # CPU, no torch

    def read(self, image) -> list[tuple[str, float]]:
        """OCR lines of one PIL image as (text, confidence), top to bottom."""
        if self.jpeg_quality is not None:
            from PIL import Image

            buf = io.BytesIO()
            image.convert("RGB").save(buf, format="JPEG", quality=self.jpeg_quality)
            image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        result, _ = self.engine()(image.convert("RGB"), use_cls=self.use_cls)
        return [(str(r[1]), float(r[2])) for r in (result or [])]

    def score(self, images, prompts, group_ids=None) -> torch.Tensor:
        out = []
        for img, prompt in zip(images, prompts):
            spans = self.targets(prompt)
            if spans is None:
                out.append(math.nan)
                continue
            try:
                lines = self.read(img)
            except Exception as e:  # official: an OCR failure gets the maximum penalty
                log.warning("OCR failed on one image (%s); scoring it 0", e)
                out.append(0.0)
                continue
            if self.impl == "old":
                out.append(score_old(lines, spans[0]))
            else:
                out.append(score_new(lines, spans, **self.new_kwargs))
        return torch.tensor(out, dtype=torch.float32)


def _make_engine(use_cls: bool, text_score: float):
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the OCR reward needs the offline engine: pip install rapidocr-onnxruntime") from e
    return RapidOCR(use_cls=use_cls, text_score=text_score)


register_reward("ocr", OCRReward)
