"""What sharing state costs: `router serve` with the embedded cache vs with the cache on Redis
([shared] redis_url) vs the LiteLLM proxy with its Redis cache, side by side in one run; then
the per-request cost of each shared part, in process.

    pip install -c requirements.lock ".[bench]"     # the LiteLLM proxy
    python scripts/bench_shared.py [--runs 5] [--seconds 5]

1. Cache hits: requests/s, p50 and p99 at 1 and 8 concurrent clients, on the same primed
   prompt set (wrk when installed, else Python threads). One redis-server (Debian's) on
   127.0.0.1 serves both Redis caches.
2. Per request, in process: a budget reservation + settlement on SQLite vs Redis; a ledger
   write on SQLite vs on PostgreSQL (the disk queue the request waits for; the drain is in
   the background); a repeat-detector check + count in process vs on Redis.

Everything binds 127.0.0.1; every server started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_server as bs  # noqa: E402

from router.config import parse_toml  # noqa: E402
from router.governance.budgets import BudgetStore  # noqa: E402
from router.governance.waste import RepeatDetector  # noqa: E402
from router.ledger import Entry, SQLiteLedger  # noqa: E402
from router.shared import Link  # noqa: E402
from router.shared.budgets import RedisBudgetStore  # noqa: E402
from router.shared.state import RedisRepeatDetector  # noqa: E402
from tests.fakecloud import FakeCloud  # noqa: E402
from tests.postgres_server import PostgresServer  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


def bench_cache(
    args: argparse.Namespace, workdir: Path, redis: RedisServer
) -> list[tuple[str, ...]]:
    cloud = FakeCloud().start()
    model = f'[models.smollm2]\ntier = "local"\npath = "{bs.GGUF}"\nn_ctx = 2048\n'
    embedded, shared = workdir / "embedded.toml", workdir / "shared.toml"
    embedded.write_text(
        f'[cache]\ndir = "{workdir / "cache"}"\n[ledger]\npath = "{workdir / "e.db"}"\n{model}'
    )
    shared.write_text(
        f'[ledger]\npath = "{workdir / "s.db"}"\n[shared]\nredis_url = "{redis.url}"\n{model}'
    )
    proxy_cfg = workdir / "litellm.yaml"
    proxy_cfg.write_text(
        "model_list:\n  - model_name: fake\n    litellm_params:\n      model: openai/fake\n"
        f"      api_base: {cloud.base_url}\n      api_key: x\n"
        "litellm_settings:\n  cache: true\n  cache_params:\n    type: redis\n"
        f"    host: 127.0.0.1\n    port: {redis.port}\n"
    )
    ports = [bs.free_port() for _ in range(3)]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    litellm_bin = str(Path(sys.executable).parent / "litellm")
    proxy = [litellm_bin, "--config", str(proxy_cfg), "--host", "127.0.0.1", "--port",
             str(ports[2]), "--num_workers", "1"]  # fmt: skip
    rows = []
    try:
        with (
            bs.process(bs.router_serve(ports[0], embedded), bases[0] + "/health"),
            bs.process(bs.router_serve(ports[1], shared), bases[1] + "/health"),
            bs.process(
                proxy,
                bases[2] + "/health/liveliness",
                env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"},
            ),
        ):
            peers = [
                ("router serve, embedded cache", bases[0], "auto"),
                ("router serve, Redis cache", bases[1], "auto"),
                ("LiteLLM proxy, Redis cache", bases[2], "fake"),
            ]
            for _, base, name in peers:  # prime: every prompt answered once, then cached
                bs.load(base, name, bs.CACHE_PROMPTS, 1, len(bs.CACHE_PROMPTS), 8)
            use_wrk = shutil.which("wrk") is not None
            print(f"(cache-hit load from {'wrk' if use_wrk else 'Python threads'})", flush=True)
            for clients in (1, 8):
                measured: dict[str, list[tuple[float, float, float]]] = {}
                for run in range(args.runs):
                    order = peers[run % 3 :] + peers[: run % 3]
                    for label, base, name in order:
                        measured.setdefault(label, []).append(
                            bs.load_wrk(
                                base, name, bs.CACHE_PROMPTS, clients, args.seconds, 8, workdir
                            )
                            if use_wrk
                            else bs.load(base, name, bs.CACHE_PROMPTS, clients, args.requests, 8)
                        )
                rps = {n: statistics.median(r[0] for r in m) for n, m in measured.items()}
                p50 = {n: statistics.median(r[1] for r in m) for n, m in measured.items()}
                base_p50 = p50["router serve, embedded cache"]
                for label, m in measured.items():
                    rows.append(
                        (
                            label,
                            str(clients),
                            f"{rps[label]:.0f}",
                            f"{p50[label]:.1f}",
                            f"{p50[label] / base_p50:.2f}",
                            f"{statistics.median(r[2] for r in m):.1f}",
                        )
                    )
    finally:
        cloud.stop()
    return rows


def timed(call: Callable[[int], object], n: int) -> tuple[str, str]:
    times = []
    for i in range(n):
        t = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - t)
    times.sort()
    return f"{times[n // 2] * 1e6:.0f}", f"{times[min(n - 1, int(n * 0.99))] * 1e6:.0f}"


def entry(i: int) -> Entry:
    return Entry(ts=time.time(), user=f"u{i % 50}", tier="cloud", model="m", prompt_tokens=20,
                 completion_tokens=30, cost_usd=1e-5, baseline_usd=2e-5, tokens_saved=0,
                 usd_saved=0.0, cache_hit=False, latency_ms=3.0, score=0.5, reason="bench",
                 response_id=f"chatcmpl-bench-{i}-{time.time_ns()}")  # fmt: skip


def bench_parts(workdir: Path, redis: RedisServer, n: int) -> list[tuple[str, ...]]:
    config = parse_toml(
        f'[ledger]\npath = "{workdir / "parts.db"}"\n[[budgets]]\nuser = "u"\n'
        f'daily_tokens = 1000000000\n[shared]\nredis_url = "{redis.url}"\n'
        f'[models.smollm2]\ntier = "local"\npath = "{bs.GGUF}"\n'
    )
    link = Link(redis.url, "bench:", 1.0)
    rows = []
    for label, store in (
        ("budget reserve + settle, SQLite", BudgetStore(workdir / "gov.db", config)),
        ("budget reserve + settle, Redis", RedisBudgetStore(link, config)),
    ):

        def budget(i: int, store: BudgetStore = store) -> None:
            store.settle(store.reserve("u", 100, 0.0), 50, 0.0)

        rows.append((label, *timed(budget, n)))
    sqlite_ledger = SQLiteLedger(workdir / "ledger.db")
    rows.append(("ledger write, SQLite", *timed(lambda i: sqlite_ledger.record(entry(i)), n)))
    postgres = PostgresServer().start()
    try:
        from router.shared.postgres import PostgresLedger

        pg = PostgresLedger(postgres.create_database("bench"), workdir / "queue.db")
        rows.append(
            ("ledger write, PostgreSQL (disk queue)", *timed(lambda i: pg.record(entry(i)), n))
        )
        started = time.perf_counter()
        pg.drain()
        rows.append(("ledger drain to PostgreSQL, per row (background)",
                     f"{(time.perf_counter() - started) / n * 1e6:.0f}", "-"))  # fmt: skip
        pg.close()
    finally:
        postgres.remove()
    for label, detector in (
        ("repeat check + count, in process", RepeatDetector(60, 3)),
        ("repeat check + count, Redis", RedisRepeatDetector(link, 60, 3)),
    ):

        def repeat(i: int, d: RepeatDetector = detector) -> None:
            d.repeated("u", f"k{i % 100}")
            d.answered("u", f"k{i % 100}")

        rows.append((label, *timed(repeat, n)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="repeats per measurement (median)")
    ap.add_argument("--seconds", type=float, default=5, help="seconds per cache-hit run (wrk)")
    ap.add_argument("--requests", type=int, default=240, help="requests per run (no wrk)")
    ap.add_argument("--parts", type=int, default=2000, help="calls per in-process measurement")
    ap.add_argument("--only", choices=["cache", "parts"], action="append")
    args = ap.parse_args()
    only = set(args.only or ["cache", "parts"])
    with tempfile.TemporaryDirectory(prefix="bench-shared-") as tmp:
        workdir = Path(tmp)
        print(f"# bench_shared: {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
              f"runs={args.runs}")  # fmt: skip
        with RedisServer(workdir / "redis") as redis:
            if "cache" in only:
                header = ("server", "clients", "req/s", "p50 ms", "p50 vs embedded", "p99 ms")
                print(
                    bs.table(
                        "Cache hits (median of runs)", header, bench_cache(args, workdir, redis)
                    ),
                    flush=True,
                )
            if "parts" in only:
                print(bs.table("Shared parts per request, in process (µs)", ("part", "p50", "p99"),
                               bench_parts(workdir, redis, args.parts)), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
