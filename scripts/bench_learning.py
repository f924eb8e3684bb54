"""Does `router learn` improve routing on a deployment's own traffic? Simulated on every paired
set in ../shared/data.

For each set and each draw (seeded): learn on a share of the set's labels (10%, 30%, 60%; 30%
is the headline), score the rest, and report the held-out APGR (RouteLLM's protocol) of the
learned estimator, the shipped one (v1), prompt length and random. Mean and spread (min-max
over draws) per set; the mean over sets. Then the time `router learn` takes on 10,000 labels
(the real command, a subprocess) and the learned estimator's scoring time per request.

    python scripts/bench_learning.py [--data ../shared/data] [--draws 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from router.complexity import learned
from router.complexity.evaluation import Paired, _contaminated, apgr, read_paired, shared_sets
from router.complexity.structure import StructureEstimator
from router.types import ChatRequest

SHARES = (0.1, 0.3, 0.6)
HEADLINE = 0.3


def request(prompt: str) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": prompt}])


def paired_metric(p: Paired) -> learned.Metric:
    def metric(scores: Sequence[float], positions: Iterable[int]) -> float:
        idx = list(positions)
        return apgr(scores, [p.weak[i] for i in idx], [p.strong[i] for i in idx])["apgr"]

    return metric


def one_draw(
    p: Paired, examples: list[learned.Example], share: float, seed: int
) -> dict[str, float]:
    labels = [(s - w + 1) / 2 for w, s in zip(p.weak, p.strong, strict=True)]
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    cut = int(share * len(order))
    train, test = order[:cut], order[cut:]
    metric = paired_metric(p)
    mine = [examples[i] for i in train]
    theirs = [labels[i] for i in train]
    own = learned.metric_on(metric, train)
    # As `router learn` does: cross-validate on the labels it has, adopt only when better;
    # a deployment that did not adopt keeps routing with v1.
    verdict = learned.cross_validate(mine, theirs, own, seed=seed)
    model = learned.fit(mine, theirs, own, seed)
    scores = [model.raw(examples[i]) if verdict.adopt else examples[i].shipped for i in test]
    rng = random.Random(1000 + seed)
    return {
        "learned": metric(scores, test),
        "adopted": float(verdict.adopt),
        "shipped": metric([examples[i].shipped for i in test], test),
        "length": metric([float(len(p.prompts[i])) for i in test], test),
        "random": metric([rng.random() for _ in test], test),
        "mix": model.mix if verdict.adopt else 0.0,
    }


def mmlu_subjects(data: Path) -> list[str]:
    """Each MMLU prompt's subject, in shared_sets' order (its files, contaminated rows out)."""
    folder = data / "routellm-mmlu-dev"
    skip = _contaminated(folder)
    out: list[str] = []
    for f in sorted((folder / "responses").glob("*.csv")):
        out += [f.stem] * len(read_paired(f, skip=skip).prompts)
    return out


def topic_bound(p: Paired, subjects: list[str], share: float, seed: int) -> float:
    """Held-out APGR when each prompt is scored by its subject's mean gain (strong minus
    weak) on the learned share: what knowing the topic perfectly is worth."""
    order = list(range(len(p.prompts)))
    random.Random(seed).shuffle(order)
    cut = int(share * len(order))
    gains: dict[str, list[float]] = {}
    for i in order[:cut]:
        gains.setdefault(subjects[i], []).append(p.strong[i] - p.weak[i])
    mean = {k: statistics.mean(v) for k, v in gains.items()}
    test = order[cut:]
    return paired_metric(p)([mean.get(subjects[i], 0.0) for i in test], test)


def learn_time(sets: list[Paired], count: int = 10_000) -> float:
    """Seconds `router learn --paired FILE --dry-run` (which fits, and writes nothing) takes on
    `count` labelled prompts."""
    rows = [
        {"prompt": x, "weak": w, "strong": s}
        for p in sets
        for x, w, s in zip(p.prompts, p.weak, p.strong, strict=True)
    ]
    while len(rows) < count:  # the public sets hold fewer: repeat them, reworded by a suffix
        rows += [{**r, "prompt": f"{r['prompt']} ({len(rows)})"} for r in rows[: count - len(rows)]]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "labels.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows[:count]))
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "router", "learn", "--paired", str(data), "--dry-run"],
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--no-timing", action="store_true", help="Skip the 10,000-label timing.")
    args = parser.parse_args()
    paired, _ = shared_sets(args.data)
    shipped = StructureEstimator()
    print(f"# router learn, simulated: learn on a share of each set's labels, {args.draws} draws")
    headline: dict[str, list[float]] = {}
    curves: list[tuple[str, float, float, float]] = []
    print()
    print(
        f"| set ({int(HEADLINE * 100)}% learned, 70% scored) | prompts | learned | shipped v1 "
        "| length | random | mix chosen |"
    )
    print("|---|---|---|---|---|---|---|")
    for p in paired:
        examples = [learned.example(request(x), shipped) for x in p.prompts]
        for share in SHARES:
            draws = [one_draw(p, examples, share, seed) for seed in range(args.draws)]

            def cell(key: str, draws: list[dict[str, float]] = draws) -> str:
                values = [d[key] for d in draws]
                return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"

            curves.append(
                (
                    p.name,
                    share,
                    *(statistics.mean(d[k] for d in draws) for k in ("learned", "shipped")),
                )
            )
            if share == HEADLINE:
                for key in ("learned", "shipped", "length", "random"):
                    headline.setdefault(key, []).append(statistics.mean(d[key] for d in draws))
                mixes = ", ".join(f"{d['mix']:g}" for d in draws)
                print(
                    f"| {p.name} | {len(p.prompts)} | {cell('learned')} | {cell('shipped')} | "
                    f"{cell('length')} | {cell('random')} | {mixes} |"
                )
    means = {k: statistics.mean(v) for k, v in headline.items()}
    subjects = mmlu_subjects(args.data)
    bound = [topic_bound(paired[0], subjects, HEADLINE, seed) for seed in range(args.draws)]
    print(
        f"| **mean over sets** | | **{means['learned']:.3f}** | {means['shipped']:.3f} | "
        f"{means['length']:.3f} | {means['random']:.3f} | |"
    )
    print()
    print(
        f"Knowing each MMLU prompt's subject perfectly (its mean gain on the same "
        f"{HEADLINE:.0%}) scores {statistics.mean(bound):.3f} ({min(bound):.3f}-{max(bound):.3f})"
        ": what knowing the topic alone is worth there."
    )
    print()
    print("Learning curve (held-out APGR, mean over draws):")
    print()
    print("| set | labels learned from | learned | shipped v1 |")
    print("|---|---|---|---|")
    for name, share, lv, sv in curves:
        print(f"| {name} | {share:.0%} | {lv:.3f} | {sv:.3f} |")
    estimator = learned.build(
        [learned.example(request(x), shipped) for x in paired[0].prompts[:3000]],
        [
            (s - w + 1) / 2
            for w, s in zip(paired[0].weak[:3000], paired[0].strong[:3000], strict=True)
        ],
        paired_metric(paired[0]),
        {},
    )
    sample = [request(x) for x in paired[1].prompts[:300]]
    timings = []
    for r in sample:
        started = time.perf_counter()
        estimator.score(r)
        timings.append((time.perf_counter() - started) * 1000)
    v1 = []
    for r in sample:
        started = time.perf_counter()
        shipped.score(r)
        v1.append((time.perf_counter() - started) * 1000)
    print()
    print(
        f"Scoring: learned p50 {statistics.median(timings):.3f} ms, v1 p50 "
        f"{statistics.median(v1):.3f} ms (300 GSM8K prompts)"
    )
    if not args.no_timing:
        print(
            f"`router learn` on 10,000 labels: {learn_time(paired):.1f} s (a subprocess, "
            "cross-validation included)"
        )


if __name__ == "__main__":
    main()
