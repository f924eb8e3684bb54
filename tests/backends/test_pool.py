"""Remote local models and pools without a model: the Pool's choices on a fake clock, and
RemoteBackend over real HTTP against the loopback OpenAI-compatible stand-in (tests/fakecloud)
and a port where nothing listens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router import Router, load_config
from router.backends.pool import Pool, _weight
from router.backends.remote import RemoteBackend, conversation
from router.config import LocalModel
from router.errors import BackendError
from router.server import create_app
from router.types import ChatRequest
from tests.fakecloud import FakeCloud, Fault, answer_for
from tests.server_harness import ServerThread

DEAD = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_least_outstanding_requests_then_round_robin() -> None:
    pool = Pool(["a", "b", "c"], eject_seconds=30, probe=lambda url: None, clock=Clock())
    first = pool.acquire(set())
    second = pool.acquire(set())
    third = pool.acquire(set())
    assert first and second and third
    assert {first.url, second.url, third.url} == {"a", "b", "c"}  # the idle ones first
    pool.succeeded(second)
    assert pool.acquire(set()) is second  # the only one with nothing in flight
    served = []
    for _ in range(6):  # all idle again: they take turns
        for e in (first, second, third):
            pool.succeeded(e) if e.in_flight else None
        chosen = pool.acquire(set())
        assert chosen is not None
        served.append(chosen.url)
        pool.succeeded(chosen)
    assert sorted(served) == ["a", "a", "b", "b", "c", "c"]


def test_a_failed_endpoint_is_ejected_doubling_then_probed_before_it_returns() -> None:
    clock = Clock()
    probes: list[str] = []
    healthy = {"a": True}

    def probe(url: str) -> None:
        probes.append(url)
        if not healthy[url]:
            raise ConnectionError("refused")

    pool = Pool(["a"], eject_seconds=30, probe=probe, clock=clock)
    e = pool.acquire(set())
    assert e is not None
    pool.failed(e, "HTTP 502")
    assert pool.acquire(set()) is None and pool.seconds_until_usable() == 30
    assert pool.health()[0]["state"] == "ejected" and pool.health()[0]["last_error"] == "HTTP 502"
    clock.now += 30
    healthy["a"] = False
    assert pool.acquire(set()) is None  # probed, failed: out again, for twice as long
    assert probes == ["a"] and pool.seconds_until_usable() == 60
    clock.now += 60
    healthy["a"] = True
    back = pool.acquire(set())
    assert back is e and probes == ["a", "a"] and pool.health()[0]["state"] == "up"
    pool.succeeded(back)
    pool.failed(pool.acquire(set()) or e, "timed out")  # a new failure starts at 30 s again
    assert pool.seconds_until_usable() == 30


def test_a_conversation_keeps_its_endpoint_unless_that_one_is_busier() -> None:
    """Its server's prompt cache holds its prefix: each turn goes to the same endpoint, while
    conversations spread over the pool and a busy home is passed over."""
    pool = Pool(["a", "b", "c"], eject_seconds=30, probe=lambda url: None)
    turns = [
        [{"role": "system", "content": f"app {n}"}, {"role": "user", "content": "Hi."}]
        for n in range(12)
    ]
    homes = {}
    for n, opening in enumerate(turns):
        for follow in range(3):  # later turns: the same opening, more after it
            more = [{"role": "assistant", "content": "Yes."}, {"role": "user", "content": "?"}]
            e = pool.acquire(set(), conversation(ChatRequest(opening + more * follow)))
            assert e is not None
            pool.succeeded(e)
            assert homes.setdefault(n, e.url) == e.url
    assert len(set(homes.values())) == 3  # twelve conversations over the three
    session = conversation(ChatRequest(turns[0], session="s-1"))
    assert session == conversation(ChatRequest(turns[5], session="s-1"))
    # Its home has two requests in flight more than another endpoint: it goes elsewhere.
    key = conversation(ChatRequest(turns[0]))
    home = pool.acquire(set(), key)
    other = pool.acquire(set(), key)
    assert home is not None and other is not None
    assert home.url == homes[0] and other.url == homes[0]  # one more in flight: still home
    third = pool.acquire(set(), key)
    assert third is not None and third.url != homes[0]


def remote(fake: FakeCloud | None, *bases: str, **extra: Any) -> RemoteBackend:
    urls = [*bases] + ([fake.base_url] if fake else [])
    model = LocalModel(tier="local", api_base=urls, remote_model="team-model", **extra)
    return RemoteBackend("team", model)


def ask(text: str) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}])


def test_a_request_moves_to_another_endpoint_and_the_dead_one_is_ejected(
    fake_cloud: FakeCloud,
) -> None:
    backend = remote(fake_cloud, DEAD)
    # Six conversations: each goes to its own home endpoint, some of them the dead one.
    texts = [f"Hi {n}" for n in range(6)]
    assert any(
        max(backend.pool.endpoints, key=lambda e: _weight(conversation(ask(t)), e.url)).url == DEAD
        for t in texts
    )
    for text in texts:
        done = backend.complete(ask(text), {"max_tokens": 8})
        assert done["choices"][0]["message"]["content"] == answer_for(
            [{"role": "user", "content": text}]
        )
        assert done["model"] == "team" and done["usage"]["completion_tokens"] > 0
    states = {e["url"]: e for e in backend.health()["endpoints"]}
    assert states[DEAD]["state"] == "ejected" and "cannot reach it" in states[DEAD]["last_error"]
    assert states[DEAD]["failures"] == 1  # tried once, then left alone
    assert states[fake_cloud.base_url]["served"] == 6
    assert fake_cloud.requests[-1]["model"] == "team-model"  # the name the server knows
    chunks = list(backend.stream(ask("Hello"), {"max_tokens": 8}))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == answer_for([{"role": "user", "content": "Hello"}])
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    backend.close()


def test_a_4xx_never_ejects_and_5xx_eject_only_eject_after_in_a_row(fake_cloud: FakeCloud) -> None:
    backend = remote(fake_cloud)  # eject_after = 3 (the default)
    fake_cloud.inject(Fault(404, message="model 'team-model' not found"))
    with pytest.raises(BackendError, match=r"HTTP 404: model 'team-model' not found.*--probe"):
        backend.complete(ask("Hi"), {"max_tokens": 8})
    assert backend.health()["endpoints"][0]["state"] == "up"
    fake_cloud.inject(Fault(503))
    with pytest.raises(BackendError, match=r"every endpoint failed: .*HTTP 503"):
        backend.complete(ask("Hi"), {"max_tokens": 8})
    # One 5xx is weak evidence: the endpoint keeps serving everyone else.
    assert backend.unusable() is None and backend.health()["endpoints"][0]["state"] == "up"
    backend.complete(ask("Hi"), {"max_tokens": 8})  # a success: the count starts over
    for n in (1, 2):
        fake_cloud.inject(Fault(500))
        with pytest.raises(BackendError):
            backend.complete(ask("Hi"), {"max_tokens": 8})
        assert backend.health()["endpoints"][0]["failures_in_a_row"] == n
        assert backend.unusable() is None
    fake_cloud.inject(Fault(502))
    with pytest.raises(BackendError):
        backend.complete(ask("Hi"), {"max_tokens": 8})
    assert backend.unusable() is not None and 29 < backend.seconds_until_usable() <= 30
    backend.close()


def test_a_5xx_that_is_a_validation_error_is_the_requests_fault(fake_cloud: FakeCloud) -> None:
    """llama_cpp.server answers a json_schema response_format with HTTP 500 "Input should be
    'text' or 'json_object'": that request fails (the engine moves it on), the server stays
    in, however often it is asked."""
    backend = remote(fake_cloud, eject_after=1)
    for _ in range(3):
        fake_cloud.inject(Fault(500, message="1 validation error: Input should be 'text'"))
        with pytest.raises(BackendError, match=r"refused the request: HTTP 500: 1 validation"):
            backend.complete(ask("Hi"), {"max_tokens": 8})
    assert backend.unusable() is None and backend.health()["endpoints"][0]["failures"] == 0
    assert backend.complete(ask("Hi"), {"max_tokens": 8})["choices"]
    backend.close()


def test_a_5xx_moves_the_request_to_another_endpoint_without_ejecting_it(
    fake_cloud: FakeCloud,
) -> None:
    other = FakeCloud().start()
    try:
        backend = remote(fake_cloud, other.base_url)
        # The conversation's home endpoint (tried first) answers 500.
        home = max(backend.pool.endpoints, key=lambda e: _weight(conversation(ask("Hi")), e.url))
        (other if home.url == other.base_url else fake_cloud).inject(Fault(500))
        done = backend.complete(ask("Hi"), {"max_tokens": 8})
        assert done["choices"][0]["message"]["content"] == answer_for(
            [{"role": "user", "content": "Hi"}]
        )
        states = [e["state"] for e in backend.health()["endpoints"]]
        assert states == ["up", "up"]
        failures = {e["url"]: e["failures"] for e in backend.health()["endpoints"]}
        assert failures[home.url] == 1 and sum(failures.values()) == 1
        backend.close()
    finally:
        other.stop()


def test_a_stream_cut_by_a_dying_endpoint_is_a_backend_error(fake_cloud: FakeCloud) -> None:
    backend = remote(fake_cloud, timeout_seconds=1)
    fake_cloud.inject(Fault(200, delay=3))  # silent past the timeout before any answer
    with pytest.raises(BackendError, match=r"timed out"):
        list(backend.stream(ask("Hi"), {"max_tokens": 8}))
    backend.close()


@pytest.fixture
def team_router(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Router]:
    from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, write_config

    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    other = FakeCloud().start()
    extra = (
        f'\n[models.team]\ntier = "local"\napi_base = "{other.base_url}"\n'
        'remote_model = "llama3"\nmax_score = 0.5\n'
        '\n[[budgets]]\nuser = "ana"\ndaily_tokens = 1\n'
    )
    text = write_config(tmp_path, fake_cloud.base_url, extra).read_text()
    text = text.replace(
        '[models.smollm2]\ntier = "local"', '[models.smollm2]\nenabled = false\ntier = "local"'
    )
    config = tmp_path / "team.toml"
    config.write_text(text)
    router = Router(load_config(config))
    router.team_server = other  # type: ignore[attr-defined]
    yield router
    router.close()
    other.stop()


def test_a_remote_local_model_is_the_local_tier_everywhere(team_router: Router) -> None:
    done = team_router.complete(
        [{"role": "user", "content": "What's the capital of France?"}], user="ana"
    )
    r = done.routing
    assert (r.tier, r.model, r.cost_usd) == ("local", "team", 0.0)
    assert r.tokens_saved > 0 and r.usd_saved > 0  # counted as saved
    assert team_router.budgets.usage("user:ana")["daily_tokens"] == 0  # never budgeted
    assert team_router.team_server.requests[-1]["model"] == "llama3"  # type: ignore[attr-defined]
    assert team_router.local_runtime("team")["endpoints"][0]["served"] == 1


@pytest.mark.slow  # the cloud through LiteLLM
def test_when_every_endpoint_is_down_auto_falls_back_to_the_cloud(
    team_router: Router, fake_cloud: FakeCloud
) -> None:
    team_router.team_server.stop()  # type: ignore[attr-defined]
    done = team_router.complete([{"role": "user", "content": "Hi there"}])
    assert done.routing.tier == "cloud" and "team: every endpoint failed" in done.routing.reason
    again = team_router.complete([{"role": "user", "content": "Good morning"}])
    # Ejected: not even tried for the next request; the policy sees it as unusable.
    assert again.routing.tier == "cloud" and again.routing.attempts == []
    why = team_router.model_views()["team"].unusable
    assert why is not None and why.startswith("every endpoint of team is ejected after failing")
    # /health says so, to anyone, in public words (no endpoint URL).
    with ServerThread(create_app(team_router)) as server:
        health = httpx.get(server.url + "/health").json()
    assert health["status"] == "degraded" and health["reasons"] == [
        "no local model is usable, so every answer is paid for: team: every server of team is "
        "down after failing"
    ]


def test_images_reach_a_server_that_reads_them_and_tools_become_text_for_one_without(
    fake_cloud: FakeCloud,
) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    content = [{"type": "text", "text": "What is in it?"}, image]
    vision = remote(fake_cloud, supports_vision=True)
    vision.complete(ChatRequest([{"role": "user", "content": content}]), {"max_tokens": 8})
    assert fake_cloud.requests[-1]["messages"][0]["content"] == content
    plain = remote(fake_cloud)
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    plain.complete(
        ChatRequest(
            [
                {"role": "user", "content": "Use f"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ]
        ),
        {"max_tokens": 8},
    )
    sent = fake_cloud.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert "[called tool f({})]" in sent[1]["content"] and "42" in sent[2]["content"]
    vision.close()
    plain.close()
