"""The threads that start and pull streamed answers (router.server.streams.Pullers): a stream
finds an idle thread instead of starting one (time to the first token), concurrent streams
each get their own, and threads idle past their time end."""

from __future__ import annotations

import functools
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from router.server import streams
from router.server.app import create_app
from router.server.streams import Pullers
from tests.fakecloud import FakeCloud, Fault
from tests.server_harness import ServerThread


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "router-stream"]


def wait_until(check: Any, seconds: float) -> bool:
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        if check():
            return True
        time.sleep(0.02)
    return bool(check())


def test_every_job_runs_once_on_at_most_as_many_threads_as_ran_at_once() -> None:
    """Bursts of jobs of random length: each runs exactly once, never more threads than jobs
    ran at the same time, and all of them end once idle (no thread is left behind)."""
    pullers = Pullers(idle_seconds=0.2)
    rng = random.Random(7)
    ran: list[int] = []
    lock = threading.Lock()
    running = peak = 0
    threads: set[int] = set()

    def job(n: int, pause: float) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads.add(threading.get_ident())
        time.sleep(pause)
        with lock:
            running -= 1
            ran.append(n)

    n = 0
    for _ in range(20):
        for _ in range(rng.randint(1, 6)):
            pullers.run(functools.partial(job, n, rng.random() / 100))
            n += 1
        time.sleep(rng.choice([0.0, 0.005, 0.03]))
    assert wait_until(lambda: len(ran) == n, 10)
    assert sorted(ran) == list(range(n))
    assert len(threads) <= peak + 1 < n  # (+1: a thread may end its job as the next comes)
    assert wait_until(lambda: pullers.idle == 0, 5)  # all idle threads ended


def test_sequential_streams_share_one_thread_and_concurrent_ones_each_get_one(
    make_light_router: Any, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    pullers = Pullers(idle_seconds=1.0)
    monkeypatch.setattr(streams, "PULLERS", pullers)
    router = make_light_router(fake_cloud)
    before = len(stream_threads())
    with (
        ServerThread(create_app(router)) as server,
        openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0) as client,
    ):

        def ask(text: str) -> str:
            chunks = client.chat.completions.create(
                model="cloud",
                messages=[{"role": "user", "content": text}],
                stream=True,
                extra_headers={"Cache-Control": "no-cache"},
            )
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        for i in range(3):
            assert ask(f"question {i}") == f"cloud answer to: question {i}"
        assert len(stream_threads()) - before == 1
        fake_cloud.inject(*[Fault(status=200, chunk_delay=0.05) for _ in range(4)])
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, [f"together {i}" for i in range(4)]))
        assert answers == [f"cloud answer to: together {i}" for i in range(4)]
        assert 2 <= len(stream_threads()) - before <= 4  # overlapping streams: their own
        assert wait_until(lambda: len(stream_threads()) == before, 5)  # idle: ended
        assert ask("after a rest") == "cloud answer to: after a rest"
