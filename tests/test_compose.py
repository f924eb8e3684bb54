"""docs/compose without a Docker daemon: the compose file parses, its replicas run one image
built from docs/compose/Dockerfile (a builder stage with the compiler, a final stage without),
and every router command the compose file and docs/scaling.md document, the image's default
command included, is one the CLI accepts through the image's entry point."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer.main
import yaml

from router.cli import app

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docs" / "compose"


def dockerfile() -> tuple[list[str], list[str], list[str]]:
    """(the builder stage's lines, the final stage's lines, ENTRYPOINT + CMD as argv)."""
    text = (COMPOSE / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2, "a builder stage and a final one"
    entry = json.loads(re.findall(r"^ENTRYPOINT (.+)$", text, re.M)[-1])
    cmd = json.loads(re.findall(r"^CMD (.+)$", text, re.M)[-1])
    return stages[0].splitlines(), stages[1].splitlines(), [*entry, *cmd]


def documented_runs() -> list[list[str]]:
    """Each `docker compose run --rm SERVICE ARGS` in the compose file's comments and in
    docs/scaling.md, as the ARGS."""
    texts = (COMPOSE / "compose.yaml").read_text() + (ROOT / "docs" / "scaling.md").read_text()
    found = re.findall(r"docker compose run --rm router-[ab] ([^\n`]+)", texts)
    return [shlex.split(line.split("#")[0]) for line in found]


def accepts(argv: list[str]) -> None:
    """Parse `argv` (after the program name) as the CLI would, running nothing: an unknown
    command or option raises a usage error. (Typer carries its own click, whose groups are
    told apart by `resolve_command`.)"""
    command: Any = typer.main.get_command(app)
    ctx = command.make_context("router", list(argv))
    while hasattr(command, "resolve_command"):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, sub, args = command.resolve_command(ctx, rest)
        assert sub is not None, argv
        command, ctx = sub, sub.make_context(name or "", list(args), parent=ctx)


def test_the_replicas_run_one_image_built_without_a_compiler_in_it() -> None:
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    for name in ("router-a", "router-b"):
        service = compose["services"][name]
        assert service["build"]["dockerfile"] == "docs/compose/Dockerfile"
        assert (COMPOSE / service["build"]["context"]).resolve() == ROOT
        assert "command" not in service  # the image's CMD: no install at each start
        assert not any(":/src" in v for v in service["volumes"])
    builder, final, argv = dockerfile()
    assert any("build-essential" in line for line in builder)
    assert not any("build-essential" in line or "cmake" in line for line in final)
    assert any("--no-index" in line for line in final)  # only the builder's wheels
    assert argv[0] == "router"
    accepts(argv[1:])  # the default command: router serve ...


def test_every_documented_command_is_one_the_cli_accepts(tmp_path: Path) -> None:
    runs = documented_runs()
    assert runs and all(run[0] != "router" for run in runs), runs  # the entry point is router
    for run in runs:
        accepts(run)
    # And the key command works for real, on the compose models.toml (keys in a local store
    # here, as no Redis is named in this environment).
    config = tmp_path / "models.toml"
    config.write_text((COMPOSE / "models.toml").read_text())
    keys = [run for run in runs if run[:2] == ["keys", "create"]]
    assert keys
    argv = [str(config) if a == "/srv/models.toml" else a for a in keys[0]]
    out = subprocess.run(
        [sys.executable, "-m", "router", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"\brk-\w+", out.stdout + out.stderr)


def test_the_compose_config_serves_claude_code_and_codex_model_names(
    tmp_path: Path, fake_cloud: Any, monkeypatch: Any
) -> None:
    """docs/compose/models.toml extends the shipped file, so the agents' model names resolve
    (its [aliases]), and the replicas' environment points OpenAI's client at a gateway: the
    real router, on that file, answers both agents' names through the stand-in cloud."""
    import httpx

    from router import Router
    from router.backends import FunctionBackend
    from router.config import load_config
    from router.server import create_app
    from tests.conftest import HARD_PROMPT
    from tests.server_harness import ServerThread

    replica = yaml.safe_load((COMPOSE / "compose.yaml").read_text())["x-replica"]["environment"]
    assert {"OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_API_KEY"} <= set(replica)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", fake_cloud.base_url)  # as compose passes it
    config = load_config(COMPOSE / "models.toml")
    assert config.resolve("claude-sonnet-4-5") == config.resolve("gpt-5-codex") == "auto"
    local = {"smollm2": FunctionBackend("smollm2", lambda r, p: "local")}
    with Router(config, backends=local) as router, ServerThread(create_app(router)) as server:
        claude = httpx.post(
            server.url + "/v1/messages",
            json={
                "model": "claude-sonnet-4-5",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": HARD_PROMPT}],
            },
            timeout=30,
        )
        codex = httpx.post(
            server.url + "/v1/responses",
            json={"model": "gpt-5-codex", "input": HARD_PROMPT},
            timeout=30,
        )
        rows = router.ledger.entries()
    assert claude.status_code == 200 and codex.status_code == 200, claude.text + codex.text
    assert "cloud answer to:" in claude.json()["content"][0]["text"]
    assert [(r.api, r.model) for r in rows] == [
        ("messages", "gpt-4o-mini"),
        ("responses", "gpt-4o-mini"),
    ]
