"""Cold start of the CLI: `router --help`, and `router chat` to its first answer byte.

    python scripts/bench_cli_start.py [--runs 5]

Each run is a fresh process (nothing warm but the OS file cache), with the cache bypassed so
the embedded model really loads and answers. Prints medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def first_byte(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds to the first stdout byte, seconds to exit)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    proc.stdout.read(1)
    first = time.perf_counter() - start
    proc.stdout.read()
    proc.wait(timeout=120)
    return first, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "XDG_DATA_HOME": tmp, "XDG_CACHE_HOME": tmp}
        router = [sys.executable, "-m", "router"]
        help_runs = [first_byte([*router, "--help"], env)[1] for _ in range(args.runs)]
        chat_runs = [
            first_byte([*router, "chat", "Hi!", "--no-cache", "--max-tokens", "8"], env)
            for _ in range(args.runs)
        ]
        probe = (
            "import sys, router.cli as c\n"
            "sys.argv = ['router', 'chat', 'Hi!', '--no-cache', '--max-tokens', '4']\n"
            "try:\n    c.main()\nexcept SystemExit:\n    pass\n"
            "print('litellm imported by a local chat:', 'litellm' in sys.modules, file=sys.stderr)"
        )
        check = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
        )
    print(f"{'command':<40} | {'median s':>8} | {'min s':>6} | {'max s':>6}")
    print("-" * 68)
    rows = [
        ("router --help (to exit)", help_runs),
        ("router chat 'Hi!' (to first answer byte)", [f for f, _ in chat_runs]),
        ("router chat 'Hi!' (to exit, 8 tokens)", [t for _, t in chat_runs]),
    ]
    for name, xs in rows:
        print(f"{name:<40} | {statistics.median(xs):>8.2f} | {min(xs):>6.2f} | {max(xs):>6.2f}")
    print(check.stderr.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
