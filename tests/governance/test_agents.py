"""Coding agents' traffic governed: priced as LiteLLM prices it (provider prompt-cache reads and
writes, long-context tiers), budgets that reserve what a turn is expected to use, refusals that
are final and recorded, users and sessions parsed from what agents send, scenario routes and
sticky sessions. Real LiteLLM against a stand-in Anthropic API on loopback, a real server."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from router import ChatRequest, Router
from router.backends import FunctionBackend
from router.cli import app
from router.config import Budget
from router.engine.policy import worst_prompt_tokens
from router.governance.audit import audit
from router.ledger.pricing import cost_map, lookup
from router.server import create_app
from router.server.keys import KeyStore
from router.units import Tokens
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, HARD_PROMPT, write_config
from tests.fakecloud import FakeCloud
from tests.server_harness import ServerThread, at_once

CLAUDE = "anthropic/claude-sonnet-4-5"
DEVICE = "1ee5c9257279198287e45ac6647f63c10af7b4fea2ef7a990486e7ddfd203638"
NO_REPEATS = "\n[guardrails]\nrepeat_window_seconds = 0\n"


def native_model(cloud: FakeCloud) -> str:
    return f"""
    [models.claude]
    tier = "cloud"
    litellm_model = "{CLAUDE}"
    api_key_env = "{CLOUD_KEY_ENV}"
    api_base = "{cloud.base_url.removesuffix("/v1")}"
    timeout_seconds = 10

    [aliases]
    "claude-*" = "claude"
    """


def claude_code_user(session: str) -> str:
    """Claude Code 2.1's metadata.user_id: JSON naming its device, account and session."""
    return json.dumps({"device_id": DEVICE, "account_uuid": "", "session_id": session})


def turn(text: str, session: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,  # what agents send: their model's ceiling, not their need
        "system": "You are a coding agent. " * 40,
        "messages": [{"role": "user", "content": text}],
        "metadata": {"user_id": claude_code_user(session)},
        **extra,
    }


def litellm_cost(tokens: Tokens, model: str = CLAUDE) -> float:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm
    from litellm.types.utils import PromptTokensDetailsWrapper, Usage

    usage = Usage(
        prompt_tokens=tokens.prompt,
        completion_tokens=tokens.completion,
        total_tokens=tokens.prompt + tokens.completion,
        prompt_tokens_details=PromptTokensDetailsWrapper(
            cached_tokens=tokens.cache_read, cache_creation_tokens=tokens.cache_write
        ),
        cache_read_input_tokens=tokens.cache_read,
        cache_creation_input_tokens=tokens.cache_write,
    )
    provider, name = model.split("/", 1)
    prompt, completion = litellm.cost_per_token(
        model=name, custom_llm_provider=provider, usage_object=usage
    )
    return float(prompt + completion)


@pytest.fixture
def agent_server(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Router, str]]:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    path = write_config(tmp_path, fake_cloud.base_url, NO_REPEATS + native_model(fake_cloud))
    with (
        fake_cloud.caching(),
        Router(path) as router,
        ServerThread(create_app(router)) as server,
    ):
        yield router, server.url


# ------------------------------------------------------------------------------ prices


def test_prices_match_litellm_across_its_cost_map() -> None:
    """Every OpenAI and Anthropic chat model of LiteLLM's map, with cache reads and writes and
    prompts past the 200k-token tier: the router's cost is LiteLLM's cost_per_token's."""
    shapes = [(10, 30_000, 1_000, 500), (120_000, 150_000, 0, 2_000), (5_000, 0, 0, 300)]
    checked = 0
    for name, entry in cost_map().items():
        if entry.get("mode") != "chat" or entry.get("litellm_provider") not in (
            "openai",
            "anthropic",
        ):
            continue
        price = lookup(name)
        if price is None:
            continue
        for fresh, read, write, out in shapes:
            if (read and "cache_read_input_token_cost" not in entry) or (
                write and "cache_creation_input_token_cost" not in entry
            ):
                continue  # LiteLLM charges nothing for them there; the router the input price
            tokens = Tokens(fresh + read + write, out, read, write)
            theirs = litellm_cost(tokens, f"{entry['litellm_provider']}/{name}")
            assert math.isclose(price.cost_of(tokens), theirs, rel_tol=1e-3, abs_tol=1e-12), name
            checked += 1
    assert checked > 100
    # The example: claude-sonnet-4-5, 10 fresh, 30,000 read, 1,000 written, 500 out.
    example = Tokens(31_010, 500, 30_000, 1_000)
    sonnet = lookup(CLAUDE)
    assert sonnet is not None and round(sonnet.cost_of(example), 4) == 0.0203
    assert sonnet.cost(31_010, 500) == pytest.approx(0.1005, abs=1e-4)  # all at full price


def test_an_agent_turn_with_cache_reads_is_priced_as_litellm_prices_it(
    agent_server: tuple[Router, str],
) -> None:
    router, url = agent_server
    session = str(uuid.uuid4())
    for text in ("List the files.", "Now read the first one."):
        r = httpx.post(url + "/v1/messages", json=turn(text, session), timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["cache_read_input_tokens"] >= 0  # the provider's own usage
    rows = [e for e in router.ledger.entries() if e.tier == "cloud"]
    assert len(rows) == 2
    assert rows[0].cache_write_tokens > 0 and rows[1].cache_read_tokens > 0  # reads the prefix
    baseline = lookup(router.config.router.baseline)
    assert baseline is not None
    for row in rows:
        tokens = Tokens(
            row.prompt_tokens, row.completion_tokens, row.cache_read_tokens, row.cache_write_tokens
        )
        assert abs(row.cost_usd - litellm_cost(tokens)) <= 1e-5  # to the cent-thousandth
        assert row.cost_usd == pytest.approx(litellm_cost(tokens), rel=1e-3)
        assert row.baseline_usd == pytest.approx(baseline.cost_of(tokens), rel=1e-9)
        # Claude Code's user is its device, the same in every session; its session is kept.
        assert row.user == f"device-{DEVICE[:16]}" and row.session == session
    metrics = httpx.get(url + "/metrics", headers={"Authorization": "Bearer x"}, timeout=30)
    read = sum(r.cache_read_tokens for r in rows)
    assert f"router_provider_cache_read_tokens_total {read}" in metrics.text
    run = CliRunner().invoke(app, ["stats", "--json", "--config", str(router.config.source)])
    report = json.loads(run.stdout)
    assert report["cache_read_tokens"] == sum(r.cache_read_tokens for r in rows)
    assert report["cost_usd"] == pytest.approx(sum(r.cost_usd for r in rows))


# ------------------------------------------------------------------------------ budgets


def test_a_token_budget_that_fits_a_person_serves_an_agent(
    agent_server: tuple[Router, str],
) -> None:
    """max_tokens 32,000 on a 20,000-token daily budget: each turn reserves its prompt and an
    expected completion, settles to what it used (cache reads at a tenth), and ten turns of
    one growing session fit."""
    router, url = agent_server
    router.budgets.set(Budget(user=f"device-{DEVICE[:16]}", daily_tokens=20_000))
    session, history = str(uuid.uuid4()), []
    for i in range(10):
        history.append({"role": "user", "content": f"Step {i}: go on with the refactor."})
        body = {**turn("", session), "messages": list(history)}
        r = httpx.post(url + "/v1/messages", json=body, timeout=30)
        assert r.status_code == 200, (i, r.text)
        history.append({"role": "assistant", "content": r.json()["content"][0]["text"]})
    used = router.budgets.usage(f"user:device-{DEVICE[:16]}")["daily_tokens"]
    rows = [e for e in router.ledger.entries() if e.tier == "cloud"]
    price = lookup(CLAUDE)
    assert price is not None
    counted = sum(
        math.ceil(
            price.budget_tokens(
                Tokens(
                    e.prompt_tokens, e.completion_tokens, e.cache_read_tokens, e.cache_write_tokens
                )
            )
        )
        for e in rows
    )
    assert used == counted < sum(e.prompt_tokens + e.completion_tokens for e in rows)
    # A strict budget reserves the ceiling, as before: the same turn does not fit.
    router.budgets.set(Budget(user=f"device-{DEVICE[:16]}", daily_tokens=20_000, strict=True))
    r = httpx.post(url + "/v1/messages", json=turn("One more.", session), timeout=30)
    assert r.status_code == 402 and "needs up to" in r.json()["error"]["message"]


def test_fifty_concurrent_requests_overrun_a_budget_by_at_most_their_excess(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reservations that expect 1 completion token while answers take ~10: the budget is
    overrun, and by no more than the admitted requests' excess over their reservations."""
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    prompts = [f"Please answer question number {i:02d} about the weather." for i in range(50)]
    reserved = worst_prompt_tokens(ChatRequest([{"role": "user", "content": prompts[0]}])) + 1
    budget = reserved * 10
    extra = NO_REPEATS + f'\n[[budgets]]\nuser = "load"\ndaily_tokens = {budget}\n'
    path = write_config(tmp_path, fake_cloud.base_url, extra)
    text = path.read_text().replace("[router]\n", "[router]\nreserve_completion_tokens = 1\n", 1)
    path.write_text(text)
    with Router(path) as router, ServerThread(create_app(router)) as server:
        statuses = [r.status_code for r in at_once(server.url, prompts, "load")]
        rows = [e for e in router.ledger.entries() if e.user == "load"]
        used = router.budgets.usage("user:load")["daily_tokens"]
    answered = [e for e in rows if not e.refusal]
    refused = [e for e in rows if e.refusal]
    assert len(statuses) == 50 and statuses.count(200) == len(answered) >= 10
    assert len(refused) == 50 - len(answered) > 0  # every refusal is a row
    excess = sum(max(0, e.prompt_tokens + e.completion_tokens - reserved) for e in answered)
    assert used == sum(e.prompt_tokens + e.completion_tokens for e in answered)
    assert used <= budget + excess  # the stated bound


def test_session_budgets_cap_each_session(agent_server: tuple[Router, str]) -> None:
    router, url = agent_server
    user = f"device-{DEVICE[:16]}"
    # A turn reserves ~760 tokens (its prompt, pessimistically, and 256) and uses ~210.
    router.budgets.set(Budget(user=user, session_tokens=900))
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert httpx.post(url + "/v1/messages", json=turn("Hi.", first), timeout=30).status_code == 200
    spent = httpx.post(url + "/v1/messages", json=turn("Again.", first), timeout=30)
    assert spent.status_code == 402
    assert "session_tokens" in spent.json()["error"]["message"]
    assert "start a new one" in spent.json()["error"]["message"]
    fresh = httpx.post(url + "/v1/messages", json=turn("Hi.", second), timeout=30)
    assert fresh.status_code == 200


# ------------------------------------------------------------------------------ refusals


def test_a_spent_budget_is_a_final_answer_in_each_apis_shape_and_a_ledger_row(
    agent_server: tuple[Router, str],
) -> None:
    router, url = agent_server
    router.budgets.set(Budget(user="cara", daily_tokens=5))
    ask = [{"role": "user", "content": "Say hello."}]
    chat = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "claude", "messages": ask, "user": "cara"},
        timeout=30,
    )
    assert chat.status_code == 400 and chat.headers["x-should-retry"] == "false"
    assert "retry-after" not in chat.headers
    error = chat.json()["error"]
    assert error["code"] == error["type"] == "insufficient_quota"
    assert "budget user:cara daily_tokens = 5 tokens" in error["message"]
    headers = {"x-session-id": "cara-1"}
    body = {**turn("Say hello.", "s"), "metadata": {"user_id": "cara"}}
    messages = httpx.post(url + "/v1/messages", json=body, headers=headers, timeout=30)
    assert messages.status_code == 402 and "retry-after" not in messages.headers
    assert messages.json()["error"]["type"] == "billing_error"
    assert "user:cara" in messages.json()["error"]["message"]
    ollama = httpx.post(
        url + "/api/chat",
        json={"model": "claude", "messages": ask, "stream": False},
        headers={"x-session-id": "cara-1", "Authorization": "Bearer x"},
        timeout=30,
    )
    assert ollama.status_code in (200, 400)  # anonymous: no budget, answered (not cara's)
    refusals = [e for e in router.ledger.entries() if e.refusal]
    assert [(e.user, e.refusal, e.api) for e in refusals] == [
        ("cara", "budget", "chat"),
        ("cara", "budget", "messages"),
    ]
    assert refusals[1].session == "cara-1" and refusals[0].prompt_tokens == 0
    assert all(e.reason.startswith("refused: budget user:cara") for e in refusals)
    (cara,) = [a for a in audit(router.ledger, router.config) if a.name == "cara"]
    assert cara.refusals == 2 and cara.cost_usd == 0
    metrics = httpx.get(url + "/metrics", headers={"Authorization": "Bearer x"}, timeout=30)
    assert 'router_refusals_total{kind="budget"} 2' in metrics.text


def test_a_budget_held_by_running_requests_stays_retryable() -> None:
    from router.errors import BudgetExceededError
    from router.governance.budgets import period
    from router.wire.http import http_error

    budget = Budget(user="ana", daily_tokens=100)
    _, reset = period("day", 0)
    held = BudgetExceededError(budget, "daily_tokens", 100, 90, 20, reset, in_flight=True)
    err = http_error(held)
    assert err.status == 429 and err.code == "budget_in_use" and err.headers["Retry-After"]


# ------------------------------------------------------------------------------ identity


def test_sessions_and_users_come_from_what_agents_send(agent_server: tuple[Router, str]) -> None:
    router, url = agent_server
    legacy = f"user_{DEVICE}_account_8f1e2d3c-aaaa-bbbb-cccc-111122223333_session_abcd-1234"
    body = {**turn("Hi.", "x"), "metadata": {"user_id": legacy}}
    assert httpx.post(url + "/v1/messages", json=body, timeout=30).status_code == 200
    # Codex: its session-id header; any client: x-session-id; a bad one is a 400.
    ask = {"model": "claude", "messages": [{"role": "user", "content": "Hi."}]}
    codex = httpx.post(
        url + "/v1/chat/completions", json=ask, headers={"session-id": "codex-7"}, timeout=30
    )
    assert codex.status_code == 200
    bad = httpx.post(
        url + "/v1/chat/completions", json=ask, headers={"x-session-id": "a b"}, timeout=30
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-session-id"
    codex_turn = json.dumps({"installation_id": "d80970c6-4a9f-40af-88be", "session_id": "x"})
    responses = httpx.post(
        url + "/v1/responses",
        json={"model": "claude", "input": "Hi.", "prompt_cache_key": "codex-8"},
        headers={"x-codex-turn-metadata": codex_turn},
        timeout=30,
    )
    assert responses.status_code == 200
    rows = router.ledger.entries()
    assert [(e.user, e.session) for e in rows] == [
        ("8f1e2d3c-aaaa-bbbb-cccc-111122223333", "abcd-1234"),
        (None, "codex-7"),
        ("device-d80970c6-4a9f-40", "codex-8"),  # Codex's installation, as a device
    ]
    source = str(router.config.source)
    run = CliRunner().invoke(app, ["stats", "--by", "session", "--json", "--config", source])
    groups = {g["group"]: g["requests"] for g in json.loads(run.stdout)["groups"]}
    assert groups == {"abcd-1234": 1, "codex-7": 1, "codex-8": 1}
    run = CliRunner().invoke(app, ["logs", "--session", "codex-7", "--json", "--config", source])
    assert [r["session"] for r in json.loads(run.stdout)] == ["codex-7"]


def test_an_api_keys_owner_wins_over_the_body(
    tmp_path: Path, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    path = write_config(tmp_path, fake_cloud.base_url, NO_REPEATS + native_model(fake_cloud))
    with (
        KeyStore(tmp_path / "keys.sqlite3") as keys,
        Router(path) as router,
        ServerThread(create_app(router, keys=keys, require_keys=True)) as server,
    ):
        key, _ = keys.create("ana")
        r = httpx.post(
            server.url + "/v1/messages",
            json=turn("Hi.", "s-1"),
            headers={"x-api-key": key},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        (row,) = router.ledger.entries()
    assert row.user == "ana" and row.session == "s-1"


# ------------------------------------------------------------------------------ routes


def agent_router(tmp_path: Path, agents: str) -> Router:
    path = write_config(tmp_path, "http://127.0.0.1:9/v1", NO_REPEATS + agents)
    backends = {
        "smollm2": FunctionBackend("smollm2", lambda r, p: "local answer"),
        "cloud-mini": FunctionBackend("cloud-mini", lambda r, p: "cloud answer"),
    }
    return Router(path, backends=backends)


WEATHER = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]


def test_agent_scenarios_route_background_requests_off_the_main_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    agents = '\n[agents]\nbackground = "local"\ntools = "cloud-mini"\n'
    with agent_router(tmp_path, agents) as router, ServerThread(create_app(router)) as server:
        side = {
            "model": "cloud-mini",
            "max_tokens": 32000,
            "messages": [{"role": "user", "content": "Write a 5-word title for: fix the tests"}],
        }
        r = httpx.post(server.url + "/v1/messages", json=side, timeout=30)
        assert r.status_code == 200 and r.json()["content"][0]["text"] == "local answer"
        main = {**side, "tools": [{"name": "weather", "input_schema": {"type": "object"}}]}
        r = httpx.post(server.url + "/v1/messages", json=main, timeout=30)
        assert r.status_code == 200 and r.json()["content"][0]["text"] == "cloud answer"
        # A plain chat client is not an agent: its requests are routed as always.
        plain = {"model": "cloud-mini", "messages": side["messages"]}
        r = httpx.post(server.url + "/v1/chat/completions", json=plain, timeout=30)
        assert r.json()["choices"][0]["message"]["content"] == "cloud answer"
        rows = router.ledger.entries()
    assert [(e.model, e.api) for e in rows] == [
        ("smollm2", "messages"),
        ("cloud-mini", "messages"),
        ("cloud-mini", "chat"),
    ]
    assert "agent background request (no tools): local" in rows[0].reason
    assert "agent turn with tools: cloud-mini" in rows[1].reason


def test_a_session_never_moves_down_mid_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    with agent_router(tmp_path, "\n[agents]\nsticky = true\n") as router:

        def ask(text: str, session: str) -> ChatRequest:
            return ChatRequest([{"role": "user", "content": text}], cache=False, session=session)

        hard, easy, other = ask(HARD_PROMPT, "s-1"), ask("thanks!", "s-1"), ask("thanks!", "s-2")
        first = router.complete_request(hard)
        kept = router.complete_request(easy)
        alone = router.complete_request(other)
    assert first.routing.model == "cloud-mini" and alone.routing.model == "smollm2"
    assert kept.routing.model == "cloud-mini"
    assert "kept on cloud-mini, its session's model" in kept.routing.reason


def test_agent_routes_must_name_a_mode_or_a_model(tmp_path: Path) -> None:
    from router.config import load_config
    from router.errors import ConfigError

    path = write_config(tmp_path, None, '\n[agents]\nbackground = "tiny"\n')
    with pytest.raises(ConfigError, match=r"agents.background = 'tiny': give auto, local"):
        load_config(path)
    path = write_config(tmp_path, None, "\n[agents]\nsticky_seconds = 0\n")
    with pytest.raises(ConfigError, match="sticky_seconds"):
        load_config(path)


def test_openai_cached_tokens_are_priced_as_litellm_prices_them(
    agent_server: tuple[Router, str],
) -> None:
    """Codex through the Responses API to an OpenAI model (chat, through LiteLLM): the
    provider's `prompt_tokens_details.cached_tokens` reach the ledger and its price."""
    router, url = agent_server
    history = "word " * 1500  # past OpenAI's 1,024-token caching threshold
    for ask in ("first", "second"):
        body = {"model": "cloud-mini", "input": [
            {"type": "message", "role": "user", "content": history},
            {"type": "message", "role": "user", "content": ask},
        ]}  # fmt: skip
        r = httpx.post(url + "/v1/responses", json=body, timeout=30)
        assert r.status_code == 200, r.text
    rows = router.ledger.entries()
    assert rows[0].cache_read_tokens == 0 and rows[1].cache_read_tokens >= 1024
    assert r.json()["usage"]["input_tokens_details"]["cached_tokens"] == rows[1].cache_read_tokens
    for row in rows:
        tokens = Tokens(row.prompt_tokens, row.completion_tokens, row.cache_read_tokens)
        assert row.cost_usd == pytest.approx(litellm_cost(tokens, "openai/gpt-4o-mini"), rel=1e-3)
    assert rows[1].cost_usd < rows[0].cost_usd  # cached input at half the price


def test_long_context_and_thinking_routes_and_a_session_moving_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    agents = (
        '\n[agents]\nlong_context = "cloud-mini"\nlong_context_tokens = 150\n'
        'thinking = "cloud-mini"\nsticky = true\n'
    )
    with agent_router(tmp_path, agents) as router:

        def ask(text: str, session: str, **kwargs: Any) -> Any:
            request = ChatRequest(
                [{"role": "user", "content": text}], cache=False, session=session, **kwargs
            )
            return router.complete_request(request).routing

        long = ask("word " * 200, "s-1")
        assert long.model == "cloud-mini" and "agent long context" in long.reason
        with ServerThread(create_app(router)) as server:
            thinking = {"type": "enabled", "budget_tokens": 1024}
            body = {"model": "smollm2", "max_tokens": 2000, "thinking": thinking,
                    "messages": [{"role": "user", "content": "thanks!"}]}  # fmt: skip
            r = httpx.post(server.url + "/v1/messages", json=body, timeout=30)
            assert r.status_code == 200 and r.json()["content"][0]["text"] == "cloud answer"
        thought = router.ledger.entries()[-1]
        assert thought.model == "cloud-mini" and "agent asks for thinking" in thought.reason
        # A session that began on the local model moves up when the score asks for the cloud,
        # and a model the client names is followed even below the session's.
        easy = ask("thanks!", "s-3")
        hard = ask(HARD_PROMPT, "s-3")
        named = ask("thanks!", "s-3", model="smollm2")
    assert easy.model == "smollm2"
    assert hard.model == "cloud-mini" and "session moved up from smollm2" in hard.reason
    assert named.model == "smollm2" and "kept on" not in named.reason
