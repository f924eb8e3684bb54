"""The embedded stores (ledger, budgets, keys): context managers over SQLite, migrated by one
helper that counts steps in PRAGMA user_version."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from router import ConfigError, load_config
from router.config import Budget
from router.errors import LedgerUnavailableError
from router.governance.budgets import BudgetStore
from router.ledger import _MIGRATIONS as ledger_migrations
from router.ledger import SQLiteLedger
from router.ledger.sqlite import GroupCommit, migrate, open_db
from router.server.keys import KeyOwner, KeyStore
from tests.conftest import write_config


def version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_every_store_is_a_context_manager_and_migrates_once(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, None))
    with KeyStore(tmp_path / "keys.sqlite3") as keys:
        key, _ = keys.create("ana")
        boss, _ = keys.create("bo", role="admin")
        with pytest.raises(ValueError, match="role 'root'"):
            keys.create("eve", role="root")
    with KeyStore(tmp_path / "keys.sqlite3") as keys:  # reopened: the same data, no new step
        assert keys.owner(key) == KeyOwner("ana", "user")
        owner = keys.owner(boss)
        assert owner is not None and owner.admin
        assert [(k.user, k.role) for k in keys.list()] == [("ana", "user"), ("bo", "admin")]
    with BudgetStore(tmp_path / "gov.sqlite3", config) as budgets:
        budgets.set(Budget(user="ana", daily_tokens=10))
    with SQLiteLedger(tmp_path / "ledger.sqlite3") as ledger:
        assert ledger.entries() == []
    assert version(tmp_path / "keys.sqlite3") == 4 and version(tmp_path / "gov.sqlite3") == 1
    assert version(tmp_path / "ledger.sqlite3") == len(ledger_migrations)
    with pytest.raises(sqlite3.ProgrammingError):  # closed at the end of the block
        keys.list()


def test_a_budget_file_from_before_migrations_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "gov.sqlite3"
    with sqlite3.connect(path) as db:  # what BudgetStore created before it had migrations
        db.executescript(
            "CREATE TABLE budget_usage (reservation TEXT NOT NULL, scope TEXT NOT NULL, "
            "period TEXT NOT NULL, tokens INTEGER NOT NULL, usd REAL NOT NULL, "
            "settled INTEGER NOT NULL DEFAULT 0, ts REAL NOT NULL);"
            "CREATE TABLE budget_limits (scope TEXT PRIMARY KEY, budget TEXT NOT NULL);"
            """INSERT INTO budget_limits VALUES ('user:bo', '{"user": "bo", "daily_tokens": 5}');"""
        )
    with BudgetStore(path, load_config(write_config(tmp_path, None))) as store:
        assert store.budgets()["user:bo"].daily_tokens == 5
    assert version(path) == 1


def test_a_file_from_a_newer_router_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(ConfigError, match="schema version 99, written by a newer router"):
        SQLiteLedger(path)


def test_a_failing_step_leaves_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite3"
    db = open_db(path)
    migrate(db, ["CREATE TABLE a (x);"], path)
    with pytest.raises(ConfigError, match=r"to schema version 2 \(table a already exists"):
        migrate(db, ["CREATE TABLE a (x);", "CREATE TABLE b (y); CREATE TABLE a (x);"], path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'b'").fetchone() is None
    db.close()


def test_concurrent_ledger_rows_share_commits_and_each_is_in_when_its_call_returns(
    tmp_path: Path,
) -> None:
    """Group commit: 32 rows from 8 threads take fewer commits than rows, and every row is
    visible to another connection (committed) the moment its `record` returns."""
    from tests.ledger.test_rollups import random_entries

    path = tmp_path / "ledger.sqlite3"
    entries = random_entries(32, time.time(), 1)
    commits: list[str] = []
    missing: list[str] = []

    def traced(sql: str) -> None:
        if sql.strip().upper().startswith("COMMIT"):
            commits.append(sql)
            time.sleep(0.005)  # a slower disk: writers queue up behind the commit

    with SQLiteLedger(path) as ledger, sqlite3.connect(path, check_same_thread=False) as reader:
        ledger._db.set_trace_callback(traced)
        lock = threading.Lock()

        def write(batch: list[Any]) -> None:
            for entry in batch:
                ledger.record(entry)
                with lock:
                    found = reader.execute(
                        "SELECT 1 FROM requests WHERE response_id = ?", (entry.response_id,)
                    ).fetchone()
                if found is None:
                    missing.append(entry.response_id)

        threads = [threading.Thread(target=write, args=(entries[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(ledger.entries()) == 32
    assert missing == []
    assert len(commits) < 32, len(commits)


def test_rows_recorded_from_an_event_loop_share_a_commit_and_are_in_when_awaited(
    tmp_path: Path,
) -> None:
    """The server's cache hits (`arecord` on its loop): the rows of the requests served in one
    turn of the loop take one commit, each is committed (visible to another connection) the
    moment its `arecord` returns, and one bad row fails its own caller only."""
    import asyncio

    from tests.ledger.test_rollups import random_entries

    path = tmp_path / "ledger.sqlite3"
    entries = random_entries(24, time.time(), 1)
    commits: list[str] = []
    with SQLiteLedger(path) as ledger, sqlite3.connect(path, check_same_thread=False) as reader:
        ledger._db.set_trace_callback(
            lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None
        )

        async def one(entry: Any) -> str:
            await ledger.arecord(entry)
            found = reader.execute(
                "SELECT 1 FROM requests WHERE response_id = ?", (entry.response_id,)
            ).fetchone()
            return "in" if found else "missing"

        async def all_of(batch: list[Any]) -> list[Any]:
            return list(await asyncio.gather(*map(one, batch), return_exceptions=True))

        assert asyncio.run(all_of(entries[:8])) == ["in"] * 8
        assert len(commits) == 1  # eight rows, one turn of the loop, one commit
        assert asyncio.run(all_of(entries[8:9])) == ["in"] and len(commits) == 2  # alone
        bad = replace(entries[9], prompt={"not": "text"})  # SQLite cannot bind it
        results = asyncio.run(all_of([bad, *entries[10:17]]))
        assert isinstance(results[0], LedgerUnavailableError) and results[1:] == ["in"] * 7
    with SQLiteLedger(path) as again:
        assert len(again.entries()) == 16


def test_one_bad_write_in_a_group_fails_alone(tmp_path: Path) -> None:
    db = open_db(tmp_path / "t.sqlite3")
    db.execute("CREATE TABLE t (k TEXT UNIQUE)")
    db.commit()
    group = GroupCommit(db, threading.Lock())
    results: dict[str, str] = {}
    barrier = threading.Barrier(8)

    def insert(k: str) -> None:
        barrier.wait()
        try:
            group.run(lambda d: d.execute("INSERT INTO t VALUES (?)", (k,)))
            results[k + str(threading.get_ident())] = "ok"
        except sqlite3.IntegrityError:
            results[k + str(threading.get_ident())] = "duplicate"

    names = ["a", "b", "c", "d", "e", "f", "g", "a"]  # "a" twice: one of them must fail
    threads = [threading.Thread(target=insert, args=(k,)) for k in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results.values()) == ["duplicate"] + ["ok"] * 7
    assert sorted(r[0] for r in db.execute("SELECT k FROM t")) == list("abcdefg")
    db.close()


def test_the_disk_cache_keeps_what_it_read_in_memory_within_its_bound(tmp_path: Path) -> None:
    """Entries read or written are also kept in memory (a hit without a SQLite read), within
    FRONT_BYTES; each get is a fresh copy; another process's entries come from disk."""
    from router.engine.cache import DiskResponseCache

    cache = DiskResponseCache(tmp_path / "c", ttl_seconds=0, size_limit_mb=64)
    cache.FRONT_BYTES = 4096  # type: ignore[misc]
    entries = {f"k{i}": {"response": {"text": f"{i} " + "x" * 1000}} for i in range(20)}
    for key, value in entries.items():
        cache.set(key, value)
    assert 0 < cache._front_bytes <= 4096 and len(cache._front) < 20
    assert all(cache.get(key) == value for key, value in entries.items())  # disk or memory
    first = cache.get("k19")
    assert first is not None and "k19" in cache._front
    first["response"]["text"] = "changed by a caller"
    assert cache.get("k19") == entries["k19"]
    other = DiskResponseCache(tmp_path / "c", ttl_seconds=0, size_limit_mb=64)  # a CLI's
    other.set("new", {"response": {"text": "from another process"}})
    assert cache.get("new") == {"response": {"text": "from another process"}}
    cache.close()
    other.close()


def test_answer_ids_sort_by_time_so_ledger_rows_land_at_the_end_of_its_index() -> None:
    """`chatcmpl-` and 32 hex digits as before (clients, feedback and other APIs' prefixes see
    no change), unique, and ids made in a later millisecond sort after earlier ones: a row's
    entry in the ledger's response_id index goes on its last page, not a random one."""
    import re

    from router.chunks import new_id, public_id

    ids = [new_id() for _ in range(2000)]
    assert all(re.fullmatch(r"chatcmpl-[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    time.sleep(0.002)
    later = new_id()
    assert later > max(ids)
    stamp = int(later.removeprefix("chatcmpl-")[:12], 16) / 1000
    assert abs(stamp - time.time()) < 5
    assert public_id(later, "msg_") == "msg_" + later.removeprefix("chatcmpl-")


def test_keys_made_before_scopes_keep_working_unscoped(tmp_path: Path) -> None:
    from router.server.keys import _MIGRATIONS, digest

    path = tmp_path / "keys.sqlite3"
    with sqlite3.connect(path) as db:  # a key store of version 2: roles, no scopes
        for step in _MIGRATIONS[:2]:
            db.executescript(step)
        db.execute("PRAGMA user_version = 2")
        db.execute(
            "INSERT INTO api_keys (key_hash, key_id, user, created, role) VALUES (?, ?, ?, ?, ?)",
            (digest("rk-old"), "rk-old", "ana", 1.0, "admin"),
        )
    with KeyStore(path) as keys:
        owner = keys.owner("rk-old")
        assert owner is not None and owner.admin and owner.key_id == "rk-old"
        assert (owner.models, owner.rpm, owner.expires, owner.expired()) == ((), None, None, False)
        assert owner.daily_usd is None  # no budget of its own (migration 4)
        assert keys.list()[0].last_used is None
    assert version(path) == 4
