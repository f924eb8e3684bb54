"""The real coding agents, Claude Code and Codex (pinned in tests/agents/package.json, installed
by .ci/run), pointed at the router by their base URL alone, as their users would: each gets its
answer and leaves a ledger row in its API's name."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config
from tests.fakecloud import FakeCloud
from tests.server.conftest import ALIASES

pytestmark = pytest.mark.slow

BIN = Path(__file__).parent.parent / "agents" / "node_modules" / ".bin"


def agent(name: str) -> str:
    path = BIN / name
    if not path.exists() or shutil.which("node") is None:
        if os.environ.get("ROUTER_TEST_AGENTS_REQUIRED"):
            pytest.fail(f"{path} is missing: run npm ci --prefix tests/agents")
        pytest.skip(f"{name} is not installed: npm ci --prefix tests/agents")
    return str(path)


class Served:
    """`router serve` in its own process, on the embedded model and the stand-in cloud."""

    def __init__(self, config: Path, url: str) -> None:
        self.config, self.url = config, url

    def rows(self) -> list[dict[str, Any]]:
        """The ledger as `router logs --json` shows it."""
        args = [sys.executable, "-m", "router", "logs", "--json", "--config", str(self.config)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows


@contextmanager
def router_serve(config: Path) -> Iterator[Served]:
    """`router serve --port 0` on `config` until the block ends (stopped by its PID)."""
    log = config.parent / "serve.log"
    args = [sys.executable, "-m", "router", "serve", "--port", "0", "--config", str(config)]
    env = {**os.environ, CLOUD_KEY_ENV: CLOUD_KEY}
    with log.open("wb") as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        deadline = time.monotonic() + 90
        while not (found := re.search(r"http://127\.0\.0\.1:(\d+)/v1", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield Served(config, f"http://127.0.0.1:{found.group(1)}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def serving(tmp_path: Path, fake_cloud: FakeCloud) -> Iterator[Served]:
    with router_serve(write_config(tmp_path, fake_cloud.base_url, ALIASES)) as server:
        yield server


def offline_env(home: Path, **extra: str) -> dict[str, str]:
    """The agent's own home, no telemetry, no update checks: nothing leaves the machine."""
    home.mkdir(parents=True, exist_ok=True)
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TERM", "TMPDIR")}
    return {
        **keep,
        "HOME": str(home),
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        **extra,
    }


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=150)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def test_claude_code_works_through_the_router(
    serving: Served, fake_cloud: FakeCloud, tmp_path: Path
) -> None:
    env = offline_env(tmp_path / "home", ANTHROPIC_BASE_URL=serving.url, ANTHROPIC_API_KEY="x")
    done = run([agent("claude"), "-p", "Say hello."], env, tmp_path)
    assert "cloud answer to:" in done.stdout  # the stand-in cloud's answer reached the agent
    rows = serving.rows()
    assert rows and {row["api"] for row in rows} == {"messages"}
    assert not any(row["pending"] for row in rows) and any(r["tier"] == "cloud" for r in rows)
    # Claude Code's own system prompt and tools went along: its request was the cloud's work.
    asked = [r for r in fake_cloud.requests if "Say hello." in str(r.get("messages"))]
    assert asked and asked[-1].get("tools")


def test_codex_works_through_the_router(
    serving: Served, fake_cloud: FakeCloud, tmp_path: Path
) -> None:
    home = tmp_path / "codex"
    home.mkdir()
    (home / "config.toml").write_text(
        'model = "gpt-5-codex"\nmodel_provider = "router"\n'
        "[model_providers.router]\n"
        f'name = "router"\nbase_url = "{serving.url}/v1"\nenv_key = "ROUTER_KEY"\n'
        'wire_api = "responses"\n'
    )
    env = offline_env(tmp_path / "home", CODEX_HOME=str(home), ROUTER_KEY="sk-x")
    args = [agent("codex"), "exec", "--skip-git-repo-check", "Say hello."]
    done = run(args, env, tmp_path)
    assert "cloud answer to:" in done.stdout
    rows = serving.rows()
    assert rows and {row["api"] for row in rows} == {"responses"}
    # No key: the user is Codex's installation, the session its session-id.
    assert {r["user"][:7] for r in rows} == {"device-"} and all(r["session"] for r in rows)
    assert not any(row["pending"] for row in rows) and any(r["tier"] == "cloud" for r in rows)
    asked = [r for r in fake_cloud.requests if "Say hello." in str(r.get("messages"))]
    assert asked and asked[-1].get("tools")


# ------------------------------------------------------------------ governed agent sessions

NATIVE = """
[models.claude]
tier = "cloud"
litellm_model = "anthropic/claude-sonnet-4-5"
api_key_env = "{env}"
api_base = "{base}"
timeout_seconds = 10

[aliases]
"claude-*" = "claude"
"gpt-5*" = "auto"
"""


def router_cli(config: Path, *args: str) -> str:
    argv = [sys.executable, "-m", "router", *args, "--config", str(config)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.fixture
def governed(tmp_path: Path, fake_cloud: FakeCloud) -> Iterator[Served]:
    """`router serve` with Claude's models passed through to a stand-in Anthropic API that
    caches prompts and calls tools; Codex's through chat."""
    native = NATIVE.format(env=CLOUD_KEY_ENV, base=fake_cloud.base_url.removesuffix("/v1"))
    config = write_config(tmp_path, fake_cloud.base_url, native)
    notes = tmp_path / "notes.txt"  # what the stand-in's tool calls read
    notes.write_text("remember the milk\n")
    tools = {"Read": {"file_path": str(notes)}}
    with fake_cloud.caching(agent_steps=4, tools=tools), router_serve(config) as server:
        yield server


def key_for(served: Served, user: str) -> str:
    found = re.search(r"\brk-[\w-]+", router_cli(served.config, "keys", "create", "--user", user))
    assert found
    return found.group(0)


def test_a_claude_code_session_is_priced_budgeted_and_refused_as_it_should_be(
    governed: Served, tmp_path: Path
) -> None:
    """Real Claude Code, a 20,000-token daily budget: a tool loop of five turns and more runs
    (each turn reserves what it is expected to use, not Claude Code's max_tokens), every row
    is priced as LiteLLM prices it, the session is parsed; once spent, Claude Code stops at
    once with the budget named."""
    router_cli(governed.config, "budget", "set", "cara", "--daily-tokens", "20000")
    env = offline_env(
        tmp_path / "home",
        ANTHROPIC_BASE_URL=governed.url,
        ANTHROPIC_API_KEY=key_for(governed, "cara"),
    )
    args = [agent("claude"), "-p", "List the text files here, then say what they hold."]
    done = run(args, env, tmp_path)
    assert "native answer to:" in done.stdout
    rows = [r for r in governed.rows() if r["tier"] == "cloud"]
    turns = [r for r in rows if r["completion_tokens"] and r["cache_read_tokens"]]
    assert len(rows) >= 5 and len(turns) >= 4, rows  # the tool loop's turns, cache warm
    assert {r["user"] for r in rows} == {"cara"}  # the key's owner, over Claude Code's id
    sessions = {r["session"] for r in rows}
    assert len(sessions) == 1 and re.fullmatch(r"[0-9a-f-]{36}", sessions.pop())
    from router.units import Tokens
    from tests.governance.test_agents import litellm_cost

    for r in rows:
        tokens = Tokens(
            r["prompt_tokens"],
            r["completion_tokens"],
            r["cache_read_tokens"],
            r["cache_write_tokens"],
        )
        assert abs(r["cost_usd"] - litellm_cost(tokens)) <= 1e-5
    # Spent: a final answer, not a wait.
    router_cli(governed.config, "budget", "set", "cara", "--daily-tokens", "1")
    started = time.monotonic()
    refused = subprocess.run(
        args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    assert time.monotonic() - started < 10 and refused.returncode != 0
    assert "budget user:cara daily_tokens" in refused.stdout + refused.stderr
    assert any(r["refusal"] == "budget" and r["user"] == "cara" for r in governed.rows())


def test_codex_sessions_are_parsed_and_a_spent_budget_ends_it_at_once(
    governed: Served, tmp_path: Path
) -> None:
    home = tmp_path / "codex"
    home.mkdir()
    (home / "config.toml").write_text(
        'model = "gpt-5-codex"\nmodel_provider = "router"\n'
        "[model_providers.router]\n"
        f'name = "router"\nbase_url = "{governed.url}/v1"\nenv_key = "ROUTER_KEY"\n'
        'wire_api = "responses"\n'
    )
    env = offline_env(tmp_path / "home", CODEX_HOME=str(home), ROUTER_KEY=key_for(governed, "dan"))
    args = [agent("codex"), "exec", "--skip-git-repo-check", "Say hello."]
    run(args, env, tmp_path)
    args[-1] = "Say hello again."  # not the cached answer: a cache hit costs nothing
    rows = governed.rows()
    assert rows and {r["user"] for r in rows} == {"dan"}
    assert len({r["session"] for r in rows}) == 1 and rows[0]["session"]  # its session-id
    router_cli(governed.config, "budget", "set", "dan", "--daily-tokens", "1")
    started = time.monotonic()
    refused = subprocess.run(
        args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    assert time.monotonic() - started < 10 and refused.returncode != 0
    assert "budget user:dan daily_tokens" in refused.stdout + refused.stderr
