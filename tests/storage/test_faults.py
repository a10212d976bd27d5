"""Fault tests on private servers (spare ports): kill, call while down, restart, recover.

The shared Redis / MariaDB on 6379 / 3306 are never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import StorageUnavailable
from storage.redis_actor import open_redis_actor
from storage.sql_actor import open_sql_actor
from tests.storage.servers import Server, mariadb_server


@pytest.fixture
def own_mariadb(tmp_path: Path) -> Iterator[Server]:
    server = mariadb_server(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def test_redis_down_fails_fast_then_recovers(own_redis: Server) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    async with open_redis_actor(url, prefix="fault:", timeout=2.0) as r:
        await r.execute("SET", r.key("k"), "v")
        await trio.to_thread.run_sync(own_redis.kill)
        for _ in range(3):
            start = trio.current_time()
            with pytest.raises(StorageUnavailable):
                await r.execute("GET", r.key("k"))
            with pytest.raises(StorageUnavailable):
                await r.transaction([["GET", r.key("k")]])
            assert trio.current_time() - start < 1.0
        await trio.to_thread.run_sync(own_redis.start)
        # no manual reconnect: the next calls succeed (the data is gone: --save "")
        assert await r.execute("GET", r.key("k")) is None
        assert await r.execute("SET", r.key("k"), "w") is True
        assert await r.eval("return redis.call('GET', KEYS[1])", [r.key("k")], []) == "w"
        await r.ping()


async def test_redis_killed_under_load_every_caller_gets_an_answer(own_redis: Server) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    call_bound = 10.0  # the actor's timeout is 2 s: an answer later than this is a hang
    async with open_redis_actor(url, prefix="fault:", timeout=2.0) as r:
        outcomes: list[tuple[float, str]] = []  # (when the answer came, ok / down)
        values: dict[int, list[tuple[float, int]]] = {i: [] for i in range(50)}  # INCRBY results
        last: dict[int, str] = {}  # each caller's final outcome
        hung: list[tuple[int, float]] = []  # (caller, when its call was sent)
        stop = trio.Event()

        async def caller(i: int) -> None:
            while not stop.is_set():
                sent = trio.current_time()
                kind = "hung"
                with trio.move_on_after(call_bound):
                    try:
                        value = await r.execute("INCRBY", r.key("n", i), i + 1)
                        values[i].append((trio.current_time(), value))
                        kind = "ok"
                    except StorageUnavailable:
                        kind = "down"
                if kind == "hung":
                    hung.append((i, sent))
                    return
                outcomes.append((trio.current_time(), kind))
                last[i] = kind
                await trio.sleep(0.01)

        with trio.fail_after(call_bound + 30):  # kill, restart and wind-down: generous
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(caller, i)
                await trio.sleep(0.1)
                kill_started = trio.current_time()  # answers from here on may be "down"
                await trio.to_thread.run_sync(own_redis.kill)
                killed_at = trio.current_time()
                await trio.sleep(0.2)  # callers keep calling while Redis is down
                await trio.to_thread.run_sync(own_redis.start)
                restarted_at = trio.current_time()
                await trio.sleep(0.4)
                stop.set()
        assert not hung, f"calls with no answer within {call_bound} s: {hung}"
        before = [kind for t, kind in outcomes if t < kill_started]
        down = [kind for t, kind in outcomes if killed_at <= t < restarted_at]
        after = [kind for t, kind in outcomes if t >= restarted_at]
        assert before and set(before) == {"ok"}
        # while down: StorageUnavailable (a few "ok" at the edges: answers already on their way
        # when the kill landed, and calls that reached the server as it came back)
        assert down and down.count("down") > len(down) // 2
        # after the restart, with no manual reconnect: calls succeed again, for every caller
        assert after and after.count("ok") > len(after) * 0.9
        assert set(last.values()) == {"ok"} and len(last) == 50
        for i, got in values.items():
            # Each caller got its own counter's values (caller i counts in steps of i + 1) on
            # the first Redis, and Redis (restarted empty) holds the value of its last answer.
            first_run = [v for t, v in got if t < kill_started]
            assert first_run == [(i + 1) * k for k in range(1, len(first_run) + 1)], (i, got)
            assert await r.execute("GET", r.key("n", i)) == str(got[-1][1]), (i, got)
        assert await r.execute("ECHO", "back") == "back"


async def _select_one(s: AsyncSession) -> int:
    return int((await s.execute(text("SELECT 1"))).scalar_one())


async def test_mariadb_down_fails_fast_then_recovers(own_mariadb: Server) -> None:
    url = f"mysql+asyncmy://root:@127.0.0.1:{own_mariadb.port}/mysql?charset=utf8mb4"
    async with open_sql_actor(url, statement_timeout=2.0, pool_size=4) as sql:
        # warm the pool so that stale connections exist after the restart
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(sql.run, _select_one)
        await trio.to_thread.run_sync(own_mariadb.kill)
        start = trio.current_time()
        with pytest.raises(StorageUnavailable):
            await sql.run(_select_one)
        with pytest.raises(StorageUnavailable):
            await sql.ping()
        assert trio.current_time() - start < 2.0
        await trio.to_thread.run_sync(own_mariadb.start)
        # pool_pre_ping replaces the dead connections: no manual reconnect
        for _ in range(8):
            assert await sql.run(_select_one) == 1
