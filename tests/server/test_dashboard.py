"""The savings dashboard: GET /v1/router/summary on its own (windows, an empty ledger, bad
parameters, keys), then /dashboard in a real headless Chromium against a server whose ledger
was filled through the real pipeline, and `router report --html`. The page's figures must
equal the JSON endpoint, `router stats --json` and `router audit --format json`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router import Router
from router.backends import FunctionBackend
from router.server.app import create_app
from router.server.keys import KeyStore
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, HARD_PROMPT, write_config
from tests.server_harness import ServerThread

TEAM = '\n[teams.data]\nusers = ["ana"]\n\n[[budgets]]\nuser = "ana"\ndaily_usd = 1.0\n'


def get(url: str, key: str | None = None, body: object = None) -> tuple[int, Any]:
    """Status and JSON of a GET, or of a POST with `body` as JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def cli(*args: str, config: Path) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "router", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def fill(router: Router) -> None:
    """Requests through the whole pipeline: local and cloud, two users, a cache hit."""
    ask = [{"role": "user", "content": "Hi there!"}]
    router.complete(ask, user="ana")
    router.complete(ask, user="ana")  # a cache hit
    router.complete([{"role": "user", "content": HARD_PROMPT}], user="ana")
    router.complete([{"role": "user", "content": "Summarise this document: "}], user="ben")
    router.complete([{"role": "user", "content": "Thanks, bye"}])


@pytest.fixture
def doubles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Router, Path]]:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", TEAM)
    local = FunctionBackend("smollm2", lambda r, p: "local answer")
    cloud = FunctionBackend("cloud-mini", lambda r, p: "a longer cloud answer to it")
    with Router(config, backends={"smollm2": local, "cloud-mini": cloud}) as router:
        yield router, config


def test_the_summary_equals_stats_and_audit_for_the_same_window(
    doubles: tuple[Router, Path],
) -> None:
    router, config = doubles
    with ServerThread(create_app(router)) as server:
        status, empty = get(server.url + "/v1/router/summary?since=24h")
        assert status == 200 and empty["headline"]["requests"] == 0  # an empty ledger
        assert empty["audit"] == {"user": [], "team": []} and empty["categories"] == []
        assert (
            len(empty["over_time"]["buckets"]) in (24, 25)
            and empty["over_time"]["step_seconds"] == 3600
        )
        fill(router)
        rated = router.ledger.entries()[0]
        router.feedback(rated.response_id, "good")
        for window in ("24h", "7d", "30d"):
            status, body = get(server.url + f"/v1/router/summary?since={window}")
            assert status == 200 and body["since"] == window
            assert body["stats"] == cli("stats", "--since", window, "--json", config=config)
            assert body["audit"]["user"] == cli(
                "audit", "--since", window, "--format", "json", config=config
            )
            assert body["audit"]["team"] == cli(
                "audit", "--since", window, "--by", "team", "--format", "json", config=config
            )
            assert body["budgets"] == cli("budget", "show", "--json", config=config)
            quality = cli("quality", "--since", window, "--json", config=config)
            assert {**body["quality"], "since": window} == quality and quality["rated"] == 1
        head = body["headline"]
        assert head["requests"] == 5 and head["cache_hit_rate"] == pytest.approx(0.2)
        assert head["local_share"] == pytest.approx(4 / 5) and head["cost_usd"] > 0
        fallback = body["stats"]["saved_by"]["fallback"]["usd_saved"]
        assert head["usd_saved_fallback"] == pytest.approx(fallback)  # the same figure
        assert (
            sum(
                b["tiers"].get("cloud", {}).get("requests", 0) for b in body["over_time"]["buckets"]
            )
            == 1
        )
        assert body["over_time"]["step_seconds"] == 86400  # 30 days: one bar a day
        assert body["ceilings"] == [
            {
                "model": "smollm2",
                "ceiling": 0.35,
                "share_under_ceiling": 0.75,
                "share_answered": 0.75,
            }
        ]
        flagged = {a["name"]: a for a in body["audit"]["user"]}
        assert flagged["ben"]["low_value"] == 1


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("since=week", "since"),
        ("since=-5d", "since"),
        ("since=", "since"),
        ("by=user", "by"),
        # A window sizes every read: one GET of 100000000d once built a bucket per day until
        # the machine ran out of memory. Past 400 days it is a 400 naming the limit, at once.
        ("since=100000000d", "since"),
        ("since=401d", "since"),
        ("since=" + "9" * 5000 + "d", "since"),
    ],
)
def test_bad_parameters_are_a_400_naming_them(
    doubles: tuple[Router, Path], query: str, param: str
) -> None:
    router, _ = doubles
    with ServerThread(create_app(router)) as server:
        started = time.monotonic()
        status, body = get(server.url + "/v1/router/summary?" + query)
        took = time.monotonic() - started
    assert status == 400 and body["error"]["param"] == param and took < 2
    if query.startswith("since=4") or query.startswith("since=1"):
        assert "the longest window is 400 days" in body["error"]["message"]


def test_off_loopback_the_figures_need_a_key(doubles: tuple[Router, Path], tmp_path: Path) -> None:
    router, _ = doubles
    with KeyStore(tmp_path / "keys.sqlite3") as keys:
        key, _ = keys.create("lead", role="admin")
        app = create_app(router, keys=keys, require_keys=True, loopback=False)
        with ServerThread(app) as server:
            assert get(server.url + "/v1/router/summary")[0] == 401
            assert get(server.url + "/v1/router/summary", key)[0] == 200
            with urllib.request.urlopen(server.url + "/dashboard", timeout=10) as page:
                html = page.read().decode()
                policy = page.headers["Content-Security-Policy"]
    assert "connect-src 'self'" in policy and "default-src 'none'" in policy
    assert not re.search(r"(src|href)=\"https?://", html)  # nothing loaded from elsewhere


# ---------------------------------------------------------------- in a real browser


def figures(dom: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r'data-figure="(\w+)" data-value="([^"]+)"', dom)}


def only_loopback(urls: list[str]) -> list[str]:
    """The requests that did not go to 127.0.0.1 (or stay in the file, for a report)."""
    return [u for u in urls if not u.startswith(("http://127.0.0.1:", "file://", "data:"))]


@pytest.mark.slow
def test_the_dashboard_in_a_real_browser_shows_the_same_figures(
    tmp_path: Path, smollm2: Any, fake_cloud: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.browser import Browser

    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    config = write_config(tmp_path, fake_cloud.base_url, TEAM)
    browser = Browser(tmp_path / "chromium")
    try:
        with (
            Router(config, backends={"smollm2": smollm2}) as router,
            KeyStore(tmp_path / "keys.sqlite3") as keys,
        ):
            fill(router)  # the real model, and LiteLLM against the loopback cloud
            key, _ = keys.create("lead", role="admin")  # everyone's figures
            app = create_app(router, keys=keys, require_keys=True, loopback=False)
            with ServerThread(app) as server:
                # Without a key the page says what it needs and shows no figure.
                state = browser.open(f"{server.url}/dashboard", "document.body.dataset.loaded")
                assert state == "refused" and "wants an API key" in browser.dom()
                assert figures(browser.dom()) == {}
                # With one (in the fragment: never sent to the server, gone from the URL).
                ready = "document.body.dataset.loaded"
                assert browser.open(f"{server.url}/dashboard#key={key}", ready) == "7d"
                dom = browser.dom()
                shot = tmp_path / "dashboard.png"
                browser.screenshot(shot)
                _, body = get(server.url + "/v1/router/summary?since=7d", key)
                assert browser.evaluate("location.href") == f"{server.url}/dashboard"
                # Another window, without a reload.
                browser.evaluate("document.querySelector('[data-window=\"24h\"]').click()")
                deadline = time.monotonic() + 30
                while browser.evaluate(ready) != "24h" and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert browser.evaluate(ready) == "24h"
        head = body["headline"]
        assert figures(dom) == pytest.approx({k: float(v) for k, v in head.items()})
        stats = cli("stats", "--since", "7d", "--json", config=config)
        assert (head["requests"], head["tokens_saved"]) == (
            stats["requests"],
            stats["tokens_saved"],
        )
        assert head["usd_saved"] == pytest.approx(stats["usd_saved"])
        assert head["requests"] == 5 and head["cost_usd"] > 0
        assert ">ana<" in dom and ">data<" in dom  # the users and the teams tables
        assert shot.stat().st_size > 10_000  # the screenshot, kept as an artefact
        if os.environ.get("ROUTER_TEST_ARTIFACTS"):
            shutil.copy(shot, Path(os.environ["ROUTER_TEST_ARTIFACTS"]) / "dashboard.png")

        report = tmp_path / "report.html"
        done = subprocess.run(
            [sys.executable, "-m", "router", "report", "--html", str(report), "--since", "7d",
             "--config", str(config)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert browser.open(report.as_uri(), "document.body.dataset.loaded") == "7d"
        assert figures(browser.dom()) == pytest.approx(figures(dom))
        assert browser.requests and only_loopback(browser.requests) == []
    finally:
        browser.close()


def test_feedback_over_http_by_the_response_id(
    doubles: tuple[Router, Path], tmp_path: Path
) -> None:
    import openai

    router, _ = doubles

    def post(url: str, body: object, key: str | None = None) -> tuple[int, Any]:
        return get(url, key, body)

    with KeyStore(tmp_path / "keys.sqlite3") as keys:
        ana, _ = keys.create("ana")
        ben, _ = keys.create("ben")
        app = create_app(router, keys=keys, require_keys=True, loopback=False)
        with ServerThread(app) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key=ana)
            done = client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "Hi"}]
            )
            url = server.url + "/v1/feedback"
            ok = post(url, {"id": done.id, "rating": "bad", "comment": "too short"}, ana)
            assert ok == (200, {"id": done.id, "rating": "bad", "recorded": True})
            assert post(url, {"id": done.id, "rating": "good"}, ben)[0] == 404  # not his
            assert post(url, {"id": "chatcmpl-nope", "rating": "good"}, ana)[0] == 404
            assert post(url, {"id": done.id, "rating": "good"})[0] == 401
            for bad, param in (
                ({"id": done.id, "rating": "meh"}, "rating"),
                ({"id": done.id}, "rating"),
                ({"rating": "good"}, "id"),
                ({"id": done.id, "rating": "good", "score": 5}, "score"),
                ({"id": done.id, "rating": "good", "comment": "x" * 2001}, "comment"),
            ):
                status, body = post(url, bad, ana)
                assert (status, body["error"]["param"]) == (400, param)
    row = next(e for e in router.ledger.entries() if e.response_id == done.id)
    assert (row.user, row.rating, row.feedback) == ("ana", "bad", "too short")
