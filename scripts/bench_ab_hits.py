"""Cache hits through `router serve`, two checkouts side by side in one run (an A/B of a change).

    git worktree add /tmp/before <rev>
    python scripts/bench_ab_hits.py --before /tmp/before [--after .] [--runs 4] [--seconds 5]

Each checkout's `router serve` (its own code, by PYTHONPATH) on the same config shape as
scripts/bench_hot.py's (embedded cache, the stand-in cloud); every prompt answered once, then
wrk at 1 and 8 connections, the two servers taking turns run by run: req/s, p50, p99 (medians).
Needs wrk. The servers bind 127.0.0.1 and are stopped by their PIDs.
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
from bench_server import free_port, load, load_wrk, process, table  # noqa: E402

from tests.fakecloud import FakeCloud  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout (worktree)")
    parser.add_argument("--after", type=Path, default=ROOT, help="a checkout (default: this)")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    cloud = FakeCloud().start()
    rows: list[tuple[str, ...]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
            work = Path(tmp)
            servers = []
            for name, tree in trees.items():
                port = free_port()
                config = write_config(work / name, cloud, port)
                cmd = [sys.executable, "-m", "router", "serve", "--port", str(port),
                       "--config", str(config)]  # fmt: skip
                base = f"http://127.0.0.1:{port}"
                env = {**KEY_ENV, "PYTHONPATH": str(tree)}
                stack.enter_context(process(cmd, base + "/health", env=env))
                servers.append((name, base))
            for _, base in servers:  # prime: every prompt answered once
                load(base, "cloud", PROMPTS, 1, len(PROMPTS), 8)
            for clients in (1, 8):
                measured: dict[str, list[tuple[float, float, float]]] = {n: [] for n, _ in servers}
                for run in range(args.runs):
                    for name, base in servers if run % 2 == 0 else servers[::-1]:
                        measured[name].append(
                            load_wrk(base, "cloud", PROMPTS, clients, args.seconds, 8, work)
                        )
                ref = statistics.median(r[0] for r in measured["before"])
                for name, runs in measured.items():
                    rps, p50, p99 = (statistics.median(r[i] for r in runs) for i in range(3))
                    rows.append((f"{name} ({trees[name]})", str(clients), f"{rps:.0f}",
                                 f"{rps / ref:.2f}", f"{p50:.2f}", f"{p99:.2f}"))  # fmt: skip
    finally:
        cloud.stop()
    header = ("checkout", "connections", "req/s", "× before", "p50 ms", "p99 ms")
    print(table(f"cache hits, medians of {args.runs} runs of {args.seconds:g} s", header, rows))


if __name__ == "__main__":
    main()
