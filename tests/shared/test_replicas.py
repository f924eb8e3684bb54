"""Two `router serve` replicas on one Redis and one PostgreSQL behave as one router: over real
HTTP with the openai client, with LiteLLM calling the loopback cloud."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from router.config import load_config
from router.engine.stores import budget_store
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, HARD_PROMPT, write_config
from tests.fakecloud import FakeCloud, Fault
from tests.postgres_server import PostgresServer
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.slow


class Replica:
    def __init__(self, folder: Path, config: Path) -> None:
        self.folder, self.config, self.port = folder, config, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Replica:
        env = {**os.environ, CLOUD_KEY_ENV: CLOUD_KEY}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--port", str(self.port),
             "--config", str(self.config)],
            cwd=self.folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        ends = time.monotonic() + 60
        while time.monotonic() < ends:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"replica on {self.port} did not start")

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, timeout=60)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def ask(replica: Replica, text: str, user: str) -> tuple[int, Any]:
    try:
        raw = replica.client().chat.completions.with_raw_response.create(
            model="auto", user=user, messages=[{"role": "user", "content": text}]
        )
    except openai.APIStatusError as exc:
        return exc.status_code, None
    except openai.APIConnectionError:
        return 0, None  # the replica was killed under this request
    return raw.status_code, raw


def ledger_rows(url: str, user: str, *, pending: bool = False) -> list[tuple[str, str, int]]:
    """The user's answered rows (with `pending`: the rows written ahead of paid calls that
    were never seen to finish)."""
    import psycopg

    with psycopg.connect(url) as conn:
        return [
            (str(a), str(b), int(c))
            for a, b, c in conn.execute(
                'SELECT response_id, tier, prompt_tokens + completion_tokens FROM requests '
                'WHERE "user" = %s AND pending = %s AND refusal = \'\'', (user, pending),
            )
        ]  # fmt: skip


def test_two_served_replicas_behave_as_one_router(tmp_path: Path, fake_cloud: FakeCloud) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    postgres = PostgresServer().start()
    replicas: list[Replica] = []
    try:
        database = postgres.create_database("replicas")
        extra = (
            f'\n[shared]\nredis_url = "{redis.url}"\nreservation_ttl_seconds = 3\n'
            "\n[guardrails]\nrepeat_window_seconds = 0\n"
            '\n[[budgets]]\nuser = "load"\ndaily_tokens = 1000\n'
            '\n[[budgets]]\nuser = "crash"\ndaily_tokens = 100000\n'
        )
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            config = write_config(folder, fake_cloud.base_url, extra)
            text = config.read_text().replace(
                '[ledger]\npath = "ledger.sqlite3"',
                f'[ledger]\npath = "ledger.sqlite3"\nurl = "{database}"',
            )
            config.write_text(text)
            replicas.append(Replica(folder, config).start())
        a, b = replicas

        # One cache: B answers from the cache what A asked the cloud.
        status, first = ask(a, HARD_PROMPT, "someone")
        status_b, again = ask(b, HARD_PROMPT, "someone")
        assert (status, status_b) == (200, 200)
        assert first.headers["x-router-cache"] == "miss"
        assert again.headers["x-router-cache"] == "hit"
        assert again.parse().choices[0].message.content == first.parse().choices[0].message.content

        # One budget: 100 concurrent cloud requests split over both, ~10 fit.
        with ThreadPoolExecutor(20) as pool:
            results = list(
                pool.map(
                    lambda i: ask((a, b)[i % 2], f"{HARD_PROMPT} ({i})", "load")[0], range(100)
                )
            )
        # Refused: 429 while others' reservations hold it, 400 once it is spent.
        assert set(results) <= {200, 400, 429} and 5 <= results.count(200) <= 30
        cfg = load_config(a.config)
        store = budget_store(cfg)
        rows = ledger_rows(database, "load")
        assert len(rows) == results.count(200)
        assert store.usage("user:load")["daily_tokens"] == sum(t for _, _, t in rows) <= 1000

        # `router audit` reads the one ledger: both users of both replicas.
        command = [sys.executable, "-m", "router", "audit", "--format", "json"]
        audit = subprocess.run(
            [*command, "--config", str(b.config)], capture_output=True, text=True, timeout=60
        )
        assert audit.returncode == 0, audit.stderr
        assert {"load", "someone"} <= {r["name"] for r in json.loads(audit.stdout)}
        # The dashboard of either replica shows everyone's requests.
        with urllib.request.urlopen(f"{a.url}/v1/router/summary?since=24h", timeout=30) as r:
            summary = json.loads(r.read())
        total = len(ledger_rows(database, "load")) + len(ledger_rows(database, "someone"))
        refused = len(results) - results.count(200)  # each refusal is a row of its own
        assert summary["headline"]["refusals"] == refused
        assert summary["headline"]["requests"] == total + refused

        # kill -9 one replica mid-load: no answered row is lost, no reservation outlives its TTL.
        fake_cloud.inject(*[Fault(status=200, delay=1.5) for _ in range(6)])
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(ask, a, f"{HARD_PROMPT} [crash {i}]", "crash") for i in range(6)]
            futures += [pool.submit(ask, b, f"{HARD_PROMPT} [b {i}]", "crash") for i in range(2)]
            time.sleep(0.7)
            a.kill()
            answered = [f.result() for f in futures]
        ok = [raw.parse().id for status, raw in answered if status == 200]
        assert any(status == 0 for status, _ in answered)  # some died with the replica
        a.start()  # the same queue file: what was queued goes in
        paid = [r for r in fake_cloud.requests if "[crash" in str(r.get("messages"))]

        def landed() -> bool:
            """The answered rows, and a row for every paid call (the queue's pending rows
            reach PostgreSQL after the restart, in the background)."""
            done, pending = (
                ledger_rows(database, "crash"),
                ledger_rows(database, "crash", pending=True),
            )
            return {r for r, _, _ in done} >= set(ok) and len(paid) == len(done) - 2 + len(pending)

        ends = time.monotonic() + 60  # a busy machine's restart and flush: seconds
        while time.monotonic() < ends and not landed():
            time.sleep(0.2)
        crash_rows = ledger_rows(database, "crash")
        assert {r for r, _, _ in crash_rows} >= set(ok)
        time.sleep(3.2)  # the dead replica's reservations expire
        assert store.usage("user:crash")["daily_tokens"] == sum(t for _, _, t in crash_rows)
        # The calls the killed replica had under way were written ahead: their rows stay,
        # pending, with each call's worst case (the provider may have charged for them).
        died = sum(status == 0 for status, _ in answered)
        unfinished = ledger_rows(database, "crash", pending=True)
        assert 1 <= len(unfinished) <= died and all(t > 0 for _, _, t in unfinished)
        # Every paid call has its row, finished or pending.
        assert len(paid) == len(crash_rows) - 2 + len(unfinished)  # (2: replica b's)
    finally:
        for r in replicas:
            r.stop()
        redis.stop()
        postgres.remove()
