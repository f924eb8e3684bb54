"""Local embeddings under load: `router serve` against `python -m llama_cpp.server`, side by side.

    python scripts/bench_embeddings.py [--runs 3] [--texts 30] [--threads 1]

Both serve the embedded SmolLM2 GGUF in llama.cpp's embedding mode (n_ctx 512, the same
threads) on 127.0.0.1. For each:

1. throughput: tokens/s of one large request (`--texts` texts of ~95 tokens each);
2. a small request's wait behind that large one: the small one is sent 2 s after the large
   one, and timed to its answer;
3. a hang-up: the large request's client disconnects 2 s in; a small request sent at once is
   timed to its answer (it waits for whatever the server still does for the gone client).

Medians over `--runs`. Servers are stopped by their PIDs at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_server import GGUF, free_port, router_serve, table  # noqa: E402

from tests.server_harness import raw_post  # noqa: E402

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank. "
SMALL = {"input": "hello there"}


def start_router(workdir: Path, threads: int) -> tuple[subprocess.Popen[bytes], str, str]:
    config = workdir / "models.toml"
    config.write_text(
        f'[cache]\ndir = "{workdir / "cache"}"\n[ledger]\npath = "{workdir / "l.db"}"\n'
        f'[models.embed]\ntier = "local"\npath = "{GGUF}"\nn_ctx = 512\nembeddings = true\n'
        f"n_threads = {threads}\nmax_embedding_tokens = 100000\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        router_serve(port, config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return proc, f"http://127.0.0.1:{port}", "embed"


def start_peer(threads: int) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(GGUF), "--embedding", "true",
        "--n_ctx", "512", "--n_threads", str(threads), "--n_threads_batch", str(threads),
        "--port", str(port), "--host", "127.0.0.1",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}", "embed"


def ready(url: str, model: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            r = httpx.post(url + "/v1/embeddings", json={**SMALL, "model": model}, timeout=60)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not start")


def large(model: str, texts: int) -> dict[str, object]:
    return {"model": model, "input": [f"{i}. " + SENTENCE * 6 for i in range(texts)]}


def small(url: str, model: str) -> float:
    started = time.perf_counter()
    r = httpx.post(url + "/v1/embeddings", json={**SMALL, "model": model}, timeout=300)
    if r.status_code != 200:
        raise SystemExit(f"small request: {r.status_code} {r.text[:200]}")
    return time.perf_counter() - started


def throughput(url: str, model: str, texts: int) -> float:
    started = time.perf_counter()
    r = httpx.post(url + "/v1/embeddings", json=large(model, texts), timeout=600)
    took = time.perf_counter() - started
    if r.status_code != 200:
        raise SystemExit(f"large request: {r.status_code} {r.text[:200]}")
    return float(r.json()["usage"]["prompt_tokens"]) / took


def behind(url: str, model: str, texts: int) -> float:
    done = threading.Event()

    def send() -> None:
        httpx.post(url + "/v1/embeddings", json=large(model, texts), timeout=600)
        done.set()

    threading.Thread(target=send, daemon=True).start()
    time.sleep(2.0)
    waited = small(url, model)
    done.wait(600)
    return waited


def after_hangup(url: str, model: str, texts: int) -> float:
    sock = raw_post(url, "/v1/embeddings", large(model, texts))
    time.sleep(2.0)
    sock.close()
    return small(url, model)


def measure(
    start: Callable[[], tuple[subprocess.Popen[bytes], str, str]], runs: int, texts: int
) -> list[float]:
    proc, url, model = start()
    try:
        ready(url, model)
        rates = [throughput(url, model, texts) for _ in range(runs)]
        waits = [behind(url, model, texts) for _ in range(runs)]
        hangups = [after_hangup(url, model, texts) for _ in range(runs)]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return [statistics.median(v) for v in (rates, waits, hangups)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--texts", type=int, default=30, help="texts in the large request")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    with tempfile.TemporaryDirectory() as tmp:
        ours = measure(lambda: start_router(Path(tmp), args.threads), args.runs, args.texts)
    peer = measure(lambda: start_peer(args.threads), args.runs, args.texts)
    rows = [
        ("large request, tokens/s", f"{ours[0]:.0f}", f"{peer[0]:.0f}"),
        ("small request behind a large one, s", f"{ours[1]:.2f}", f"{peer[1]:.2f}"),
        ("small request after a large one hung up, s", f"{ours[2]:.2f}", f"{peer[2]:.2f}"),
    ]
    print(
        table(
            f"local embeddings, SmolLM2-135M, n_ctx 512, {args.threads} thread(s), "
            f"{args.texts} texts of ~95 tokens (medians of {args.runs})",
            ("measure", "router serve", "llama_cpp.server"),
            rows,
        )
    )


if __name__ == "__main__":
    main()
