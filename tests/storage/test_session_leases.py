"""Session leases and fencing in real Redis: one owner at a time, and a stale owner's writes
refused by the store in the same script that would apply them."""

from __future__ import annotations

import pytest
import trio

from core.errors import SessionMoved
from storage.context_store import ContextStore, StoredMessage
from storage.redis_actor import RedisActor
from storage.session_leases import SessionLeases

USER, ROOM = 7, "r"


def msg(i: int) -> StoredMessage:
    return StoredMessage(id=i, role="user", content=f"m{i}", tokens=3, ts=20260101000000 + i)


def leases(redis: RedisActor, node: str, seconds: float = 5.0) -> SessionLeases:
    return SessionLeases(redis, node=node, lease_seconds=seconds, fence_ttl=3600)


async def test_one_owner_at_a_time_and_the_stale_one_is_fenced(redis_actor: RedisActor) -> None:
    store = ContextStore(redis_actor, ttl_seconds=3600, default_model="m")
    old, new = leases(redis_actor, "old", 0.3), leases(redis_actor, "new", 0.3)
    first = await old.acquire(USER, ROOM)
    assert first.fence is not None
    refused = await new.acquire(USER, ROOM)
    assert refused.fence is None and refused.holder == first.fence.lease
    assert await store.change(USER, ROOM, append=[msg(1)], next_id=1, count=1,
                              fence=first.fence)
    # The old owner stalls (a partition, a pause) past its lease: the new one takes over.
    await trio.sleep(0.4)
    second = await new.acquire(USER, ROOM)
    assert second.fence is not None and second.fence.token != first.fence.token
    # The stalled owner comes back and writes: refused, in the write's own script.
    with pytest.raises(SessionMoved):
        await store.change(USER, ROOM, append=[msg(2)], next_id=2, count=2, fence=first.fence)
    with pytest.raises(SessionMoved):
        await store.rewrite(USER, ROOM, [], 2, fence=first.fence)
    # Its renewal says so too; the new owner's renewal and writes go through.
    assert await old.renew([(USER, ROOM, first.fence)]) == [0]
    assert await new.renew([(USER, ROOM, second.fence)]) == []
    assert await store.change(USER, ROOM, append=[msg(2)], next_id=2, count=2,
                              fence=second.fence)
    assert [m.id for m in (await store.load(USER, ROOM)).messages] == [1, 2]


async def test_a_lease_lapsed_while_redis_was_slow_is_renewed_if_nobody_took_it(
        redis_actor: RedisActor) -> None:
    owner = leases(redis_actor, "solo", 0.2)
    taken = await owner.acquire(USER, ROOM)
    assert taken.fence is not None
    await trio.sleep(0.3)
    assert await owner.holders([(USER, ROOM)]) == [""]
    assert await owner.renew([(USER, ROOM, taken.fence)]) == []  # nobody else: ours again
    assert await owner.holders([(USER, ROOM)]) == [taken.fence.lease]
    await owner.release(USER, ROOM, taken.fence)
    assert await owner.holders([(USER, ROOM)]) == [""]


async def test_a_deleted_context_refuses_its_old_owner(redis_actor: RedisActor) -> None:
    store = ContextStore(redis_actor, ttl_seconds=3600, default_model="m")
    taken = await leases(redis_actor, "a").acquire(USER, ROOM)
    assert taken.fence is not None
    await store.change(USER, ROOM, append=[msg(1)], next_id=1, count=1, fence=taken.fence)
    await store.delete(USER, ROOM)
    with pytest.raises(SessionMoved):  # it would bring the deleted history back
        await store.rewrite(USER, ROOM, [msg(1)], 1, fence=taken.fence)
    assert (await store.load(USER, ROOM)).messages == []


async def test_the_node_list_knows_the_live_nodes_and_expires_when_nobody_beats(
        redis_actor: RedisActor) -> None:
    a, b = leases(redis_actor, "a"), leases(redis_actor, "b")
    await a.heartbeat()
    await b.heartbeat()
    assert await a.live_nodes() == {"a", "b"}
    await b.leave()
    assert await a.live_nodes() == {"a"}
    # a prefix no longer served leaves nothing behind for good
    ttl = int(await redis_actor.execute("PTTL", redis_actor.prefix + "nodes"))
    assert 0 < ttl <= 5_000 + 60_000
