"""Hardening II: the hostile tester's second round against `router serve`, one test (or more)
per finding, each failing on the code before the fix.

1. one GET took the machine down (windows: tests/ledger/test_rollups.py; cross-site GETs here);
2. a client that hangs up on a non-streamed request kept the local model generating;
3. paid calls made no ledger row on a full or read-only disk;
4. provider error text (keys, hostnames, ids) reached the client;
5. any key holder read everyone's figures; /health told anyone pids and URLs; the shared cache
   told Bob what Alice asked;
6. a stored `<!--<script>` broke `router report --html`;
7. slow connections were never closed; keys in query strings were logged; a hang-up mid-body
   logged a traceback;
8. the router's retries multiplied the SDK's; a burst was refused on worst cases.
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from router import Router, dashboard, load_config
from router.backends import FunctionBackend
from router.errors import BudgetExceededError, ConfigError
from router.server.app import create_app
from router.server.keys import KeyStore
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, HARD_PROMPT, write_config
from tests.disks import fill_up, read_only, small_disk
from tests.fakecloud import FakeCloud, Fault
from tests.server_harness import ServerThread
from tests.server_harness import health as details


@pytest.fixture
def doubles(tmp_path: Path) -> Iterator[Router]:
    config = write_config(tmp_path, None)
    local = FunctionBackend("smollm2", lambda r, p: "local answer")
    with Router(config, backends={"smollm2": local}) as router:
        yield router


# ---------------------------------------------------------------- 1. GETs that cost work


def test_a_page_on_another_site_cannot_make_the_router_work(
    doubles: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GET carries no Origin, so `<img src=".../v1/router/summary?since=400d">` on any web
    page the owner visits used to run the summary. Browsers mark such requests with
    Sec-Fetch-Site / Sec-Fetch-Mode: refused before any work."""
    calls: list[str] = []
    real = dashboard.summary
    monkeypatch.setattr(dashboard, "summary", lambda *a, **k: calls.append("x") or real(*a, **k))
    with ServerThread(create_app(doubles)) as server, httpx.Client(base_url=server.url) as http:
        image = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors"}
        for path in ("/v1/router/summary?since=400d", "/v1/models", "/health", "/metrics"):
            r = http.get(path, headers={**image, "sec-fetch-dest": "image"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site_refused"
        # A link from another site to a data endpoint is refused too; to the page it is not.
        link = {"sec-fetch-site": "same-site", "sec-fetch-mode": "navigate"}
        assert http.get("/v1/router/summary", headers=link).status_code == 403
        assert http.get("/dashboard", headers=link).status_code == 200
        assert calls == []
        # The router's own page, a typed URL, and programs (no Sec-Fetch-*) are served.
        own = {"sec-fetch-site": "same-origin", "sec-fetch-mode": "cors"}
        typed = {"sec-fetch-site": "none", "sec-fetch-mode": "navigate"}
        for headers in (own, typed, {}):
            assert http.get("/v1/router/summary?since=24h", headers=headers).status_code == 200
        assert len(calls) == 3


class _Page(http.server.ThreadingHTTPServer):
    """Another site: serves one HTML page on loopback under another host name."""

    def __init__(self, html: str) -> None:
        page = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()


@pytest.mark.slow
def test_an_image_tag_in_a_real_browser_does_not_run_the_summary(
    doubles: Router, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.browser import Browser

    calls: list[str] = []
    real = dashboard.summary
    monkeypatch.setattr(dashboard, "summary", lambda *a, **k: calls.append("x") or real(*a, **k))
    browser = Browser(tmp_path / "chromium")
    try:
        with ServerThread(create_app(doubles)) as server:
            target = f"{server.url}/v1/router/summary?since=400d"
            page = _Page(
                f'<img src="{target}" onerror="document.body.dataset.done=1" '
                'onload="document.body.dataset.done=1">'
            )
            try:
                port = page.server_address[1]
                # localhost and 127.0.0.1 are two sites to the browser.
                browser.open(f"http://localhost:{port}/", "document.body.dataset.done")
            finally:
                page.shutdown()
            assert target in browser.requests  # the browser did send it
            assert calls == []
            ready = "document.readyState === 'complete'"
            browser.open(f"{server.url}/v1/router/summary?since=24h", ready)
            assert calls == ["x"]  # a typed address is the owner's own doing
    finally:
        browser.close()


# ---------------------------------------------------------------- 2. hang-ups


def post_and_hang_up(url: str, body: dict[str, Any], after: float = 0.5) -> None:
    """What `curl -m 0.5` does: send, wait `after` seconds, close the connection."""
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/chat/completions", json=body, timeout=after)


def wait_for(check: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while not (found := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


@pytest.mark.slow
def test_clients_that_hang_up_free_the_local_model_at_once(make_router: Any) -> None:
    """Four clients that asked for 900 tokens and hung up after 0.5 s used to keep the model
    busy for a minute (a 4-token request waited 63 s); now the one generating is cancelled at
    its next token and the queued ones never start."""
    router = make_router(None)
    count = [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]
    with ServerThread(create_app(router)) as server:
        before = router.local_runtime("smollm2")["generations"]["cancelled"]
        body = {"model": "local", "messages": count, "max_tokens": 900}
        clients = [
            threading.Thread(target=post_and_hang_up, args=(server.url, body)) for _ in range(4)
        ]
        for c in clients:
            c.start()
        for c in clients:
            c.join(timeout=30)
        started = time.monotonic()
        r = httpx.post(
            server.url + "/v1/chat/completions",
            json={
                "model": "local",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4,
            },
            timeout=60,
        )
        took = time.monotonic() - started
        health = details(server.url)
    assert r.status_code == 200 and took < 5, f"{took:.1f} s"
    worker = health["models"]["smollm2"]["worker"]
    assert worker["generations"]["cancelled"] > before and worker["in_flight"] == 0
    cut = [e for e in router.ledger.entries() if "answer cut: client disconnected" in e.reason]
    assert 1 <= len(cut) <= 4  # those that had started; the queued ones cost nothing
    # Each the tokens it had generated (0 for one cancelled before its first token).
    assert sum(e.completion_tokens for e in cut) < 900 and all(e.prompt_tokens for e in cut)


def test_a_hang_up_closes_the_cloud_call(make_light_router: Any, fake_cloud: FakeCloud) -> None:
    """A non-streamed cloud answer for a client that hung up used to be generated (and paid)
    to the end; now the provider's stream is closed at its next token."""
    router = make_light_router(fake_cloud)
    question = [{"role": "user", "content": "Tell me about the history of the Roman empire"}]
    body = {"model": "cloud", "messages": question, "max_tokens": 50}
    with (
        ServerThread(create_app(router)) as server,
        openai.OpenAI(base_url=server.url + "/v1", api_key="none") as client,
    ):
        # Asked for as a stream upstream, the answer is the one a plain call gets.
        whole = client.chat.completions.create(**body)  # (LiteLLM's import is paid here)
        assert whole.choices[0].message.content == f"cloud answer to: {question[0]['content']}"
        assert whole.usage is not None and whole.usage.completion_tokens == 12
        assert fake_cloud.requests[-1]["stream"] is True
        # The answer ("cloud answer to: " and the last message) in 17 chunks: about 5 s. The
        # client hangs up after about 3 (at 0.5 s a busy run had none yet; and a follow-up of
        # one word ended the stream before the stand-in could see it closed).
        fake_cloud.inject(Fault(status=200, chunk_delay=0.3))
        more = "Tell me more about the history of the Roman empire, in detail, please"
        post_and_hang_up(
            server.url,
            {**body, "messages": [*question, {"role": "user", "content": more}]},
            after=1.0,
        )
        assert wait_for(lambda: fake_cloud.hangups, 3.0) == 1  # long before the answer's end
        rows = wait_for(lambda: router.ledger.entries()[1:], 3.0)
    assert len(rows) == 1 and rows[0].tier == "cloud"
    assert "answer cut: client disconnected (tokens estimated)" in rows[0].reason
    assert 0 < rows[0].completion_tokens < 13 and rows[0].cost_usd > 0


def test_a_long_cloud_stream_arrives_whole_and_a_hang_up_mid_stream_stops_it(
    make_light_router: Any, fake_cloud: FakeCloud
) -> None:
    """A stream longer than what the relay lets wait unread (FEED_DEPTH) arrives whole and in
    order; a client that hangs up mid-stream closes the provider's stream long before its end."""
    from router.server.streams import FEED_DEPTH

    router = make_light_router(fake_cloud)
    n = 3 * FEED_DEPTH
    question = [{"role": "user", "content": "Count for me"}]
    with (
        ServerThread(create_app(router)) as server,
        openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0) as client,
    ):
        fake_cloud.inject(Fault(status=200, words=n))
        chunks = list(
            client.chat.completions.create(
                model="cloud", messages=question, stream=True, max_tokens=2 * n
            )
        )
        assert len(chunks) > n
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == " ".join(f"w{i}" for i in range(n))
        fake_cloud.inject(Fault(status=200, words=n, chunk_delay=0.02))  # about 4 s
        again = [*question, {"role": "user", "content": "Again"}]
        with client.chat.completions.create(
            model="cloud", messages=again, stream=True, max_tokens=2 * n
        ) as cut:
            taken = [next(cut) for _ in range(5)]
        assert len(taken) == 5
        assert wait_for(lambda: fake_cloud.hangups, 2.0) == 1  # long before the stream's end
        rows = wait_for(lambda: router.ledger.entries()[1:], 3.0)
    assert len(rows) == 1 and "client disconnected" in rows[0].reason
    assert 0 < rows[0].completion_tokens < n


@pytest.mark.parametrize("stream", [False, True])
def test_a_hang_up_shuts_the_connection_to_a_local_server(
    make_light_router: Any, fake_cloud: FakeCloud, stream: bool
) -> None:
    """A local model on a server (Ollama, llama-server): the connection is shut, so the server
    stops, and the endpoint is not blamed for it. Streamed, the client is watched while the
    stream starts: a hang-up before the first token shuts it as well."""
    box = f"""
    [models.box]
    tier = "local"
    api_base = "{fake_cloud.base_url}"
    remote_model = "gpt-4o-mini"
    max_score = 0.35
    """
    router = make_light_router(fake_cloud, extra=box)
    with ServerThread(create_app(router)) as server:
        # Answered once first: the backend exists (its clients made) before the timed call, so
        # the hang-up finds that call under way, not yet to start (which records nothing).
        first = {"model": "box", "messages": [{"role": "user", "content": "Hello"}]}
        assert httpx.post(f"{server.url}/v1/chat/completions", json=first).status_code == 200
        fake_cloud.inject(Fault(status=200, delay=3.0))  # answers after 3 s
        started = time.monotonic()
        post_and_hang_up(
            server.url,
            {"model": "box", "stream": stream, "messages": [{"role": "user", "content": "Hi"}]},
        )
        rows = wait_for(lambda: router.ledger.entries()[1:], 5.0)
        took = time.monotonic() - started
        health = details(server.url)
        again = httpx.post(  # the cut answer was not cached: asked again, it is answered
            f"{server.url}/v1/chat/completions",
            json={
                "model": "box",
                "stream": stream,
                "messages": [{"role": "user", "content": "Hi"}],
            },
        )
    assert rows and took < 2.5, f"{took:.1f} s"  # not the server's 3 s
    assert "answer cut: client disconnected (tokens estimated)" in rows[0].reason
    assert again.status_code == 200 and again.headers["x-router-cache"] == "miss"
    (endpoint,) = health["models"]["box"]["worker"]["endpoints"]
    assert endpoint["state"] == "up" and endpoint["failures"] == 0


# ---------------------------------------------------------------- 3. no paid call unrecorded


def on_disk(tmp_path: Path, disk: Path, cloud: FakeCloud) -> Path:
    config = write_config(tmp_path, cloud.base_url)
    text = config.read_text().replace(
        'path = "ledger.sqlite3"', f'path = "{disk / "ledger.sqlite3"}"'
    )
    config.write_text(text)
    return config


LOCAL = FunctionBackend("smollm2", lambda request, params: "local answer")  # no model here


def test_a_full_disk_refuses_paid_calls_and_serves_free_ones(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a full disk every cloud request used to be paid upstream, write no row and get a
    500, while /health said ok."""
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    cloud = {"model": "cloud", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    with (
        small_disk(tmp_path / "disk") as disk,
        Router(on_disk(tmp_path, disk, fake_cloud), backends={"smollm2": LOCAL}) as router,
        ServerThread(create_app(router)) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        assert http.post("/v1/chat/completions", json=cloud).status_code == 200
        paid, rows = len(fake_cloud.requests), len(router.ledger.entries())
        filler = fill_up(disk)

        refused = http.post("/v1/chat/completions", json={**cloud, "max_tokens": 9})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "ledger_unavailable"
        assert refused.headers["retry-after"]
        streamed = http.post(
            "/v1/chat/completions", json={**cloud, "max_tokens": 7, "stream": True}
        )
        assert streamed.status_code == 503
        # Free answers go on: a local model, and `auto` for a hard prompt, said so.
        local = {**cloud, "model": "local", "max_tokens": 4}
        assert http.post("/v1/chat/completions", json=local).status_code == 200
        hard = {"model": "auto", "messages": [{"role": "user", "content": HARD_PROMPT}]}
        answered = http.post("/v1/chat/completions", json={**hard, "max_tokens": 4})
        assert answered.status_code == 200 and answered.headers["x-router-tier"] == "local"
        assert len(fake_cloud.requests) == paid  # not one paid call
        assert len(router.ledger.entries()) == rows  # (the disk took nothing)

        health = details(server.url)
        assert health["status"] == "degraded" and not health["ledger"]["up"]
        assert "full" in health["ledger"]["last_error"]
        metrics = http.get("/metrics").text
        assert "router_ledger_up 0" in metrics
        (failures,) = re.findall(r"^router_ledger_write_failures_total (\d+)$", metrics, re.M)
        assert int(failures) >= 4

        filler.unlink()  # space again: paid calls resume, with their rows
        again = http.post("/v1/chat/completions", json={**cloud, "max_tokens": 10})
        assert again.status_code == 200
        assert http.get("/health").json()["status"] == "ok"
        finished = [e.pending for e in router.ledger.entries()]
        assert finished == [False] * (rows + 1)


def test_a_read_only_data_directory_is_refused_at_start(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restarted on a read-only directory, the server used to start, answer cloud requests
    with a generic 500 after paying for them, and say ok on /health."""
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    with read_only(tmp_path / "readonly") as disk:
        config = on_disk(tmp_path, disk, fake_cloud)
        with pytest.raises(ConfigError, match=r"must be writable"):
            Router(config)
        serve = subprocess.run(
            [sys.executable, "-m", "router", "serve", "--port", "0", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert serve.returncode != 0 and "Traceback" not in serve.stderr
    assert f"cannot open {disk / 'ledger.sqlite3'} for writing" in serve.stderr
    assert fake_cloud.requests == []


# ---------------------------------------------------------------- 4. provider errors stay private


SECRETS = ("sk-proj-", "org-7Qx", "proj_Zz9", "upstream-7.internal", "litellm", "Error:")


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        (
            Fault(401, message="Incorrect API key provided: sk-proj-****ABCD (org-7QxK)"),
            502,
            "cloud_refused",
        ),
        (
            Fault(400, message="Invalid request for org-7QxK and project proj_Zz9"),
            502,
            "cloud_refused",
        ),
        (
            Fault(500, message="upstream-7.internal:8443 overloaded (pid 4021)"),
            503,
            "no_tier_available",
        ),
    ],
)
def test_a_providers_error_reaches_the_log_not_the_client(
    make_light_router: Any,
    fake_cloud: FakeCloud,
    fault: Fault,
    status: int,
    code: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cloud 401 used to come back as `litellm.AuthenticationError: ... sk-proj-****ABCD`;
    a 400 carried the organisation and project, a 500 the upstream's host name."""
    router = make_light_router(fake_cloud)
    fake_cloud.inject(*[fault] * 3)  # and its retries
    body = {"model": "cloud", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    with ServerThread(create_app(router)) as server, caplog.at_level("WARNING"):
        r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
        streamed = (
            httpx.post(
                server.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60
            )
            if fault.status == 401
            else None
        )
    assert r.status_code == status and r.json()["error"]["code"] == code
    message = r.json()["error"]["message"]
    rid = r.headers["x-request-id"]
    assert f"HTTP {fault.status}" in message and f"(request {rid})" in message
    assert not [s for s in SECRETS if s in message], message
    assert not re.search(r"https?://|pid \d", message)
    # The whole story is in the server's log, under the same id.
    logged = [rec.getMessage() for rec in caplog.records if rid in rec.getMessage()]
    assert logged and fault.message.split()[0] in logged[0]
    if streamed is not None:
        assert streamed.status_code == 502 and "sk-proj" not in streamed.text


def test_what_the_cli_shows_the_operator_keeps_the_providers_words(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    config = write_config(tmp_path, fake_cloud.base_url)
    fake_cloud.inject(Fault(401, message="Incorrect API key provided: sk-proj-****ABCD"))
    out = subprocess.run(
        [sys.executable, "-m", "router", "chat", "-m", "cloud", "Hi", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "Incorrect API key provided" in out.stderr


@pytest.mark.slow
def test_a_local_workers_crash_tells_the_client_how_not_its_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from router.backends.llama_process import CRASH_FILE_ENV

    crash = tmp_path / "crash-next"
    monkeypatch.setenv(CRASH_FILE_ENV, str(crash))
    crash.write_text("segv")
    with Router(write_config(tmp_path, None)) as router, ServerThread(create_app(router)) as s:
        body = {"model": "local", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 503
    message = r.json()["error"]["message"]
    (pid,) = set(re.findall(r"pid (\d+)", caplog.text))  # the log has it
    assert "SIGSEGV" in message and "pid" not in message and pid not in message


# ---------------------------------------------------------------- 5. each key its own figures


def test_a_user_key_sees_its_own_figures_and_an_admin_key_everyones(tmp_path: Path) -> None:
    """With keys required, any user's key used to read /v1/router/summary and /dashboard:
    every user's name, requests, cost, budgets and flags. /health told anyone the workers'
    pids and the pools' URLs; the shared cache told Bob that someone asked Ana's question."""
    extra = '\n[[budgets]]\nuser = "ben"\ndaily_tokens = 100000\n'
    config = load_config(write_config(tmp_path, None, extra)).for_serving(exposed=True)
    assert config.cache.scope == "user"  # unset: per user once keys are required
    local = FunctionBackend("smollm2", lambda r, p: f"answer to {r.last_user_text}")
    with (
        Router(config, backends={"smollm2": local}) as router,
        KeyStore(tmp_path / "keys.sqlite3") as keys,
    ):
        ana, _ = keys.create("ana")
        ben, _ = keys.create("ben")
        boss, _ = keys.create("boss", role="admin")
        app = create_app(router, keys=keys, require_keys=True, loopback=False)
        with ServerThread(app) as server, httpx.Client(base_url=server.url) as http:

            def ask(key: str, text: str) -> httpx.Response:
                body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
                auth = {"Authorization": f"Bearer {key}"}
                return http.post("/v1/chat/completions", json=body, headers=auth)

            def summary(key: str) -> dict[str, Any]:
                r = http.get("/v1/router/summary", headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200
                return dict(r.json())

            first = ask(ana, "What is the capital of France?")
            assert first.headers["x-router-cache"] == "miss"
            assert ask(ben, "What is the capital of France?").headers["x-router-cache"] == "miss"
            assert ask(ana, "What is the capital of France?").headers["x-router-cache"] == "hit"
            ask(ana, "Thanks!")

            mine = summary(ana)
            assert mine["headline"]["requests"] == 3
            assert [a["name"] for a in mine["audit"]["user"]] == ["ana"]
            assert mine["budgets"] == [] and "ben" not in json.dumps(mine)
            everyone = summary(boss)
            assert everyone["headline"]["requests"] == 4
            assert {a["name"] for a in everyone["audit"]["user"]} == {"ana", "ben"}
            assert [b["scope"] for b in everyone["budgets"]] == ["user:ben"]
            # An admin rates anyone's answer; a user only their own (tests/server/test_dashboard).
            rate = {"id": first.json()["id"], "rating": "good"}
            auth = {"Authorization": f"Bearer {boss}"}
            assert http.post("/v1/feedback", json=rate, headers=auth).status_code == 200

            # Anyone: up or not, which models.toml (a hash) and LiteLLM's warm-up; no details.
            public = http.get("/health").json()
            assert set(public) == {"status", "config", "cloud_client"}
            assert (public["status"], public["config"]) == ("ok", router.config.fingerprint())
            as_ana = http.get("/health", headers={"Authorization": f"Bearer {ana}"}).json()
            assert as_ana == public
            assert "models" in details(server.url, boss)
            metrics = http.get("/metrics", headers={"Authorization": f"Bearer {ana}"})
            assert metrics.status_code == 403
            assert metrics.json()["error"]["code"] == "admin_key_required"
            auth = {"Authorization": f"Bearer {boss}"}
            assert http.get("/metrics", headers=auth).status_code == 200


def test_keys_have_roles_on_the_command_line(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, None))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "router", "keys", *args, "--config", config]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert run("create", "--user", "ana").returncode == 0
    made = run("create", "--user", "boss", "--role", "admin")
    assert made.returncode == 0 and "(admin)" in made.stderr
    bad = run("create", "--user", "eve", "--role", "root")
    assert bad.returncode == 2 and "--role 'root': choose user or admin" in bad.stderr
    header, *lines = run("list").stdout.splitlines()
    assert header.split("\t")[:3] == ["ID", "USER", "ROLE"]
    assert [line.split("\t")[1:3] for line in lines] == [["ana", "user"], ["boss", "admin"]]


# ---------------------------------------------------------------- 6. the report's embedded data

HOSTILE_NAMES = ("<!--<script>", "</script>", "<!--", "a\u2028b&c")


def hostile_report(tmp_path: Path) -> Path:
    """`router report --html` of a ledger whose users have HOSTILE_NAMES."""
    config = write_config(tmp_path, None)
    local = FunctionBackend("smollm2", lambda r, p: "hi")
    with Router(config, backends={"smollm2": local}) as router:
        for name in HOSTILE_NAMES:
            router.complete([{"role": "user", "content": f"Hello from {name}"}], user=name)
    report = tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-m", "router", "report", "--html", str(report), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return report


def test_hostile_user_names_cannot_break_the_report(tmp_path: Path) -> None:
    html, template = hostile_report(tmp_path).read_text(), dashboard.page()
    for raw in ("<!--", "<script", "</script>", "\u2028"):  # the page's own, none of the data's
        assert html.count(raw) == template.count(raw), raw
    assert "\\u003c!--\\u003cscript\\u003e" in html


@pytest.mark.slow
def test_the_report_with_hostile_names_loads_in_a_real_browser(tmp_path: Path) -> None:
    """A user named `<!--<script>` switched the HTML parser's state in the report's embedded
    JSON: the page's script failed and it stayed at "loading…"."""
    from tests.browser import Browser

    report = hostile_report(tmp_path)
    browser = Browser(tmp_path / "chromium")
    try:
        assert browser.open(report.as_uri(), "document.body.dataset.loaded") == "7d"
        text = browser.evaluate("document.body.innerText")
    finally:
        browser.close()
    for name in ("<!--<script>", "</script>", "<!--"):
        assert name in text  # shown as text, in the users table


# ---------------------------------------------------------------- 7. connections and logs


def served_with(tmp_path: Path, section: str) -> tuple[Router, Any]:
    """A router on FunctionBackends whose models.toml has `section` under [server]."""
    config = write_config(tmp_path, None, f"\n[server]\n{section}\n")
    router = Router(config, backends={"smollm2": FunctionBackend("smollm2", lambda r, p: "ok")})
    return router, create_app(router)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed `sock`: what it still had to read (the rest of an earlier
    answer, which may come in more than one segment) is read past first."""
    try:
        return any(sock.recv(65536) == b"" for _ in range(64))
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:  # reset
        return True


def test_connections_that_send_no_complete_headers_are_closed(tmp_path: Path) -> None:
    """200 connections that sent half their headers, or nothing, were all still open after
    31 s, before any key check."""
    router, app = served_with(tmp_path, "header_timeout_seconds = 1")
    with router, ServerThread(app) as server:
        socks = []
        for i in range(40):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            if i % 2:
                sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # half
            socks.append(sock)
        # A kept-alive connection that starts a second request and stalls.
        kept = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /health HTTP/1.1\r\n")
        socks.append(kept)
        time.sleep(2.5)
        for sock in socks:
            sock.settimeout(2)
        still_open = [i for i, s in enumerate(socks) if not closed_by_server(s)]
        assert still_open == [], f"connections still open (40 = the kept-alive one): {still_open}"
        # Whoever sends a whole request in time is served as before.
        assert httpx.get(server.url + "/health").status_code == 200
        for sock in socks:
            sock.close()


def test_an_http2_preface_gets_one_json_505_and_the_connection_closed(tmp_path: Path) -> None:
    """`PRI * HTTP/2.0` (an HTTP/2 client with prior knowledge) got a JSON 404, then a plain
    text 400 for the preface's "SM" line on the same connection."""
    router, app = served_with(tmp_path, "")
    with router, ServerThread(app) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):  # until the server closes it
            data += chunk
        sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 505")  # and nothing after its JSON body:
        assert b"content-type: application/json" in head.lower()
        error = json.loads(body)["error"]
        assert error["code"] == "http_version_not_supported" and "HTTP/1.1" in error["message"]


def test_a_body_that_does_not_arrive_is_a_408(tmp_path: Path) -> None:
    router, app = served_with(tmp_path, "body_timeout_seconds = 1")
    with router, ServerThread(app) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model"'
        )
        started = time.monotonic()
        answer = b""
        while b"request_timeout" not in answer and (part := sock.recv(4096)):
            answer += part  # the head and the body may come in two reads
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
    assert time.monotonic() - started < 5


def test_past_max_connections_the_server_answers_503(tmp_path: Path) -> None:
    router, app = served_with(tmp_path, "max_connections = 4")
    with router, ServerThread(app) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
        time.sleep(0.3)
        assert httpx.get(server.url + "/health").status_code == 503
        for sock in idle:
            sock.close()
        time.sleep(0.3)
        assert httpx.get(server.url + "/health").status_code == 200


def test_keys_in_a_query_string_are_not_logged_and_a_hang_up_mid_body_is_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """`GET /v1/models?api_key=rk-...` wrote the whole key to the access log; a client hanging
    up mid-body logged `ERROR ... unexpected error` with a traceback."""
    router, app = served_with(tmp_path, "")
    secret = "rk-" + "S3cretKeyMaterial" * 2
    with router, ServerThread(app) as server:
        caplog.set_level("INFO", logger="router.server")
        httpx.get(f"{server.url}/v1/models?api_key={secret}&x=1")
        httpx.get(f"{server.url}/v1/models?token=abc123&access_key={secret}")
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"mo'
        )
        time.sleep(0.3)
        sock.close()
        time.sleep(0.5)
    printed = capsys.readouterr()  # the access log writes to stdout
    access = [line for line in printed.out.splitlines() if "GET /v1/models" in line]
    assert len(access) == 2 and "api_key=***" in access[0] and "token=***" in access[1]
    everything = printed.out + printed.err + caplog.text
    assert "S3cret" not in everything and "abc123" not in everything
    mid_body = [r for r in caplog.records if "before its body was sent" in r.getMessage()]
    assert len(mid_body) == 1 and mid_body[0].levelname == "INFO"
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert "Traceback" not in caplog.text


def test_the_access_log_names_the_client_a_local_proxy_forwards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Behind a proxy on the same machine (trusted: FORWARDED_ALLOW_IPS, 127.0.0.1 by
    default), X-Forwarded-For names the client; each line carries the request's id."""
    router, app = served_with(tmp_path, "")
    with router, ServerThread(app) as server:
        direct = httpx.get(f"{server.url}/v1/models")
        forwarded = httpx.get(
            f"{server.url}/v1/models", headers={"x-forwarded-for": "203.0.113.7, 127.0.0.1"}
        )
        time.sleep(0.2)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "GET /v1/models" in ln]
    assert len(lines) == 2
    assert "127.0.0.1:" in lines[0] and direct.headers["x-request-id"] in lines[0]
    assert "203.0.113.7:0" in lines[1] and forwarded.headers["x-request-id"] in lines[1]


# ---------------------------------------------------------------- 8. retries and bursts


def test_the_router_does_not_retry_on_top_of_an_sdk_that_retries(
    make_light_router: Any, fake_cloud: FakeCloud
) -> None:
    """The router's retries times the SDK's made 7 upstream calls for one failing request."""
    router = make_light_router(fake_cloud)  # [retry] max_retries = 2
    fake_cloud.inject(*[Fault(500, message="down")] * 20)
    body = {"model": "cloud", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    with ServerThread(create_app(router)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=2)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(**body)
        assert len(fake_cloud.requests) == 3  # the SDK's three attempts, one call each
        fake_cloud.requests.clear()
        plain = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
        assert plain.status_code == 503
        assert len(fake_cloud.requests) == 3  # curl retries nothing: the router does


def test_a_burst_of_small_requests_against_a_budget_with_room_is_served(
    make_light_router: Any, fake_cloud: FakeCloud
) -> None:
    """Each request held its worst case (max_tokens) until it ended, so 87 of 100 small
    requests were refused with a quarter of the budget spent. Now a request that only
    running requests stand in the way of waits for them to settle."""
    requests, budget = 100, 2600  # about twice what the burst uses, a sixth of its worst case
    extra = "\n[guardrails]\nrepeat_window_seconds = 0\n"
    extra += f'\n[[budgets]]\nuser = "burst"\ndaily_tokens = {budget}\n'
    router = make_light_router(fake_cloud, extra=extra)
    fake_cloud.inject(*[Fault(status=200, delay=0.3)] * requests)

    def ask(i: int) -> str:
        try:
            router.complete(
                [{"role": "user", "content": f"Question {i}: what is two and two?"}],
                model="cloud",
                user="burst",
                max_tokens=128,
            )
        except BudgetExceededError as exc:
            return "in use" if exc.in_flight else "spent"
        return "served"

    with ThreadPoolExecutor(requests) as pool:
        outcomes = list(pool.map(ask, range(requests)))
    used = router.budgets.usage("user:burst")["daily_tokens"]
    ledger = sum(e.prompt_tokens + e.completion_tokens for e in router.ledger.entries())
    assert outcomes.count("served") >= 0.9 * requests, outcomes.count("served")
    assert used == ledger <= budget  # never overrun


# ---------------------------------------------------------------- the fuzz, with a memory limit

MEMORY_LIMIT = 1 << 30  # RLIMIT_AS of the fuzzed server (idle it reserves ~200 MB)
GET_EXAMPLES = 400
GET_PATHS = [
    "/v1/router/summary",
    "/v1/models",
    "/health",
    "/metrics",
    "/dashboard",
    "/v1/feedback",
    "/v1/chat/completions",
    "/",
    "/v1",
    "/v1/router",
]


def _gets() -> Any:
    from hypothesis import strategies as st

    word = st.text(max_size=12)
    segment = word.map(lambda w: urllib.parse.quote(w, safe=""))  # as a client would send it
    paths = st.one_of(
        st.just("/v1/router/summary"),  # the one with windows: half the cases
        st.sampled_from(GET_PATHS),
        segment.map(lambda w: "/v1/models/" + w),
        segment.map(lambda w: "/" + w),
    )
    windows = st.one_of(
        st.integers(min_value=0, max_value=10**15).map(str),
        st.tuples(st.integers(min_value=-5, max_value=10**15), st.sampled_from("mhdwsy ")).map(
            lambda t: f"{t[0]}{t[1]}"
        ),
        st.text(max_size=30),
        st.sampled_from(["400d", "401d", "58w", "1000000d", "100000000d", "9" * 5000 + "d"]),
    )
    query = st.one_of(
        st.fixed_dictionaries({"since": windows}),
        st.dictionaries(
            st.one_of(st.sampled_from(["since", "by", "api_key", "user", "limit"]), word),
            st.one_of(windows, word),
            max_size=3,
        ),
    )
    headers = st.one_of(
        st.just({}),
        st.just({"authorization": "Bearer owner"}),
        st.fixed_dictionaries(
            {},
            optional={
                "authorization": st.sampled_from(
                    ["Bearer x", "Bearer rk-forged", "Basic Zm9v", ""]
                ),
                "sec-fetch-site": st.sampled_from(
                    ["cross-site", "same-site", "same-origin", "none"]
                ),
                "sec-fetch-mode": st.sampled_from(["cors", "no-cors", "navigate", "websocket"]),
                "origin": st.sampled_from(["http://evil.example", "null", "http://127.0.0.1"]),
            },
        ),
    )
    return st.tuples(paths, query, headers)


def _serve_limited(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--port", "0", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=limit,
        )
    found = wait_for(lambda: re.search(r"http://127\.0\.0\.1:(\d+)/v1", log.read_text()), 60)
    assert found, log.read_text()
    return proc, f"http://127.0.0.1:{found.group(1)}"


def test_fuzz_get_endpoints_and_query_strings_under_a_memory_limit(tmp_path: Path) -> None:
    """Windows, query strings, GET endpoints and the dashboard's parameters, against `router
    serve` in its own process with RLIMIT_AS: a GET that builds a bucket per day of
    `since=100000000d` fails the test (a 500, or a dead server) instead of the machine."""
    from hypothesis import HealthCheck, given, settings

    config = write_config(tmp_path, None, '\n[teams.t]\nusers = ["ana"]\n')
    local = FunctionBackend("smollm2", lambda r, p: "hi")
    with Router(config, backends={"smollm2": local}) as router:  # some rows to read
        for i in range(30):
            router.complete([{"role": "user", "content": f"Hello {i}"}], user=f"u{i % 4}")
    proc, url = _serve_limited(config, tmp_path / "serve.log")
    seen: dict[int, int] = {}
    try:
        with httpx.Client(base_url=url, timeout=60) as http:

            @settings(
                max_examples=GET_EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=_gets())
            def one(case: tuple[str, dict[str, str], dict[str, str]]) -> None:
                path, query, headers = case
                r = http.get(path, params=query, headers=headers)
                seen[r.status_code] = seen.get(r.status_code, 0) + 1
                assert r.status_code < 500, (path, query, r.text[:300])
                if r.status_code >= 400 and r.headers.get("content-type", "").startswith(
                    "application/json"
                ):
                    error = r.json()["error"]
                    assert error["message"] and "Traceback" not in error["message"]

            one()
            assert proc.poll() is None, "the server died"
            peak = next(
                int(line.split()[1])
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                if line.startswith("VmHWM:")
            )
            assert peak < 400 * 1024, f"peak RSS {peak} kB"
            assert http.get("/v1/router/summary?since=400d").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert seen.get(200, 0) and seen.get(400, 0) and sum(seen.values()) >= GET_EXAMPLES
    print("GET fuzz statuses:", dict(sorted(seen.items())))
