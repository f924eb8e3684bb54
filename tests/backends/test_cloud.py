"""The cloud tier through the real LiteLLM, against an OpenAI-compatible server on loopback,
with injected 429s, 5xx and timeouts proving retry, backoff and fallback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from router import NoRouteError, Router, UnavailableError
from router.backends.cloud import parse_retry_after
from router.errors import CloudRefusedError
from router.ledger.pricing import lookup
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, EASY_PROMPT, HARD_PROMPT, Sleeps
from tests.fakecloud import FakeCloud, Fault, answer_for

pytestmark = pytest.mark.slow

MINI = lookup("gpt-4o-mini")
GPT_4O = lookup("gpt-4o")
assert MINI is not None and GPT_4O is not None


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_hard_prompt_goes_to_the_cloud_through_litellm(
    make_router: Callable[..., Router], fake_cloud: FakeCloud
) -> None:
    router = make_router(fake_cloud)
    done = router.complete(ask(HARD_PROMPT), max_tokens=50, temperature=0.2, seed=3)
    assert done.text == answer_for(ask(HARD_PROMPT))
    r = done.routing
    assert (r.tier, r.model) == ("cloud", "cloud-mini")
    assert r.score > 0.35 and "ceiling" in r.reason
    sent = fake_cloud.requests[-1]
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"] == ask(HARD_PROMPT)
    assert (sent["max_tokens"], sent["temperature"], sent["seed"]) == (50, 0.2, 3)
    assert fake_cloud.headers[-1]["authorization"] == f"Bearer {CLOUD_KEY}"
    # Paid at gpt-4o-mini prices; saved against the gpt-4o baseline; no tokens saved.
    usage = done.response["usage"]
    assert r.cost_usd == pytest.approx(
        MINI.cost(usage["prompt_tokens"], usage["completion_tokens"])
    )
    assert r.baseline_usd == pytest.approx(
        GPT_4O.cost(usage["prompt_tokens"], usage["completion_tokens"])
    )
    assert r.usd_saved == pytest.approx(r.baseline_usd - r.cost_usd) and r.usd_saved > 0
    assert r.tokens_saved == 0
    row = router.ledger.entries()[-1]
    assert (row.tier, row.model, row.cost_usd) == ("cloud", "cloud-mini", r.cost_usd)


def test_cloud_calls_reuse_one_connection(
    make_light_router: Callable[..., Router], fake_cloud: FakeCloud
) -> None:
    """Each call's timeout is what is left of the request's deadline when that is nearer than
    the model's own (the shipped defaults: both 60 s); LiteLLM keeps one HTTP client per
    timeout value, so a timeout that differed on every call meant a new client and a new TCP
    connection (to a real provider, a new TLS handshake too) on every call."""
    router = make_light_router(
        fake_cloud,
        f"""
        [models.cloud-patient]
        tier = "cloud"
        litellm_model = "openai/gpt-4o-mini"
        api_key_env = "{CLOUD_KEY_ENV}"
        api_base = "{fake_cloud.base_url}"
        timeout_seconds = 60
        """,
    )
    opened = []
    for i in range(6):
        done = router.complete(ask(f"{HARD_PROMPT} ({i})"), model="cloud-patient", max_tokens=20)
        assert done.routing.model == "cloud-patient"
        opened.append(fake_cloud.connections)
    assert len(fake_cloud.requests) == 6
    # The first call also waits for LiteLLM's import (seconds of the deadline); after it, one
    # connection serves every call.
    assert opened[1:] == [opened[1]] * 5, opened


def test_easy_prompt_never_reaches_the_cloud(
    make_router: Callable[..., Router], fake_cloud: FakeCloud
) -> None:
    router = make_router(fake_cloud)
    assert router.complete(ask(EASY_PROMPT), max_tokens=8).routing.tier == "local"
    assert fake_cloud.requests == []


def test_streaming_from_the_cloud_with_usage_and_caching(
    make_router: Callable[..., Router], fake_cloud: FakeCloud
) -> None:
    router = make_router(fake_cloud)
    stream = router.stream(ask(HARD_PROMPT), max_tokens=50)
    assert (stream.routing.tier, stream.routing.model) == ("cloud", "cloud-mini")
    assert stream.text() == answer_for(ask(HARD_PROMPT))
    assert fake_cloud.requests[-1]["stream"] is True
    assert stream.routing.completion_tokens > 0
    assert stream.routing.cost_usd == pytest.approx(
        MINI.cost(stream.routing.prompt_tokens, stream.routing.completion_tokens)
    )
    hit = router.complete(ask(HARD_PROMPT), max_tokens=50)
    assert hit.routing.cache_hit and hit.routing.cost_usd == 0
    assert (
        hit.routing.tokens_saved == stream.routing.prompt_tokens + stream.routing.completion_tokens
    )
    assert len(fake_cloud.requests) == 1


def test_429_is_retried_after_the_servers_retry_after(
    make_router: Callable[..., Router], fake_cloud: FakeCloud
) -> None:
    sleeps = Sleeps()
    router = make_router(fake_cloud, sleep=sleeps)
    fake_cloud.inject(Fault(429, {"Retry-After": "1.5"}, message="slow down"))
    done = router.complete(ask(HARD_PROMPT), max_tokens=20)
    assert done.routing.tier == "cloud"
    assert sleeps == [1.5]
    assert len(fake_cloud.requests) == 2


def test_5xx_backs_off_exponentially_then_succeeds(
    make_router: Callable[..., Router], fake_cloud: FakeCloud
) -> None:
    sleeps = Sleeps()
    router = make_router(fake_cloud, sleep=sleeps)
    fake_cloud.inject(Fault(500), Fault(503))
    done = router.complete(ask(HARD_PROMPT), max_tokens=20)
    assert done.routing.tier == "cloud" and done.routing.attempts == []
    assert sleeps == [0.01, 0.02]  # backoff_seconds = 0.01, doubled


def test_persistent_failure_falls_back_to_local_and_says_so(
    make_router: Callable[..., Router], fake_cloud: FakeCloud
) -> None:
    sleeps = Sleeps()
    router = make_router(fake_cloud, sleep=sleeps)
    fake_cloud.inject(*[Fault(500)] * 3)
    done = router.complete(ask(HARD_PROMPT), max_tokens=8)
    r = done.routing
    assert (r.tier, r.model) == ("local", "smollm2")
    assert "cloud-mini: HTTP 500" in r.reason and "after 3 attempts" in r.reason
    assert "answered locally by smollm2" in r.reason
    assert len(fake_cloud.requests) == 3 and len(sleeps) == 2
    assert router.ledger.entries()[-1].reason == r.reason
    # The fallback answer is not cached: once the cloud is back, the same request goes there.
    again = router.complete(ask(HARD_PROMPT), max_tokens=8)
    assert (again.routing.tier, again.routing.cache_hit) == ("cloud", False)


def test_client_errors_are_not_retried(
    make_router: Callable[..., Router], fake_cloud: FakeCloud
) -> None:
    sleeps = Sleeps()
    router = make_router(fake_cloud, sleep=sleeps)
    fake_cloud.inject(Fault(400, message="bad request"))
    with pytest.raises(CloudRefusedError, match=r"HTTP 400.*refused the request as written"):
        router.complete(ask(HARD_PROMPT), max_tokens=8)
    assert sleeps == [] and len(fake_cloud.requests) == 1


def test_timeouts_are_retried_then_fall_back(
    make_router: Callable[..., Router], fake_cloud: FakeCloud
) -> None:
    extra = ""
    router = make_router(fake_cloud, extra=extra)
    cloud_cfg = router.config.models["cloud-mini"].model_copy(update={"timeout_seconds": 0.3})
    router.config = router.config.model_copy(
        update={
            "models": {**router.config.models, "cloud-mini": cloud_cfg},
            "retry": router.config.retry.model_copy(update={"max_retries": 1}),
        }
    )
    fake_cloud.inject(Fault(200, delay=1.0), Fault(200, delay=1.0))
    done = router.complete(ask(HARD_PROMPT), max_tokens=8)
    assert done.routing.tier == "local"
    assert "timed out" in done.routing.reason and "after 2 attempts" in done.routing.reason


def test_stream_failure_before_first_chunk_falls_back(
    make_router: Callable[..., Router], fake_cloud: FakeCloud
) -> None:
    router = make_router(fake_cloud)
    fake_cloud.inject(*[Fault(502)] * 3)
    stream = router.stream(ask(HARD_PROMPT), max_tokens=8)
    assert stream.routing.tier == "local" and "HTTP 502" in stream.routing.reason
    assert stream.text()


def test_forced_cloud_model_that_fails_is_an_error_not_a_silent_fallback(
    make_router: Callable[..., Router], fake_cloud: FakeCloud
) -> None:
    router = make_router(fake_cloud)
    fake_cloud.inject(*[Fault(500)] * 3)
    with pytest.raises(UnavailableError, match=r"cloud-mini: HTTP 500"):
        router.complete(ask("Hi"), model="cloud-mini", max_tokens=8)
    assert router.ledger.entries() == []  # nothing recorded for a failed request


class Unreachable:
    base_url = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there


def test_a_forced_cloud_tier_is_never_answered_locally(
    make_router: Callable[..., Router], fake_cloud: FakeCloud
) -> None:
    no_key = make_router(fake_cloud, key=False)
    with pytest.raises(NoRouteError, match=r"cloud-mini: ROUTER_TEST_CLOUD_KEY is not set"):
        no_key.complete(ask("Hi"), model="cloud", max_tokens=4)
    down = make_router(Unreachable())  # type: ignore[arg-type]
    with pytest.raises(UnavailableError) as err:
        down.stream(ask("Hi"), model="cloud", max_tokens=4)
    assert "cloud-mini: cannot reach http://127.0.0.1:9/v1 (Connection refused)" in str(err.value)
    assert "HTTP 500" not in str(err.value) and "InternalServerError" not in str(err.value)
    assert no_key.ledger.entries() == [] and down.ledger.entries() == []


def test_auto_answers_locally_only_when_the_cloud_failure_is_transient(
    make_router: Callable[..., Router], fake_cloud: FakeCloud
) -> None:
    down = make_router(Unreachable())  # type: ignore[arg-type]
    done = down.complete(ask(HARD_PROMPT), max_tokens=4)
    assert done.routing.tier == "local"
    assert "cannot reach http://127.0.0.1:9/v1" in done.routing.reason
    assert "answered locally by smollm2" in done.routing.reason
    # A wrong key is a setting to fix: surfaced (HTTP 502 on the endpoint), not hidden.
    router = make_router(fake_cloud)
    fake_cloud.inject(Fault(401, message="Incorrect API key provided"))
    with pytest.raises(CloudRefusedError, match=r"cloud-mini: HTTP 401.*api_key_env") as err:
        router.complete(ask(HARD_PROMPT), max_tokens=4)
    assert "not answered locally" in str(err.value) and err.value.status == 401
    fake_cloud.inject(Fault(404, message="The model does not exist"))
    with pytest.raises(CloudRefusedError, match=r"HTTP 404"):
        router.stream(ask(HARD_PROMPT), max_tokens=4)
    assert len(router.ledger.entries()) == 1  # (one ledger file): only the fallback above


def test_without_a_key_hard_prompts_are_answered_locally_with_the_reason(
    make_router: Callable[..., Router], fake_cloud: FakeCloud
) -> None:
    router = make_router(fake_cloud, key=False)
    done = router.complete(ask(HARD_PROMPT), max_tokens=8)
    assert done.routing.tier == "local"
    assert "ROUTER_TEST_CLOUD_KEY is not set" in done.routing.reason
    assert fake_cloud.requests == []


def test_shipped_default_uses_openai_key_and_base_url(
    fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The shipped models.toml, unchanged: OPENAI_API_KEY enables the cloud tier and
    OPENAI_BASE_URL points it at any OpenAI-compatible server."""
    monkeypatch.chdir(tmp_path)
    for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    monkeypatch.setenv("OPENAI_BASE_URL", fake_cloud.base_url)
    with Router() as router:
        done = router.complete(ask(HARD_PROMPT), max_tokens=20)
        assert (done.routing.tier, done.routing.model) == ("cloud", "gpt-4o-mini")
        assert done.text == answer_for(ask(HARD_PROMPT))
        assert fake_cloud.headers[-1]["authorization"] == "Bearer sk-test-not-real"
        assert (tmp_path / "xdg_data_home" / "router" / "ledger.sqlite3").is_file()
        assert (tmp_path / "xdg_cache_home" / "router" / "responses").is_dir()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past
        ({}, None),
        ({"Retry-After": "soon"}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_a_bug_inside_litellm_is_logged_not_shown_to_the_client(
    make_router: Callable[..., Router],
    fake_cloud: FakeCloud,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from router.backends.cloud import litellm_module

    router = make_router(fake_cloud)

    def broken(**kwargs: object) -> None:
        raise TypeError("'int' object is not iterable")

    monkeypatch.setattr(litellm_module(), "completion", broken)
    done = router.complete(ask(HARD_PROMPT), max_tokens=4)
    assert done.routing.tier == "local"  # an unknown failure is a fallback, as a transient one
    assert (
        "cloud-mini: the cloud call failed (the server log has the details)" in done.routing.reason
    )
    assert "TypeError" not in done.routing.reason and "iterable" not in done.routing.reason
    assert "'int' object is not iterable" in caplog.text


def test_the_start_up_warm_up_leaves_nothing_to_the_first_call(fake_cloud: FakeCloud) -> None:
    """`router serve` warms LiteLLM at start-up: after it, the OpenAI SDK's answer schemas are
    built (pydantic builds them on the first answer parsed: tens of ms, 150 on an Intel Xeon)
    and the HTTP client with its TLS context exists, so a fresh server's first cloud request
    costs what its second does. In a process of its own: the warm-up happens once a process."""
    import json
    import subprocess
    import sys

    script = f"""
import json, os, time
os.environ["K"] = "sk-test"
from router.backends.cloud import CloudBackend, litellm_module, litellm_state, warm_litellm
from router.config import parse_toml
from router.types import ChatRequest
warm_litellm()
litellm = litellm_module()
import openai.types.chat as chat
built = chat.ChatCompletionChunk.__pydantic_complete__ and chat.ChatCompletion.__pydantic_complete__
config = parse_toml('[models.c]\\ntier = "cloud"\\nlitellm_model = "openai/gpt-4o-mini"\\n'
                    'api_key_env = "K"\\napi_base = "{fake_cloud.base_url}"\\n')
backend = CloudBackend("c", config.models["c"])
times = []
for _ in range(3):
    started = time.perf_counter()
    list(backend.stream(ChatRequest([{{"role": "user", "content": "hi"}}]), {{"max_tokens": 8}}))
    times.append(time.perf_counter() - started)
print(json.dumps({{"state": litellm_state(), "built": built,
                  "session": litellm.client_session is not None, "times": times}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["state"] == "ready" and found["built"] and found["session"]
    first, *rest = found["times"]
    assert first < min(rest) + 0.1, found["times"]  # the target: +100 ms at most
