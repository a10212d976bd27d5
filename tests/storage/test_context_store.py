"""The chat context layout in real Redis: atomic changes, TTL refreshed on use, repairs."""

from __future__ import annotations

import json

from storage.context_store import (
    AnswerInProgress,
    AnswerUsage,
    ContextStore,
    Profile,
    StoredMessage,
)
from storage.redis_actor import RedisActor

USER, ROOM = 42, "r1"


def msg(i: int, role: str = "user", text: str | None = None) -> StoredMessage:
    return StoredMessage(id=i, role=role, content=text or f"m{i}", tokens=5, ts=20260101000000 + i)  # type: ignore[arg-type]


def store_for(redis: RedisActor, ttl: int = 3600) -> ContextStore:
    return ContextStore(redis, ttl_seconds=ttl, default_model="mock-gpt")


def keys(redis: RedisActor) -> tuple[str, str, str]:
    base = f"{redis.prefix}ctx:{USER}:{ROOM}:"
    return base + "profile", base + "messages", base + "meta"


async def test_empty_context_loads_with_defaults(redis_actor: RedisActor) -> None:
    loaded = await store_for(redis_actor).load(USER, ROOM)
    assert loaded.messages == [] and loaded.repairs == [] and loaded.next_id == 0
    assert loaded.profile == Profile(model="mock-gpt")


async def test_change_appends_and_removes_in_one_go(redis_actor: RedisActor) -> None:
    store = store_for(redis_actor)
    await store.change(USER, ROOM, append=[msg(1), msg(2, "assistant"), msg(3)], next_id=3, count=3)
    await store.change(USER, ROOM, append=[msg(4, "assistant")], remove=[msg(1), msg(2, "assistant")],
                       next_id=4, count=2)
    loaded = await store.load(USER, ROOM)
    assert [m.id for m in loaded.messages] == [3, 4]
    assert loaded.next_id == 4 and loaded.repairs == []


async def test_profile_round_trip(redis_actor: RedisActor) -> None:
    store = store_for(redis_actor)
    profile = Profile(model="gpt-4o", temperature=0.2, top_p=0.5, presence_penalty=1.0,
                      frequency_penalty=-1.0)
    await store.save_profile(USER, ROOM, profile)
    assert (await store.load(USER, ROOM)).profile == profile


async def test_every_use_refreshes_the_ttl(redis_actor: RedisActor) -> None:
    store = store_for(redis_actor, ttl=1000)
    await store.change(USER, ROOM, append=[msg(1)], next_id=1, count=1)
    all_keys = keys(redis_actor)

    async def ttls_ms() -> list[int]:
        return [int(await redis_actor.execute("PTTL", key)) for key in all_keys]

    uses = {
        "load": lambda: store.load(USER, ROOM),
        "change": lambda: store.change(USER, ROOM, append=[msg(2, "assistant")], next_id=2,
                                       count=2),
        "save_profile": lambda: store.save_profile(USER, ROOM, Profile(model="gpt-4o")),
        "rewrite": lambda: store.rewrite(USER, ROOM, [msg(1), msg(2, "assistant")], 2),
    }
    for name, use in uses.items():
        for key in all_keys:  # as if the context had sat unused for most of its TTL
            assert await redis_actor.execute("PEXPIRE", key, 5_000) == 1, (name, key)
        assert all(0 < t <= 5_000 for t in await ttls_ms()), name
        await use()
        assert all(990_000 < t <= 1_000_000 for t in await ttls_ms()), (name, await ttls_ms())
    loaded = await store.load(USER, ROOM)  # the uses did what they say, too
    assert [m.id for m in loaded.messages] == [1, 2] and loaded.profile.model == "gpt-4o"


async def test_unreadable_item_is_repaired_not_wiped(redis_actor: RedisActor) -> None:
    store = store_for(redis_actor)
    await store.change(USER, ROOM, append=[msg(1), msg(2, "assistant")], next_id=2, count=2)
    _, messages_key, _ = keys(redis_actor)
    await redis_actor.execute("RPUSH", messages_key, "{not json")
    await redis_actor.execute("RPUSH", messages_key, json.dumps({"id": 9, "role": "wizard"}))
    loaded = await store.load(USER, ROOM)
    assert [m.id for m in loaded.messages] == [1, 2]
    assert any("unreadable" in r for r in loaded.repairs)
    # The repair was written back: a second load is clean and keeps everything readable.
    again = await store.load(USER, ROOM)
    assert again.repairs == [] and [m.id for m in again.messages] == [1, 2]


async def test_partly_missing_context_is_reported_and_repaired(redis_actor: RedisActor) -> None:
    store = store_for(redis_actor)
    await store.save_profile(USER, ROOM, Profile(model="gpt-4o"))
    await store.change(USER, ROOM, append=[msg(1), msg(2, "assistant")], next_id=7, count=2)
    profile_key, _messages_key, meta_key = keys(redis_actor)
    await redis_actor.execute("DEL", profile_key)
    await redis_actor.execute("HSET", meta_key, "count", 5)
    loaded = await store.load(USER, ROOM)
    assert [m.id for m in loaded.messages] == [1, 2] and loaded.next_id == 7
    assert any("profile missing" in r for r in loaded.repairs)
    assert any("meta says 5" in r for r in loaded.repairs)
    assert (await store.load(USER, ROOM)).repairs == []


async def test_clear_keeps_what_it_is_told(redis_actor: RedisActor) -> None:
    store = store_for(redis_actor)
    await store.change(USER, ROOM, append=[msg(1, "system"), msg(2), msg(3, "assistant")],
                       next_id=3, count=3)
    await store.rewrite(USER, ROOM, [msg(1, "system")], 3)
    loaded = await store.load(USER, ROOM)
    assert [m.role for m in loaded.messages] == ["system"] and loaded.next_id == 3


async def test_delete_user_removes_only_that_user(redis_actor: RedisActor) -> None:
    store = store_for(redis_actor)
    await store.change(USER, "a", append=[msg(1)], next_id=1, count=1)
    await store.change(USER, "b", append=[msg(1)], next_id=1, count=1)
    await store.change(USER + 1, "a", append=[msg(1)], next_id=1, count=1)
    assert await store.delete_user(USER) == 6  # profile, messages and meta of two rooms
    assert (await store.load(USER, "a")).messages == []
    assert [m.id for m in (await store.load(USER + 1, "a")).messages] == [1]


async def test_partial_flag_round_trips(redis_actor: RedisActor) -> None:
    store = store_for(redis_actor)
    cut = StoredMessage(id=1, role="assistant", content="half", tokens=2, ts=1, partial=True)
    await store.change(USER, ROOM, append=[cut], next_id=1, count=1)
    assert (await store.load(USER, ROOM)).messages == [cut]


async def test_checked_change_refuses_when_the_list_is_not_as_believed(
    redis_actor: RedisActor,
) -> None:
    store = store_for(redis_actor)
    assert await store.change(USER, ROOM, append=[msg(1), msg(2, "assistant")], next_id=2, count=2)
    _, messages_key, _ = keys(redis_actor)
    await redis_actor.execute("DEL", messages_key)  # e.g. expired under a live session
    assert not await store.change(USER, ROOM, append=[msg(3)], next_id=3, count=3)
    assert await redis_actor.execute("LLEN", messages_key) == 0  # nothing half-applied
    # A removal of a message that is not there is refused too, whole.
    assert await store.change(USER, ROOM, append=[msg(4)], next_id=4, count=1)
    assert not await store.change(USER, ROOM, remove=[msg(1)], append=[msg(5)], next_id=5,
                                  count=1)
    assert [m.id for m in (await store.load(USER, ROOM)).messages] == [4]


async def test_a_rewrite_keeps_only_the_mirror_of_the_answer_still_in_progress(
        redis_actor: RedisActor) -> None:
    """A context written whole (Redis was away while an answer ended, /clear, a repair) drops
    a mirror of an answer that ended: the next owner would store it a second time."""
    store = store_for(redis_actor)
    await store.change(USER, ROOM, append=[msg(1)], next_id=1, count=1)
    usage = AnswerUsage(key_id=7, model="gpt-4o", prompt_tokens=12, reserved=40,
                        budget_day="20261202")
    await store.mirror_answer(USER, ROOM, AnswerInProgress("g1", 1, [], "", usage), "so far",
                              None)
    await store.rewrite(USER, ROOM, [msg(1)], 1, answering="g1")  # still streaming: kept
    kept = (await store.load(USER, ROOM)).interrupted
    assert kept == AnswerInProgress("g1", 1, [], "so far", usage)
    await store.rewrite(USER, ROOM, [msg(1), msg(2, "assistant", "so far")], 2)  # it ended
    assert (await store.load(USER, ROOM)).interrupted is None
