"""Real crashes of the local worker, through the library, `router serve` and the CLI.

The real model runs in real worker processes, which die the ways native code dies (a null read,
abort(), SIGKILL, a hang) through the worker's test hook (ROUTER_WORKER_CRASH_FILE), or are
killed from here with kill -9. If a crash reached the test process, pytest itself would die:
every passing test here is also a proof of isolation.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from router import Router, UnavailableError, load_config
from router.backends.llama_process import (
    CRASH_FILE_ENV,
    extra_buffers_choice,
    parse_system_info,
    system_info,
)
from router.backends.local import LocalBackend
from router.backends.restarts import RestartPolicy
from router.config import LocalModel
from router.errors import BackendError
from router.server import create_app
from router.types import ChatRequest
from tests.backends.test_worker import LONG, ask, gone
from tests.cli.test_cli import Terminal
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, Sleeps, write_config
from tests.fakecloud import FakeCloud, answer_for
from tests.server_harness import ServerThread
from tests.server_harness import health as details

slow = pytest.mark.slow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Arms the worker's test hook for workers started in this test: `crash("segv after=2")`
    makes the next generation die before its third chunk; "repeat" makes every one die."""
    path = tmp_path / "crash-next"
    monkeypatch.setenv(CRASH_FILE_ENV, str(path))
    return lambda spec: path.write_text(spec)


Build = Callable[..., tuple[Router, LocalBackend]]


@pytest.fixture
def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Build]:
    """A Router with its own local worker (never the session's shared one)."""
    made: list[tuple[Router, LocalBackend]] = []

    def make(
        cloud: FakeCloud | None = None,
        extra: str = "",
        restarts: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        **local: Any,
    ) -> tuple[Router, LocalBackend]:
        """`local`: settings of the local model that differ from tests/conftest.py's."""
        monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
        config = load_config(write_config(tmp_path, cloud.base_url if cloud else None, extra))
        model = config.models["smollm2"].model_copy(update=local)
        assert isinstance(model, LocalModel)
        backend = LocalBackend(config, "smollm2", model, restarts=restarts, clock=clock)
        router = Router(config, backends={"smollm2": backend}, sleep=Sleeps())
        made.append((router, backend))
        return router, backend

    yield make
    for router, backend in made:
        router.close()
        backend.close()


@slow
def test_the_worker_reports_the_extra_buffers_decision_for_this_build(build: Build) -> None:
    router, backend = build()
    info = backend.load()
    expected, why = extra_buffers_choice("auto", system_info())
    assert (info["extra_buffers"], info["extra_buffers_why"]) == (expected, why)
    health = router.local_runtime("smollm2")
    assert health["state"] == "ready" and health["pid"] == backend.worker_pid != os.getpid()
    assert health["extra_buffers"] is expected and health["rss_mb"] > 50  # the model is there
    # A prompt of many tokens decodes in batches: the case that crashes AMX builds.
    done = router.complete(ask(LONG + " " + "Make it exciting. " * 20), max_tokens=8)
    assert done.routing.tier == "local" and done.text


@slow
def test_a_native_crash_falls_back_to_the_cloud_and_the_worker_restarts(
    build: Build, crash: Callable[[str], None], fake_cloud: FakeCloud
) -> None:
    router, backend = build(fake_cloud)
    backend.load()
    first_pid = backend.worker_pid
    assert first_pid is not None
    crash("segv")
    done = router.complete(ask("Hi there!"), max_tokens=8, user="ana")
    assert (done.routing.tier, done.routing.model) == ("cloud", "cloud-mini")
    assert done.text == answer_for(ask("Hi there!"))
    assert "SIGSEGV, a segmentation fault" in done.routing.reason
    assert "fell back to cloud-mini" in done.routing.reason
    assert gone(first_pid)
    # The next local request starts a new worker and is answered locally.
    again = router.complete(ask("Hello!"), max_tokens=8)
    assert again.routing.tier == "local" and again.text
    assert backend.worker_pid not in (None, first_pid)
    health = backend.health()
    assert health["starts"] == 2 and health["failures"] == 1
    assert "SIGSEGV" in health["last_failure"]
    # The ledger has both answers; the crash itself was never charged as an answer.
    rows = router.ledger.entries()
    assert [(r.tier, r.user) for r in rows] == [("cloud", "ana"), ("local", None)]
    # A fallback answer is not cached.
    assert not router.complete(ask("Hi there!"), max_tokens=8).routing.cache_hit


@slow
@pytest.mark.parametrize(
    ("how", "said"),
    [("abort", "SIGABRT, aborted"), ("kill", "SIGKILL, killed: the out-of-memory killer")],
)
def test_with_no_other_model_a_crash_is_a_clear_error_and_nothing_is_recorded(
    build: Build, crash: Callable[[str], None], how: str, said: str
) -> None:
    router, _ = build()
    crash(how)
    with pytest.raises(UnavailableError, match=f"smollm2: worker process .* died: {said}"):
        router.complete(ask("Hi there!"), max_tokens=8)
    assert router.ledger.entries() == []
    done = router.complete(ask("Hi there!"), max_tokens=8)  # restarted, answered
    assert done.routing.tier == "local" and len(router.ledger.entries()) == 1


@slow
def test_a_stream_cut_by_a_crash_raises_after_the_partial_answer(
    build: Build, crash: Callable[[str], None], fake_cloud: FakeCloud
) -> None:
    router, _ = build(fake_cloud)
    crash("segv after=3")
    stream = router.stream(ask(LONG), max_tokens=64, user="ana")
    assert stream.routing.tier == "local"  # it had started: no fallback mid-answer
    got: list[dict[str, Any]] = []
    with pytest.raises(BackendError, match="SIGSEGV"):
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 3
    row = router.ledger.entries()[-1]
    assert row.tier == "local" and "answer cut" in row.reason and "SIGSEGV" in row.reason
    assert row.cost_usd == 0
    # The cut answer was not cached; the next one comes from a new worker.
    again = router.stream(ask(LONG), max_tokens=8)
    assert not again.routing.cache_hit and again.text()


@slow
def test_kill_9_during_a_stream_and_while_idle(build: Build) -> None:
    clock = Clock()
    router, backend = build(clock=clock)
    stream = router.stream(ask(LONG), max_tokens=200)
    next(stream)
    pid = backend.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(BackendError, match="SIGKILL"):
        stream.text()
    # Killed while idle (the OOM killer between requests): the next request just works.
    router.complete(ask("Hi"), max_tokens=4, cache=False)
    clock.now += 2  # past the short backoff that follows a second failure
    idle_pid = backend.worker_pid
    assert idle_pid is not None and idle_pid != pid
    os.kill(idle_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while backend.health()["state"] == "ready" and time.monotonic() < deadline:
        time.sleep(0.02)  # until the kernel has reaped all of it
    done = router.complete(ask("Hello"), max_tokens=4, cache=False)
    assert done.routing.tier == "local" and done.routing.attempts == []
    assert backend.worker_pid not in (None, idle_pid)
    health = backend.health()
    assert health["failures"] == 2 and "died while idle" in health["last_failure"]


@slow
def test_a_hung_worker_is_stopped_after_timeout_seconds(
    build: Build, crash: Callable[[str], None], fake_cloud: FakeCloud
) -> None:
    router, backend = build(fake_cloud, timeout_seconds=2.0)
    backend.load()
    pid = backend.worker_pid
    assert pid is not None
    crash("hang")
    started = time.monotonic()
    done = router.complete(ask("Hi there!"), max_tokens=8)
    assert time.monotonic() - started < 15
    assert done.routing.tier == "cloud"
    assert "sent nothing for 2 s (timeout_seconds in models.toml)" in done.routing.reason
    assert gone(pid)


@slow
def test_repeated_crashes_make_the_model_unusable_and_every_surface_says_why(
    build: Build, crash: Callable[[str], None], fake_cloud: FakeCloud
) -> None:
    clock = Clock()
    router, backend = build(
        fake_cloud, restarts=RestartPolicy(window=60, limit=3, cooldown=300), clock=clock
    )
    crash("segv repeat")
    for name in ("Ana", "Ben", "Cy"):  # different requests: the same one thrice is a storm
        done = router.complete(ask(f"Hi, I am {name}!"), max_tokens=8)
        assert done.routing.tier == "cloud" and "SIGSEGV" in done.routing.reason
        clock.now += 2  # past the backoff, inside the window
    why = router.model_views()["smollm2"].unusable
    assert why is not None and why.startswith("disabled after 3 worker failures in 60 s")
    assert backend.health()["state"] == "unusable"
    # Auto requests go straight to the cloud: no more attempts on the broken model.
    done = router.complete(ask("Good morning!"), max_tokens=8)
    assert done.routing.tier == "cloud" and done.routing.attempts == []
    assert backend.health()["failures"] == 3
    # Forcing it is a clear 503-class error that says why.
    with pytest.raises(UnavailableError, match="disabled after 3 worker failures"):
        router.complete(ask("Hi there!"), model="smollm2", max_tokens=8)
    # After the cool-down it gets one more try; with the fault gone it works again.
    Path(os.environ[CRASH_FILE_ENV]).unlink()
    clock.now += 301
    assert router.model_views()["smollm2"].unusable is None
    assert router.complete(ask("Hello!"), max_tokens=8).routing.tier == "local"


@slow
def test_a_second_crash_within_a_minute_delays_the_restart_by_a_second(
    build: Build, crash: Callable[[str], None]
) -> None:
    router, backend = build()
    for name in ("Ana", "Ben"):
        crash("abort")
        with pytest.raises(UnavailableError, match="SIGABRT"):
            router.complete(ask(f"I am {name}"), max_tokens=4)
    started = time.monotonic()
    done = router.complete(ask("Hello"), max_tokens=4)  # waits out the backoff, then answers
    assert done.routing.tier == "local" and time.monotonic() - started >= 0.9
    assert backend.health()["starts"] == 3 and backend.health()["failures"] == 2


@slow
def test_a_crash_never_charges_a_budget(
    build: Build, crash: Callable[[str], None], fake_cloud: FakeCloud
) -> None:
    extra = '[[budgets]]\nuser = "ana"\ndaily_tokens = 100000\n'
    router, _ = build(fake_cloud, extra=extra)
    crash("segv")
    done = router.complete(ask("Hi there!"), max_tokens=8, user="ana")
    assert done.routing.tier == "cloud"
    used = router.budgets.usage("user:ana")
    assert used["daily_tokens"] == done.routing.prompt_tokens + done.routing.completion_tokens
    crash("segv")
    with pytest.raises(UnavailableError):
        router.complete(ask("Hi there!"), model="local", max_tokens=8, user="ana")
    assert router.budgets.usage("user:ana") == used  # nothing reserved, nothing left behind


def _has_amx() -> bool:
    try:
        return parse_system_info(system_info()).get("AMX_INT8") == "1"
    except ImportError:  # the fast tier, run without llama_cpp: this test is not collected
        return False


@slow
@pytest.mark.skipif(
    not _has_amx(),
    reason="needs a llama.cpp build with AMX (the real crash of llama.cpp issue 20824)",
)
def test_on_amx_forcing_extra_buffers_crashes_natively_and_the_router_survives(
    build: Build, fake_cloud: FakeCloud
) -> None:
    # extra_buffers = true puts the weights back in AMX buffers: llama.cpp's real crash.
    router, backend = build(fake_cloud, extra_buffers=True)
    done = router.complete(ask(LONG), max_tokens=8)
    assert done.routing.tier == "cloud"
    assert re.search(r"died: SIG(SEGV|ILL)", done.routing.reason)
    assert backend.health()["extra_buffers"] is True


# ------------------------------------------------------------------ through `router serve`


@pytest.fixture
def serve_own(build: Build) -> Iterator[Callable[..., tuple[ServerThread, LocalBackend]]]:
    servers: list[ServerThread] = []

    def start(*args: Any, **kwargs: Any) -> tuple[ServerThread, LocalBackend]:
        router, backend = build(*args, **kwargs)
        server = ServerThread(create_app(router)).__enter__()
        servers.append(server)
        return server, backend

    yield start
    for s in servers:
        s.__exit__()


def openai_client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


@slow
def test_the_server_survives_a_crash_mid_stream_and_the_client_sees_an_error(
    serve_own: Callable[..., tuple[ServerThread, LocalBackend]],
    crash: Callable[[str], None],
    fake_cloud: FakeCloud,
) -> None:
    server, backend = serve_own(fake_cloud)
    client = openai_client(server)
    crash("segv after=2")
    stream = client.chat.completions.create(
        model="auto", messages=ask(LONG), max_tokens=64, stream=True
    )
    pieces = []
    with pytest.raises(openai.APIError, match="SIGSEGV, a segmentation fault"):
        for chunk in stream:
            pieces.append(chunk.choices[0].delta.content or "")
    assert len(pieces) == 2  # the partial answer arrived, then the error, not a silent end
    health = details(server.url)
    assert health["status"] == "ok"
    worker = health["models"]["smollm2"]["worker"]
    assert worker["failures"] == 1 and "SIGSEGV" in worker["last_failure"]
    # The same server answers the next request locally, from a new worker.
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=ask("Hello!"), max_tokens=8
    )
    assert raw.headers["x-router-tier"] == "local" and raw.parse().choices[0].message.content
    worker = details(server.url)["models"]["smollm2"]["worker"]
    assert worker["state"] == "ready" and worker["starts"] == 2
    assert worker["pid"] == backend.worker_pid
    assert isinstance(worker["extra_buffers"], bool) and worker["extra_buffers_why"]


@slow
def test_a_crash_with_no_fallback_is_a_503_with_an_openai_error(
    serve_own: Callable[..., tuple[ServerThread, LocalBackend]], crash: Callable[[str], None]
) -> None:
    server, _ = serve_own()
    crash("abort")
    with pytest.raises(openai.InternalServerError) as err:
        openai_client(server).chat.completions.create(
            model="auto", messages=ask("Hi!"), max_tokens=8
        )
    assert err.value.status_code == 503
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "no_tier_available"
    assert "SIGABRT" in body["message"] and body["type"] == "service_unavailable_error"
    # Crashes until it is disabled: then /health and a forced request say why.
    crash("abort repeat")
    for name in ("Ana", "Ben"):
        r = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "local", "messages": ask(f"I am {name}"), "max_tokens": 4},
            timeout=60,
        )
        assert r.status_code == 503
    health = details(server.url)["models"]["smollm2"]
    assert health["usable"] is False and health["why_not"].startswith("disabled after 3")
    assert health["worker"]["state"] == "unusable"
    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "local", "messages": ask("Hi"), "max_tokens": 4},
        timeout=60,
    )
    assert r.status_code == 503 and "disabled after 3 worker failures" in r.text
    assert 0 < int(r.headers["retry-after"]) <= 300  # the cool-down left


@slow
def test_a_client_hanging_up_cancels_the_generation_in_the_worker(
    serve_own: Callable[..., tuple[ServerThread, LocalBackend]],
) -> None:
    server, backend = serve_own()
    body = {"model": "local", "messages": ask(LONG), "max_tokens": 400, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen >= 3:
                break  # leaving the block hangs up mid-stream
    deadline = time.monotonic() + 20
    while backend.health()["generations"]["cancelled"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.health()["generations"] == {"completed": 0, "cancelled": 1, "failed": 0}
    assert backend.health()["failures"] == 0  # cancelled, not killed


@slow
def test_the_cli_exits_3_with_the_crash_named(tmp_path: Path, crash: Callable[[str], None]) -> None:
    config = write_config(tmp_path, None)

    def chat() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "router", "chat", "Hello!", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )

    crash("segv")
    out = chat()
    assert out.returncode == 3
    assert out.stderr.startswith("error: every model failed: smollm2: worker process")
    assert "SIGSEGV, a segmentation fault" in out.stderr
    again = chat()  # a new worker answers
    assert again.returncode == 0 and again.stdout.strip()


@slow
def test_the_interactive_chat_survives_a_crash(
    tmp_path: Path, crash: Callable[[str], None]
) -> None:
    config = write_config(tmp_path, None)
    with Terminal.chat(tmp_path, config, max_tokens=40) as term:
        term.expect(r"you> ")
        crash("segv after=2")
        term.send("Write a story about a dragon.\r")
        term.expect(r"error: smollm2: worker process \(pid \d+\) died: SIGSEGV")
        term.expect(r"you> ")
        term.send("Hi\r")
        term.expect(r"\[local · smollm2[^\n]*\n")
        term.leave(turns=2)  # the session lived on: both turns count


@slow
def test_a_file_llama_cpp_cannot_load_is_a_clear_error_in_the_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_cloud: FakeCloud
) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)  # the magic, then nothing a loader can use
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    config = load_config(write_config(tmp_path, fake_cloud.base_url))
    model = config.models["smollm2"].model_copy(update={"package": None, "file": None})
    model = model.model_copy(update={"path": str(bad)})
    assert isinstance(model, LocalModel)
    backend = LocalBackend(config, "smollm2", model)
    with Router(config, backends={"smollm2": backend}, sleep=Sleeps()) as router:
        done = router.complete(ask("Hi there!"), max_tokens=8)
        assert done.routing.tier == "cloud"
        assert f"llama.cpp could not load {bad}" in done.routing.reason
        with pytest.raises(UnavailableError, match="could not load"):
            router.complete(ask("Hello"), model="smollm2", max_tokens=8)
    assert backend.health()["failures"] == 2 and backend.worker_pid is None


@slow
def test_an_exception_inside_llama_cpp_python_cannot_poison_later_requests(build: Build) -> None:
    router, backend = build()
    backend.load()
    first = backend.worker_pid
    # The wire refuses values of the wrong type (tests/server/test_hostile.py); behind it, an
    # exception inside llama-cpp-python may still leave state behind (a `seed` of the wrong
    # type used to stay set and fail every later request), so its worker is replaced.
    bad = {"max_tokens": 4, "temperature": "hot"}
    with pytest.raises(BackendError, match="the local model failed on this request") as info:
        backend.complete(ChatRequest(ask("Hi")), bad)
    assert "hot" not in str(info.value) and "TypeError" not in str(info.value)
    done = router.complete(ask("Hi"), model="local", max_tokens=4)
    assert done.routing.tier == "local" and done.text
    assert backend.worker_pid not in (None, first)  # a fresh worker, not a crash
    assert backend.health()["failures"] == 0
    assert backend.health()["generations"]["failed"] == 1


@slow
@pytest.mark.parametrize("streamed", [False, True])
def test_a_failed_decode_before_the_first_token_is_tried_again_in_the_same_worker(
    build: Build, crash: Callable[[str], None], streamed: bool
) -> None:
    """llama.cpp's `llama_decode returned 1` (no room found in its KV cache; once in a
    thousand fuzz cases here): the worker clears its context and generates again, so the
    client gets the answer a clean cache gives, and nothing restarts."""
    router, backend = build()
    clean = router.complete(ask(LONG), max_tokens=12, temperature=0, cache=False).text
    pid = backend.worker_pid
    crash("decode")
    if streamed:
        text = router.stream(ask(LONG), max_tokens=12, temperature=0, cache=False).text()
    else:
        text = router.complete(ask(LONG), max_tokens=12, temperature=0, cache=False).text
    assert text == clean
    assert backend.worker_pid == pid and backend.health()["failures"] == 0
    assert [row.tier for row in router.ledger.entries()] == ["local", "local"]


@slow
def test_a_failed_decode_mid_stream_cuts_the_answer_and_the_next_request_is_answered(
    build: Build, crash: Callable[[str], None]
) -> None:
    router, _ = build()
    crash("decode after=2")
    stream = router.stream(ask(LONG), max_tokens=32, cache=False)
    got: list[dict[str, Any]] = []
    with pytest.raises(BackendError, match="the local model failed on this request"):
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 2  # what the client had stays had; no second answer is spliced on
    assert "answer cut" in router.ledger.entries()[-1].reason
    assert router.complete(ask("Hi"), max_tokens=4, cache=False).routing.tier == "local"
