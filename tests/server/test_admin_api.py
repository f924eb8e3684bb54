"""The admin API over real HTTP: a key created, used, rotated and revoked; budgets set, seen,
enforced and removed; the same checks as the CLI; a user key refused on every admin route;
and a fuzz of the routes (no answer at or above 500)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router import Router
from router.backends import FunctionBackend
from router.server.app import create_app
from router.server.keys import KeyStore
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config
from tests.server_harness import ServerThread

ADMIN = "/v1/router/admin"
HI = {"model": "local", "messages": [{"role": "user", "content": "Hi"}]}
ROUTES = [
    ("GET", "/keys"), ("POST", "/keys"), ("PATCH", "/keys/rk-abc"), ("DELETE", "/keys/rk-abc"),
    ("POST", "/keys/rk-abc/rotate"), ("GET", "/budgets"), ("PUT", "/budgets"),
    ("DELETE", "/budgets?user=ana"), ("GET", "/limits"), ("PUT", "/limits"),
    ("DELETE", "/limits?user=ana"), ("GET", "/export"),
]  # fmt: skip


class Admin:
    def __init__(self, router: Router, keys: KeyStore, url: str, key: str) -> None:
        self.router, self.keys, self.url, self.key = router, keys, url, key
        self.http = httpx.Client(base_url=url, timeout=60)

    def call(self, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
        headers = {"authorization": f"Bearer {key or self.key}", "content-type": "application/json"}
        content = None if body is None else json.dumps(body).encode()
        return self.http.request(method, ADMIN + path, content=content, headers=headers)

    def chat(self, key: str, **body: Any) -> httpx.Response:
        return self.http.post(
            "/v1/chat/completions", json={**HI, **body}, headers={"authorization": f"Bearer {key}"}
        )


@pytest.fixture
def admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Admin]:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", '\n[teams.ops]\nusers = ["zoe"]\n')
    config.write_text(config.read_text().replace("[router]\n", "[router]\nstore_prompts = true\n"))
    backends = {
        "smollm2": FunctionBackend("smollm2", lambda r, p: "Hello from the router."),
        "cloud-mini": FunctionBackend("cloud-mini", lambda r, p: "Hello from the cloud."),
    }
    with (
        Router(config, backends=backends) as router,
        KeyStore(tmp_path / "keys.sqlite3") as keys,
        ServerThread(create_app(router, keys=keys, require_keys=True)) as server,
    ):
        key, _ = keys.create("lead", role="admin")
        a = Admin(router, keys, server.url, key)
        yield a
        a.http.close()


def test_a_key_is_created_used_changed_rotated_and_revoked_over_http(admin: Admin) -> None:
    made = admin.call("POST", "/keys", {"user": "ana", "expires": "30d", "models": ["local"],
                                        "rpm": 60, "daily_usd": 2.5})  # fmt: skip
    assert made.status_code == 201, made.text
    body = made.json()
    key, key_id = body["key"], body["id"]
    assert body["user"] == "ana" and body["models"] == ["local"] and body["rpm"] == 60
    assert body["daily_usd"] == 2.5
    assert 29.9 * 86400 < body["expires"] - time.time() <= 30 * 86400
    assert admin.chat(key).status_code == 200
    listed = {k["id"]: k for k in admin.call("GET", "/keys").json()["keys"]}
    assert key not in json.dumps(listed)  # never a key itself
    assert listed[key_id]["last_used"] is not None and listed[key_id]["role"] == "user"

    # Change its scope: the next request sees it.
    assert admin.chat(key, model="auto").status_code == 403
    changed = admin.call("PATCH", f"/keys/{key_id}", {"models": ["local", "auto"], "rpm": None})
    assert changed.status_code == 200 and changed.json()["models"] == ["local", "auto"]
    assert admin.chat(key, model="auto").status_code == 200

    rotated = admin.call("POST", f"/keys/{key_id}/rotate", {"grace": "0m"})
    assert rotated.status_code == 201 and rotated.json()["replaces"] == key_id
    new = rotated.json()["key"]
    assert rotated.json()["models"] == ["local", "auto"]
    assert admin.chat(key).status_code == 401  # no grace: the old key stopped
    assert admin.chat(new).status_code == 200

    gone = admin.call("DELETE", f"/keys/{rotated.json()['id']}")
    assert gone.status_code == 200 and gone.json()["revoked"] is True
    assert admin.chat(new).status_code == 401
    assert admin.call("DELETE", f"/keys/{rotated.json()['id']}").status_code == 404
    assert admin.call("POST", "/keys/rk-nope/rotate").status_code == 404
    assert admin.call("PATCH", "/keys/rk-nope", {"rpm": 5}).status_code == 404

    # The same checks as the CLI, each naming its field.
    for sent, param in [
        ({}, "user"),
        ({"user": "x", "role": "root"}, None),
        ({"user": "x", "expires": "soon"}, "expires"),
        ({"user": "x", "expires": 30}, "expires"),
        ({"user": "x", "models": ["gpt-9"]}, "models"),
        ({"user": "x", "models": "local"}, "models"),
        ({"user": "x", "rpm": 0}, None),
        ({"user": "x", "rpm": True}, "rpm"),
        ({"user": "x", "colour": "red"}, "colour"),
    ]:
        r = admin.call("POST", "/keys", sent)
        assert r.status_code == 400, (sent, r.text)
        assert r.json()["error"]["param"] == param, (sent, r.json())
    assert admin.call("POST", "/keys", [1, 2]).status_code == 400


def test_budgets_are_set_enforced_and_removed_over_http(admin: Admin) -> None:
    ana, _ = admin.keys.create("ana")
    set_ = admin.call("PUT", "/budgets", {"user": "ana", "daily_tokens": 1, "strict": True})
    assert set_.status_code == 200, set_.text
    assert set_.json()["scope"] == "user:ana" and set_.json()["limits"] == {"daily_tokens": 1}
    assert [b["scope"] for b in admin.call("GET", "/budgets").json()["budgets"]] == ["user:ana"]
    refused = admin.chat(ana, model="cloud-mini")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "insufficient_quota"
    team = admin.call("PUT", "/budgets", {"team": "ops", "monthly_usd": 2.5})
    assert team.status_code == 200, team.text
    for sent, said in [
        ({"team": "ghosts", "daily_tokens": 1}, "team 'ghosts' is not in models.toml"),
        ({"user": "ana"}, "at least one limit"),
        ({"user": "ana", "daily_tokens": -1}, "daily_tokens: Input should be greater than"),
        ({"user": "ana", "team": "ops", "daily_tokens": 1}, "exactly one of 'user' or 'team'"),
        ({"user": "ana", "daily_usd": "5"}, "daily_usd"),
        ({"user": "ana", "weekly_usd": 5}, "unknown field 'weekly_usd'"),
    ]:
        r = admin.call("PUT", "/budgets", sent)
        assert r.status_code == 400 and said in r.json()["error"]["message"], (sent, r.text)
    assert admin.call("DELETE", "/budgets?user=ana").json() == {"scope": "user:ana",
                                                               "removed": True}  # fmt: skip
    assert admin.chat(ana, model="cloud-mini").status_code == 200
    assert admin.call("DELETE", "/budgets?user=ana").status_code == 404
    # /metrics: each budget's used share of each limit.
    assert admin.call("PUT", "/budgets", {"user": "ana", "daily_tokens": 1000}).status_code == 200
    ho = admin.chat(ana, model="cloud-mini", messages=[{"role": "user", "content": "Ho"}])
    assert ho.status_code == 200, ho.text
    used = admin.router.budgets.usage("user:ana")["daily_tokens"]
    metrics = admin.http.get("/metrics", headers={"authorization": f"Bearer {admin.key}"}).text
    assert 0 < used < 1000
    assert (
        f'router_budget_used_ratio{{scope="user:ana",limit="daily_tokens"}} {used / 1000:.6g}'
        in metrics
    )
    assert 'router_budget_used_ratio{scope="team:ops",limit="monthly_usd"} 0' in metrics
    assert admin.call("DELETE", "/budgets").status_code == 400


def test_a_user_key_is_refused_on_every_admin_route(admin: Admin) -> None:
    user, _ = admin.keys.create("ana")
    for method, path in ROUTES:
        r = admin.call(method, path, {}, key=user)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["code"] == "admin_key_required"
        r = admin.call(method, path, {}, key="rk-forged-key")
        assert r.status_code == 401, (method, path, r.text)
    assert admin.keys.list()[-1].user == "ana"  # nothing was made or removed


JSONS = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=8,
)  # fmt: skip
FIELDS = st.dictionaries(
    st.sampled_from(["user", "team", "role", "expires", "models", "rpm", "grace", "tpm",
                     "daily_usd", "model", "daily_tokens", "monthly_usd", "strict", "on_exceed"]),
    JSONS | st.sampled_from(["ana", "ops", "30d", "0m", "local", ["auto"], "admin"]),
    max_size=5,
)  # fmt: skip


def test_fuzz_the_admin_routes_never_answers_500(admin: Admin) -> None:
    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(ROUTES), FIELDS | JSONS, st.text(max_size=12))
    def one(route: tuple[str, str], body: Any, key_id: str) -> None:
        method, path = route
        path = path.replace("rk-abc", urllib.parse.quote(key_id, safe="") or "x")
        r = admin.call(method, path, body)
        assert r.status_code < 500, (method, path, body, r.text)
        assert r.status_code in (200, 201, 400, 404, 405, 409), (method, path, body, r.text)

    one()
    assert admin.chat(admin.key).status_code == 200  # the server is fine afterwards


def test_router_keys_and_budget_manage_a_running_server_with_url(
    admin: Admin, tmp_path: Path
) -> None:
    """`--url` (and `--key` / $ROUTER_API_KEY): the CLI's commands, through the admin API."""
    (tmp_path / "elsewhere").mkdir()
    config = str(write_config(tmp_path / "elsewhere", None))  # not the server's stores

    def run(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "router", *args, "--url", admin.url, "--config", config]
        env = {**os.environ, "ROUTER_API_KEY": key or admin.key}
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)

    made = run("keys", "create", "--user", "ana", "--models", "local", "--rpm", "9")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert admin.chat(key).status_code == 200
    listed = json.loads(run("keys", "list", "--json").stdout)
    ana = next(k for k in listed if k["user"] == "ana")
    assert ana["models"] == ["local"] and ana["rpm"] == 9 and ana["last_used"] is not None
    rotated = run("keys", "rotate", ana["id"], "--grace", "0m")
    assert rotated.returncode == 0, rotated.stderr
    assert admin.chat(key).status_code == 401 and admin.chat(rotated.stdout.strip()).is_success
    assert run("keys", "revoke", "rk-nope").returncode != 0

    assert run("budget", "set", "ana", "--daily-tokens", "500").returncode == 0
    shown = json.loads(run("budget", "show", "--json").stdout)
    assert [(b["scope"], b["limits"]) for b in shown] == [("user:ana", {"daily_tokens": 500})]
    assert admin.router.budgets.budgets()["user:ana"].daily_tokens == 500  # the server's store
    bad = run("budget", "set", "--team", "ghosts", "--daily-tokens", "1")
    assert bad.returncode == 2 and "team 'ghosts' is not in models.toml" in bad.stderr
    assert run("budget", "rm", "ana").returncode == 0
    assert run("budget", "rm", "ana").returncode == 2

    # A user key may not; a server that is not there says so.
    user = run("keys", "list", key=rotated.stdout.strip())
    assert user.returncode == 2 and "needs an admin key" in user.stderr
    gone = subprocess.run(
        [sys.executable, "-m", "router", "keys", "list", "--url", "http://127.0.0.1:9",
         "--config", config], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert gone.returncode == 3 and "no router server answers at http://127.0.0.1:9" in gone.stderr


def test_rate_limits_are_set_at_run_time_over_http_and_from_the_cli(
    admin: Admin, tmp_path: Path
) -> None:
    ana, _ = admin.keys.create("ana")
    set_ = admin.call("PUT", "/limits", {"user": "ana", "rpm": 1})
    assert set_.status_code == 200, set_.text
    assert set_.json() == {"key": "user:ana|*", "scope": "user:ana", "user": "ana", "rpm": 1}
    assert admin.chat(ana).status_code == 200
    limited = admin.chat(ana)
    assert limited.status_code == 429 and "rate limit user:ana rpm = 1" in limited.text
    rows = admin.call("GET", "/limits").json()["limits"]
    assert [(r["key"], r["source"]) for r in rows] == [("user:ana|*", "set")]
    for sent, said in [
        ({"user": "ana"}, "a limit needs rpm"),
        ({"team": "ghosts", "rpm": 1}, "team 'ghosts' is not defined"),
        ({"model": "gpt-9", "rpm": 1}, "model 'gpt-9': give auto"),
        ({"user": "ana", "rpm": 0}, "rpm: Input should be greater than or equal to 1"),
        ({"user": "ana", "rpm": 5, "burst": 2}, "unknown field 'burst'"),
    ]:
        r = admin.call("PUT", "/limits", sent)
        assert r.status_code == 400 and said in r.json()["error"]["message"], (sent, r.text)
    gone = admin.call("DELETE", "/limits?user=ana")
    assert gone.json() == {"key": "user:ana|*", "removed": True}
    assert admin.chat(ana).status_code == 200  # the server saw it at once
    assert admin.call("DELETE", "/limits?user=ana").status_code == 404
    assert admin.call("DELETE", "/limits?user=ana&team=ops").status_code == 400

    # `router limits` in another process, on the server's own files: seen within a second.
    config = str(admin.router.config.source)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "router", "limits", *args, "--config", config]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    made = run("set", "--team", "ops", "--model", "local", "--rpm", "1", "--tpm", "900")
    assert made.returncode == 0, made.stderr
    zoe, _ = admin.keys.create("zoe")
    time.sleep(1.1)
    assert admin.chat(zoe).status_code == 200
    assert admin.chat(zoe).status_code == 429  # the team's window, on the running server
    assert admin.chat(zoe, model="cloud-mini").status_code == 200  # another model's requests
    shown = json.loads(run("show", "--json").stdout)
    assert shown == [{"key": "team:ops|local", "scope": "team:ops", "team": "ops",
                      "model": "local", "rpm": 1, "tpm": 900, "source": "set"}]  # fmt: skip
    assert "team:ops|local" in run("show").stdout
    for args, said in {
        ("set", "--rpm", "5"): "name a USER, or give --team NAME or --each-user",
        ("set", "ana", "--team", "ops", "--rpm", "5"): "one of them",
        ("set", "ana"): "a limit needs rpm",
        ("set", "--team", "ghosts", "--rpm", "1"): "team 'ghosts' is not defined",
        ("rm", "ana"): "no rate limit set for user:ana|*",
    }.items():
        out = run(*args)
        assert out.returncode == 2 and said in out.stderr, (args, out.stderr)
    assert run("rm", "--team", "ops", "--model", "local").returncode == 0
    assert run("show", "--json").stdout.strip() == "[]"


def test_export_over_http_with_an_admin_key_and_with_router_export_url(
    admin: Admin, tmp_path: Path
) -> None:
    """GET /export: the training records as JSON lines, what each filter removed in a header;
    `router export --url` writes the same; bad parameters are a 400 naming the parameter."""
    ana, _ = admin.keys.create("ana")
    for text in ("Write a haiku about the sea.", "Summarise this:"):
        asked = admin.chat(ana, messages=[{"role": "user", "content": text}])
        assert asked.status_code == 200, asked.text
    headers = {"authorization": f"Bearer {admin.key}"}
    r = admin.http.get(f"{ADMIN}/export?metadata=true&user=ana", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    records = [json.loads(line) for line in r.text.splitlines()]
    assert [m["content"] for m in records[0]["messages"]] == [
        "Write a haiku about the sea.", "Hello from the router.",
    ] and len(records) == 1  # fmt: skip
    assert records[0]["metadata"]["user"] == "ana"
    summary = json.loads(r.headers["x-router-export"])
    assert summary["read"] == 2 and summary["exported"] == 1
    assert summary["removed"]["flagged"] == 1  # "Summarise this:" with nothing to summarise

    out = tmp_path / "set.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "router", "export", "--url", admin.url, "--user", "ana",
         "-o", str(out), "--config", str(write_config(tmp_path / "cli", None))],
        capture_output=True, text=True, timeout=60, env={**os.environ, "ROUTER_API_KEY": admin.key},
    ) if (tmp_path / "cli").mkdir() is None else None  # fmt: skip
    assert done is not None and done.returncode == 0, done.stderr if done else ""
    assert [json.loads(line)["messages"] for line in out.read_text().splitlines()] == [
        records[0]["messages"]
    ]
    assert f"router export: 1 records to {out} from 2 rows" in done.stderr
    assert "1  removed: flagged" in done.stderr

    for query, param in [
        ("since=forever", "since"), ("min_rating=great", "min_rating"), ("team=ghosts", "team"),
        ("metadata=maybe", "metadata"), ("nope=1", "nope"), ("category=poems", "category"),
    ]:  # fmt: skip
        r = admin.http.get(f"{ADMIN}/export?{query}", headers=headers)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (query, r.text)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["since", "user", "team", "category", "min_rating", "metadata",
                                 "judged_acceptable", "include_flagged", "x"]),
                st.text(max_size=12) | st.sampled_from(["7d", "good", "true", "ops", "code"]),
            ),
            max_size=6,
        )
    )  # fmt: skip
    def one(params: list[tuple[str, str]]) -> None:
        r = admin.http.get(f"{ADMIN}/export", params=params, headers=headers)
        assert r.status_code in (200, 400), (params, r.text)

    one()
