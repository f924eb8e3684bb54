"""Routing-quality metrics (RouteLLM's protocol, arXiv 2406.18665) and the data sets to run them.

Paired sets carry, per prompt, whether a weak and a strong model answered correctly. Sort the
prompts by score, send the top k% to the strong model and the rest to the weak one, sweep k
from 0 to 100%: PGR(k) = (quality(k) - weak mean) / (strong mean - weak mean). APGR is the area
under PGR(k); CPT(x) the smallest share of strong calls reaching PGR x. Labelled sets (trivial
vs hard requests) are scored with AUROC.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Scorer = Callable[[str], float]


@dataclass(frozen=True)
class Paired:
    name: str
    prompts: list[str]
    weak: list[float]
    strong: list[float]


@dataclass(frozen=True)
class Labelled:
    name: str
    prompts: list[str]
    labels: list[int]  # 1 = needs the strong model


def pgr_curve(
    scores: Sequence[float], weak: Sequence[float], strong: Sequence[float]
) -> list[float]:
    """PGR at k = 0..n prompts sent to the strong model (highest scores first; ties keep order)."""
    n = len(scores)
    order = sorted(range(n), key=lambda i: -scores[i])
    weak_mean, strong_mean = sum(weak) / n, sum(strong) / n
    gap = strong_mean - weak_mean
    total = sum(weak)
    curve = []
    for k in range(n + 1):
        if k:
            i = order[k - 1]
            total += strong[i] - weak[i]
        curve.append((total / n - weak_mean) / gap if gap else 0.0)
    return curve


def apgr(
    scores: Sequence[float], weak: Sequence[float], strong: Sequence[float]
) -> dict[str, float]:
    curve = pgr_curve(scores, weak, strong)
    n = len(curve) - 1
    area = sum((curve[k] + curve[k + 1]) / 2 for k in range(n)) / n

    def cpt(target: float) -> float:
        return next((k / n for k, v in enumerate(curve) if v >= target), 1.0)

    return {"apgr": area, "cpt50": cpt(0.5), "cpt80": cpt(0.8)}


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Probability that a hard prompt scores above a trivial one (ties count half); NaN when
    the labels are all of one kind (there is no pair to rank)."""
    positives = sum(labels)
    if positives in (0, len(labels)):
        return math.nan
    ranked = sorted(zip(scores, labels, strict=True))
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        average_rank = (i + j + 1) / 2  # 1-based ranks i+1..j
        rank_sum += average_rank * sum(1 for _, y in ranked[i:j] if y)
        i = j
    negatives = len(labels) - positives
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


# ------------------------------------------------------------------------------ data sets


def _contaminated(folder: Path) -> set[str]:
    path = folder / "contaminated_prompts.jsonl"
    if not path.exists():
        return set()
    out: set[str] = set()
    for line in path.open():
        row = json.loads(line)
        out.update(str(v) for k, v in row.items() if "prompt" in k)
    return out


def read_paired(path: Path, name: str | None = None, skip: set[str] | None = None) -> Paired:
    """A RouteLLM response CSV (prompt, weak model, strong model columns) or JSONL with
    `prompt`, `weak`, `strong` (booleans or scores in [0, 1])."""
    prompts, weak, strong = [], [], []
    skip = skip or set()
    if path.suffix == ".jsonl":
        rows: list[tuple[str, Any, Any]] = [
            (r["prompt"], r["weak"], r["strong"]) for r in map(json.loads, path.open())
        ]
    else:
        csv.field_size_limit(1 << 27)
        reader = csv.reader(path.open(newline=""))
        next(reader)
        rows = [(r[0], r[1], r[2]) for r in reader]
    for prompt, w, s in rows:
        if prompt in skip:
            continue
        prompts.append(prompt)
        weak.append(truth(w, "weak"))
        strong.append(truth(s, "strong"))
    return Paired(name or path.stem, prompts, weak, strong)


def truth(value: Any, key: str = "value") -> float:
    """A correctness or label: true/false (or "True", "1", "yes"...) or a number in [0, 1];
    ValueError naming `key` for anything else (a typo is not silently "wrong")."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "1", "yes", "false", "0", "no"):
            return 1.0 if word in ("true", "1", "yes") else 0.0
    elif isinstance(value, (int, float)) and 0 <= value <= 1:
        return float(value)
    raise ValueError(f"{key} must be true/false or a number in [0, 1], got {value!r}")


def read_labelled(path: Path, name: str | None = None) -> Labelled:
    rows = [json.loads(line) for line in path.open()]
    return Labelled(name or path.stem, [r["prompt"] for r in rows], [int(r["label"]) for r in rows])


def shared_sets(data: Path) -> tuple[list[Paired], list[Labelled]]:
    """The public sets in ../shared/data: MMLU and GSM8K halves (paired), and CLINC150's
    small-talk and utility requests (trivial) against Arena-Hard prompts (hard)."""
    mmlu_dir = data / "routellm-mmlu-dev"
    skip = _contaminated(mmlu_dir)
    prompts: list[str] = []
    weak: list[float] = []
    strong: list[float] = []
    for f in sorted((mmlu_dir / "responses").glob("*.csv")):
        part = read_paired(f, skip=skip)
        prompts += part.prompts
        weak += part.weak
        strong += part.strong
    paired = [Paired("MMLU (29 subjects)", prompts, weak, strong)]
    gsm = data / "routellm-gsm8k-dev"
    paired.append(read_paired(gsm / "gsm8k_responses_dev.csv", "GSM8K", _contaminated(gsm)))

    full = json.loads((data / "clinc150" / "data_full.json").read_text())
    domains = json.loads((data / "clinc150" / "domains.json").read_text())
    trivial_intents = set(domains["small_talk"]) | set(domains["utility"])
    trivial = [t for t, intent in full["test"] if intent in trivial_intents]
    hard = []
    for version in ("arena-hard-v0.1", "arena-hard-v2.0"):
        path = data / "arena-hard-questions" / version / "question.jsonl"
        hard += [json.loads(line)["prompt"] for line in path.open()]
    labelled = [
        Labelled(
            "CLINC trivial vs Arena-Hard", trivial + hard, [0] * len(trivial) + [1] * len(hard)
        )
    ]
    return paired, labelled


# ------------------------------------------------------------------------------ baselines


def random_scorer(seed: int) -> Scorer:
    rng = random.Random(seed)
    cache: dict[str, float] = {}
    return lambda prompt: cache.setdefault(prompt, rng.random())


def length_scorer(prompt: str) -> float:
    return float(len(prompt))


def litellm_scorer() -> Scorer | None:
    """LiteLLM's rule-based ComplexityRouter as a peer, when litellm is installed."""
    try:
        from router.backends.cloud import complexity_peer
    except ImportError:
        return None
    return complexity_peer()


def evaluate(
    name: str, scorers: list[Scorer] | None, paired: list[Paired], labelled: list[Labelled]
) -> dict[str, Any]:
    """One table row: APGR, CPT(50%), CPT(80%) per paired set, AUROC per labelled set.

    `scorers` None is the oracle; several scorers (the random baseline's seeds) are averaged."""
    row: dict[str, Any] = {"router": name}
    for p in paired:
        if scorers is None:
            runs = [apgr([s - w for w, s in zip(p.weak, p.strong, strict=True)], p.weak, p.strong)]
        else:
            runs = [apgr([f(x) for x in p.prompts], p.weak, p.strong) for f in scorers]
        row.update({f"{p.name} {k}": sum(r[k] for r in runs) / len(runs) for k in runs[0]})
    for lab in labelled:
        values = (
            [1.0]
            if scorers is None
            else [auroc([f(x) for x in lab.prompts], lab.labels) for f in scorers]
        )
        row[f"{lab.name} AUROC"] = sum(values) / len(values)
    return row
