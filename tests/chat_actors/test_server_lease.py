"""The server lease: one chat server process per Redis prefix (real Redis, real time)."""

from __future__ import annotations

import pytest
import trio

from chat_actors import server_lease
from chat_actors.server_lease import hold_server_lease
from chat_actors.service import open_chat
from core.errors import ServerLeaseHeld
from core.settings import Settings
from storage import open_storage
from storage.redis_actor import RedisActor


def lease_key(redis: RedisActor) -> str:
    return redis.key("server-lease")


async def test_a_second_process_waits_one_lease_time_then_is_refused(
        redis_actor: RedisActor) -> None:
    async with hold_server_lease(redis_actor, seconds=0.6):
        start = trio.current_time()
        with pytest.raises(ServerLeaseHeld, match=r"another server process \(.* pid \d+"):
            async with hold_server_lease(redis_actor, seconds=0.6):
                pytest.fail("two processes held the lease")
        # the holder renewed it all along (every 0.2 s), or the second one would have taken it
        assert 0.6 <= trio.current_time() - start < 5


async def test_a_clean_exit_releases_it_so_a_restart_starts_at_once(
        redis_actor: RedisActor) -> None:
    async with hold_server_lease(redis_actor, seconds=5):
        assert await redis_actor.execute("EXISTS", lease_key(redis_actor)) == 1
    with trio.fail_after(1):
        async with hold_server_lease(redis_actor, seconds=5):
            pass
    assert await redis_actor.execute("EXISTS", lease_key(redis_actor)) == 0


async def test_the_lease_of_a_process_that_died_lapses(redis_actor: RedisActor) -> None:
    # a holder killed without releasing: its lease is not renewed any more
    await redis_actor.execute("SET", lease_key(redis_actor), "gone pid 1", "PX", 400)
    start = trio.current_time()
    with trio.fail_after(5):
        async with hold_server_lease(redis_actor, seconds=2):
            assert await redis_actor.execute("GET", lease_key(redis_actor)) != "gone pid 1"
    assert trio.current_time() - start >= 0.3


async def test_a_lost_lease_key_is_taken_again(redis_actor: RedisActor) -> None:
    async with hold_server_lease(redis_actor, seconds=0.6):
        held = await redis_actor.execute("GET", lease_key(redis_actor))
        await redis_actor.execute("DEL", lease_key(redis_actor))  # Redis restarted, say
        await trio.sleep(0.5)  # more than one renewal period
        assert await redis_actor.execute("GET", lease_key(redis_actor)) == held


async def test_a_second_chat_side_on_the_same_prefix_stops(
        db_settings: Settings, redis_actor: RedisActor, monkeypatch: pytest.MonkeyPatch) -> None:
    """What each Hypercorn worker runs: the second of ``--workers 2`` stops at start-up."""
    monkeypatch.setattr(server_lease, "LEASE_SECONDS", 0.5)
    async with (open_storage(db_settings) as first, open_chat(db_settings, first),
                open_storage(db_settings) as second):
        with pytest.raises(ServerLeaseHeld):
            async with open_chat(db_settings, second):
                pytest.fail("two chat sides on one prefix")
        unguarded = db_settings.model_copy(update={"server_lease": False})
        async with open_chat(unguarded, second) as chat:  # what a benchmark may ask for
            assert len(chat.registry) == 0
