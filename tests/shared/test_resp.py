"""The lean Redis connection a cache hit is read with on the server's loop (router.shared.resp),
against a real redis-server on loopback: replies reach the right callers however many share
the connection, the URL's password and database are used, and a Redis that stalls or goes
away fails the calls in time and is reconnected to once it is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import uvloop

from router.shared.resp import LoopRedis, pack, parse
from tests.redis_server import CountingProxy, RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as running:
        yield running


def run(coroutine: Any) -> Any:
    return uvloop.run(coroutine)  # the server's loop (its transports are not asyncio's)


def test_concurrent_callers_share_one_connection_and_each_gets_its_own_replies(
    server: RedisServer,
) -> None:
    plain = redis.Redis.from_url(server.url)
    for i in range(50):
        plain.set(f"k{i}", f"value {i} é".encode())
        if i % 4:
            plain.zadd(f"z{i}", {f"m{j}": time.time() for j in range(i % 4)})

    async def main() -> list[Any]:
        lean = LoopRedis(server.url, timeout=5)
        try:
            return list(
                await asyncio.gather(
                    *(
                        lean.call(("GET", f"k{i}"), ("ZCOUNT", f"z{i}", 0, "+inf"))
                        for i in range(50)
                    ),
                    lean.call(("GET", "missing")),
                )
            )
        finally:
            lean.close()

    *answers, missing = run(main())
    assert answers == [[f"value {i} é".encode(), i % 4] for i in range(50)]
    assert missing == [None]


def test_fifty_concurrent_calls_take_far_fewer_round_trips_than_calls(server: RedisServer) -> None:
    """What concurrent requests send goes out together: Redis 20 ms away answers 50 calls in
    a few trips, not 50 (one second)."""
    with CountingProxy(server.port, delay=0.02) as proxy:

        async def main() -> float:
            lean = LoopRedis(proxy.url, timeout=5)
            await lean.call(("PING",))  # connected
            started = time.perf_counter()
            await asyncio.gather(*(lean.call(("GET", f"k{i}")) for i in range(50)))
            lean.close()
            return time.perf_counter() - started

        took = run(main())
    assert took < 0.5, took
    assert proxy.requests <= 10, proxy.requests


def test_the_urls_password_and_database_are_used(server: RedisServer) -> None:
    plain = redis.Redis.from_url(server.url)
    redis.Redis.from_url(server.url.replace("/0", "/3")).set("in-three", "yes")
    plain.config_set("requirepass", "s3cret pass")
    try:
        good = f"redis://:s3cret%20pass@127.0.0.1:{server.port}/3"
        bad = f"redis://:wrong@127.0.0.1:{server.port}/3"

        async def main(url: str) -> Any:
            lean = LoopRedis(url, timeout=5)
            try:
                return await lean.call(("GET", "in-three"))
            finally:
                lean.close()

        assert run(main(good)) == [b"yes"]
        with pytest.raises(ConnectionError, match="refused the connection"):
            run(main(bad))
    finally:
        redis.Redis.from_url(server.url, password="s3cret pass").config_set("requirepass", "")


def test_a_stalled_redis_fails_the_call_in_time_and_one_that_went_away_is_reconnected_to(
    server: RedisServer,
) -> None:
    plain = redis.Redis.from_url(server.url)
    plain.set("k", "v")

    async def main() -> list[Any]:
        lean = LoopRedis(server.url, timeout=0.2)
        seen: list[Any] = [await lean.call(("GET", "k"))]
        plain.execute_command("CLIENT", "PAUSE", "600", "ALL")  # Redis answers nobody
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            await lean.call(("GET", "k"))
        seen.append(round(time.perf_counter() - started, 1))
        await asyncio.sleep(0.6)
        seen.append(await lean.call(("GET", "k")))  # a new connection
        failures: list[BaseException] = []  # what is sent without a wait hears of it too
        plain.execute_command("CLIENT", "PAUSE", "600", "ALL")
        assert lean.send_nowait([("GET", "k")], failures.append)
        await asyncio.sleep(0.4)
        seen.append([type(f).__name__ for f in failures])
        assert not lean.send_nowait([("GET", "k")], failures.append)  # closed: call() connects
        await asyncio.sleep(0.3)
        server.stop()
        with pytest.raises(OSError):
            await lean.call(("GET", "k"))
        server.start()  # the same port
        seen.append(await lean.call(("GET", "k")))  # empty again: no --save
        lean.close()
        return seen

    assert run(main()) == [[b"v"], 0.2, [b"v"], ["TimeoutError"], [None]]


def test_replies_split_anywhere_are_read_whole() -> None:
    """RESP read back from every split of a pipelined reply (as TCP may deliver it)."""
    assert pack([("SET", "k", 1.5), ("GET", b"k")]) == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n1.5\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    )
    wire = b"$5\r\nhe\r\no\r\n:42\r\n$-1\r\n+OK\r\n-ERR wrong\r\n*2\r\n:1\r\n$1\r\nx\r\n"
    for cut in range(len(wire) + 1):
        replies, pos, buffer = [], 0, bytearray(wire[:cut])
        for part in (wire[cut:],):
            while True:
                try:
                    reply, pos = parse(buffer, pos)
                except Exception as exc:
                    assert type(exc).__name__ == "_Incomplete"
                    break
                replies.append(reply)
            buffer += part
        while pos < len(buffer):
            reply, pos = parse(buffer, pos)
            replies.append(reply)
        assert [r if not isinstance(r, Exception) else str(r) for r in replies] == [
            b"he\r\no",
            42,
            None,
            "OK",
            "ERR wrong",
            [1, b"x"],
        ], cut
