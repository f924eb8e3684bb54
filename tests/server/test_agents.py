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


@pytest.fixture
def serving(tmp_path: Path, fake_cloud: FakeCloud) -> Iterator[Served]:
    config = write_config(tmp_path, fake_cloud.base_url, ALIASES)
    log = tmp_path / "serve.log"
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
    assert not any(row["pending"] for row in rows) and any(r["tier"] == "cloud" for r in rows)
    asked = [r for r in fake_cloud.requests if "Say hello." in str(r.get("messages"))]
    assert asked and asked[-1].get("tools")
