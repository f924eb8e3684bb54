"""Real-time alerts ([alerts]) to a webhook receiver on loopback: a budget crossing its alert
share and being spent, a failing cloud model, an unwritable ledger, a burn rate; each once a
window; `router alerts test`; and a dead receiver that delays no request."""

from __future__ import annotations

import itertools
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router import Router
from router.backends import FunctionBackend
from router.config import AlertSettings, Budget, parse_toml
from router.errors import CloudError, ConfigError, LedgerUnavailableError
from router.governance.alerts import Alerts
from router.governance.budgets import BudgetStore, KeyBudget
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config
from tests.disks import fill_up, small_disk
from tests.governance.test_limits import MODELS, VALUES, _toml


class Receiver:
    """A webhook on loopback: every POST body it got, as JSON."""

    def __init__(self) -> None:
        got: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("content-length", 0))
                got.append(json.loads(self.rfile.read(size)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.got = got
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [g.get("event", "") for g in self.got]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def alerts_section(url: str, extra: str = "") -> str:
    return f'\n[alerts]\nwebhook = "{url}"\nretries = 0\n{extra}'


def make(tmp_path: Path, extra: str, cloud: Any, **kwargs: Any) -> Router:
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", extra)
    backends = {
        "smollm2": FunctionBackend("smollm2", lambda r, p: "local"),
        "cloud-mini": FunctionBackend("cloud-mini", cloud),
    }
    return Router(config, backends=backends, sleep=lambda s: None, **kwargs)


def ask(router: Router, text: str, user: str = "ana", cache: bool = True) -> Any:
    return router.complete(
        [{"role": "user", "content": text}], "cloud-mini", user=user, cache=cache
    )


def test_a_budget_alerts_at_its_share_and_when_spent_each_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    store = BudgetStore(tmp_path / "gov.sqlite3", write_config_for(tmp_path))
    store.set(Budget(user="ana", daily_tokens=1000))
    alerts = Alerts(AlertSettings(webhook=receiver.url, retries=0))
    store.settle(store.reserve("ana", 700, 0.0), 700, 0.0)
    alerts.settled(store, ("user:ana",), 0.0)  # 70%: nothing
    assert alerts.flush()  # (checked on the alerts' thread, with the usage it reads then)
    store.settle(store.reserve("ana", 150, 0.0), 150, 0.0)
    for _ in range(3):  # 85%, three times: one alert
        alerts.settled(store, ("user:ana",), 0.0)
    assert alerts.flush()
    store.settle(store.reserve("ana", 150, 0.0), 150, 0.0)
    alerts.settled(store, ("user:ana",), 0.0)  # 100%: spent
    alerts.settled(store, ("user:ana",), 0.0)
    assert alerts.flush()
    assert receiver.events() == ["budget_alert", "budget_spent"]
    first, spent = receiver.got
    assert first["data"]["share"] == 0.85 and first["key"].startswith("user:ana daily_tokens day:")
    assert "budget user:ana daily_tokens is 85% used: 850 tokens of 1,000 tokens" in first["text"]
    assert spent["text"].startswith("budget user:ana daily_tokens is spent: 1,000 tokens of")
    assert alerts.counts["repeated"] == 3
    store.close()


def write_config_for(tmp_path: Path) -> Any:
    from router.config import load_config

    return load_config(write_config(tmp_path, None))


def test_paid_calls_alert_their_budget_and_the_burn_rate_through_the_router(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    extra = alerts_section(receiver.url, "alert_at = 0.01\nusd_per_hour = 0.000001\n")
    extra += '\n[[budgets]]\nuser = "ana"\ndaily_tokens = 1000\n'
    with make(tmp_path, extra, lambda r, p: "Hello from the cloud.") as router:
        for i in range(3):
            assert ask(router, f"Hi {i}").routing.tier == "cloud"
        assert router.alerts is not None and router.alerts.flush()
    assert sorted(receiver.events()) == ["budget_alert", "burn_rate"]
    burn = next(g for g in receiver.got if g["event"] == "burn_rate")
    assert "paid in the last hour, over [alerts] usd_per_hour" in burn["text"]


def test_a_failing_cloud_model_alerts_once_after_n_failures_in_a_row(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    failing = {"on": True}

    def cloud(request: Any, params: Any) -> str:
        if failing["on"]:
            raise CloudError("provider said 500", status=500, retryable=True)
        return "fine"

    extra = alerts_section(receiver.url, "cloud_failures = 3\n")
    with make(tmp_path, extra, cloud) as router:
        for i in range(2):  # two in a row, a success, then three: one alert
            ask_auto(router, f"q{i}")
        failing["on"] = False
        ask_auto(router, "ok")
        failing["on"] = True
        for i in range(5):
            ask_auto(router, f"r{i}")
        assert router.alerts is not None and router.alerts.flush()
    assert receiver.events() == ["cloud_failing"]
    assert receiver.got[0]["key"] == "cloud-mini" and receiver.got[0]["data"]["failures"] == 3
    assert "cloud model cloud-mini failed 3 calls in a row" in receiver.got[0]["text"]


def ask_auto(router: Router, text: str) -> None:
    """A hard request in auto: the cloud first, the local model when it fails."""
    from tests.conftest import HARD_PROMPT

    router.complete([{"role": "user", "content": f"{HARD_PROMPT} {text}"}], user="ana", cache=False)


def test_a_full_ledger_disk_alerts_once(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    with small_disk(tmp_path / "disk") as disk:
        config = write_config(tmp_path, "http://127.0.0.1:9/v1", alerts_section(receiver.url))
        text = config.read_text().replace('path = "ledger.sqlite3"', f'path = "{disk}/l.sqlite3"')
        config.write_text(text)
        backends = {
            "smollm2": FunctionBackend("smollm2", lambda r, p: "local"),
            "cloud-mini": FunctionBackend("cloud-mini", lambda r, p: "cloud"),
        }
        with Router(config, backends=backends) as router:
            ask(router, "Before the disk filled")
            filler = fill_up(disk)
            for i in range(3):  # auto: answered locally, since no paid call can be recorded
                done = router.complete([{"role": "user", "content": f"Hello {i}"}], user="ana")
                assert done.routing.tier == "local"
            with pytest.raises(LedgerUnavailableError):
                ask(router, "A paid call that could not be recorded")
            assert router.alerts is not None and router.alerts.flush()
            filler.unlink()
    assert receiver.events() == ["ledger_unwritable"]
    assert "the ledger cannot be written" in receiver.got[0]["text"]


def test_slack_format_and_router_alerts_test(tmp_path: Path, receiver: Receiver) -> None:
    config = write_config(tmp_path, None, alerts_section(receiver.url, 'format = "slack"\n'))
    run = [sys.executable, "-m", "router", "alerts", "test", "--config", str(config)]
    sent = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    host = receiver.url.split("/hook")[0]
    assert f"sent to {host}/… (slack)" in sent.stderr and "/hook" not in sent.stderr
    assert list(receiver.got[0]) == ["text"] and "router alerts test" in receiver.got[0]["text"]
    dead = write_config(tmp_path, None, alerts_section("http://127.0.0.1:9/hook"))
    failed = subprocess.run([*run[:-1], str(dead)], capture_output=True, text=True, timeout=60)
    assert failed.returncode == 3 and "did not take the alert after 1 tries" in failed.stderr
    none = write_config(tmp_path, None)
    missing = subprocess.run([*run[:-1], str(none)], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no [alerts] section" in missing.stderr


def test_a_dead_receiver_delays_no_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A webhook that takes the connection and never answers: every request alerts (a burn
    rate over a tiny limit, a fresh window each time), none waits for it."""
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(64)  # never accepted: each POST hangs until its timeout
    url = f"http://127.0.0.1:{sink.getsockname()[1]}/hook"

    serial = itertools.count()

    def timed(router: Router, n: int) -> list[float]:
        out = []
        for _ in range(n):
            i = next(serial)
            started = time.perf_counter()
            ask(router, f"Hello {i}", user=f"u{i % 5}", cache=False)  # each a paid call
            out.append(time.perf_counter() - started)
        return out

    slow = alerts_section(url, "usd_per_hour = 0.000001\nwindow_seconds = 1\ntimeout_seconds = 5\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    try:
        with (
            make(tmp_path / "a", "", lambda r, p: "Hello.") as plain,
            make(tmp_path / "b", slow, lambda r, p: "Hello.") as alerting,
        ):
            timed(plain, 10), timed(alerting, 10)  # warm both
            runs = {"plain": [], "alerting": []}  # type: dict[str, list[float]]
            for _ in range(3):  # taking turns: the machine's noise falls on both
                runs["plain"] += timed(plain, 30)
                runs["alerting"] += timed(alerting, 30)
            assert alerting.alerts is not None and alerting.alerts.counts["logged"] >= 1
            assert not alerting.alerts.flush(0.1)  # the dead receiver still holds its thread
        p50 = {k: statistics.median(v) for k, v in runs.items()}
        assert p50["alerting"] <= p50["plain"] * 1.05 + 0.0002, p50
    finally:
        sink.close()


def test_an_account_far_above_its_peers_alerts_as_its_rows_land(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit's usage rule, run again as paid rows land (at most once every audit_seconds),
    not only when someone runs `router audit`: the user and the team, each once a window."""
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    extra = alerts_section(receiver.url, "audit_seconds = 1\n")
    extra += '\n[teams.ops]\nusers = ["ana"]\n\n[teams.dev]\nusers = ["bob", "cy"]\n'
    with make(tmp_path, extra, lambda r, p: "Hello from the cloud.") as router:
        assert router.alerts is not None
        ask(router, "Hi from bob", user="bob")  # the first audit: one account, no peer
        ask(router, "Hi from cy", user="cy")
        assert router.alerts.flush()
        for i in range(12):
            ask(router, f"Hi {i}")  # ana: 12 paid calls against her peers' one each
        for _ in range(2):  # past audit_seconds, twice: the flags are found again, sent once
            time.sleep(1.1)
            ask(router, "One more", cache=False)
            assert router.alerts.flush()
        accounts = {a.name: a.flags for a in router._books.audit()}
    assert sorted(g["key"] for g in receiver.got) == ["team:ops usage", "user:ana usage"]
    user = next(g for g in receiver.got if g["key"] == "user:ana usage")
    assert user["event"] == "audit_flag" and user["data"]["rule"] == "usage"
    assert user["text"].startswith("account user:ana flagged usage: ")
    assert "the peer average of" in user["text"]
    assert any(f.startswith("usage:") for f in accounts["user:ana"]) and not accounts["user:bob"]


def test_an_ejected_pool_endpoint_alerts_once(
    tmp_path: Path, receiver: Receiver, fake_cloud: Any
) -> None:
    """A local model served by a pool: an endpoint that cannot be reached is ejected, and the
    alert says which, once; the request is answered by the other endpoint."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    extra = alerts_section(receiver.url) + (
        f'\n[models.team]\ntier = "local"\napi_base = ["{dead}", "{fake_cloud.base_url}"]\n'
        'remote_model = "smollm2"\nmax_score = 0.5\neject_seconds = 30\n'
    )
    config = write_config(tmp_path, None, extra)
    with Router(config, backends={}) as router:
        for i in range(8):  # new conversations: one of them is tried on the dead endpoint first
            done = router.complete([{"role": "user", "content": f"Count to {i}."}], "team")
            assert done.routing.model == "team"
        assert router.alerts is not None and router.alerts.flush()
    assert receiver.events() == ["endpoint_ejected"]
    assert receiver.got[0]["key"] == f"team {dead}"
    assert receiver.got[0]["text"].startswith(f"team: endpoint {dead} ejected for 30 s: ")


ALERT_KEYS = st.sampled_from([
    "webhook", "format", "alert_at", "usd_per_hour", "cloud_failures", "window_seconds",
    "audit_seconds", "timeout_seconds", "retries", "nope",
])  # fmt: skip
ALERT_VALUES = VALUES | st.sampled_from(["https://hooks.example/x", "slack", "json", 0.5, 60])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(ALERT_KEYS, ALERT_VALUES, max_size=6))
def test_any_alerts_table_is_a_config_or_a_config_error(table: dict[str, object]) -> None:
    """Fuzz: whatever [alerts] holds, the file loads or says what is wrong in [alerts]
    (ConfigError), never another exception."""
    text = "\n[alerts]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items())
    try:
        cfg = parse_toml(text + MODELS)
    except ConfigError as exc:
        assert "alerts" in str(exc), str(exc)
        return
    assert cfg.alerts is not None and "nope" not in table
    assert 0 < cfg.alerts.alert_at < 1 and cfg.alerts.audit_seconds >= 0
    Alerts(cfg.alerts).close()


def test_a_keys_own_budget_alerts_like_a_stored_one(tmp_path: Path, receiver: Receiver) -> None:
    store = BudgetStore(tmp_path / "gov.sqlite3", write_config_for(tmp_path))
    alerts = Alerts(AlertSettings(webhook=receiver.url, retries=0))
    own = KeyBudget(user="ana", key_id="rk-abc123", daily_usd=1.0)
    held = store.reserve("ana", 10, 0.9, extra=[own])
    assert held is not None and held.budgets == ("key:rk-abc123",)
    store.settle(held, 10, 0.9)
    alerts.settled(store, held.budgets, 0.9, held.extra)
    assert alerts.flush()
    assert receiver.events() == ["budget_alert"]
    assert receiver.got[0]["text"].startswith("budget key:rk-abc123 daily_usd is 90% used")
    store.close()
