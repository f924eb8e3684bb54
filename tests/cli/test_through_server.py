"""`router chat` through a running `router serve` (issue 25): the real `router` process against
a server in this process whose models are doubles, so which side answered is plain to see (the
server's doubles are called, or nobody is)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from router import Router
from router.backends import FunctionBackend
from router.ledger import SQLiteLedger
from router.server.app import create_app
from tests.cli.test_cli import Terminal
from tests.cli.test_everyday import one_line_error, router
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config
from tests.fakecloud import FakeCloud
from tests.redis_server import free_port
from tests.server_harness import ServerThread


class Served:
    def __init__(self, config: Path, server: ServerThread, calls: list[str], app: Router) -> None:
        self.config, self.server, self.calls, self.router = config, server, calls, app


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """A router serving the models.toml in tmp_path at its [server] port: "local answer" from
    the local double, "cloud answer" from the cloud one; a 40-token daily budget for "ana"."""
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    port = free_port()
    extra = f'\n[server]\nport = {port}\n\n[[budgets]]\nuser = "ana"\ndaily_tokens = 40\n'
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", extra)
    calls: list[str] = []

    def answer(words: str) -> Any:
        def fn(request: Any, params: dict[str, Any]) -> str:
            calls.append(str(request.messages[-1]["content"]))
            return words

        return fn

    backends = {
        "smollm2": FunctionBackend("smollm2", answer("local answer")),
        "cloud-mini": FunctionBackend("cloud-mini", answer("cloud answer")),
    }
    with Router(config, backends=backends) as app, ServerThread(create_app(app), port=port) as s:
        yield Served(config, s, calls, app)


def test_chat_uses_the_server_of_its_own_models_toml(served: Served, tmp_path: Path) -> None:
    """No flag needed: the server at the config's address runs the same file, so it answers
    (its doubles are called), the route line says so, and -c continues through it."""
    out = router("chat", "Hi there!", "--config", str(served.config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "local answer\n"
    assert served.calls == ["Hi there!"]
    assert f"(served by {served.server.url})" in out.stderr
    assert "[local · smollm2 · score" in out.stderr and "saved " in out.stderr
    again = router("chat", "-c", "And in French?", "--config", str(served.config), cwd=tmp_path)
    assert again.returncode == 0 and served.calls[-1] == "And in French?"
    # The server's ledger has both rows: the CLI wrote nothing of its own.
    assert [e.tier for e in served.router.ledger.entries()] == ["local", "local"]
    data = json.loads(
        router(
            "chat", "--json", "-m", "cloud", "Why?", "--config", str(served.config), cwd=tmp_path
        ).stdout
    )
    assert data["choices"][0]["message"]["content"] == "cloud answer"
    assert data["routing"]["tier"] == "cloud" and data["routing"]["cost_usd"] > 0
    assert data["routing"]["served_by"] == served.server.url
    assert data["routing"]["reason"]  # the whole routing came back, not just the headers


def test_errors_through_the_server_keep_their_words_and_exit_codes(
    served: Served, tmp_path: Path
) -> None:
    config = str(served.config)
    unknown = router("chat", "-m", "nosuch", "hi", "--config", config, cwd=tmp_path)
    assert "model 'nosuch' not found" in one_line_error(unknown, 2)
    spend = router("chat", "-u", "ana", "-m", "cloud", "x " * 60, "--config", config, cwd=tmp_path)
    assert "budget" in one_line_error(spend, 5)
    assert served.calls == []  # neither reached a model
    nobody = router("chat", "--url", "http://127.0.0.1:9", "hi", "--config", config, cwd=tmp_path)
    assert "no router answers at http://127.0.0.1:9" in one_line_error(nobody, 3)


def test_in_process_and_another_models_toml_leave_the_server_alone(
    served: Served, tmp_path: Path
) -> None:
    """--in-process answers in the CLI; so does a models.toml other than the server's, even
    at the same address. (The CLI's own router fails here: no key for its cloud model.)"""
    env = {CLOUD_KEY_ENV: ""}
    forced = router(
        "chat", "--in-process", "-m", "cloud", "hi", "--config", str(served.config),
        cwd=tmp_path, env=env,
    )  # fmt: skip
    other = tmp_path / "other.toml"
    other.write_text(served.config.read_text() + "\n# another file\n")
    moved = router("chat", "-m", "cloud", "hi", "--config", str(other), cwd=tmp_path, env=env)
    for out in (forced, moved):
        assert "ROUTER_TEST_CLOUD_KEY" in one_line_error(out, 3)  # the CLI's own refusal
    assert served.calls == []


def test_the_routing_comment_is_skipped_by_other_clients(served: Served) -> None:
    """The CLI's x-router-routing header adds an SSE comment before [DONE]: the official
    client, sending the same header, reads the same stream."""
    client = openai.OpenAI(base_url=served.server.url + "/v1", api_key="sk-none")
    stream = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "Hi there!"}],
        stream=True,
        extra_headers={"x-router-routing": "1"},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "local answer"


def test_the_interactive_chat_goes_through_the_server(served: Served, tmp_path: Path) -> None:
    """Under a real terminal: the greeting and each route say where the answer came from;
    /good rates it in the server's ledger."""
    with Terminal.chat(tmp_path, served.config, max_tokens=12) as term:
        term.expect(rf"auto mode[^\n]*\(served by {served.server.url}\)")
        term.expect(r"you> ")
        term.send("Hi there!\r")
        term.expect(r"\[local · smollm2 · score[^\n]*\(served by [^\n]*\n")
        term.expect(r"you> ")
        term.send("/good nice\r")
        term.expect(r"noted: good \(nice\)")
        term.leave(turns=1)
    assert served.calls == ["Hi there!"]
    (row,) = served.router.ledger.entries()
    assert (row.rating, row.feedback) == ("good", "nice")


def test_serve_warms_litellm_so_no_request_pays_its_import(
    tmp_path: Path, fake_cloud: FakeCloud
) -> None:
    """`router serve` with a cloud model imports LiteLLM at start-up (/health: "warming",
    then "ready"): its first cloud request costs about what the second does, not the import
    (2-5 s); `router chat -m cloud` goes through it."""
    port = free_port()
    config = write_config(tmp_path, fake_cloud.base_url, f"\n[server]\nport = {port}\n")
    env = {**os.environ, CLOUD_KEY_ENV: CLOUD_KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--config", str(config)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        seen = []
        ends = time.monotonic() + 90
        while time.monotonic() < ends and (not seen or seen[-1] != "ready"):
            with contextlib.suppress(httpx.TransportError):  # not listening yet
                seen.append(httpx.get(url + "/health", timeout=5).json()["cloud_client"])
            time.sleep(0.1)
        assert seen and seen[-1] == "ready" and set(seen) <= {"warming", "ready"}, seen
        for n in range(2):
            out = router(
                "chat", "-m", "cloud", f"Tell me {n}", "--config", str(config),
                cwd=tmp_path, env={CLOUD_KEY_ENV: CLOUD_KEY},
            )  # fmt: skip
            assert out.returncode == 0 and f"(served by {url})" in out.stderr, out.stderr
    finally:
        proc.terminate()
        proc.wait(30)
    with SQLiteLedger(tmp_path / "ledger.sqlite3") as ledger:
        first, second = ledger.entries()
    assert first.tier == "cloud" and first.latency_ms < second.latency_ms + 500
