"""A coding agent's session through the router: where its requests go, and what it truly costs.

    python scripts/bench_agents.py [--turns 8] [--background local] [--claude]

A scripted Claude Code session (its shapes: a ~20 KB system prompt and tools on every main
turn, a tool call answered per turn, the history growing; tool-less side requests beside the
turns: a title, a "new topic?" check per user message) runs against `router serve` twice, on a
stand-in Anthropic API on loopback that answers with prompt caching as Anthropic does (each
turn reads the prefix the last one wrote; tests/fakecloud.py):

1. every request on the main model (claude-sonnet-4-5, passed through natively);
2. with `[agents] background = "<--background>"` (the embedded SmolLM2 by default): the side
   requests off the main model, the turns on it (sticky sessions).

With `--claude`, the session is the real Claude Code CLI instead (tests/agents, `claude -p`
once per ask, the stand-in calling its Read tool three times per ask): what it sends is what
is measured.

For each, from the ledger (`router logs --json`): requests and tokens on the main model and off
it, the true cost (LiteLLM's rules: cache reads at a tenth, writes at 1.25×) and what the second
setup saves against the first, the cost the router's old formula gave (every prompt token at
the input price), and the share of cloud prompt tokens read from the provider's cache. The
session is deterministic: one run. (The embedded SmolLM2 often runs its side answers to
max_tokens: its tokens are free, and its answers weak; a larger local model belongs there.)
`router serve` is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_server import GGUF, free_port, router_serve, table  # noqa: E402

from router.ledger.pricing import lookup  # noqa: E402
from router.units import Tokens, money  # noqa: E402
from tests.fakecloud import FakeCloud  # noqa: E402

MAIN = "anthropic/claude-sonnet-4-5"
SYSTEM = "You are Claude Code, an interactive CLI tool that helps users with software tasks. " * 220
TOOLS = [
    {"name": name, "description": f"The {name} tool. " * 30, "input_schema": {"type": "object"}}
    for name in ("Bash", "Edit", "Glob", "Grep", "Read", "Write", "Task", "WebFetch")
]
ASKS = [
    "Find where the retry backoff is computed and explain it.",
    "Make the backoff cap configurable.",
    "Add a test for the new setting.",
    "Run the tests and fix what fails.",
    "Now update the README.",
    "Refactor the helper into its own module.",
    "Check the changelog entry.",
    "Summarize what we changed today.",
]


def config(workdir: Path, cloud: FakeCloud, background: str | None) -> Path:
    agents = f'\n[agents]\nbackground = "{background}"\nsticky = true\n' if background else ""
    path = workdir / f"models-{background or 'main'}.toml"
    path.write_text(
        f"""
[router]
baseline = "claude-sonnet-4-5"

[cache]
enabled = false

[ledger]
path = "{workdir / f"ledger-{background or 'main'}.sqlite3"}"

[guardrails]
repeat_window_seconds = 0

[models.smollm2]
tier = "local"
path = "{GGUF}"
n_ctx = 2048
n_threads = 1
max_score = 0.35

[models.claude]
tier = "cloud"
litellm_model = "{MAIN}"
api_key_env = "BENCH_KEY"
api_base = "{cloud.base_url.removesuffix("/v1")}"
timeout_seconds = 30

[aliases]
"claude-*" = "claude"
{agents}"""
    )
    return path


def side(kind: str, text: str, session: str) -> dict[str, Any]:
    """A tool-less side request as Claude Code sends it (a small model's job)."""
    prompts = {
        "title": "Please write a 5-10 word title for the following conversation:\n",
        "topic": "Analyze if this message indicates a new conversation topic. Answer with "
        'JSON {"isNewTopic": bool, "title": string}. Message:\n',
    }
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 512,
        "system": "You are a helpful assistant that writes short titles.",
        "messages": [{"role": "user", "content": prompts[kind] + text}],
        "metadata": {"user_id": json.dumps({"device_id": "bench", "session_id": session})},
    }


def session_run(url: str, turns: int) -> None:
    """The scripted session: per user ask, a topic check, then the turn and its tool call."""
    session = str(uuid.uuid4())
    history: list[dict[str, Any]] = []
    meta = {"user_id": json.dumps({"device_id": "bench", "session_id": session})}
    with httpx.Client(base_url=url, timeout=120) as http:
        for i, ask in enumerate(ASKS[:turns]):
            r = http.post("/v1/messages", json=side("topic", ask, session))
            r.raise_for_status()
            history.append({"role": "user", "content": ask})
            for _ in range(2):  # the turn calls a tool, then answers with its result
                body = {
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 32000,
                    "system": SYSTEM,
                    "tools": TOOLS,
                    "messages": history,
                    "metadata": meta,
                }
                r = http.post("/v1/messages", json=body)
                r.raise_for_status()
                block = r.json()["content"][0]
                history.append({"role": "assistant", "content": [block]})
                if block["type"] != "tool_use":
                    break
                result = {"type": "tool_result", "tool_use_id": block["id"], "content": "ok"}
                history.append({"role": "user", "content": [result]})
            if i == 0:
                r = http.post("/v1/messages", json=side("title", ask, session))
                r.raise_for_status()


CLAUDE = ROOT / "tests" / "agents" / "node_modules" / ".bin" / "claude"


def claude_run(url: str, turns: int, workdir: Path) -> None:
    """The real Claude Code, `claude -p` once per ask, offline (its own home, no telemetry)."""
    home = workdir / "claude-home"
    home.mkdir(exist_ok=True)
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TERM", "TMPDIR")}
    env = {
        **keep, "HOME": str(home), "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "none",
    }  # fmt: skip
    for ask in ASKS[:turns]:
        done = subprocess.run(
            [str(CLAUDE), "-p", ask], env=env, cwd=workdir, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"claude failed: {done.stdout[-1000:]} {done.stderr[-1000:]}")


def measure(
    workdir: Path, cloud: FakeCloud, background: str | None, turns: int, real: bool = False
) -> dict[str, Any]:
    path = config(workdir, cloud, background)
    port = free_port()
    log = workdir / f"serve-{background or 'main'}.log"
    env = {**os.environ, "BENCH_KEY": "sk-bench"}
    with log.open("wb") as err:
        proc = subprocess.Popen(
            router_serve(port, path), stdout=subprocess.DEVNULL, stderr=err, env=env
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"router serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        if real:
            notes = workdir / "notes.txt"
            notes.write_text("retry backoff: doubled each time, capped at 20 s\n")
            with cloud.caching(agent_steps=3, tools={"Read": {"file_path": str(notes)}}):
                claude_run(url, turns, workdir)
        else:
            with cloud.caching(agent_steps=1):
                session_run(url, turns)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    rows = json.loads(
        subprocess.run(
            [sys.executable, "-m", "router", "logs", "--json", "-n", "1000", "--config", str(path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
    )
    return figures(rows)


def figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    main = lookup(MAIN)
    assert main is not None
    by_model: dict[str, list[int]] = {}
    old = prompt = read = 0.0
    for r in rows:
        tokens = Tokens(
            r["prompt_tokens"],
            r["completion_tokens"],
            r["cache_read_tokens"],
            r["cache_write_tokens"],
        )
        counts = by_model.setdefault(r["model"], [0, 0])
        counts[0] += 1
        counts[1] += tokens.prompt + tokens.completion
        old += main.cost(tokens.prompt, tokens.completion) if r["tier"] == "cloud" else 0.0
        if r["tier"] == "cloud":
            prompt += tokens.prompt
            read += tokens.cache_read
    cost = sum(r["cost_usd"] for r in rows)
    return {
        "requests": len(rows),
        "by_model": by_model,
        "cost": cost,
        "old": old,
        "read_share": read / prompt if prompt else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=8, choices=range(1, len(ASKS) + 1))
    parser.add_argument("--background", default="local", help="a mode or model of the config")
    parser.add_argument("--claude", action="store_true", help="drive the real Claude Code CLI")
    args = parser.parse_args()
    cloud = FakeCloud().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            results = {
                "all on the main model": measure(work, cloud, None, args.turns, args.claude),
                f"[agents] background = {args.background!r}": measure(
                    work, cloud, args.background, args.turns, args.claude
                ),
            }
    finally:
        cloud.stop()
    header = (
        "setup",
        "requests: main / off it",
        "tokens: main / off it",
        "true cost",
        "saved vs all on main",
        "old formula (no cache prices)",
        "cache-read share",
    )
    rows: list[tuple[str, ...]] = []
    first = next(iter(results.values()))
    for name, f in results.items():
        on = f["by_model"].get("claude", [0, 0])
        off = [sum(c[i] for m, c in f["by_model"].items() if m != "claude") for i in (0, 1)]
        saved = first["cost"] - f["cost"]
        rows.append(
            (
                name,
                f"{on[0]} / {off[0]} ({off[0] / f['requests']:.0%} off)",
                f"{on[1]:,} / {off[1]:,}",
                money(f["cost"]),
                f"{money(saved)} ({saved / first['cost']:.1%})" if first["cost"] else "-",
                f"{money(f['old'])} ({f['old'] / f['cost']:.1f}×)"
                if f["cost"]
                else money(f["old"]),
                f"{f['read_share']:.0%}",
            )
        )
    title = (
        f"the real Claude Code, claude -p {args.turns} times, 3 tool calls each"
        if args.claude
        else f"a scripted Claude Code session: {args.turns} turns with tools, side requests beside"
    )
    print(table(title, header, rows))


if __name__ == "__main__":
    main()
