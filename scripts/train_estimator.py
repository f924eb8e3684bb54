"""Rebuild the shipped complexity-estimator weights (router/complexity/structure_v1.json) from
../shared/data, and print validation on sources held out of training.

    python scripts/train_estimator.py [--data ../shared/data] [--out PATH] [--check]

What is fitted: each signal's mean and scale, over a source-balanced pool (MMLU, GSM8K, CLINC150
train split, Arena-Hard v0.1 + v2.0, Vicuna: each source weighs the same however many prompts it
has), and the percentile table that maps the weighted sum to [0, 1]. The weights themselves are
fixed at 1 each (an equal-weight sum of standardised signals): the script also fits them, with a
pairwise ranking loss on the same sources, and prints both on held-out data. Fitted weights
learn which MMLU subjects have large gaps and do worse on unseen subjects and on GSM8K.

Validation, every figure on data the fit did not see:
- MMLU: whole subjects held out, 4 folds x 3 shuffles (seeds 0-2). "MMLU folds": APGR of each
  fold (7-8 subjects), averaged; "MMLU pooled": every subject scored by the fit without it, APGR
  over all 29 at once (the shape of the full set), averaged over the shuffles.
- GSM8K: fitted without GSM8K.
- CLINC150 small talk + utility (test split) vs Arena-Hard: fitted without Arena-Hard and
  without CLINC's test split; AUROC.
"mean" is the mean APGR over the two paired sets (MMLU, GSM8K).
`--check` exits 1 when the rebuilt file differs from the shipped one (reproducibility check).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.complexity import structure  # noqa: E402
from router.complexity.evaluation import _contaminated, apgr, auroc, read_paired  # noqa: E402
from router.complexity.heuristic import HeuristicEstimator  # noqa: E402
from router.types import ChatRequest  # noqa: E402

SEED = 0
FIXED_WEIGHTS = {
    "length": 1.0,
    "vocabulary_reuse": 1.0,
    "repeated_terms": 1.0,
    "compressibility": 1.0,
    "intent": 1.0,
}
SMALL_TALK_CAP = 0.1
F = structure.FEATURES


class Source:
    """Prompts of one public source with their feature rows, and paired results if any."""

    def __init__(self, name: str, prompts: list[str], weak: Sequence[float] = (), strong=()):
        self.name = name
        self.prompts = prompts
        self.weak = list(weak)
        self.strong = list(strong)
        rows = [structure.features(ChatRequest([{"role": "user", "content": p}])) for p in prompts]
        self.rows = rows
        self.x = np.array([[r[k] for k in F] for r in rows])


def load(data: Path) -> dict[str, Source]:
    out: dict[str, Source] = {}
    mmlu = data / "routellm-mmlu-dev"
    skip = _contaminated(mmlu)
    for f in sorted((mmlu / "responses").glob("*.csv")):
        p = read_paired(f, skip=skip)
        out["mmlu/" + f.stem.removeprefix("mmlu_")] = Source(f.stem, p.prompts, p.weak, p.strong)
    gsm = data / "routellm-gsm8k-dev"
    p = read_paired(gsm / "gsm8k_responses_dev.csv", skip=_contaminated(gsm))
    out["gsm8k"] = Source("gsm8k", p.prompts, p.weak, p.strong)
    full = json.loads((data / "clinc150" / "data_full.json").read_text())
    domains = json.loads((data / "clinc150" / "domains.json").read_text())
    trivial = set(domains["small_talk"]) | set(domains["utility"])
    out["clinc/train"] = Source("clinc/train", [t for t, _ in full["train"]])
    out["clinc/test-trivial"] = Source(
        "clinc/test-trivial", [t for t, i in full["test"] if i in trivial]
    )
    out["clinc/train-trivial"] = Source(
        "clinc/train-trivial", [t for t, i in full["train"] if i in trivial]
    )
    for version in ("v0.1", "v2.0"):
        path = data / "arena-hard-questions" / f"arena-hard-{version}" / "question.jsonl"
        out[f"arena/{version}"] = Source(
            f"arena/{version}", [json.loads(line)["prompt"] for line in path.open()]
        )
    path = data / "vicuna-bench-questions" / "question.jsonl"
    out["vicuna"] = Source("vicuna", [json.loads(line)["turns"][0] for line in path.open()])
    return out


def family(key: str) -> str:
    """Sources balanced against each other: every MMLU subject is one 'mmlu' source."""
    return key.split("/")[0]


def pool_keys(sources: dict[str, Source], exclude: set[str]) -> list[str]:
    keys = []
    for k in sources:
        if k in exclude or family(k) in exclude:
            continue
        if family(k) in ("mmlu", "gsm8k", "arena", "vicuna") or k == "clinc/train":
            keys.append(k)
    return keys


def balanced(sources: dict[str, Source], keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the pool and weights that give each source family the same total weight."""
    fams: dict[str, int] = {}
    for k in keys:
        fams[family(k)] = fams.get(family(k), 0) + len(sources[k].prompts)
    x = np.vstack([sources[k].x for k in keys])
    w = np.concatenate([np.full(len(sources[k].prompts), 1.0 / fams[family(k)]) for k in keys])
    return x, w / w.sum()


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, n: int = 101) -> list[float]:
    order = np.argsort(values, kind="stable")
    v, cw = values[order], np.cumsum(weights[order])
    cw = cw / cw[-1]
    qs = [float(v[min(int(np.searchsorted(cw, p)), len(v) - 1)]) for p in np.linspace(0, 1, n)]
    return [float(x) for x in np.maximum.accumulate(qs)]


def fit(
    sources: dict[str, Source], exclude: set[str], weights: dict[str, float] | None = None
) -> structure.Weights:
    keys = pool_keys(sources, exclude)
    x, w = balanced(sources, keys)
    mean = (x * w[:, None]).sum(0)
    scale = np.sqrt(((x - mean) ** 2 * w[:, None]).sum(0)) + 1e-9
    weight = weights or FIXED_WEIGHTS
    z = np.clip((x - mean) / scale, -structure.CLIP, structure.CLIP)
    raw = z @ np.array([weight[k] for k in F])
    return structure.Weights(
        mean={k: round(float(v), 6) for k, v in zip(F, mean, strict=True)},
        scale={k: round(float(v), 6) for k, v in zip(F, scale, strict=True)},
        weight=dict(weight),
        quantiles=[round(q, 6) for q in weighted_quantiles(raw, w)],
        small_talk_cap=SMALL_TALK_CAP,
        info={},
    )


def fitted_weights(sources: dict[str, Source], exclude: set[str]) -> dict[str, float]:
    """The alternative: weights from a pairwise ranking loss (strong-only wins above the rest
    within each paired source; Arena-Hard above CLINC small talk), shown for comparison."""
    base = fit(sources, exclude)
    mean = np.array([base.mean[k] for k in F])
    scale = np.array([base.scale[k] for k in F])
    rng = np.random.default_rng(SEED)
    blocks = []
    for k in pool_keys(sources, exclude):
        s = sources[k]
        if not s.weak:
            continue
        z = np.clip((s.x - mean) / scale, -structure.CLIP, structure.CLIP)
        y = np.array(s.strong) - np.array(s.weak)
        i, j = rng.integers(0, len(y), 4000), rng.integers(0, len(y), 4000)
        keep = y[i] > y[j]
        blocks.append(z[i[keep]] - z[j[keep]])
    if "arena" not in exclude:
        lo = np.clip((sources["clinc/train-trivial"].x - mean) / scale, -3, 3)
        hi = np.vstack([sources[k].x for k in sources if family(k) == "arena"])
        hi = np.clip((hi - mean) / scale, -3, 3)
        blocks.append(hi[rng.integers(0, len(hi), 20000)] - lo[rng.integers(0, len(lo), 20000)])
    d = np.vstack(blocks)
    w = np.zeros(len(F))
    for _ in range(500):
        p = 1 / (1 + np.exp(np.clip(d @ w, -30, 30)))
        w += 0.5 * ((d * p[:, None]).mean(0) - 1e-3 * w)
    return {k: round(float(v), 4) for k, v in zip(F, w, strict=True)}


Scorer = Callable[[Source], np.ndarray]


def v1_scorer(weights: structure.Weights) -> Scorer:
    """Scores through the estimator's own code, so training and serving cannot drift."""
    est = structure.StructureEstimator(weights)
    return lambda s: np.array([est.raw_score(r) for r in s.rows])


def baseline(name: str) -> Scorer:
    if name == "length":
        return lambda s: np.array([len(p) for p in s.prompts], dtype=float)
    if name == "v0 heuristic":
        h = HeuristicEstimator()
        return lambda s: np.array(
            [h.score(ChatRequest([{"role": "user", "content": p}])) for p in s.prompts]
        )
    rng = random.Random(SEED)
    return lambda s: np.array([rng.random() for _ in s.prompts])


def mmlu_folds(sources: dict[str, Source]) -> list[list[str]]:
    subjects = sorted(k for k in sources if family(k) == "mmlu")
    folds = []
    for seed in range(3):
        order = subjects[:]
        random.Random(seed).shuffle(order)
        folds += [order[i::4] for i in range(4)]
    return folds


def paired_apgr(sources: dict[str, Source], keys: list[str], scores: np.ndarray) -> float:
    weak = [v for k in keys for v in sources[k].weak]
    strong = [v for k in keys for v in sources[k].strong]
    return apgr(list(scores), weak, strong)["apgr"]


def validate(sources: dict[str, Source]) -> dict[str, dict[str, float]]:
    """Held-out figures for the shipped method, fitted weights and the baselines."""
    methods: dict[str, Callable[[set[str]], Scorer]] = {
        "router v1 (shipped: fixed weights)": lambda ex: v1_scorer(fit(sources, ex)),
        "v1 signals, fitted weights": lambda ex: v1_scorer(
            fit(sources, ex, fitted_weights(sources, ex))
        ),
        "v0 heuristic": lambda ex: baseline("v0 heuristic"),
        "prompt length": lambda ex: baseline("length"),
        "random": lambda ex: baseline("random"),
    }
    table: dict[str, dict[str, float]] = {}
    folds = mmlu_folds(sources)
    for name, make in methods.items():
        fold_apgr, pooled_apgr = [], []
        out_of_fold: dict[str, np.ndarray] = {}
        for number, hold in enumerate(folds, start=1):
            scorer = make(set(hold))
            for k in hold:
                out_of_fold[k] = scorer(sources[k])
            scores = np.concatenate([out_of_fold[k] for k in hold])
            fold_apgr.append(paired_apgr(sources, hold, scores))
            if number % 4 == 0:  # one shuffle done: every subject scored by a fit without it
                keys = sorted(out_of_fold)
                every = np.concatenate([out_of_fold[k] for k in keys])
                pooled_apgr.append(paired_apgr(sources, keys, every))
                out_of_fold = {}
        gsm_scores = make({"gsm8k"})(sources["gsm8k"])
        gsm = paired_apgr(sources, ["gsm8k"], gsm_scores)
        scorer = make({"arena", "clinc/test-trivial"})
        trivial = scorer(sources["clinc/test-trivial"])
        hard = np.concatenate([scorer(sources["arena/v0.1"]), scorer(sources["arena/v2.0"])])
        labels = [0] * len(trivial) + [1] * len(hard)
        folds_mean, pooled = statistics.mean(fold_apgr), statistics.mean(pooled_apgr)
        table[name] = {
            "MMLU folds": folds_mean,
            "(fold sd)": statistics.stdev(fold_apgr),
            "MMLU pooled": pooled,
            "GSM8K": gsm,
            "mean, folds": (folds_mean + gsm) / 2,
            "mean, pooled": (pooled + gsm) / 2,
            "AUROC": auroc(list(np.concatenate([trivial, hard])), labels),
        }
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "router" / "complexity" / "structure_v1.json"
    )
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args()
    if not (args.data / "routellm-mmlu-dev").is_dir():
        print(f"no shared data at {args.data}: pass --data PATH", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    sources = load(args.data)
    n = sum(len(s.prompts) for s in sources.values())
    print(f"features for {n} prompts in {time.perf_counter() - t0:.1f} s")

    table = validate(sources)
    cols = list(next(iter(table.values())))
    print(f"\n{'held out of the fit':36s}" + "".join(f"{c:>14s}" for c in cols))
    for name, row in table.items():
        print(f"{name:36s}" + "".join(f"{row[c]:14.3f}" for c in cols))

    weights = fit(sources, exclude=set())
    counts: dict[str, int] = {}
    for k in pool_keys(sources, set()):
        counts[family(k)] = counts.get(family(k), 0) + len(sources[k].prompts)
    shipped = table["router v1 (shipped: fixed weights)"]
    doc = {
        "estimator": structure.NAME,
        "mean": weights.mean,
        "scale": weights.scale,
        "weight": weights.weight,
        "quantiles": weights.quantiles,
        "small_talk_cap": weights.small_talk_cap,
        "info": {
            "built_by": "scripts/train_estimator.py",
            "seed": SEED,
            "reference_pool": counts,
            "validation": {k: round(v, 4) for k, v in shipped.items()},
        },
    }
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    if args.check:
        same = args.out.exists() and args.out.read_text() == text
        print(f"\n{args.out}: {'matches' if same else 'DIFFERS from'} the rebuild")
        return 0 if same else 1
    args.out.write_text(text)
    print(f"\nwrote {args.out} ({len(text)} bytes) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
