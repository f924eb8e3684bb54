"""What one ledger row costs as the ledger grows, with random answer ids (uuid4) against the
time-ordered ids the router makes (router.chunks.new_id: the time first, as UUIDv7).

    python scripts/bench_ledger_ids.py [--sizes 0,100000,400000] [--rows 6000]

The real SQLiteLedger on a fresh file per kind of id: rows like a cache hit's, written as the
server writes them (GroupCommit: one commit for a batch of rows; at 8 connections a commit
carries about 2.5 rows), at each ledger size in turn (the fill between sizes uses the same
kind of id). The table gives microseconds per row, medians of 3 passes. The ledger has an
index on response_id: a random id lands on a random page of it, which outgrows SQLite's page
cache; an id that sorts by time lands on its last page.
"""

from __future__ import annotations

import argparse
import dataclasses
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.chunks import new_id  # noqa: E402
from router.ledger import _INSERT, _VALUES, Entry, SQLiteLedger  # noqa: E402

ROW = Entry(
    ts=0.0,
    user=None,
    tier="cache",
    model="cloud-mini",
    prompt_tokens=12,
    completion_tokens=9,
    cost_usd=0.0,
    baseline_usd=0.0000072,
    tokens_saved=21,
    usd_saved=0.0000072,
    cache_hit=True,
    latency_ms=0.4,
    score=0.12,
    reason="cache hit (first answered by cloud-mini)",
    category="chat",
    estimator="structure-v1",
    api="chat",
    saved_by="cache",
)
KINDS: dict[str, Callable[[], str]] = {
    "random (uuid4)": lambda: f"chatcmpl-{uuid.uuid4().hex}",
    "time-ordered (new_id)": new_id,
}


def rows(make_id: Callable[[], str], n: int) -> list[Entry]:
    return [dataclasses.replace(ROW, ts=time.time(), response_id=make_id()) for _ in range(n)]


def per_row_us(ledger: SQLiteLedger, entries: list[Entry], batch: int) -> float:
    """Microseconds a row, committed `batch` rows at a time, as the server's hits are."""
    started = time.perf_counter()
    for i in range(0, len(entries), batch):
        chunk = entries[i : i + batch]
        ledger._writes.run(lambda db, chunk=chunk: [ledger_insert(db, e) for e in chunk])
    return (time.perf_counter() - started) / len(entries) * 1e6


def ledger_insert(db: sqlite3.Connection, entry: Entry) -> None:
    db.execute(_INSERT, _VALUES(entry))  # as SQLiteLedger.arecord writes a hit's row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0,100000,400000", help="ledger sizes to measure at")
    ap.add_argument("--rows", type=int, default=6000, help="rows timed at each size and batch")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    table: dict[tuple[str, int], dict[int, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, make_id in KINDS.items():
            with SQLiteLedger(Path(tmp) / f"{len(table)}.db") as ledger:
                have = 0
                for size in sizes:
                    fill = rows(make_id, max(0, size - have))
                    ledger._writes.run(lambda db, fill=fill: [ledger_insert(db, e) for e in fill])
                    have = max(have, size)
                    for batch in (1, 3, 8):
                        passes = [
                            per_row_us(ledger, rows(make_id, args.rows), batch) for _ in range(3)
                        ]
                        have += len(passes) * args.rows
                        table.setdefault((kind, size), {})[batch] = statistics.median(passes)
    print(f"# bench_ledger_ids: {time.strftime('%Y-%m-%d %H:%M')}, rows={args.rows}\n")
    print("| ids                   | ledger rows | 1 a commit | 3 a commit | 8 a commit |")
    print("|-----------------------|-------------|------------|------------|------------|")
    for (kind, size), by_batch in table.items():
        cells = " | ".join(f"{by_batch[b]:8.1f} µs" for b in (1, 3, 8))
        print(f"| {kind:<21} | {size:>11,} | {cells} |")


if __name__ == "__main__":
    main()
