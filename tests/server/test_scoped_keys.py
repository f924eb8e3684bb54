"""Scoped API keys through the real server: an expired key, a key asking outside its models
and a revoked key are refused on every API with a clear 401/403; a key's own rpm; rotation
with a grace period; the last use; an admin key is budgeted like any other; and what
`router keys` shows and refuses."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router import Router
from router.backends import FunctionBackend
from router.server.app import create_app
from router.server.keys import KeyStore
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config
from tests.server_harness import ServerThread

EXTRA = (
    '\n[aliases]\n"claude-*" = "auto"\n'
    '\n[[budgets]]\nuser = "boss"\ndaily_tokens = 1\n'  # the admin's own budget: spent at once
)
HI = [{"role": "user", "content": "Hi"}]


class Served:
    def __init__(self, router: Router, keys: KeyStore, url: str) -> None:
        self.router, self.keys, self.url = router, keys, url

    def post(self, path: str, key: str, body: dict[str, Any]) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}", "x-api-key": key}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=60)

    def every_api(self, key: str, model: str = "local") -> dict[str, httpx.Response]:
        """One request on each API, asking for `model`."""
        return {
            path: self.post(path, key, body)
            for path, body in {
                "/v1/chat/completions": {"model": model, "messages": HI},
                "/v1/messages": {"model": model, "max_tokens": 8, "messages": HI},
                "/v1/responses": {"model": model, "input": "Hi"},
                "/api/chat": {"model": model, "messages": HI, "stream": False},
            }.items()
        }


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", EXTRA)
    backends = {
        "smollm2": FunctionBackend("smollm2", lambda r, p: "Hello from the router."),
        "cloud-mini": FunctionBackend("cloud-mini", lambda r, p: "Hello from the cloud."),
    }
    with (
        Router(config, backends=backends) as router,
        KeyStore(tmp_path / "keys.sqlite3") as keys,
        ServerThread(create_app(router, keys=keys, require_keys=True)) as server,
    ):
        yield Served(router, keys, server.url)


def message(r: httpx.Response) -> str:
    data = r.json()
    error = data["error"]
    return error if isinstance(error, str) else str(error["message"])  # Ollama: a string


def test_expired_out_of_scope_and_revoked_keys_are_refused_on_every_api(
    served: Served,
) -> None:
    scoped, scoped_id = served.keys.create("ana", models=("local", "auto"))
    for path, r in served.every_api(scoped).items():
        assert r.status_code == 200, (path, r.text)
    # Out of its models: 403, naming what it may ask for (the alias resolves to auto: allowed).
    for path, r in served.every_api(scoped, "cloud-mini").items():
        assert r.status_code == 403, (path, r.text)
        assert f"API key {scoped_id} may ask for local, auto only" in message(r), path
    assert served.post("/v1/messages", scoped, {"model": "claude-x", "max_tokens": 8,
                                                "messages": HI}).status_code == 200  # fmt: skip
    embedded = served.post("/v1/embeddings", scoped, {"model": "cloud-mini", "input": "x"})
    assert embedded.status_code == 403 and embedded.json()["error"]["code"] == "model_not_allowed"
    chat = served.every_api(scoped, "cloud-mini")["/v1/chat/completions"].json()["error"]
    assert (chat["type"], chat["code"]) == ("permission_error", "model_not_allowed")

    expired, expired_id = served.keys.create("bo", expires=time.time() - 1)
    for path, r in served.every_api(expired).items():
        assert r.status_code == 401, (path, r.text)
        assert f"API key {expired_id} expired at" in message(r), path
    assert served.every_api(expired)["/v1/chat/completions"].json()["error"]["code"] == (
        "key_expired"
    )

    assert served.keys.revoke(scoped_id)
    for path, r in served.every_api(scoped).items():
        assert r.status_code == 401 and "missing or invalid API key" in message(r), path
    # Nothing refused here reached a model or the ledger as an answer.
    answered = [e for e in served.router.ledger.entries() if not e.refusal]
    assert len(answered) == 5 and {e.user for e in answered} == {"ana"}


def test_a_keys_rpm_rotation_last_use_and_an_admins_budget(served: Served) -> None:
    key, key_id = served.keys.create("cy", rpm=2)
    body = {"model": "local", "messages": HI}
    assert [served.post("/v1/chat/completions", key, body).status_code for _ in range(2)] == [
        200,
        200,
    ]
    limited = served.post("/v1/chat/completions", key, body)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert message(limited).startswith(f"rate limit key:{key_id} rpm = 2 reached")
    # A key's own tpm: the tokens its answers took, counted as they end.
    few, few_id = served.keys.create("cy", tpm=5)
    first = {**body, "messages": [{"role": "user", "content": "Count to three."}]}
    assert served.post("/v1/chat/completions", few, first).status_code == 200  # ~12 tokens
    over = served.post("/v1/chat/completions", few, {**body, "messages": [HI[0], HI[0]]})
    assert over.status_code == 429, over.text
    assert message(over).startswith(f"rate limit key:{few_id} tpm = 5 reached")
    listed = {k.key_id: k for k in served.keys.list()}
    assert listed[key_id].last_used is not None and listed[key_id].rpm == 2

    # Rotation: the new key has the old one's scope; the old one works through the grace.
    scoped, scoped_id = served.keys.create("dee", models=("local",), expires=time.time() + 86400)
    made = served.keys.rotate(scoped_id, 3600)
    assert made is not None
    new, new_id = made
    assert served.post("/v1/chat/completions", scoped, body).status_code == 200  # in its grace
    assert served.post("/v1/chat/completions", new, body).status_code == 200
    owner = served.keys.owner(new)
    assert owner is not None and owner.models == ("local",) and owner.key_id == new_id
    assert served.post("/v1/chat/completions", new, {**body, "model": "auto"}).status_code == 403
    again = served.keys.rotate(new_id, 0)  # no grace: the rotated key stops at once
    assert again is not None
    refused = served.post("/v1/chat/completions", new, body)
    assert refused.status_code == 401 and "expired" in message(refused)
    assert served.post("/v1/chat/completions", again[0], body).status_code == 200
    assert served.keys.rotate("rk-nope", 60) is None

    # An admin key is budgeted like any other: boss's budget of 1 token refuses a cloud call.
    boss, _ = served.keys.create("boss", role="admin")
    spent = served.post("/v1/chat/completions", boss, {"model": "cloud-mini", "messages": HI})
    assert spent.status_code == 400 and spent.json()["error"]["code"] == "insufficient_quota"


def test_router_keys_creates_lists_and_rotates_scoped_keys(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, None))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "router", "keys", *args, "--config", config]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    made = run("create", "--user", "ana", "--expires", "30d", "--models", "auto,local",
               "--rpm", "60", "--tpm", "5000", "--daily-usd", "5")  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    key_id = key[:9]
    shown = json.loads(run("list", "--json").stdout)
    assert len(shown) == 1 and shown[0]["id"] == key_id
    assert shown[0]["models"] == ["auto", "local"] and shown[0]["rpm"] == 60
    assert shown[0]["daily_usd"] == 5.0 and shown[0]["tpm"] == 5000
    assert 29.9 * 86400 < shown[0]["expires"] - time.time() <= 30 * 86400
    assert shown[0]["last_used"] is None and shown[0]["expired"] is False
    header, row = run("list").stdout.splitlines()
    assert header.split("\t") == [
        "ID", "USER", "ROLE", "CREATED", "EXPIRES", "MODELS", "RPM", "TPM", "DAILY USD",
        "LAST USED",
    ]  # fmt: skip
    assert row.split("\t")[5:] == ["auto,local", "60", "5000", "$5.00", "never"]

    rotated = run("rotate", key_id, "--grace", "2h")
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.strip().startswith("rk-") and f"in place of {key_id}" in rotated.stderr
    both = json.loads(run("list", "--json").stdout)
    old = next(k for k in both if k["id"] == key_id)
    assert 7100 < old["expires"] - time.time() <= 7200
    assert next(k for k in both if k["id"] != key_id)["models"] == ["auto", "local"]
    assert next(k for k in both if k["id"] != key_id)["daily_usd"] == 5.0

    for args, said in {
        ("create", "--user", "x", "--expires", "soon"): "--expires 'soon': expected a number",
        ("create", "--user", "x", "--expires", "999d"): "the longest window is 400 days",
        (
            "create",
            "--user",
            "x",
            "--models",
            "gpt-9",
        ): "--models 'gpt-9': give at most 64 modes or models",
        ("create", "--user", "x", "--rpm", "0"): "rpm: 1 to 10,000,000",
        ("create", "--user", "x", "--daily-usd", "-1"): "daily_usd: 0 to 1,000,000 dollars",
        ("create", "--user", "x", "--tpm", "0"): "tpm: 1 to 10,000,000,000",
        ("rotate", "rk-nothing"): "no key with id 'rk-nothing'",
        ("rotate", key_id, "--grace", "-1h"): "--grace '-1h'",
    }.items():
        out = run(*args)
        assert out.returncode != 0 and said in out.stderr, (args, out.stderr)


def test_a_keys_own_daily_dollars_hold_on_every_api_beside_its_users(served: Served) -> None:
    """`--daily-usd`: a budget of the key's own. Spent, its paid calls are refused on every
    API (local answers go on); the same user's other key is not bound by it; rotation keeps
    it; the admin API changes it."""
    none, none_id = served.keys.create("eve", daily_usd=0.0)  # no paid call at all
    for path, r in served.every_api(none, "cloud-mini").items():
        assert r.status_code in (400, 402), (path, r.text)  # 402: Anthropic's
        assert f"budget key:{none_id} daily_usd = $0 is spent" in message(r), (path, r.text)
    assert all(r.status_code == 200 for r in served.every_api(none, "local").values())
    other, _ = served.keys.create("eve")  # eve's other key: no budget of its own
    assert served.post("/v1/chat/completions", other, {"model": "cloud-mini", "messages": HI})

    some, some_id = served.keys.create("eve", daily_usd=1.0)
    fresh = [{"role": "user", "content": "Hello again"}]  # not a cache hit: a paid call
    answered = served.post("/v1/chat/completions", some, {"model": "cloud-mini", "messages": fresh})
    assert answered.status_code == 200, answered.text
    spent = served.router.budgets.usage(f"key:{some_id}")
    assert spent["daily_usd"] > 0 and spent["daily_tokens"] > 0  # held on the key's own scope
    made = served.keys.rotate(some_id, 0)
    assert made is not None and (owner := served.keys.owner(made[0])) is not None
    assert owner.daily_usd == 1.0
    changed = served.keys.change(made[1], daily_usd=0)
    assert changed is not None and changed.daily_usd == 0
    other_question = [{"role": "user", "content": "And again?"}]
    refused = served.post(
        "/v1/chat/completions", made[0], {"model": "cloud-mini", "messages": other_question}
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "insufficient_quota"
