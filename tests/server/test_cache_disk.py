"""Hardening III (issue 34): the response cache is best effort.

With the ledger healthy and the cache's disk full, 12 of 12 clients used to get a 500 or a
stream's error event after their paid calls had been made, and /health said ok. A cache that
cannot be written now costs hits, never an answer: each paid answer is delivered, plain and
streamed, with its row; /health says the cache is degraded and why; /metrics counts it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from router import Router
from router.backends import FunctionBackend
from router.server.app import create_app
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config
from tests.disks import fill_up, small_disk
from tests.fakecloud import FakeCloud
from tests.server_harness import ServerThread
from tests.server_harness import health as details


def streamed(answer: httpx.Response) -> str:
    """A chat stream's text, its deltas joined."""
    events = [
        json.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: {")
    ]
    return "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])


def test_a_full_cache_disk_costs_no_answer(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    with small_disk(tmp_path / "disk", "2m") as disk:
        extra = f'[cache]\ndir = "{disk / "cache"}"\n'
        config = write_config(tmp_path, fake_cloud.base_url, extra)  # the ledger: off the disk
        local = FunctionBackend("smollm2", lambda r, p: "local answer")
        with (
            Router(config, backends={"smollm2": local}) as router,
            ServerThread(create_app(router)) as server,
            httpx.Client(base_url=server.url, timeout=60) as http,
        ):

            def ask(i: int, stream: bool, model: str = "cloud") -> httpx.Response:
                text = f"question {i} " + "padding " * 400  # an answer the cache would hold
                body = {"model": model, "messages": [{"role": "user", "content": text}]}
                return http.post("/v1/chat/completions", json={**body, "stream": stream})

            assert ask(0, False).status_code == 200
            assert ask(0, False).headers["x-router-cache"] == "hit"  # the cache works
            filler = fill_up(disk)
            paid = len(fake_cloud.requests)
            for i in range(1, 7):
                for stream in (False, True):
                    answer = ask(i * 2 + stream, stream)
                    assert answer.status_code == 200, answer.text
                    if stream:
                        assert answer.text.endswith("data: [DONE]\n\n")
                        assert '"error"' not in answer.text
                    content = streamed(answer) if stream else answer.json()["choices"][0]
                    content = content if stream else content["message"]["content"]
                    assert content.startswith(f"cloud answer to: question {i * 2 + stream}")
            hello = {"model": "local", "messages": [{"role": "user", "content": "Hi"}]}
            local_answer = http.post("/v1/chat/completions", json=hello)
            assert local_answer.status_code == 200
            assert len(fake_cloud.requests) == paid + 12  # every paid call made once...
            rows = router.ledger.entries()
            assert len(rows) == 2 + 13 and not any(r.pending for r in rows)  # ...with its row

            health = details(server.url)
            assert health["status"] == "degraded"
            assert not health["cache"]["up"] and "full" in health["cache"]["last_error"]
            assert health["ledger"]["up"]
            assert any("response cache" in r for r in health["reasons"])
            metrics = http.get("/metrics").text
            assert "router_cache_up 0" in metrics
            (failures,) = re.findall(r"^router_cache_failures_total (\d+)$", metrics, re.M)
            assert int(failures) >= 12

            filler.unlink()  # space again: answers are cached again, and /health says so
            assert ask(50, False).status_code == 200
            assert ask(50, False).headers["x-router-cache"] == "hit"
            assert details(server.url)["status"] == "ok"
