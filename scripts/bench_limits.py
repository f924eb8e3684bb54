"""What rate limits cost on the hot path (issue 38): cache hits through `router serve` with
no [[limits]] and with a rule every request counts in, embedded (counted in process) and with
[shared] Redis (the cache there too; one Lua script a request), side by side in one run; wrk
at 1 and 8 connections. Each server is compared with the same store's server without limits.

    python scripts/bench_limits.py [--runs 3] [--seconds 5]

The rule (`rpm` and `tpm` far above what wrk sends) admits every request, so the table shows
the counting's cost, not refusals. Everything binds 127.0.0.1; every process started here is
stopped by its PID. Medians over the runs, the servers taking turns; read the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_hot import KEY_ENV, PROMPTS, write_config  # noqa: E402
from bench_server import free_port, load, load_wrk, process, router_serve, table  # noqa: E402

from tests.fakecloud import FakeCloud  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

RULE = "\n[[limits]]\nrpm = 10000000\ntpm = 10000000000\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="repeats per measurement (median)")
    ap.add_argument("--seconds", type=float, default=5, help="seconds per wrk run")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-limits-"))
    rows: list[tuple[str, ...]] = []
    cloud = FakeCloud().start()
    with RedisServer(work / "redis") as redis, ExitStack() as stack:
        stack.callback(cloud.stop)
        servers: list[tuple[str, str]] = []
        for name, rule, url in (
            ("no limits", "", None),
            ("limits, in process", RULE, None),
            ("[shared] Redis, no limits", "", redis.url),
            ("[shared] Redis, limits", RULE, redis.url),
        ):
            port = free_port()
            config = write_config(work / name.replace(" ", "-").replace(",", ""), cloud, port, url)
            config.write_text(config.read_text() + rule)
            base = f"http://127.0.0.1:{port}"
            stack.enter_context(process(router_serve(port, config), base + "/health", env=KEY_ENV))
            load(base, "cloud", PROMPTS, 1, len(PROMPTS), 8)  # prime: every prompt answered
            servers.append((name, base))
        for clients in (1, 8):
            measured: dict[str, list[tuple[float, float, float]]] = {}
            for run in range(args.runs):
                for name, base in servers if run % 2 == 0 else servers[::-1]:
                    measured.setdefault(name, []).append(
                        load_wrk(base, "cloud", PROMPTS, clients, args.seconds, 8, work)
                    )
            for name, runs in measured.items():  # each against its store's server without
                ref = statistics.median(
                    r[0] for r in measured["[shared] Redis, no limits" if "Redis" in name
                                           else "no limits"]
                )  # fmt: skip
                rps, p50, p99 = (statistics.median(r[i] for r in runs) for i in range(3))
                rows.append((name, str(clients), f"{rps:,.0f}", f"{rps / ref:.2f}",
                             f"{p50:.2f}", f"{p99:.2f}"))  # fmt: skip
    title = f"Cache hits with and without rate limits ({args.runs} runs of {args.seconds:g} s)"
    header = ("server", "connections", "req/s", "vs no limits", "p50 ms", "p99 ms")
    print(table(title, header, rows))


if __name__ == "__main__":
    main()
