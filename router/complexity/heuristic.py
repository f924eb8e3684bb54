"""Estimator v0: a transparent heuristic over the whole conversation.

Signals, each in [0, 1] and weighted: length of the text, code, maths, reasoning verbs, the
number of separate asks, and conversation depth. Plain small talk is capped low. Deterministic
and a few microseconds per request; the trained estimator replaces it behind the same interface.
"""

from __future__ import annotations

import itertools
import math
import re

from router.types import ChatRequest, sample

# The patterns below count at most two hits each: the first and last 4,000 characters of a
# long conversation are enough to find them, and keep the cost of scoring bounded. They are
# matched against lower-cased text (case-insensitive matching is several times slower in `re`).
PATTERN_CHARS = 8_000

_CODE = re.compile(
    r"```|\bdef |\bclass \w+|\bfunction\b|\breturn\b|\bimport \w+|#include|=>|\bselect\b.+\bfrom\b|"
    r"\b(python|javascript|typescript|rust|golang|java|c\+\+|sql|regex|bash|compile|stack trace|"
    r"traceback|exception|segfault|api|algorithm|refactor|debug)\b",
)
_MATH = re.compile(
    r"\d+\s*[-+*/^=]\s*\d+|\b(solve|equation|integral|derivative|prove|proof|theorem|probability|"
    r"calculate|compute|matrix|eigen|polynomial|lemma|optimi[sz]e|how many)\b",
)
_REASONING = re.compile(
    r"\b(why|explain|analy[sz]e|compare|contrast|evaluate|design|architect|trade-?offs?|"
    r"step[- ]by[- ]step|justify|critique|strategy|implications?|pros and cons|in depth|"
    r"detailed|comprehensive|essay|plan)\b",
)
_SMALL_TALK = re.compile(
    r"^\W*(hi|hello|hey|yo|thanks|thank you|good (morning|afternoon|evening|night)|how are you|"
    r"what'?s up|bye|goodbye|ok(ay)?|cool|nice|great)\b[\w\s,!.?']{0,40}$",
    re.IGNORECASE,
)
_ASKS = re.compile(r"\?|^\s*(?:[-*•]|\d+[.)])\s+", re.MULTILINE)

WEIGHTS = {
    "length": 0.30,
    "code": 0.25,
    "math": 0.20,
    "reasoning": 0.20,
    "asks": 0.10,
    "turns": 0.05,
}


class HeuristicEstimator:
    """Weighted sum of cheap text signals, clamped to [0, 1]."""

    name = "heuristic-v0"

    def signals(self, request: ChatRequest) -> dict[str, float]:
        chars = len(request.text)  # exact; the patterns read a bounded sample
        text = sample(request.text, PATTERN_CHARS)
        lowered = text.lower()
        last = sample(request.last_user_text, PATTERN_CHARS) if request.last_user_text else text
        turns = sum(1 for m in request.messages if m["role"] == "assistant")
        return {
            # 20 characters → 0, about 3,000 → 1 (log scale).
            "length": _clamp((math.log10(chars + 1) - 1.3) / 2.2),
            "code": _hits(_CODE, lowered, 2) / 2,
            "math": _hits(_MATH, lowered, 2) / 2,
            "reasoning": _hits(_REASONING, lowered, 2) / 2,
            "asks": max(0, _hits(_ASKS, last, 4) - 1) / 3,
            "turns": min(1.0, turns / 4),
            "small_talk": 1.0 if _SMALL_TALK.match(last.strip()) else 0.0,
        }

    def explain(self, request: ChatRequest) -> dict[str, float]:
        """Each signal's contribution to the score (weight × value), largest first."""
        s = self.signals(request)
        parts = {k: round(WEIGHTS[k] * s[k], 4) for k in WEIGHTS}
        if s["small_talk"]:
            parts["small_talk (caps the score at 0.1)"] = 1.0
        return dict(sorted(parts.items(), key=lambda kv: -kv[1]))

    def score(self, request: ChatRequest) -> float:
        return combine(self.signals(request))


def combine(s: dict[str, float]) -> float:
    """The v0 score from its signals: the weighted sum, capped at 0.1 for small talk."""
    total = sum(WEIGHTS[k] * s[k] for k in WEIGHTS)
    if s["small_talk"]:
        total = min(total, 0.1)
    return round(_clamp(total), 4)


def _hits(pattern: re.Pattern[str], text: str, most: int) -> int:
    """How many times `pattern` occurs in `text`, counting no further than `most`."""
    return sum(1 for _ in itertools.islice(pattern.finditer(text), most))


def _clamp(x: float) -> float:
    return max(0.0, min(1.0, x))
