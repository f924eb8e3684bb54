"""Estimator v1: how much a request asks, measured from its structure, trained on public data.

Five signals over the conversation's user and assistant text (the system prompt is left out: a
long fixed system prompt would make every request look hard):

- `length`: log of the UTF-8 bytes (a Chinese character, 3 bytes, carries about as much as a
  short English word; counting characters would make every CJK request look trivial).
- `vocabulary_reuse`: the share of words that repeat earlier ones (1 - distinct / all words).
- `repeated_terms`: log of how often content words come back; a problem that refers back to
  the same people, quantities and objects has more steps to follow.
- `compressibility`: how well zlib compresses the text (structured, self-referential text
  compresses; a one-line request does not).
- `intent`: the v0 heuristic (code, maths, reasoning verbs, separate asks, conversation depth).

Each signal is standardised with statistics from a source-balanced pool of public prompts, and
their sum (every weight is 1) is mapped to a percentile of that pool, so a score of 0.7 means
"asks more than 70% of the reference requests". Small talk is capped low. The statistics,
weights and percentile table are a small JSON file rebuilt by `scripts/train_estimator.py`,
which also prints why the weights are fixed rather than fitted: fitted weights did worse on
held-out sources.
Pure Python, deterministic, about 0.1 ms per request (p50; scripts/bench_estimator.py).
"""

from __future__ import annotations

import bisect
import json
import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from router.complexity import heuristic
from router.types import ChatRequest, sample

NAME = "structure-v1"
FEATURES = ("length", "vocabulary_reuse", "repeated_terms", "compressibility", "intent")
CLIP = 3.0
MAX_ANALYSED_CHARS = 32_000  # longer texts: the first and last 16,000 characters are analysed

_WORD = re.compile(r"[^\W\d_]+")
_STOP_WORDS = """
    a an the and or but if then than so of to in on at by for from with as into about over
    under is are was were be been being am do does did have has had it its this that these those
    there here which what who whom whose when where why how not no yes can could would should will
    shall may might must you your we our they their he his she her them him i me my"""
_STOP = frozenset(_STOP_WORDS.split())


def conversation(request: ChatRequest) -> ChatRequest:
    """The request without its system messages (itself when there is nothing else)."""
    if not any(m.get("role") == "system" for m in request.messages):
        return request
    rest = [m for m in request.messages if m.get("role") != "system"]
    return request.with_messages(rest) if rest else request


def features(request: ChatRequest) -> dict[str, float]:
    """The five raw signals of a request (before standardisation)."""
    request = conversation(request)
    text = request.text
    size = len(text.encode("utf-8", "replace"))
    text = sample(text, MAX_ANALYSED_CHARS)
    words = [w.lower() for w in _WORD.findall(text)]
    content = [w for w in words if len(w) > 2 and w not in _STOP]
    data = text.encode("utf-8", "replace")
    v0 = heuristic.HeuristicEstimator().signals(request)
    return {
        "length": math.log1p(size),
        "vocabulary_reuse": 1.0 - len(set(words)) / len(words) if words else 0.0,
        "repeated_terms": math.log1p(len(content) - len(set(content))),
        "compressibility": 1.0 - len(zlib.compress(data)) / len(data) if data else 0.0,
        "intent": heuristic.combine(v0),
        "small_talk": v0["small_talk"],
    }


@dataclass(frozen=True)
class Weights:
    """What `scripts/train_estimator.py` writes: per-signal mean, scale and weight, the raw
    score's percentiles over the reference pool, and the cap for small talk."""

    mean: dict[str, float]
    scale: dict[str, float]
    weight: dict[str, float]
    quantiles: list[float]  # raw score at percentiles 0, 1, ..., 100
    small_talk_cap: float
    info: dict[str, Any]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Weights:
        missing = [k for k in FEATURES if k not in data["weight"]]
        if missing:
            raise ValueError(f"estimator weights lack {', '.join(missing)}")
        quantiles = [float(q) for q in data["quantiles"]]
        if len(quantiles) < 2 or quantiles != sorted(quantiles):
            raise ValueError("estimator quantiles must be at least two ascending numbers")
        return cls(
            mean={k: float(data["mean"][k]) for k in FEATURES},
            scale={k: float(data["scale"][k]) for k in FEATURES},
            weight={k: float(data["weight"][k]) for k in FEATURES},
            quantiles=quantiles,
            small_talk_cap=float(data["small_talk_cap"]),
            info=dict(data.get("info", {})),
        )

    @classmethod
    def shipped(cls) -> Weights:
        text = resources.files("router.complexity").joinpath("structure_v1.json").read_text()
        return cls.from_json(json.loads(text))


_SHIPPED: Weights | None = None


class StructureEstimator:
    """Estimator v1 (see the module docstring). Weights load once per process."""

    name = NAME

    def __init__(self, weights: Weights | None = None) -> None:
        global _SHIPPED
        if weights is None:
            if _SHIPPED is None:
                _SHIPPED = Weights.shipped()
            weights = _SHIPPED
        self.weights = weights

    def contributions(self, raw: Mapping[str, float]) -> dict[str, float]:
        """Weight x standardised signal, each clipped to 3 standard units so one extreme
        signal (a one-word message compresses very badly) cannot drown the others."""
        w = self.weights
        return {
            k: w.weight[k] * max(-CLIP, min(CLIP, (raw[k] - w.mean[k]) / w.scale[k]))
            for k in FEATURES
        }

    def raw_score(self, raw: Mapping[str, float]) -> float:
        """The score from raw signals (as `features` returns them)."""
        value = self.percentile(sum(self.contributions(raw).values()))
        if raw.get("small_talk"):
            value = min(value, self.weights.small_talk_cap)
        return round(value, 4)

    def percentile(self, total: float) -> float:
        q = self.weights.quantiles
        if total <= q[0]:
            return 0.0
        if total >= q[-1]:
            return 1.0
        i = bisect.bisect_right(q, total) - 1
        lo, hi = q[i], q[i + 1]
        frac = (total - lo) / (hi - lo) if hi > lo else 0.0
        return (i + frac) / (len(q) - 1)

    def score(self, request: ChatRequest) -> float:
        return self.raw_score(features(request))

    def explain(self, request: ChatRequest) -> dict[str, float]:
        """Each signal's pull on the score in standard units (+ towards the cloud), strongest
        first."""
        raw = features(request)
        parts = {k: round(v, 3) for k, v in self.contributions(raw).items()}
        ordered = dict(sorted(parts.items(), key=lambda kv: -abs(kv[1])))
        if raw["small_talk"]:
            ordered[f"small_talk (caps the score at {self.weights.small_talk_cap})"] = 1.0
        return ordered
