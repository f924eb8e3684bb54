"""The local tier keeps each conversation's KV state (router/backends/prompt_cache.py): with the
real SmolLM2 model, a follow-up turn reads only what is new even when other conversations ran
in between, its answer at temperature 0 is the answer of a fresh read, and every API gets it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from router import Router
from router.backends.llama_process import CRASH_FILE_ENV
from router.backends.local import LocalBackend
from router.cli import app
from router.config import load_config
from router.ledger import SQLiteLedger
from router.server.app import create_app
from tests.conftest import write_config
from tests.server_harness import ServerThread

pytestmark = pytest.mark.slow
runner = CliRunner()


def system(n: int) -> str:
    """A system prompt of about 420 tokens, its own for each `n`."""
    return " ".join(f"Rule {k} of shop {n}: mention item {k * 7 + n}." for k in range(40))


def make(tmp_path: Path, kv_mb: int, name: str) -> Router:
    folder = tmp_path / name
    folder.mkdir()
    path = write_config(folder, None, "[cache]\nenabled = false\n")
    text = path.read_text().replace("n_ctx = 1024", f"n_ctx = 2048\nkv_cache_mb = {kv_mb}")
    path.write_text(text.replace('path = "ledger.sqlite3"', f'path = "{folder}/ledger.sqlite3"'))
    config = load_config(path)
    local = LocalBackend(config, "smollm2", config.models["smollm2"])  # type: ignore[arg-type]
    return Router(path, backends={"smollm2": local})


def turn(router: Router, messages: list[dict[str, str]], stream: bool) -> tuple[str, Any, float]:
    """One turn at temperature 0: the answer, its routing and how long it took."""
    params: dict[str, Any] = {"max_tokens": 16, "temperature": 0}
    started = time.perf_counter()
    if stream:
        s = router.stream(messages, "smollm2", cache=False, **params)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in s if c["choices"])
        routing = s.routing
    else:
        done = router.complete(messages, "smollm2", cache=False, **params)
        text, routing = done.text, done.routing
    return text, routing, time.perf_counter() - started


def talk(router: Router) -> tuple[list[str], list[Any], list[float]]:
    """Three conversations, three turns each, interleaved (1, 2, 3, 1, 2, 3, ...), every other
    turn streamed."""
    convs = [
        [{"role": "system", "content": system(n)}, {"role": "user", "content": f"Hi, I am {n}."}]
        for n in range(3)
    ]
    texts, routings, seconds = [], [], []
    for rnd in range(3):
        for n, conv in enumerate(convs):
            text, routing, took = turn(router, conv, stream=(rnd + n) % 2 == 1)
            texts.append(text)
            routings.append(routing)
            seconds.append(took)
            conv += [
                {"role": "assistant", "content": text},
                {"role": "user", "content": f"Tell me more about rule {rnd + 1}."},
            ]
    return texts, routings, seconds


@pytest.fixture(scope="module")
def routers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Router, Router]]:
    tmp = tmp_path_factory.mktemp("conversations")
    with make(tmp, 256, "kept") as kept, make(tmp, 0, "fresh") as fresh:
        yield kept, fresh


def test_interleaved_follow_ups_resume_and_answer_as_a_fresh_read(
    routers: tuple[Router, Router],
) -> None:
    kept, fresh = routers
    texts, routings, seconds = talk(kept)
    fresh_texts, fresh_routings, fresh_seconds = talk(fresh)
    # The same answers, token for token, with and without the kept conversations.
    assert texts == fresh_texts
    assert all(texts)
    # Each follow-up came after two other conversations, and read only what was new: the
    # previous prompt was reused whole (its answer is read again, see prompt_cache).
    for i in range(3, 9):
        reused, before = routings[i].prompt_cached_tokens, routings[i - 3].prompt_tokens
        assert before - 2 <= reused <= routings[i].prompt_tokens - 2, (i, reused, before)
        assert fresh_routings[i].prompt_cached_tokens < 20  # the chat template's first tokens
    assert sum(r.prompt_cached_tokens for r in routings[:3]) < 60
    # And that is what makes them fast: well under half the time of a fresh read.
    assert sum(seconds[3:]) < 0.5 * sum(fresh_seconds[3:]), (seconds, fresh_seconds)
    health = kept.local_runtime("smollm2")["kv_cache"]
    # One state a conversation; the last one's previous turn too (the context holds its
    # continuation, which replaces it when it is saved).
    assert health["conversations"] == 3
    assert 0 < health["mb"] <= health["budget_mb"] == 256
    assert health["restores"] >= 6
    assert fresh.local_runtime("smollm2")["kv_cache"] is None
    # The ledger has each row's reuse, and the figures sum it.
    rows = SQLiteLedger(Path(kept.config.ledger.path)).recent(9)
    assert [r.prompt_cached_tokens for r in rows] == [r.prompt_cached_tokens for r in routings]


def test_the_budget_bounds_what_is_kept_and_the_worker_memory(tmp_path: Path) -> None:
    with make(tmp_path, 30, "small") as router:
        conv = [{"role": "system", "content": system(9)}, {"role": "user", "content": "Hi."}]
        turn(router, conv, stream=False)
        worker = router.local_runtime("smollm2")
        start_mb = worker["rss_mb"]
        for n in range(5):  # each conversation's state: ~530 tokens, ~12 MB
            conv = [{"role": "system", "content": system(n)}, {"role": "user", "content": "Hi."}]
            turn(router, conv, stream=n % 2 == 0)
        worker = router.local_runtime("smollm2")
        kv = worker["kv_cache"]
        assert kv["conversations"] == 2 and kv["mb"] <= 30 and kv["evictions"] >= 3
        assert all(c["tokens"] > 400 for c in kv["saved"])
        # The worker grew by the kept states at most (and a little slack), not by the six:
        # evicted states' pages go back to the OS.
        assert worker["rss_mb"] - start_mb <= 30 + 8, (start_mb, worker["rss_mb"])


def test_a_failed_decode_a_crash_and_a_hang_up_leave_nothing_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash = tmp_path / "crash"
    monkeypatch.setenv(CRASH_FILE_ENV, str(crash))
    convs = [
        [{"role": "system", "content": system(n)}, {"role": "user", "content": "Hello."}]
        for n in range(2)
    ]
    with make(tmp_path, 256, "kept") as router, make(tmp_path, 0, "fresh") as fresh:
        expected = [turn(fresh, c, stream=False)[0] for c in convs]

        def worker() -> dict[str, Any]:
            return router.local_runtime("smollm2")  # type: ignore[no-any-return]

        for c in convs:
            turn(router, c, stream=False)
        assert worker()["kv_cache"]["conversations"] == 1
        # llama.cpp fails to decode (no room in its KV cache): the context starts afresh and
        # so do the kept conversations; the request is answered.
        crash.write_text("decode")
        assert turn(router, convs[0], stream=False)[0] == expected[0]
        assert worker()["kv_cache"]["conversations"] == 0
        # A hang-up in the middle of an answer: the next turns are still a fresh read's.
        s = router.stream(convs[1], "smollm2", cache=False, max_tokens=16, temperature=0)
        next(iter(s))
        s.close()
        assert turn(router, convs[0], stream=True)[0] == expected[0]
        assert turn(router, convs[1], stream=False)[0] == expected[1]
        # The worker dies: its successor remembers nothing, and answers the same.
        os.kill(worker()["pid"], signal.SIGKILL)
        time.sleep(0.2)
        assert turn(router, convs[0], stream=False)[0] == expected[0]
        assert worker()["kv_cache"]["conversations"] == 0


def test_every_api_resumes_its_conversation_streamed_or_not(tmp_path: Path) -> None:
    """Chat, completions, Messages, Responses and Ollama's chat: a follow-up, after another
    conversation's turn, reuses its first turn's prompt."""

    def chat(n: int, follow: bool, stream: bool) -> dict[str, Any]:
        msgs = [{"role": "system", "content": system(n)}, {"role": "user", "content": "Hi."}]
        if follow:
            msgs += [{"role": "assistant", "content": "Hello."}]
            msgs += [{"role": "user", "content": "More?"}]
        return {"model": "smollm2", "messages": msgs, "max_tokens": 4, "stream": stream}

    def messages(n: int, follow: bool, stream: bool) -> dict[str, Any]:
        body = chat(n, follow, stream)
        return {**body, "system": body["messages"][0]["content"], "messages": body["messages"][1:]}

    def responses(n: int, follow: bool, stream: bool) -> dict[str, Any]:
        body = messages(n, follow, stream)
        return {
            "model": "smollm2",
            "instructions": body["system"],
            "input": body["messages"],
            "max_output_tokens": 16,
            "stream": stream,
        }

    def completions(n: int, follow: bool, stream: bool) -> dict[str, Any]:
        prompt = system(n) + (" And more rules follow." if follow else "")
        return {"model": "smollm2", "prompt": prompt, "max_tokens": 4, "stream": stream}

    def ollama(n: int, follow: bool, stream: bool) -> dict[str, Any]:
        body = chat(n, follow, stream)
        return {"model": "smollm2", "messages": body["messages"], "stream": stream,
                "options": {"num_predict": 4}}  # fmt: skip

    apis = [
        ("/v1/chat/completions", chat),
        ("/v1/completions", completions),
        ("/v1/messages", messages),
        ("/v1/responses", responses),
        ("/api/chat", ollama),
    ]
    with make(tmp_path, 256, "kept") as router, ServerThread(create_app(router)) as server:
        http = httpx.Client(base_url=server.url, timeout=120, headers={"x-api-key": "k"})
        ledger = Path(router.config.ledger.path)
        for i, (path, body) in enumerate(apis):
            for stream in (False, True):
                n = 10 * i + int(stream)
                other = body(99, False, False)
                for asked in (body(n, False, stream), other, body(n, True, stream)):
                    with http.stream("POST", path, json=asked) as response:
                        assert response.status_code == 200, response.read()
                        response.read()
                rows = SQLiteLedger(ledger).recent(3)
                first, follow_up = rows[0], rows[2]
                assert follow_up.api == rows[0].api and follow_up.stream is stream
                assert follow_up.prompt_cached_tokens >= first.prompt_tokens - 10, (path, stream)
        # What the CLI shows of it: the ledger's sum, and the server's saved conversations.
        config = str(tmp_path / "kept" / "models.toml")
        reused = sum(r.prompt_cached_tokens for r in SQLiteLedger(ledger).recent(100))
        stats = json.loads(runner.invoke(app, ["stats", "--json", "--config", config]).output)
        assert stats["prompt_cached_tokens"] == reused > 0
        text = runner.invoke(app, ["stats", "--config", config]).output
        assert f"local KV cache: {reused:,} prompt tokens reused" in text
        # 'router ps' in its own process: this one's stdout also carries the server's access log
        ps_cmd = [sys.executable, "-m", "router", "ps", "--url", server.url]
        shown = subprocess.run([*ps_cmd, "--json"], capture_output=True, text=True, timeout=60)
        ps = json.loads(shown.stdout)
        assert ps[0]["kv_cache"]["conversations"] >= 2 and ps[0]["kv_cache"]["budget_mb"] == 256
        text = subprocess.run(ps_cmd, capture_output=True, text=True, timeout=60).stdout
        assert "/256 MB" in text and "conversation: " in text and "resumed" in text
        metrics = http.get("/metrics").text
        assert f"router_local_prompt_cached_tokens_total {reused}" in metrics
