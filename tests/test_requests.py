"""Bad requests fail before any model runs, with errors that name the field; the cache's TTL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from router import ChatRequest, NoRouteError, RequestError, Router
from router.engine.cache import DiskResponseCache, cache_key
from tests.conftest import write_config


@pytest.mark.parametrize(
    ("messages", "params", "param", "message"),
    [
        ([], {}, "messages", "non-empty list"),
        ("hi", {}, "messages", "non-empty list"),
        (["hi"], {}, "messages[0]", "must be an object"),
        ([{"role": "robot", "content": "hi"}], {}, "messages[0].role", "must be one of"),
        ([{"role": "user", "content": 42}], {}, "messages[0].content", "string or a list"),
        ([{"role": "user"}], {}, "messages[0].content", "missing"),
        ([{"role": "user", "content": "hi"}], {"max_token": 5}, "max_token", "unsupported"),
        ([{"role": "user", "content": "hi"}], {"max_tokens": -1}, "max_tokens", "positive"),
        ([{"role": "user", "content": "hi"}], {"max_tokens": True}, "max_tokens", "positive"),
        ([{"role": "user", "content": "hi"}], {"temperature": 3}, "temperature", "[0.0, 2.0]"),
        ([{"role": "user", "content": "hi"}], {"top_p": "x"}, "top_p", "[0.0, 1.0]"),
    ],
)
def test_bad_requests_name_the_field(
    messages: Any, params: dict[str, Any], param: str, message: str
) -> None:
    with pytest.raises(RequestError) as info:
        ChatRequest(messages, "auto", params)
    assert info.value.param == param
    assert message in str(info.value)


def test_max_completion_tokens_is_an_alias() -> None:
    req = ChatRequest([{"role": "user", "content": "hi"}], params={"max_completion_tokens": 7})
    assert req.params == {"max_tokens": 7}


def test_blank_messages_and_impossible_requests_are_refused_without_a_model_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROUTER_TEST_CLOUD_KEY", raising=False)
    with Router(write_config(tmp_path, "http://127.0.0.1:9/v1")) as router:
        with pytest.raises(RequestError, match="no text: nothing to answer"):
            router.complete([{"role": "user", "content": "   \n"}])
        # Too long for the local model, and the cloud has no key: the same 400 as any shape no
        # model serves (not a 503 a client would retry to the same end).
        with pytest.raises(NoRouteError) as info:
            router.complete([{"role": "user", "content": "word " * 2000}])
        assert "smollm2: needs ~" in str(info.value) and "has 1024" in str(info.value)
        assert "cloud-mini: ROUTER_TEST_CLOUD_KEY is not set" in str(info.value)
        assert router.ledger.entries() == []


def test_cache_entries_expire_after_their_ttl(tmp_path: Path) -> None:
    cache = DiskResponseCache(tmp_path / "c", ttl_seconds=1, size_limit_mb=1)
    key = cache_key(ChatRequest([{"role": "user", "content": "hi"}]), {}, "cfg")
    cache.set(key, {"response": {"x": 1}})
    assert cache.get(key) == {"response": {"x": 1}}
    time.sleep(1.2)
    assert cache.get(key) is None
    cache.close()


def test_cache_key_covers_messages_model_params_and_config() -> None:
    base = ChatRequest([{"role": "user", "content": "hi"}])
    key = cache_key(base, {"max_tokens": 5}, "cfg")
    assert key == cache_key(
        ChatRequest([{"role": "user", "content": "hi"}]), {"max_tokens": 5}, "cfg"
    )
    assert key != cache_key(
        ChatRequest([{"role": "user", "content": "hi!"}]), {"max_tokens": 5}, "cfg"
    )
    assert key != cache_key(ChatRequest(base.messages, "cloud"), {"max_tokens": 5}, "cfg")
    assert key != cache_key(base, {"max_tokens": 6}, "cfg")
    assert key != cache_key(base, {"max_tokens": 5}, "other")
    # [cache] scope = "user": each user their own answers (a hit would tell Bob what Ana asked).
    ana = ChatRequest(base.messages, user="ana")
    bob = ChatRequest(base.messages, user="bob")
    assert cache_key(ana, {}, "cfg") == cache_key(bob, {}, "cfg")  # shared
    assert cache_key(ana, {}, "cfg", per_user=True) != cache_key(bob, {}, "cfg", per_user=True)
    assert cache_key(ana, {}, "cfg", per_user=True) == cache_key(
        ChatRequest(base.messages, user="ana"), {}, "cfg", per_user=True
    )
