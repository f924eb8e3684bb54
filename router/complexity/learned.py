"""A per-deployment estimator learned from labels: `router learn` writes it, `[router]
estimator = PATH` makes the router use it.

It learns from prompts labelled 1 ("needed the cloud": the local answer was judged
unacceptable or rated bad; only the strong model of a paired set answered correctly) or 0, or
soft labels in between (a paired set's strong minus weak correctness, mapped to [0, 1]).

Two parts, blended:
- the words: each word and word pair of the conversation (system prompt left out, as in v1),
  hashed, carries the mean label of the training prompts that contain it, shrunk towards the
  overall mean; a prompt's word score is the mean over its words. The topics a deployment's
  local model gets wrong are learned by name, from a few hundred labels.
- v1, the shipped estimator's score, which knows how much a request asks in general.
How much each counts (`mix`, 0 = v1 alone) is chosen by cross-validation on the labels.

The blended score is mapped, monotonically, onto v1's scores over the same training prompts
(quantile matching): at any ceiling, the learned estimator sends about the same share of that
traffic to the local tier as v1 did; what changes is *which* requests. Ceilings (max_score)
stay meaningful. Pure Python; scripts/bench_learning.py measures it against v1, length and
random on held-out labels, and its speed.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import math
import random
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.complexity.structure import MAX_ANALYSED_CHARS, StructureEstimator, conversation
from router.types import ChatRequest, sample

FORMAT = "router-estimator/1"
BUCKETS = 1 << 18
SHRINK = 20.0  # pseudo-prompts of the overall mean each word's mean is shrunk with
INNER_FOLDS = 5
MIXES = (0.0, 0.25, 0.5, 0.75, 1.0)
MIN_LABELS = 100
_WORD = re.compile(r"[^\W_]+")

Metric = Callable[[Sequence[float], Iterable[int]], float]
"""How well scores rank a subset of the labelled prompts (higher is better)."""


def tokens(text: str) -> list[int]:
    """The hashed words and word pairs of `text` (deduplicated, stable across processes)."""
    words = [w.lower() for w in _WORD.findall(sample(text, MAX_ANALYSED_CHARS))]
    grams = set(words)
    grams.update(f"{a} {b}" for a, b in itertools.pairwise(words))
    return sorted({zlib.crc32(g.encode("utf-8")) % BUCKETS for g in grams})


@dataclass(frozen=True)
class Example:
    """One request as the model sees it: its hashed words and word pairs, and v1's score."""

    tokens: list[int]
    shipped: float


def example(request: ChatRequest, shipped: StructureEstimator) -> Example:
    return Example(tokens(conversation(request).text), shipped.score(request))


@dataclass
class Model:
    """What is learned: each word's pull (the mean label of the prompts that have it, minus
    the overall mean, shrunk towards 0 by SHRINK pseudo-prompts), and how much of the score
    comes from the words (`mix`) rather than from v1. Both parts are standardised on the
    training prompts."""

    effects: dict[int, float]
    mix: float
    words_mean: float = 0.0
    words_scale: float = 1.0
    shipped_mean: float = 0.0
    shipped_scale: float = 1.0

    def words(self, ex: Example) -> float:
        if not ex.tokens:
            return 0.0
        get = self.effects.get
        return sum(get(t, 0.0) for t in ex.tokens) / len(ex.tokens)

    def raw(self, ex: Example) -> float:
        words = (self.words(ex) - self.words_mean) / self.words_scale
        shipped = (ex.shipped - self.shipped_mean) / self.shipped_scale
        return self.mix * words + (1 - self.mix) * shipped


def _standard(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return mean, math.sqrt(var) or 1.0


def word_effects(examples: Sequence[Example], labels: Sequence[float]) -> dict[int, float]:
    """Each token's shrunk mean label minus the overall mean (tokens seen once are dropped:
    they generalise to nothing and would only grow the file)."""
    mean = sum(labels) / len(labels)
    count: dict[int, int] = {}
    total: dict[int, float] = {}
    for ex, y in zip(examples, labels, strict=True):
        for t in ex.tokens:
            count[t] = count.get(t, 0) + 1
            total[t] = total.get(t, 0.0) + y - mean
    return {t: total[t] / (n + SHRINK) for t, n in count.items() if n > 1}


def folds(n: int, k: int, seed: int) -> Iterator[tuple[list[int], list[int]]]:
    """k (held-out, rest) splits of positions 0..n-1, shuffled by `seed`."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    for i in range(k):
        held = order[i::k]
        chosen = set(held)
        yield held, [j for j in range(n) if j not in chosen]


def fit(
    examples: Sequence[Example],
    labels: Sequence[float],
    metric: Metric,
    seed: int = 0,
) -> Model:
    """Learn the word effects on all of `examples`; choose `mix` by cross-validation on them
    (the mix whose out-of-fold scores rank best by `metric`; ties keep more of v1)."""
    n = len(examples)
    words_out = [0.0] * n
    if n >= 2 * INNER_FOLDS:
        for held, rest in folds(n, INNER_FOLDS, seed):
            part = Model(word_effects([examples[i] for i in rest], [labels[i] for i in rest]), 1.0)
            for i in held:
                words_out[i] = part.words(examples[i])
    shipped = [ex.shipped for ex in examples]
    wm, ws = _standard(words_out)
    sm, ss = _standard(shipped)
    best, best_value = 0.0, -math.inf
    for mix in MIXES:
        scores = [
            mix * (w - wm) / ws + (1 - mix) * (s - sm) / ss
            for w, s in zip(words_out, shipped, strict=True)
        ]
        value = metric(scores, range(n))
        if value > best_value + 1e-9:
            best, best_value = mix, value
    model = Model(word_effects(examples, labels), best)
    model.words_mean, model.words_scale = _standard([model.words(ex) for ex in examples])
    model.shipped_mean, model.shipped_scale = sm, ss
    return model


def quantile_map(
    raw: Sequence[float], target: Sequence[float], points: int = 101
) -> dict[str, list[float]]:
    """Matching quantiles of the learned raw scores and of the shipped scores on the same
    prompts: a monotone map from one scale to the other."""
    a, b = sorted(raw), sorted(target)

    def at(values: list[float], q: float) -> float:
        pos = q * (len(values) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(values) - 1)
        return values[lo] + (values[hi] - values[lo]) * (pos - lo)

    qs = [i / (points - 1) for i in range(points)]
    xs = [at(a, q) for q in qs]
    ys = [at(b, q) for q in qs]
    for i in range(1, points):  # strictly increasing x, non-decreasing y
        xs[i] = max(xs[i], xs[i - 1] + 1e-9)
        ys[i] = max(ys[i], ys[i - 1])
    return {"raw": xs, "score": ys}


def _interpolate(x: float, xs: list[float], ys: list[float]) -> float:
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    lo = bisect.bisect_right(xs, x) - 1
    hi = lo + 1
    frac = (x - xs[lo]) / (xs[hi] - xs[lo])
    return ys[lo] + (ys[hi] - ys[lo]) * frac


class LearnedEstimator:
    """Scores with a model `router learn` wrote (see the module docstring)."""

    def __init__(
        self, model: Model, mapping: Mapping[str, list[float]], info: Mapping[str, Any]
    ) -> None:
        self.model = model
        self.mapping = {k: list(v) for k, v in mapping.items()}
        self.info = dict(info)
        self.name = str(self.info.get("name") or "learned")
        self._shipped = StructureEstimator()

    def score(self, request: ChatRequest) -> float:
        raw = self.model.raw(example(request, self._shipped))
        return round(_interpolate(raw, self.mapping["raw"], self.mapping["score"]), 4)

    # ------------------------------------------------------------------ the file

    def to_json(self) -> dict[str, Any]:
        m = self.model
        kept = sorted((t, e) for t, e in m.effects.items() if e != 0)
        return {
            "format": FORMAT,
            **self.info,
            "buckets": BUCKETS,
            "mix": m.mix,
            "standard": [m.words_mean, m.words_scale, m.shipped_mean, m.shipped_scale],
            "tokens": [t for t, _ in kept],
            "effects": [e for _, e in kept],
            "map": self.mapping,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LearnedEstimator:
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
        if data.get("buckets") != BUCKETS:
            raise ValueError(f"written for {data.get('buckets')} hash buckets, not {BUCKETS}")
        tokens_ = [int(t) for t in data["tokens"]]
        effects = dict(zip(tokens_, (float(e) for e in data["effects"]), strict=True))
        wm, ws, sm, ss = (float(v) for v in data["standard"])
        if ws <= 0 or ss <= 0:
            raise ValueError("its scales must be positive")
        model = Model(effects, float(data["mix"]), wm, ws, sm, ss)
        mapping = {k: [float(v) for v in data["map"][k]] for k in ("raw", "score")}
        xs, ys = mapping["raw"], mapping["score"]
        if len(xs) < 2 or len(xs) != len(ys) or xs != sorted(xs) or ys != sorted(ys):
            raise ValueError("its score map needs two ascending lists of the same length")
        if not all(0.0 <= y <= 1.0 for y in ys):
            raise ValueError("its scores must lie in [0, 1]")
        info = {k: v for k, v in data.items() if k in INFO}
        return cls(model, mapping, info)


INFO = ("name", "created", "labels", "source", "metric", "cv")


def load(path: Path) -> LearnedEstimator:
    """A learned estimator file; ValueError saying what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    try:
        return LearnedEstimator.from_json(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{path}: not an estimator file `router learn` wrote ({type(exc).__name__}: {exc})"
        ) from None


def build(
    examples: Sequence[Example],
    labels: Sequence[float],
    metric: Metric,
    info: Mapping[str, Any],
    seed: int = 0,
) -> LearnedEstimator:
    """Fit on all of `examples` and map the raw scores onto v1's scale (quantile matching)."""
    model = fit(examples, labels, metric, seed)
    raw = [model.raw(ex) for ex in examples]
    mapping = quantile_map(raw, [ex.shipped for ex in examples])
    digest = hashlib.sha256(json.dumps([model.mix, sorted(model.effects.items())]).encode())
    return LearnedEstimator(model, mapping, {"name": f"learned-{digest.hexdigest()[:8]}", **info})


@dataclass(frozen=True)
class Verdict:
    """Cross-validated: the learned estimator against v1 on the same held-out folds.

    Adopted only when it is better on average *and* on most folds, from at least MIN_LABELS
    labels: on a few dozen labels the folds are too small to tell luck from learning."""

    learned: float
    shipped: float
    folds: list[tuple[float, float]]
    labels: int

    @property
    def wins(self) -> int:
        return sum(a > b for a, b in self.folds)

    @property
    def adopt(self) -> bool:
        return (
            self.labels >= MIN_LABELS
            and self.learned > self.shipped
            and self.wins * 2 > len(self.folds)
        )

    def why(self) -> str:
        if self.labels < MIN_LABELS:
            return f"only {self.labels} labels: at least {MIN_LABELS} are needed to tell"
        if self.adopt:
            return f"better on average and on {self.wins} of {len(self.folds)} folds"
        if self.learned <= self.shipped:
            return "not better than the shipped estimator on average"
        return f"better on average but on only {self.wins} of {len(self.folds)} folds"


def cross_validate(
    examples: Sequence[Example],
    labels: Sequence[float],
    metric: Metric,
    k: int = 5,
    seed: int = 0,
) -> Verdict:
    """k-fold: learn on k-1 folds (choosing the mix inside them), rank the held-out fold;
    v1 ranks the same fold. Means of `metric` over the folds."""
    results: list[tuple[float, float]] = []
    for held, rest in folds(len(examples), k, seed):
        model = fit(
            [examples[i] for i in rest], [labels[i] for i in rest], metric_on(metric, rest), seed
        )
        learned = metric([model.raw(examples[i]) for i in held], held)
        shipped = metric([examples[i].shipped for i in held], held)
        if not (math.isnan(learned) or math.isnan(shipped)):
            results.append((learned, shipped))
    if not results:
        raise ValueError("no fold had labels of both kinds to rank")
    return Verdict(
        sum(r[0] for r in results) / len(results),
        sum(r[1] for r in results) / len(results),
        results,
        len(examples),
    )


def metric_on(metric: Metric, subset: Sequence[int]) -> Metric:
    """`metric` for positions in `subset` (fit sees its training rows as 0..len-1)."""
    return lambda scores, positions: metric(scores, [subset[p] for p in positions])
