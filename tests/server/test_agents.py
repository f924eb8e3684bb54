"""The real coding agents, Claude Code and Codex (pinned in tests/agents/package.json, installed
by .ci/run), pointed at the router by their base URL alone, as their users would: each gets its
answer and leaves a ledger row in its API's name."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from router import Router
from router.server.app import create_app
from tests.fakecloud import FakeCloud
from tests.server.conftest import ALIASES
from tests.server_harness import ServerThread

pytestmark = pytest.mark.slow

BIN = Path(__file__).parent.parent / "agents" / "node_modules" / ".bin"


def agent(name: str) -> str:
    path = BIN / name
    if not path.exists() or shutil.which("node") is None:
        if os.environ.get("ROUTER_TEST_AGENTS_REQUIRED"):
            pytest.fail(f"{path} is missing: run npm ci --prefix tests/agents")
        pytest.skip(f"{name} is not installed: npm ci --prefix tests/agents")
    return str(path)


@pytest.fixture
def serving(
    make_router: Callable[..., Router], fake_cloud: FakeCloud
) -> Iterator[tuple[Router, str]]:
    router = make_router(cloud=fake_cloud, extra=ALIASES)
    with ServerThread(create_app(router)) as server:
        yield router, server.url


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
    serving: tuple[Router, str], fake_cloud: FakeCloud, tmp_path: Path
) -> None:
    router, url = serving
    env = offline_env(tmp_path / "home", ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="sk-ant-x")
    done = run([agent("claude"), "-p", "Say hello."], env, tmp_path)
    assert "cloud answer to:" in done.stdout  # the stand-in cloud's answer reached the agent
    rows = router.ledger.entries()
    assert rows and {row.api for row in rows} == {"messages"}
    assert not any(row.pending for row in rows) and any(row.tier == "cloud" for row in rows)
    # Claude Code's own system prompt and tools went along: its request was the cloud's work.
    asked = [r for r in fake_cloud.requests if "Say hello." in str(r.get("messages"))]
    assert asked and asked[-1].get("tools")


def test_codex_works_through_the_router(
    serving: tuple[Router, str], fake_cloud: FakeCloud, tmp_path: Path
) -> None:
    router, url = serving
    home = tmp_path / "codex"
    home.mkdir()
    (home / "config.toml").write_text(
        'model = "gpt-5-codex"\nmodel_provider = "router"\n'
        "[model_providers.router]\n"
        f'name = "router"\nbase_url = "{url}/v1"\nenv_key = "ROUTER_KEY"\n'
        'wire_api = "responses"\n'
    )
    env = offline_env(tmp_path / "home", CODEX_HOME=str(home), ROUTER_KEY="sk-x")
    args = [agent("codex"), "exec", "--skip-git-repo-check", "Say hello."]
    done = run(args, env, tmp_path)
    assert "cloud answer to:" in done.stdout
    rows = router.ledger.entries()
    assert rows and {row.api for row in rows} == {"responses"}
    assert not any(row.pending for row in rows) and any(row.tier == "cloud" for row in rows)
    asked = [r for r in fake_cloud.requests if "Say hello." in str(r.get("messages"))]
    assert asked and asked[-1].get("tools")
