"""A Redis restart is invisible to callers: pooled connections that died with the old server
are replaced on their first use, not reported as errors."""

from __future__ import annotations

import pytest
import trio

from storage.redis_actor import RedisActor, open_redis_actor
from tests.storage.servers import Server

CALLERS = 20


async def fill_the_pool(r: RedisActor) -> None:
    """Open several pooled connections: transactions and scripts each take one."""
    async with trio.open_nursery() as nursery:
        for i in range(CALLERS):
            nursery.start_soon(r.transaction, [["SET", r.key("k", i), "v"], ["GET", r.key("k", i)]])
            nursery.start_soon(r.eval, "return 1", [], [])


@pytest.mark.parametrize("pause", [1.0, 0.1])
async def test_first_calls_after_a_restart_succeed(own_redis: Server, pause: float) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    async with open_redis_actor(url, prefix="reconnect:", timeout=2.0) as r:
        await fill_the_pool(r)
        await trio.to_thread.run_sync(own_redis.kill)  # SIGKILL: no goodbye to clients
        await trio.sleep(0.2)
        await trio.to_thread.run_sync(own_redis.start)
        await trio.sleep(pause)
        failures: list[BaseException] = []

        async def first_call(i: int) -> None:
            try:
                with trio.fail_after(5):
                    if i % 3 == 0:
                        await r.transaction([["SET", r.key("after", i), i]])
                    elif i % 3 == 1:
                        assert await r.eval("return ARGV[1]", [], [i]) == str(i)
                    else:
                        assert await r.execute("SET", r.key("after", i), i) is True
            except Exception as exc:  # noqa: BLE001 - collected and reported below
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(CALLERS):
                nursery.start_soon(first_call, i)
        assert failures == [], failures
