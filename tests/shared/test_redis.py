"""Two replicas on one real Redis (redis-server on loopback): one cache, one set of budgets,
one repeat detector, one key store; and what each does while Redis is down."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from router import Router
from router.backends import FunctionBackend
from router.engine.stores import budget_store
from router.errors import BudgetExceededError, UnavailableError
from router.server.app import create_app
from router.server.keys import KeyOwner, key_store
from router.shared import Link
from router.shared.budgets import RedisBudgetStore
from router.types import ChatRequest
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, HARD_PROMPT, write_config
from tests.fakecloud import FakeCloud
from tests.redis_server import CountingProxy, RedisServer
from tests.server_harness import ServerThread
from tests.server_harness import health as details


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def replica(
    tmp_path: Path,
    name: str,
    redis: RedisServer,
    cloud: FakeCloud | None,
    extra: str = "",
    shared: str = "",
) -> Router:
    """One router process's state: its own folder (ledger, cache dir), the shared Redis."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    shared = f'\n[shared]\nredis_url = "{redis.url}"\n{shared}\n'
    config = write_config(folder, cloud.base_url if cloud else None, shared + extra)
    local = FunctionBackend("smollm2", lambda r, p: f"local answer from {name}")
    return Router(config, backends={"smollm2": local}, sleep=lambda s: None)


@pytest.fixture
def cloud_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)


def ask(router: Router, text: str, **kw: Any) -> Any:
    return router.complete([{"role": "user", "content": text}], **kw)


def test_replica_b_serves_from_the_cache_what_replica_a_answered(
    tmp_path: Path, redis_server: RedisServer, fake_cloud: FakeCloud, cloud_key: None
) -> None:
    with (
        replica(tmp_path, "a", redis_server, fake_cloud) as a,
        replica(tmp_path, "b", redis_server, fake_cloud) as b,
    ):
        first = ask(a, HARD_PROMPT)
        again = ask(b, HARD_PROMPT)
        assert first.routing.tier == "cloud" and not first.routing.cache_hit
        assert again.routing.cache_hit and again.text == first.text
        assert len(fake_cloud.requests) == 1
        assert again.response["id"] != first.response["id"]
        assert b.ledger.entries()[0].cache_hit  # B's own ledger records its hit


def test_one_budget_holds_across_two_replicas_under_100_concurrent_requests(
    tmp_path: Path, redis_server: RedisServer, fake_cloud: FakeCloud, cloud_key: None
) -> None:
    budget = '\n[[budgets]]\nuser = "load"\ndaily_tokens = 1000\n'
    extra = "\n[guardrails]\nrepeat_window_seconds = 0\n" + budget
    with (
        replica(tmp_path, "a", redis_server, fake_cloud, extra) as a,
        replica(tmp_path, "b", redis_server, fake_cloud, extra) as b,
    ):

        def one(i: int) -> str:
            router = (a, b)[i % 2]
            try:
                done = ask(router, f"{HARD_PROMPT} ({i})", user="load", cache=False)
            except BudgetExceededError:
                return "refused"
            return done.routing.tier

        with ThreadPoolExecutor(max_workers=20) as pool:
            outcomes = list(pool.map(one, range(100)))
        used = a.budgets.usage("user:load")
        spent = sum(
            e.prompt_tokens + e.completion_tokens
            for r in (a, b)
            for e in r.ledger.entries()
            if e.tier == "cloud"
        )
        answered = [sum(e.tier == "cloud" for e in r.ledger.entries()) for r in (a, b)]
    assert outcomes.count("cloud") == len(fake_cloud.requests)
    assert outcomes.count("cloud") >= 5 and outcomes.count("refused") >= 50
    assert sum(answered) == outcomes.count("cloud")  # whichever replica won each race
    assert used["daily_tokens"] == spent <= 1000  # no overrun; the ledgers equal the store


def test_two_replicas_with_their_own_files_would_each_spend_the_whole_budget(
    tmp_path: Path, fake_cloud: FakeCloud, cloud_key: None
) -> None:
    """Why [shared] exists: the embedded stores are per machine."""
    extra = '\n[[budgets]]\nuser = "load"\ndaily_tokens = 400\n'
    used = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        with Router(write_config(folder, fake_cloud.base_url, extra)) as router:
            for i in range(20):
                try:
                    ask(router, f"{HARD_PROMPT} ({name}{i})", user="load", cache=False)
                except BudgetExceededError:
                    break
            used.append(router.budgets.usage("user:load")["daily_tokens"])
    assert sum(used) > 400


def test_a_dead_replicas_reservations_stop_counting_after_their_ttl(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    shared = f'\n[shared]\nredis_url = "{redis_server.url}"\nreservation_ttl_seconds = 0.5\n'
    budget = '\n[[budgets]]\nuser = "ann"\ndaily_tokens = 100\n'
    from router.config import load_config

    cfg = load_config(write_config(tmp_path, None, shared + budget))
    store = budget_store(cfg)
    assert isinstance(store, RedisBudgetStore)
    held = store.reserve("ann", 80, 0.0)  # the replica holding this dies: never settled
    assert store.usage("user:ann")["daily_tokens"] == 80
    with pytest.raises(BudgetExceededError, match="held by requests still running"):
        store.reserve("ann", 40, 0.0)
    time.sleep(0.6)
    assert store.usage("user:ann")["daily_tokens"] == 0
    mine = store.reserve("ann", 40, 0.0)
    store.settle(mine, 30, 0.0)
    store.settle(held, 10, 0.0)  # settled late: spent is spent, it still counts
    assert store.usage("user:ann")["daily_tokens"] == 40


def test_repeats_are_counted_across_replicas(
    tmp_path: Path, redis_server: RedisServer, cloud_key: None
) -> None:
    with (
        replica(tmp_path, "a", redis_server, None) as a,
        replica(tmp_path, "b", redis_server, None) as b,
    ):
        for router in (a, b):
            ask(router, "Hello, are you there?", user="u")
            time.sleep(0.05)  # answers are counted by a background writer, within milliseconds
        third = ask(a, "Hello, are you there?", user="u")
        assert "repeat" in third.routing.flags


def test_commands_act_on_the_shared_stores(tmp_path: Path, redis_server: RedisServer) -> None:
    config = write_config(tmp_path, None, f'\n[shared]\nredis_url = "{redis_server.url}"\n')

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "router", *args, "--config", str(config)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    created = run("keys", "create", "--user", "ana")
    assert created.returncode == 0, created.stderr
    key = next(w for w in created.stdout.split() if w.startswith("rk-"))
    from router.config import load_config

    cfg = load_config(config)
    assert key_store(cfg).owner(key) == KeyOwner("ana", "user")  # another process sees it
    set_ = run("budget", "set", "ana", "--daily-tokens", "5000")
    assert set_.returncode == 0, set_.stderr
    assert budget_store(cfg).budgets()["user:ana"].daily_tokens == 5000
    shown = json.loads(run("budget", "show", "--json").stdout)
    assert [b["scope"] for b in shown] == ["user:ana"]
    key_id = next(k.key_id for k in key_store(cfg).list() if k.user == "ana")
    assert run("keys", "revoke", key_id).returncode == 0
    assert key_store(cfg).owner(key) is None
    assert not (tmp_path / "keys.sqlite3").exists()  # nothing went to the local files


def test_while_redis_is_down_and_when_it_comes_back(
    tmp_path: Path, redis_server: RedisServer, fake_cloud: FakeCloud, cloud_key: None
) -> None:
    extra = '\n[[budgets]]\nuser = "ann"\ndaily_tokens = 100000\n'
    with replica(tmp_path, "a", redis_server, fake_cloud, extra) as a:
        assert a.budgets.budgets()["user:ann"].daily_tokens == 100000
        redis_server.stop()
        # The cache is skipped, a user without a budget still reaches the cloud...
        free = ask(a, HARD_PROMPT, user="bob")
        assert free.routing.tier == "cloud" and not free.routing.cache_hit
        # ...and a budgeted user is answered locally (on_redis_down = "local-only").
        kept = ask(a, HARD_PROMPT + " Please.", user="ann")
        assert kept.routing.tier == "local"
        assert "budget store (Redis" in kept.routing.reason
        health = a.shared_health()
        assert health["up"] is False and health["errors"] >= 2
        with ServerThread(create_app(a)) as server:
            body = details(server.url)
            with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as r:
                metrics = r.read().decode()
        assert body["status"] == "degraded" and body["shared"]["up"] is False
        assert "router_redis_up 0" in metrics
        redis_server.start()  # the same port, empty
        back = ask(a, HARD_PROMPT + " Now?", user="ann")
        assert back.routing.tier == "cloud"
        assert a.shared_health()["up"] is True
        assert a.budgets.usage("user:ann")["daily_tokens"] > 0

    with replica(tmp_path, "b", redis_server, fake_cloud, extra, 'on_redis_down = "refuse"') as b:
        redis_server.stop()
        with pytest.raises(UnavailableError, match=r"budget store .* cannot be reached"):
            ask(b, HARD_PROMPT + " Refused?", user="ann")
        assert ask(b, "Hello!", user="ann").routing.tier == "local"  # local answers go on


def test_a_missing_client_package_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from router.errors import ConfigError

    monkeypatch.setitem(sys.modules, "redis", None)  # as if redis-py were not installed
    monkeypatch.setitem(sys.modules, "psycopg", None)
    config = write_config(tmp_path, None, '\n[shared]\nredis_url = "redis://127.0.0.1:9/0"\n')
    with pytest.raises(ConfigError, match=r"redis_url needs the redis package: pip install"):
        Router(config)
    config = write_config(tmp_path, None, "")
    config.write_text(
        config.read_text().replace(
            "[ledger]\n", '[ledger]\nurl = "postgresql://x@127.0.0.1:9/db"\n'
        )
    )
    with pytest.raises(ConfigError, match=r"\[ledger\] url needs the psycopg package"):
        Router(config)


def test_keys_on_redis_across_replicas_and_503_while_redis_is_down(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A key made once works on every replica; without Redis it cannot be checked: 503, never
    a 500 and never let through."""
    with (
        replica(tmp_path, "a", redis_server, None) as a,
        replica(tmp_path, "b", redis_server, None) as b,
    ):
        store = key_store(a.config)
        key, _ = store.create("ana")
        body = {"model": "local", "messages": [{"role": "user", "content": "Hi"}]}
        statuses = []
        for router in (a, b):
            app = create_app(
                router, keys=key_store(router.config), require_keys=True, loopback=False
            )
            with ServerThread(app) as server:
                request = urllib.request.Request(
                    f"{server.url}/v1/chat/completions",
                    data=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
                )
                with urllib.request.urlopen(request, timeout=30) as r:
                    statuses.append(r.status)
                if router is b:
                    redis_server.stop()
                    models = urllib.request.Request(
                        f"{server.url}/v1/models", headers={"Authorization": f"Bearer {key}"}
                    )
                    for down in (request, models):
                        try:
                            urllib.request.urlopen(down, timeout=30)
                        except urllib.error.HTTPError as exc:
                            statuses.append(exc.code)
    assert statuses == [200, 200, 503, 503]


def test_a_cache_hit_costs_one_round_trip_to_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The cache read and the repeat count go in one pipeline: with Redis 50 ms away, a hit
    takes one trip of 50 ms, not two (issue 25: a Redis hit was 1.57× an embedded one). The
    repeat counter's own writes run off the request's path."""
    with CountingProxy(redis_server.port, delay=0.05) as proxy:
        folder = tmp_path / "a"
        folder.mkdir()
        shared = f'\n[shared]\nredis_url = "{proxy.url}"\n'
        local = FunctionBackend("smollm2", lambda r, p: "local answer")
        with Router(write_config(folder, None, shared), backends={"smollm2": local}) as router:
            ask(router, "Hello, are you there?", user="u")  # answered, then cached
            time.sleep(0.3)  # connections made, the repeat counter's write done
            took = []
            for _ in range(3):
                started = time.perf_counter()
                done = ask(router, "Hello, are you there?", user="u")
                took.append(time.perf_counter() - started)
                assert done.routing.cache_hit
                time.sleep(0.3)
    assert 0.05 <= sorted(took)[1] < 0.09, took  # one trip (two would be >= 0.1)
    assert "repeat" in done.routing.flags  # the pipelined count still finds the storm


def test_the_server_reads_a_redis_hit_on_its_event_loop(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Through `router serve`'s app: a hit is one 50 ms trip (read with the async client on
    the event loop, no worker thread); with Redis gone the request is answered by the model."""
    with CountingProxy(redis_server.port, delay=0.05) as proxy:
        folder = tmp_path / "a"
        folder.mkdir()
        shared = f'\n[shared]\nredis_url = "{proxy.url}"\ntimeout_seconds = 1\n'
        local = FunctionBackend("smollm2", lambda r, p: "local answer")
        config = write_config(folder, None, shared)
        with (
            Router(config, backends={"smollm2": local}) as router,
            ServerThread(create_app(router)) as server,
            httpx.Client(base_url=server.url, timeout=30) as http,
        ):
            body = {"model": "auto", "messages": [{"role": "user", "content": "Hi there!"}]}
            assert http.post("/v1/chat/completions", json=body).headers["x-router-cache"] == "miss"
            time.sleep(0.3)
            took = []
            for _ in range(4):
                started = time.perf_counter()
                r = http.post("/v1/chat/completions", json=body)
                took.append(time.perf_counter() - started)
                assert r.headers["x-router-cache"] == "hit"
                time.sleep(0.3)
            assert 0.05 <= sorted(took)[1] < 0.09, took  # the first may open the async pool
            redis_server.stop()
            gone = http.post("/v1/chat/completions", json=body)
            assert gone.status_code == 200 and gone.headers["x-router-cache"] == "miss"


def test_hits_served_on_the_loop_are_counted_on_redis_and_in_process_when_it_fails(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A hit's repeat count is written on the server loop's own Redis connection, without a
    thread or a wait: replica A's hits make replica B see the storm; with Redis gone the
    requests are still answered, and recorded."""
    local = FunctionBackend("smollm2", lambda r, p: "local answer")
    body = {"model": "auto", "messages": [{"role": "user", "content": "Hi there, again!"}]}
    a_config = write_config(tmp_path, None, f'\n[shared]\nredis_url = "{redis_server.url}"\n')
    with (
        Router(a_config, backends={"smollm2": local}) as router,
        ServerThread(create_app(router)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
        replica(tmp_path, "b", redis_server, None) as b,
    ):
        writer = router._repeats._wake  # type: ignore[attr-defined]  # the writer thread's
        woken: list[int] = []
        writer.set = lambda wake=writer.set: (woken.append(1), wake())[1]
        caches = [http.post("/v1/chat/completions", json=body).headers["x-router-cache"]]
        time.sleep(0.2)  # the miss (answered in a worker thread) is counted by the writer
        caches += [http.post("/v1/chat/completions", json=body).headers["x-router-cache"]]
        assert caches == ["miss", "hit"] and woken == [1]  # the hit's count: not the thread's
        time.sleep(0.1)
        third = ask(b, "Hi there, again!")  # B counts A's two answers: a storm
        assert "repeat" in third.routing.flags
        redis_server.stop()
        served = [http.post("/v1/chat/completions", json=body) for _ in range(2)]
        assert [r.status_code for r in served] == [200, 200]
        assert len(router.ledger.entries()) == 4


def test_a_session_limit_holds_across_replicas(
    tmp_path: Path, redis_server: RedisServer, fake_cloud: FakeCloud, cloud_key: None
) -> None:
    """`session_usd`: what one session may spend in all, on Redis as on SQLite: one replica's
    spending counts on the other, and another session starts afresh."""
    from router.config import Budget

    with (
        replica(tmp_path, "a", redis_server, fake_cloud) as a,
        replica(tmp_path, "b", redis_server, fake_cloud) as b,
    ):
        a.budgets.set(Budget(user="ana", session_tokens=1))
        store = b.budgets
        deadline = time.monotonic() + 5
        while "user:ana" not in store.budgets() and time.monotonic() < deadline:
            time.sleep(0.1)
        first = store.reserve("ana", 1, 0.0, session="s-1")
        store.settle(first, 1, 0.0)
        with pytest.raises(BudgetExceededError, match=r"session_tokens.*start a new one"):
            a.budgets.reserve("ana", 1, 0.0, session="s-1")
        assert a.budgets.reserve("ana", 1, 0.0, session="s-2") is not None
        assert a.budgets.reserve("ana", 1, 0.0) is None  # no session: nothing to hold, no refusal


def test_a_rate_limit_holds_in_total_across_two_served_replicas(
    tmp_path: Path, redis_server: RedisServer, cloud_key: None
) -> None:
    """rpm = 10 on Redis is 10 in all, whichever replica a request reaches; with each
    replica's own counters (no [shared]) the same burst gets 10 from each."""
    rule = '\n[[limits]]\nuser = "burst"\nrpm = 10\ntpm = 1000000\n'

    def burst(routers: list[Router]) -> list[int]:
        with (
            ServerThread(create_app(routers[0])) as one,
            ServerThread(create_app(routers[1])) as two,
            httpx.Client(timeout=60) as http,
            ThreadPoolExecutor(32) as pool,
        ):

            def post(i: int) -> int:
                body = {"model": "local", "user": "burst", "messages": [
                    {"role": "user", "content": f"Say {i}."}]}  # fmt: skip
                url = (one, two)[i % 2].url + "/v1/chat/completions"
                return http.post(url, json=body).status_code

            return list(pool.map(post, range(100)))

    with (
        replica(tmp_path, "a", redis_server, None, rule) as a,
        replica(tmp_path, "b", redis_server, None, rule) as b,
    ):
        statuses = burst([a, b])
        assert statuses.count(200) == 10 and statuses.count(429) == 90, statuses
        served = [sum(1 for e in r.ledger.entries() if not e.refusal) for r in (a, b)]
        assert sum(served) == 10  # whichever replica won each race
        refused = [sum(e.refusal == "rate_limited" for e in r.ledger.entries()) for r in (a, b)]
        assert sum(refused) == 90

    alone = tmp_path / "alone"
    alone.mkdir()
    routers = []
    for name in ("c", "d"):
        (alone / name).mkdir()
        config = write_config(alone / name, None, rule)
        local = FunctionBackend("smollm2", lambda r, p: "local")
        routers.append(Router(config, backends={"smollm2": local}))
    try:
        assert burst(routers).count(200) == 20  # what a limit per replica would let through
    finally:
        for r in routers:
            r.close()


def test_rate_limits_count_in_process_while_redis_is_down(tmp_path: Path) -> None:
    from router.errors import RateLimitedError
    from router.governance.limits import Window
    from router.shared import Link
    from router.shared.limits import RedisLimits

    limits = RedisLimits(Link("redis://127.0.0.1:9/0", "router:", 0.5))
    w = [Window("user:ana", "user:ana", 2, 100)]
    limits.admit(w)
    limits.used(w, 5)
    asyncio.run(limits.aadmit(w))  # the server's way, on its event loop
    with pytest.raises(RateLimitedError, match="rpm = 2 reached"):
        limits.admit(w)  # never unlimited: this replica's own count


def test_redis_rate_limits_say_when_to_retry_and_count_tokens(redis_server: RedisServer) -> None:
    from router.errors import RateLimitedError
    from router.governance.limits import Window
    from router.shared import Link
    from router.shared.limits import RedisLimits

    link = Link(redis_server.url, "router:", 2.0)
    one, other = RedisLimits(link), RedisLimits(link)  # two replicas' views
    tokens = [Window("user:tok", "user:tok", None, 100)]
    one.admit(tokens)
    other.used(tokens, 150)  # written by a background thread: the request does not wait
    deadline = time.monotonic() + 5
    while not link.client.exists(link.key("limits", "user:tok", "tokens")):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(RateLimitedError) as caught:
        one.admit(tokens)
    assert caught.value.kind == "tpm" and 58 <= caught.value.retry_after <= 61
    assert "150 tokens in the last minute" in str(caught.value)
    requests = [Window("user:ana", "user:ana", 2, None), Window("team:eng", "team:eng", 50, None)]
    one.admit(requests)
    time.sleep(0.5)
    other.admit(requests)
    with pytest.raises(RateLimitedError) as caught:
        one.admit(requests)
    assert caught.value.kind == "rpm" and 59 <= caught.value.retry_after <= 60  # the first's
    # Refused in one window, counted in none: the team's holds the two admitted.
    assert link.client.zcard(link.key("limits", "team:eng", "hits")) == 2
    assert 0 < link.client.ttl(link.key("limits", "user:ana", "hits")) <= 65


def test_scoped_keys_on_redis_rotate_and_a_revocation_reaches_the_other_replica_at_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with (
        replica(tmp_path, "a", redis_server, None) as a,
        replica(tmp_path, "b", redis_server, None) as b,
    ):
        store, other = key_store(a.config), key_store(b.config)
        key, key_id = store.create(
            "ana", expires=time.time() + 600, models=("local",), rpm=5, daily_usd=3.0, tpm=70
        )
        seen = other.owner(key)
        assert seen is not None and (seen.key_id, seen.models, seen.rpm) == (key_id, ("local",), 5)
        assert seen.daily_usd == 3.0 and seen.tpm == 70
        other.touch(seen)
        assert next(k for k in store.list() if k.key_id == key_id).last_used is not None
        made = store.rotate(key_id, 60)
        assert made is not None
        new_owner = other.owner(made[0])
        assert new_owner is not None and new_owner.models == ("local",) and new_owner.rpm == 5
        assert new_owner.daily_usd == 3.0 and new_owner.tpm == 70
        changed = store.change(made[1], daily_usd=None)
        assert changed is not None and (other.owner(made[0]) or new_owner).daily_usd is None
        old = other.owner(key)
        assert old is not None and 0 < (old.expires or 0) - time.time() <= 60  # its grace
        body = {"model": "local", "messages": [{"role": "user", "content": "Hi"}]}
        headers = {"Authorization": f"Bearer {made[0]}"}
        apps = [create_app(r, keys=key_store(r.config), require_keys=True) for r in (a, b)]
        with ServerThread(apps[0]) as one, ServerThread(apps[1]) as two:
            assert httpx.post(f"{two.url}/v1/chat/completions", json=body,
                              headers=headers).status_code == 200  # fmt: skip
            assert store.revoke(made[1])  # on replica a's side
            started = time.monotonic()
            refused = httpx.post(f"{two.url}/v1/chat/completions", json=body, headers=headers)
            assert refused.status_code == 401 and time.monotonic() - started < 1.0
            assert httpx.post(f"{one.url}/v1/chat/completions", json=body,
                              headers=headers).status_code == 401  # fmt: skip
        other.touch(new_owner)  # a revoked key's last use does not bring it back
        assert other.owner(made[0]) is None


def test_a_rate_limit_set_on_one_replica_holds_on_the_other_within_a_second(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    from router.config import RateLimit
    from router.errors import RateLimitedError

    with (
        replica(tmp_path, "a", redis_server, None) as a,
        replica(tmp_path, "b", redis_server, None) as b,
    ):
        assert not b.limited()
        a.rate_rules.set(RateLimit(user="ana", rpm=1))
        time.sleep(1.05)  # what b read of the rules is at most a second old
        assert b.limited()
        request = ChatRequest([{"role": "user", "content": "Hi"}], "local", user="ana")
        b.admit(request)
        with pytest.raises(RateLimitedError, match="user:ana rpm = 1"):
            a.admit(request)  # one window for both
        assert [r["source"] for r in b.rate_rules.rows()] == ["set"]
        assert b.rate_rules.remove("user:ana|*") and not a.rate_rules.remove("user:ana|*")


def test_an_alert_is_sent_by_one_replica_only(tmp_path: Path, redis_server: RedisServer) -> None:
    from router.engine.stores import alerts_for

    extra = "\n[alerts]\nwindow_seconds = 60\n"  # no webhook: the log line is the alert
    with (
        replica(tmp_path, "a", redis_server, None, extra) as a,
        replica(tmp_path, "b", redis_server, None, extra) as b,
    ):
        assert a.alerts is not None and b.alerts is not None
        said = [r.alerts.deliver("cloud_failing", "cloud-mini", "failing", {}) for r in (a, b)]
        assert said == [True, None]  # b found it claimed
        assert b.alerts.deliver("cloud_failing", "other-model", "failing", {}) is True
        key = a.link.key("alerts", "cloud_failing:cloud-mini") if a.link else ""
        assert 0 < a.link.client.ttl(key) <= 60 if a.link else False
        # Redis down: each replica claims in its own process, never silent.
        down = alerts_for(a.config, Link("redis://127.0.0.1:9/0", "router:", 0.2))
        assert down is not None and down.deliver("burn_rate", "hour", "x", {}) is True
        assert down.deliver("burn_rate", "hour", "x", {}) is None
