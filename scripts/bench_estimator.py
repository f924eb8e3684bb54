"""Complexity estimators side by side: routing quality and time per prompt.

    python scripts/bench_estimator.py [--data ../shared/data] [--runs 5] [--held-out]

Quality is RouteLLM's protocol on the shared sets (as `router eval`): APGR on MMLU and GSM8K,
AUROC on CLINC150 small talk + utility vs Arena-Hard. Speed is the time of one score call per
prompt over a mix of every labelled prompt and 2,000 MMLU/GSM8K prompts; each run reports its
p50 and p99, the table shows the median over runs. `--held-out` adds the figures of
scripts/train_estimator.py, where every number comes from data the fit did not see.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.complexity import HeuristicEstimator, StructureEstimator  # noqa: E402
from router.complexity import evaluation as ev  # noqa: E402
from router.types import ChatRequest  # noqa: E402


def timed(fn: Callable[[str], float], prompts: list[str], runs: int) -> tuple[float, float]:
    p50s, p99s = [], []
    for _ in range(runs):
        times = []
        for p in prompts:
            t0 = time.perf_counter_ns()
            fn(p)
            times.append(time.perf_counter_ns() - t0)
        times.sort()
        p50s.append(times[len(times) // 2] / 1000)
        p99s.append(times[int(len(times) * 0.99)] / 1000)
    return statistics.median(p50s), statistics.median(p99s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--held-out", action="store_true")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"no shared data at {args.data}: pass --data PATH", file=sys.stderr)
        return 2
    paired, labelled = ev.shared_sets(args.data)
    mix = [p for lab in labelled for p in lab.prompts]
    rest = [p for s in paired for p in s.prompts]
    mix += random.Random(0).sample(rest, min(2000, len(rest)))

    v1, v0 = StructureEstimator(), HeuristicEstimator()

    def on_request(est: StructureEstimator | HeuristicEstimator) -> Callable[[str], float]:
        # the router builds the request anyway; time the score call alone
        requests: dict[str, ChatRequest] = {}

        def score(prompt: str) -> float:
            r = requests.get(prompt)
            if r is None:
                r = requests[prompt] = ChatRequest([{"role": "user", "content": prompt}])
            return est.score(r)

        return score

    scorers: list[tuple[str, list[Callable[[str], float]] | None, bool]] = [
        ("router v1 (structure-v1, default)", [on_request(v1)], True),
        ("router v0 heuristic", [on_request(v0)], True),
        ("prompt length", [ev.length_scorer], True),
        ("random (10 seeds)", [ev.random_scorer(s) for s in range(10)], False),
    ]
    peer = ev.litellm_scorer()
    if peer is not None:
        scorers.append(("LiteLLM complexity router", [peer], True))
    scorers.append(("oracle", None, False))

    rows = []
    for name, fns, time_it in scorers:
        row = ev.evaluate(name, fns, paired, labelled)
        if fns and time_it:
            for p in mix:  # warm: request objects built, regexes compiled, caches filled
                fns[0](p)
            row["p50 µs"], row["p99 µs"] = timed(fns[0], mix, args.runs)
        rows.append(row)
    cols = [c for c in rows[0] if c != "router" and "cpt" not in c and "µs" not in c]
    cols += ["p50 µs", "p99 µs"]
    print("| estimator | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for r in rows:
        cells = [
            "-" if c not in r else f"{r[c]:.1f}" if c.endswith("µs") else f"{r[c]:.3f}"
            for c in cols
        ]
        print(f"| {r['router']} | " + " | ".join(cells) + " |")
    sizes = [f"{p.name}: {len(p.prompts)}" for p in paired]
    print(f"prompts: {'; '.join(sizes)}; speed over {len(mix)} prompts, {args.runs} runs")

    if args.held_out:
        sys.path.insert(0, str(ROOT / "scripts"))
        import train_estimator as tr

        table = tr.validate(tr.load(args.data))
        cols = list(next(iter(table.values())))
        print("\n| held out of the fit | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for name, row in table.items():
            print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
