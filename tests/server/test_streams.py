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

import anthropic
import ollama
import openai
import pytest

from router import Router
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
    # An idle thread ends after a second: long enough that none ends between two bursts on a
    # loaded machine (0.2 s was not: a stall between bursts ended one, and a new one counted).
    pullers = Pullers(idle_seconds=1.0)
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


class CountingPullers(Pullers):
    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    def run(self, job: Any) -> None:
        self.runs += 1
        super().run(job)


def test_a_streamed_cache_hit_needs_no_thread_in_any_api(
    served: tuple[Router, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Coding agents stream every request. One the cache answers is rendered on the event
    loop from the whole cached answer, with no stream thread: each API's official client
    reads the same text and the same ending as from the first answer, and the ledger's row
    says streamed, cache hit."""
    router, url = served
    pullers = CountingPullers()
    monkeypatch.setattr(streams, "PULLERS", pullers)
    ask = [{"role": "user", "content": "Hi, stream this"}]  # (chat and Ollama share a cache)
    chat = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    messages = anthropic.Anthropic(base_url=url, api_key="sk-ant-none", max_retries=0)
    llama = ollama.Client(host=url)

    def openai_chat() -> tuple[str, Any]:
        asked = [{"role": "user", "content": "Hi, stream this chat"}]
        chunks = list(chat.chat.completions.create(model="auto", messages=asked, stream=True))  # type: ignore[arg-type]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks[-1].choices[0].finish_reason

    def anthropic_messages() -> tuple[str, Any]:
        with messages.messages.stream(model="claude-haiku-5", max_tokens=64, messages=ask) as s:
            kinds = [event.type for event in s]
            final = s.get_final_message()
        return final.content[0].text, (kinds[0], kinds[-2:], final.stop_reason)  # type: ignore[union-attr]

    def responses() -> tuple[str, Any]:
        with chat.responses.stream(model="gpt-5", input="Hi, stream this") as s:
            kinds = [event.type for event in s]
            final = s.get_final_response()
        return final.output_text, (kinds[:2], kinds[-1], final.status)

    def ollama_chat() -> tuple[str, Any]:
        asked = [{"role": "user", "content": "Hi, stream this to Ollama"}]
        pieces = list(llama.chat(model="auto", messages=asked, stream=True))
        text = "".join(p.message.content or "" for p in pieces)
        return text, (pieces[-1].done, pieces[-1].done_reason, pieces[-1].eval_count)

    for api in (openai_chat, anthropic_messages, responses, ollama_chat):
        runs = pullers.runs
        first = api()
        assert pullers.runs == runs + 1, api.__name__  # the model's stream: a thread
        again = api()
        assert pullers.runs == runs + 1, api.__name__  # the cache's: none
        assert again == first and first[0] == "Hello from the router.", api.__name__
        missed, hit = router.ledger.entries()[-2:]
        assert (missed.cache_hit, hit.cache_hit) == (False, True), api.__name__
        assert missed.stream and hit.stream, api.__name__
