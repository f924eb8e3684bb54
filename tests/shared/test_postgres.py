"""The ledger on a real PostgreSQL: replicas write one audit trail, migrations run once however
many start together, and no row is lost while the database is away or a replica is killed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from router import Router
from router.backends import FunctionBackend
from router.errors import LedgerUnavailableError
from router.ledger import _MIGRATIONS as sqlite_migrations
from router.ledger import Entry
from router.server.app import create_app
from router.shared.postgres import PostgresLedger
from tests.conftest import CLOUD_KEY, CLOUD_KEY_ENV, HARD_PROMPT, write_config
from tests.disks import fill_up, small_disk
from tests.fakecloud import FakeCloud
from tests.postgres_server import PostgresServer
from tests.server_harness import ServerThread
from tests.server_harness import health as details


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture
def database(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    return postgres.create_database(request.node.name[:50].lower())


def replica(tmp_path: Path, name: str, url: str, cloud: FakeCloud | None) -> Router:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    config = write_config(folder, cloud.base_url if cloud else None, "")
    text = config.read_text().replace(
        '[ledger]\npath = "ledger.sqlite3"', f'[ledger]\npath = "ledger.sqlite3"\nurl = "{url}"'
    )
    config.write_text(text)
    local = FunctionBackend("smollm2", lambda r, p: f"local answer from {name}")
    return Router(config, backends={"smollm2": local}, sleep=lambda s: None)


def rows(url: str) -> list[tuple[str, str]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return [
            (str(a), str(b))
            for a, b in conn.execute('SELECT response_id, "user" FROM requests ORDER BY id')
        ]


def test_two_replicas_write_one_ledger_that_every_command_reads(
    tmp_path: Path, database: str, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    with (
        replica(tmp_path, "a", database, fake_cloud) as a,
        replica(tmp_path, "b", database, fake_cloud) as b,
    ):
        ids = [
            a.complete([{"role": "user", "content": f"Hello {i}!"}], user="ann").response["id"]
            for i in range(3)
        ]
        ids += [b.complete([{"role": "user", "content": HARD_PROMPT}], user="bob").response["id"]]
        ids += [b.complete([{"role": "user", "content": "Hi there"}], user="bob").response["id"]]
        b.feedback(ids[0], "good")  # A's answer, rated through B: one ledger
        assert {e.response_id for e in a.ledger.entries()} == set(ids)
    config = str(tmp_path / "a" / "models.toml")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "router", *args, "--config", config],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    stats = run("stats", "--json")
    assert stats.returncode == 0, stats.stderr
    report = json.loads(stats.stdout)
    assert report["requests"] == 5 and report["by_tier"] == {"cloud": 1, "local": 4}
    # The table's title names the database it read, never the unused SQLite file's path.
    table = run("stats")
    assert table.returncode == 0, table.stderr
    title = " ".join(table.stdout.split()[:12])
    assert "PostgreSQL postgresql://" in title and "ledger.sqlite3" not in table.stdout, title
    audit = run("audit", "--format", "json")
    assert audit.returncode == 0, audit.stderr
    assert {r["name"] for r in json.loads(audit.stdout)} >= {"ann", "bob"}
    quality = run("quality", "--json")
    assert json.loads(quality.stdout)["rated"] == 1
    assert not (tmp_path / "a" / "ledger.sqlite3").exists()  # nothing in the local file


def test_migrations_run_once_when_replicas_start_together(database: str, tmp_path: Path) -> None:
    def start(i: int) -> int:
        ledger = PostgresLedger(database, tmp_path / f"q{i}.sqlite3")
        try:
            return len(ledger.entries())
        finally:
            ledger.close()

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(start, range(8))) == [0] * 8
    import psycopg

    with psycopg.connect(database) as conn:
        version = conn.execute("SELECT version FROM router_schema").fetchall()
    assert version == [(len(sqlite_migrations),)]  # the SQLite ledger's, one for one


def test_rows_wait_on_disk_while_the_database_is_down(
    tmp_path: Path, postgres: PostgresServer, database: str, fake_cloud: FakeCloud
) -> None:
    with replica(tmp_path, "a", database, None) as a:
        a.complete([{"role": "user", "content": "Before"}])
        assert len(a.ledger.entries()) == 1  # drained: reads drain this replica's queue first
        postgres.stop()
        try:
            ids = [
                a.complete([{"role": "user", "content": f"During {i}"}]).response["id"]
                for i in range(5)
            ]
            ledger = a.ledger
            assert isinstance(ledger, PostgresLedger)
            ends = time.monotonic() + 10
            while ledger.up and time.monotonic() < ends:
                time.sleep(0.05)  # the drain thread finds the database gone
            assert ledger.queued() == 5 and not ledger.up
            with ServerThread(create_app(a)) as server:  # what an operator sees meanwhile
                health = details(server.url)
            assert health["status"] == "degraded"
            assert health["ledger"]["queued"] == 5 and health["ledger"]["up"] is False
        finally:
            postgres.start()
        ends = time.monotonic() + 30
        while ledger.queued() and time.monotonic() < ends:
            time.sleep(0.1)
        assert ledger.queued() == 0 and ledger.up
    assert {r for r, _ in rows(database)} >= set(ids)
    assert len(rows(database)) == 6


def test_a_killed_replica_loses_no_row(
    tmp_path: Path, postgres: PostgresServer, database: str
) -> None:
    """Rows queued while the database is down, then kill -9: the next start drains them."""
    queue = tmp_path / "queue.sqlite3"
    script = textwrap.dedent(f"""
        import os, signal
        from router.ledger import Entry
        from router.shared.postgres import PostgresLedger
        ledger = PostgresLedger({database!r}, __import__("pathlib").Path({str(queue)!r}), timeout=1)
        for i in range(20):
            ledger.record(Entry(ts=1.0 + i, user="k", tier="local", model="m", prompt_tokens=1,
                completion_tokens=1, cost_usd=0, baseline_usd=0, tokens_saved=0, usd_saved=0,
                cache_hit=False, latency_ms=1, score=0.1, reason="r", response_id=f"id-{{i}}"))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    postgres.stop()
    try:
        died = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert died.returncode == -9, died.stderr
    finally:
        postgres.start()
    ledger = PostgresLedger(database, queue)  # the replica starts again
    try:
        ends = time.monotonic() + 30
        while ledger.queued() and time.monotonic() < ends:
            time.sleep(0.1)
        assert sorted(r for r, u in rows(database) if u == "k") == sorted(
            f"id-{i}" for i in range(20)
        )
    finally:
        ledger.close()


def test_a_full_disk_under_the_queue_refuses_paid_calls(
    tmp_path: Path, database: str, fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue on local disk is where a row is first written: when that disk is full, no
    paid call is made; free answers go on; nothing queued before is lost."""
    monkeypatch.setenv(CLOUD_KEY_ENV, CLOUD_KEY)
    with small_disk(tmp_path / "disk") as disk:
        config = tmp_path / "a" / "models.toml"
        replica(tmp_path, "a", database, fake_cloud).close()  # writes the config
        config.write_text(
            config.read_text().replace('path = "ledger.sqlite3"', f'path = "{disk / "l.db"}"')
        )
        local = FunctionBackend("smollm2", lambda r, p: "local answer")
        with Router(config, backends={"smollm2": local}) as a:
            a.complete([{"role": "user", "content": "Before"}], model="cloud")
            paid = len(fake_cloud.requests)
            filler = fill_up(disk)
            with pytest.raises(LedgerUnavailableError):
                a.complete([{"role": "user", "content": "During"}], model="cloud")
            assert len(fake_cloud.requests) == paid
            assert a.complete([{"role": "user", "content": "Hi"}]).routing.tier == "local"
            health = a.ledger.health()
            assert not health["up"] and not health["queue"]["up"] and health["write_failures"]
            filler.unlink()
            a.complete([{"role": "user", "content": "After"}], model="cloud")
            assert len(fake_cloud.requests) == paid + 1
            finished = [e.pending for e in a.ledger.entries()]
    assert finished == [False, False]  # Before and After (the local answer's row was lost)


def row(response_id: str) -> Entry:
    return Entry(ts=1.0, user="w", tier="local", model="m", prompt_tokens=1,
        completion_tokens=1, cost_usd=0, baseline_usd=0, tokens_saved=0, usd_saved=0,
        cache_hit=False, latency_ms=1, score=0.1, reason="r", response_id=response_id)  # fmt: skip


def test_a_row_queued_while_two_drains_overlap_is_not_lost(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read drains this replica's queue first, beside the drain thread (a request's own
    read included). One drain moves a batch and deletes it; a row queued next may take a
    deleted row's id; a second drain that read the same batch before must not delete it
    unsent (a paid call's pending row went so under kill -9 in test_replicas)."""
    ledger = PostgresLedger(database, tmp_path / "queue.sqlite3")
    ledger._stop = True  # no drain thread: this test's two drains only
    ledger._wake.set()
    ledger._thread.join(5)
    transaction = ledger._transaction
    slow, slowed = threading.Event(), threading.Event()

    def held(work: Any) -> Any:
        if threading.current_thread().name == "second" and not slowed.is_set():
            slowed.set()
            slow.wait(2)  # read its batch; paused before moving it
        return transaction(work)

    monkeypatch.setattr(ledger, "_transaction", held)
    try:
        ledger.record(row("first"))
        second = threading.Thread(target=ledger.drain, name="second")
        second.start()
        assert slowed.wait(5)
        ledger.drain()  # moves "first" (or waits for the second drain to)
        ledger.record(row("next"))  # the queue is empty again: SQLite may reuse the id
        slow.set()
        second.join(10)
        ledger.drain()
        assert ledger.queued() == 0
        assert sorted(r for r, u in rows(database) if u == "w") == ["first", "next"]
    finally:
        ledger.close()


def test_the_audit_and_quality_rollups_equal_the_hand_counts_on_postgresql(
    tmp_path: Path, database: str
) -> None:
    """The same SQL in PostgreSQL's dialect: every user's and team's figures and spike flags,
    and the quality report, equal the counts made row by row (tests/ledger/test_rollups.py)."""
    from router.config import load_config
    from tests.ledger.test_rollups import TEAMS, check_against_hand_counts, random_entries

    config = load_config(write_config(tmp_path, None, TEAMS))
    entries = random_entries(600, time.time(), days=12)
    ledger = PostgresLedger(database, tmp_path / "queue.sqlite3")
    try:
        for entry in entries:
            ledger.record(entry)
        ledger.drain()
        check_against_hand_counts(ledger, config, entries)
    finally:
        ledger.close()
