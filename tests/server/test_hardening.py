"""Hardening II: the hostile tester's second round against `router serve`, one test (or more)
per finding, each failing on the code before the fix.

1. one GET took the machine down (windows: tests/test_rollups.py; cross-site GETs here);
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
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router import Router, dashboard
from router.backends import FunctionBackend
from router.server.app import create_app
from tests.conftest import write_config
from tests.server_harness import ServerThread


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
