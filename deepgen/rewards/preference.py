"""Pairwise VLM preference reward (official ``unifiedreward_think``).

Why: a judge that only has to say which of two images is better is far more reliable
than an absolute score, and the within-group win rate is exactly what the group z-score
of the RL stage needs. Following reference §2.2:

* every unordered pair of images of a group is judged once (C(G,2) calls);
* the user text is ``Compare these two images based on the prompt: {prompt}. Which image
  is better?`` (the fine-tuned judge uses its own output format);
* the verdict is read from ``<answer>...</answer>`` ("Image 1 is better" / "Image 2 is
  better");
* reward = wins / comparisons of each image, ties, unparseable answers and failed calls
  count 0.5 for both images, rounded to 3 decimals. A group of one image scores 0.5.

Deviations, on purpose: the order inside a pair (which image is "Image 1") is drawn with a
seeded RNG instead of always lower-index-first (the official judge's position bias would
otherwise favour low indices); ``pair_order="index"`` restores the official order and
``"both"`` asks both orders. Parsing also accepts answers without tags ("Image 1 is
better", "Final answer: Image 2", ``\\boxed{1}``, "the first image is better").

Groups come from ``group_ids``; without them, images with the same prompt form a group.
Backends live in :mod:`deepgen.rewards.judges` (OpenAI-compatible endpoint, local Qwen-VL) and
:mod:`deepgen.rewards.deepgen_judge` (the loaded DeepGen model's own VLM).
"""

from __future__ import annotations

import itertools
import logging
import random
import re
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .base import Reward, register_reward

__all__ = [
    "PROMPT_TEMPLATE",
    "PreferenceReward",
    "parse_preference",
    "pair_plan",
    "win_rates",
]

log = logging.getLogger(__name__)

PROMPT_TEMPLATE = "Compare these two images based on the prompt: {prompt}. Which image is better?"

# ----------------------------------------------------------------------------- parsing

_ANSWER_CLOSED = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_ANSWER_OPEN = re.compile(r"<answer>(.*)$", re.S | re.I)
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.S | re.I)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_FINAL = re.compile(
    r"(?:final\s+(?:answer|verdict|decision|choice)|answer|verdict|conclusion|decision|winner)\s*[:：]\s*([^\n]+)",
    re.I,
)
_IMG = r"(?:image|picture|img|pic)\s*(?:#|no\.?|number)?\s*([12])\b"
_QUAL = r"(?:\s+(?:is|was|looks|seems|appears|remains))?(?:\s+(?:clearly|slightly|much|far|overall|definitely|the))*\s+"
_BETTER = re.compile(_IMG + _QUAL + r"(?:better|superior|preferred|preferable|stronger|winner|wins)\b", re.I)
_WORSE = re.compile(_IMG + _QUAL + r"(?:worse|inferior|weaker)\b", re.I)
_ORDINAL = re.compile(
    r"\b(first|second|left|right)\s+(?:image|picture|one)" + _QUAL + r"(?:better|superior|preferred|preferable)\b",
    re.I,
)
_PREFER = re.compile(r"\b(?:prefer|choose|pick|select)\s+(?:the\s+)?" + _IMG, re.I)
_BARE = re.compile(r"^\W*(?:(?:image|picture|img)\s*)?([12])\W*$", re.I)
_TIE = re.compile(r"\b(?:tie|tied|draw|equal(?:ly)?|equivalent|same\s+quality|neither|both\s+(?:are|images))\b", re.I)
_ORD_MAP = {"first": 1, "left": 1, "second": 2, "right": 2}


def parse_preference(text) -> int | None:
    """Judge answer -> 1 (first image better), 2 (second better), 0 (explicit tie), None (unparseable).

    ``<answer>`` tags win (last one; an unclosed tag at the end counts); otherwise, after
    dropping ``<think>`` blocks, the last final-answer marker (``\\boxed{}``,
    "Final answer:") and then the whole text are searched. Conflicting verdicts -> None.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    tags = _ANSWER_CLOSED.findall(text)
    if tags:
        return _verdict(tags[-1])
    m = _ANSWER_OPEN.search(text)
    if m:
        return _verdict(m.group(1))
    body = _THINK.sub(" ", text)
    for rx in (_BOXED, _FINAL):
        found = rx.findall(body)
        if found:
            v = _verdict(found[-1])
            if v is not None:
                return v
    return _verdict(body)


def _verdict(span: str) -> int | None:
    span = re.sub(r"[*_`#]+", "", span).strip()
    votes = {int(d) for d in _BETTER.findall(span)}
    votes |= {3 - int(d) for d in _WORSE.findall(span)}
    votes |= {_ORD_MAP[w.lower()] for w in _ORDINAL.findall(span)}
    votes |= {int(d) for d in _PREFER.findall(span)}
    if len(votes) == 1:
        return votes.pop()
    if votes:
        return None
    m = _BARE.match(span)
    if m:
        return int(m.group(1))
    return 0 if _TIE.search(span) else None


# ----------------------------------------------------------------------------- pairing and math


def pair_plan(n: int, order: str = "random", rng: random.Random | None = None) -> list[tuple[int, int]]:
    """(first, second) index pairs to judge for a group of ``n`` images.

    ``index``: official lower-index-first; ``random``: each pair's order drawn from ``rng``;
    ``both``: every pair in both orders.
    """
    pairs = list(itertools.combinations(range(n), 2))
    if order == "index":
        return pairs
    if order == "both":
        return pairs + [(j, i) for i, j in pairs]
    if order == "random":
        rng = rng or random.Random(0)
        return [(j, i) if rng.random() < 0.5 else (i, j) for i, j in pairs]
    raise ValueError(f"pair_order must be 'random', 'index' or 'both', got {order!r}")


def win_rates(n: int, outcomes: Iterable[tuple[int, int, int | None]], decimals: int | None = 3) -> torch.Tensor:
    """Win rate per image from (first, second, verdict) outcomes; verdict 1/2 = that side wins, else 0.5 each."""
    wins = [0.0] * n
    games = [0] * n
    for a, b, v in outcomes:
        games[a] += 1
        games[b] += 1
        if v == 1:
            wins[a] += 1.0
        elif v == 2:
            wins[b] += 1.0
        else:
            wins[a] += 0.5
            wins[b] += 0.5
    rates = [w / g if g else 0.5 for w, g in zip(wins, games)]
    if decimals is not None:
        rates = [round(r, decimals) for r in rates]
    return torch.tensor(rates, dtype=torch.float32)


# ----------------------------------------------------------------------------- the reward


class PreferenceReward(Reward):
    """Within-group pairwise win rate from a VLM judge.

    ``judge``: an object with ``judge_many(items) -> list[str | None]`` (items are
    ``(text, image_1, image_2)``), or a callable ``judge(text, image_1, image_2) -> str``, or
    ``"deepgen"``: the loaded DeepGen model's own VLM (:class:`~deepgen.rewards.deepgen_judge.DeepGenVLMJudge`,
    bound to the policy model by the stage-3 trainer).
    Without a judge, ``url=`` builds an :class:`~deepgen.rewards.judges.EndpointJudge` and
    otherwise ``model_path=`` (default ``models/deepgen/unifiedreward-think``) a local
    :class:`~deepgen.rewards.judges.QwenVLJudge`; extra kwargs go to the judge.
    After each call ``last_comparisons`` holds every pair's verdict and raw answer.
    """

    name = "preference"

    def __init__(
        self,
        judge=None,
        *,
        url: str | None = None,
        model_path: str | Path | None = None,
        seed: int = 0,
        pair_order: str = "random",
        decimals: int | None = 3,
        prompt_template: str = PROMPT_TEMPLATE,
        fail_after: int = 2,
        **judge_kwargs,
    ):
        if isinstance(judge, str):  # a judge by name: "deepgen", the loaded DeepGen model's own VLM
            judge = _named_judge(judge, url, model_path, judge_kwargs)
        elif judge is None:
            from .judges import DEFAULT_JUDGE_DIR, EndpointJudge, QwenVLJudge

            if url:
                judge = EndpointJudge(url, **judge_kwargs)
            else:
                judge = QwenVLJudge(model_path or DEFAULT_JUDGE_DIR, **judge_kwargs)
        elif judge_kwargs or url or model_path:
            raise TypeError("pass either a judge or url=/model_path= with judge kwargs, not both")
        pair_plan(2, pair_order)  # validates pair_order early
        self.judge = judge
        self.seed = seed
        self.pair_order = pair_order
        self.decimals = decimals
        self.prompt_template = prompt_template
        self.rng = random.Random(seed)
        self.last_comparisons: list[dict] = []
        # Every judge request of a call failing means the judge is gone: the call's scores are all 0.5 ties, so
        # RL silently turns into KL/SFT training.  One such call is tolerated (a judge-server restart, a network
        # blip: one rollout is wasted); ``fail_after`` consecutive ones (default 2) raise ResourceError, and the
        # trainer's interrupt checkpoint keeps the last complete step for the resume.  0 never raises.
        self.fail_after = int(fail_after)
        self._failed_in_a_row = 0

    def probe(self, timeout: float = 5.0) -> None:
        """Check that the judge can be reached, if it can tell (an endpoint judge: one TCP connect)."""
        probe = getattr(self.judge, "probe", None)
        if probe is not None:
            probe(timeout)

    def _judge_name(self) -> str:
        label = getattr(self.judge, "label", None)
        if label:
            return f"the preference judge ({label})"
        endpoint = getattr(self.judge, "endpoint", None)
        if endpoint:
            return f"the preference judge at {endpoint}"
        path = getattr(self.judge, "model_path", None)
        return f"the preference judge {path}" if path else f"the preference judge {type(self.judge).__name__}"

    def reseed(self, seed: int | None = None) -> None:
        """Restarts the pair-order RNG (same seed -> same pair orders from here on)."""
        self.rng = random.Random(self.seed if seed is None else seed)

    def score(self, images, prompts, group_ids=None) -> torch.Tensor:
        keys = group_ids if group_ids is not None else prompts
        groups: dict = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)

        items, meta = [], []
        for gkey, idx in groups.items():
            text = self.prompt_template.format(prompt=prompts[idx[0]])
            for a, b in pair_plan(len(idx), self.pair_order, self.rng):
                items.append((text, images[idx[a]], images[idx[b]]))
                meta.append((gkey, a, b))

        answers = _run_judge(self.judge, items) if items else []
        verdicts = [parse_preference(t) for t in answers]
        self.last_comparisons = [
            {"group": g, "first": groups[g][a], "second": groups[g][b], "verdict": v, "answer": t}
            for (g, a, b), v, t in zip(meta, verdicts, answers)
        ]
        n_fail = sum(v is None for v in verdicts)
        n_calls_failed = sum(t is None for t in answers)
        if items and n_calls_failed == len(items):
            self._failed_in_a_row += 1
            if self.fail_after and self._failed_in_a_row >= self.fail_after:
                from ..errors import ResourceError

                raise ResourceError(
                    f"{self._judge_name()} failed every request in {self._failed_in_a_row} calls in a row "
                    f"({len(items)} comparisons in the last): is the judge server still running? Restart it and "
                    "resume the run (training stopped rather than continue without the preference reward)"
                )
        elif items:
            self._failed_in_a_row = 0
        if items and n_fail == len(items):
            log.warning("preference judge: all %d comparisons failed or were unparseable (all scores 0.5)", n_fail)
        elif n_fail:
            log.info("preference judge: %d of %d comparisons counted as ties (failed/unparseable)", n_fail, len(items))

        out = torch.full((len(images),), 0.5, dtype=torch.float32)
        for gkey, idx in groups.items():
            outc = [(a, b, v) for (g, a, b), v in zip(meta, verdicts) if g == gkey]
            out[torch.tensor(idx)] = win_rates(len(idx), outc, self.decimals)
        return out


def _named_judge(name: str, url, model_path, judge_kwargs: dict):
    from ..errors import InputError
    from .deepgen_judge import DEEPGEN_JUDGE, DeepGenVLMJudge

    if name.strip().lower() != DEEPGEN_JUDGE:
        raise InputError(
            f"judge {name!r} is not a judge name; the one named judge is {DEEPGEN_JUDGE!r} (the loaded DeepGen "
            "model's VLM). Otherwise give url= (a judge server) or model_path= (a local Qwen2.5-VL judge folder)"
        )
    if url or model_path:
        raise TypeError(f"judge={DEEPGEN_JUDGE!r} uses the loaded model: it takes no url= or model_path=")
    return DeepGenVLMJudge(**judge_kwargs)


def _run_judge(judge, items: Sequence[tuple]) -> list[str | None]:
    if hasattr(judge, "judge_many"):
        answers = list(judge.judge_many(list(items)))
        if len(answers) != len(items):
            raise ValueError(f"judge returned {len(answers)} answers for {len(items)} pairs")
        return answers
    if not callable(judge):
        raise TypeError("judge must have judge_many() or be callable(text, image_1, image_2)")
    out = []
    for it in items:
        try:
            out.append(judge(*it))
        except Exception as e:  # a failed comparison counts as a tie
            log.debug("judge call failed: %s", e)
            out.append(None)
    return out


register_reward("preference", PreferenceReward)
