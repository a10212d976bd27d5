"""The server lease: one chat server process per Redis prefix (real Redis, real time).

Leases here last 1-3 s (renewed every fifth of that) instead of the server's 10-30 s.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from chat_actors import service
from chat_actors.server_lease import ServerLease
from chat_actors.service import open_chat
from core.errors import ServerLeaseHeld, StorageError, StorageUnavailable
from core.settings import Settings
from storage import open_storage
from storage.redis_actor import RedisActor, open_redis_actor
from tests.storage.servers import Server, redis_server


async def holder_of(redis: RedisActor) -> str | None:
    value = await redis.execute("GET", redis.key("server-lease"))
    return None if value is None else str(value)


async def until_held_by(redis: RedisActor, holder: str, timeout: float = 5) -> None:
    with trio.fail_after(timeout):
        while True:
            try:
                if await holder_of(redis) == holder:
                    return
            except StorageError:  # a Redis that is coming back
                pass
            await trio.sleep(0.05)


async def test_a_second_process_waits_one_lease_time_then_is_refused(
        redis_actor: RedisActor, nursery: trio.Nursery) -> None:
    first = ServerLease(redis_actor, 2.0)
    await first.take()
    nursery.start_soon(first.keep)
    start = trio.current_time()
    with pytest.raises(ServerLeaseHeld, match=r"another server process \(.* pid \d+"):
        await ServerLease(redis_actor, 2.0).take()
    # it waited a whole lease time, which the first one renewed meanwhile
    assert trio.current_time() - start >= 2.0
    assert await holder_of(redis_actor) == first.me


async def test_a_clean_exit_releases_it_so_a_restart_starts_at_once(
        redis_actor: RedisActor) -> None:
    first = ServerLease(redis_actor, 5.0)
    await first.take()
    await first.release()
    assert await holder_of(redis_actor) is None
    with trio.fail_after(1):
        await ServerLease(redis_actor, 5.0).take()


async def test_the_lease_of_a_process_that_died_lapses(redis_actor: RedisActor) -> None:
    # a holder killed without releasing: its lease is not renewed any more
    start = trio.current_time()
    await redis_actor.execute("SET", redis_actor.key("server-lease"), "gone pid 1", "PX", 400)
    lease = ServerLease(redis_actor, 2.0)
    with trio.fail_after(5):
        await lease.take()
    assert trio.current_time() - start >= 0.3
    assert await holder_of(redis_actor) == lease.me


async def test_a_lapsed_lease_is_logged_once_and_taken_back_when_free(
        redis_actor: RedisActor, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    lease = ServerLease(redis_actor, 1.0)  # renewed every 0.2 s
    await lease.take()
    nursery.start_soon(lease.keep)
    with caplog.at_level(logging.WARNING, logger="chat.server_lease"):
        await redis_actor.execute("SET", redis_actor.key("server-lease"), "intruder pid 2")
        with trio.fail_after(5):
            while not any("intruder pid 2 took it" in r.message for r in caplog.records):
                await trio.sleep(0.05)
        await trio.sleep(0.7)  # three renewals more
        lapsed = [r for r in caplog.records if "intruder pid 2 took it" in r.message]
        assert len(lapsed) == 1 and lapsed[0].levelno == logging.ERROR
        assert await holder_of(redis_actor) == "intruder pid 2"  # never taken from another
        await redis_actor.execute("DEL", redis_actor.key("server-lease"))  # Redis lost it, say
        await until_held_by(redis_actor, lease.me)
        assert any("is ours again" in r.message for r in caplog.records)


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[tuple[Server, RedisActor]]:
    """A redis-server of the test's own, to kill or stop, and an actor on it."""
    redis = redis_server(tmp_path)
    redis.start()
    try:
        url = f"redis://127.0.0.1:{redis.port}/0"
        async with open_redis_actor(url, prefix="lease-test:", timeout=1.0) as actor:
            yield redis, actor
    finally:
        redis.kill()


async def test_renewal_survives_a_redis_outage_and_start_up_fails_closed(
        private_redis: tuple[Server, RedisActor], nursery: trio.Nursery,
        caplog: pytest.LogCaptureFixture) -> None:
    redis, actor = private_redis
    lease = ServerLease(actor, 2.0)
    await lease.take()
    nursery.start_soon(lease.keep)
    with caplog.at_level(logging.WARNING, logger="chat.server_lease"):
        redis.kill()
        # a process starting now cannot see the lease: it must not serve
        with trio.fail_after(10), pytest.raises(StorageUnavailable, match="lease"):
            await ServerLease(actor, 1.0).take()
        assert any("could not renew" in r.message for r in caplog.records)
        redis.start()  # empty: the lease key is gone with the old process
        await until_held_by(actor, lease.me, timeout=10)
    await lease.release()


async def test_a_redis_stall_shorter_than_the_lease_does_not_lose_it(
        private_redis: tuple[Server, RedisActor], nursery: trio.Nursery,
        caplog: pytest.LogCaptureFixture) -> None:
    redis, actor = private_redis
    lease = ServerLease(actor, 3.0)  # renewed every 0.6 s, each try bounded to 0.6 s
    await lease.take()
    nursery.start_soon(lease.keep)
    assert redis.proc is not None
    with caplog.at_level(logging.WARNING, logger="chat.server_lease"):
        redis.proc.send_signal(signal.SIGSTOP)  # a Redis that hangs, say on a fork
        await trio.sleep(1.5)
        redis.proc.send_signal(signal.SIGCONT)
        with trio.fail_after(5):
            while not any("renewed again" in r.message for r in caplog.records):
                await trio.sleep(0.05)
    assert any("could not renew" in r.message for r in caplog.records)
    assert not any("took it" in r.message for r in caplog.records)
    assert await holder_of(actor) == lease.me
    await lease.release()


async def test_a_second_chat_side_on_the_same_prefix_stops(
        db_settings: Settings, redis_actor: RedisActor, monkeypatch: pytest.MonkeyPatch) -> None:
    """What each Hypercorn worker runs: the second of ``--workers 2`` stops at start-up."""
    monkeypatch.setattr(service, "lease_seconds", lambda redis_timeout: 2.0)
    async with (open_storage(db_settings) as first, open_chat(db_settings, first),
                open_storage(db_settings) as second):
        with pytest.raises(ServerLeaseHeld):
            async with open_chat(db_settings, second):
                pytest.fail("two chat sides on one prefix")
        unguarded = db_settings.model_copy(update={"server_lease": False})
        async with open_chat(unguarded, second) as chat:  # what a benchmark may ask for
            assert len(chat.registry) == 0
    assert await holder_of(redis_actor) is None  # released at exit
