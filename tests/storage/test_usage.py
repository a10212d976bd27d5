"""Usage accounting in storage: Redis counts, the batch writer, exactly once (storage.usage)."""

from __future__ import annotations

import random
from datetime import date
from functools import partial
from typing import Any

import trio

from storage.redis_actor import RedisActor
from storage.sql_actor import SqlActor
from storage.usage import UsageCounter, UsageWriter, read_usage, totals, write_batch

DAY = "20261202"


async def _record_many(counter: UsageCounter, n: int, seed: int) -> dict[tuple[int, int, str],
                                                                          list[int]]:
    """``n`` concurrent records over a few users, keys and models; the expected sums."""
    rng = random.Random(seed)
    expected: dict[tuple[int, int, str], list[int]] = {}
    jobs = []
    for _ in range(n):
        user, key, model = rng.choice([1, 2]), rng.choice([0, 5, 7]), rng.choice(["m-a", "m|b"])
        prompt, answer = rng.randint(1, 500), rng.randint(0, 900)
        row = expected.setdefault((user, key, model), [0, 0, 0])
        row[0] += 1
        row[1] += prompt
        row[2] += answer
        jobs.append((user, key, model, prompt, answer))
    async with trio.open_nursery() as nursery:
        for user, key, model, prompt, answer in jobs:
            nursery.start_soon(partial(counter.record, user, key, model, prompt_tokens=prompt,
                                       answer_tokens=answer, day=DAY))
    return expected


async def _in_sql(sql: SqlActor) -> dict[tuple[int, int, str], list[int]]:
    found: dict[tuple[int, int, str], list[int]] = {}
    for user in (1, 2):
        for r in await sql.run(read_usage(user, date(2026, 1, 1))):
            assert r.day == date(2026, 12, 2)
            found[(user, r.key_id, r.model)] = [r.requests, r.prompt_tokens, r.answer_tokens]
    return found


async def test_concurrent_records_and_flushes_are_exact(redis_actor: RedisActor,
                                                        sql_actor: SqlActor) -> None:
    counter = UsageCounter(redis_actor)
    writers = [UsageWriter(redis_actor, sql_actor, every=1) for _ in range(3)]
    expected: dict[tuple[int, int, str], list[int]] = {}

    async def flushing(w: UsageWriter) -> None:
        for _ in range(10):
            await w.flush()
            await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        for w in writers:  # three writers (as three processes) race with the records
            nursery.start_soon(flushing, w)
        for seed in range(4):
            _add(expected, await _record_many(counter, 100, seed))
    assert await writers[0].flush()
    assert await _in_sql(sql_actor) == expected
    assert sum(v[0] for v in expected.values()) == 400


async def test_a_writer_that_dies_mid_batch_loses_and_doubles_nothing(
        redis_actor: RedisActor, sql_actor: SqlActor) -> None:
    counter = UsageCounter(redis_actor)
    expected = await _record_many(counter, 50, 1)
    dead = UsageWriter(redis_actor, sql_actor, every=1)
    # Died after claiming, before writing: the batch waits in Redis.
    claimed = await dead.claim()
    assert claimed is not None
    more = await _record_many(counter, 30, 2)  # counted meanwhile, outside the batch
    await UsageWriter(redis_actor, sql_actor, every=1).flush()
    _add(expected, more)
    assert await _in_sql(sql_actor) == expected

    # Died after its transaction committed, before deleting the batch: not written again.
    extra = await _record_many(counter, 20, 3)
    claimed = await dead.claim()
    assert claimed is not None
    assert await sql_actor.run(write_batch(*claimed))
    assert not await sql_actor.run(write_batch(*claimed))  # the id commits once
    await UsageWriter(redis_actor, sql_actor, every=1).flush()
    _add(expected, extra)
    assert await _in_sql(sql_actor) == expected
    assert await dead.claim() is None  # nothing left in Redis
    rows = [r for u in (1, 2) for r in await sql_actor.run(read_usage(u, date(2026, 1, 1)))]
    assert totals(rows)[0] == 100


async def test_many_days_and_users_go_in_several_batches(redis_actor: RedisActor,
                                                         sql_actor: SqlActor) -> None:
    counter = UsageCounter(redis_actor)
    for user in range(1, 8):
        for day in ("20261130", "20261201", "20261202"):
            await counter.record(user, None, "m", prompt_tokens=user, answer_tokens=2, day=day)
    writer = UsageWriter(redis_actor, sql_actor, every=1)
    writer.batch_hashes = 4  # 21 day hashes: six batches
    assert await writer.flush()
    assert await writer.claim() is None
    for user in range(1, 8):
        rows = await sql_actor.run(read_usage(user, date(2026, 11, 1)))
        assert [(r.day.day, r.key_id, r.requests, r.prompt_tokens, r.answer_tokens)
                for r in rows] == [(d, 0, 1, user, 2) for d in (30, 1, 2)]


def _add(into: dict[Any, list[int]], more: dict[Any, list[int]]) -> None:
    """Add ``more``'s counts to ``into``, row by row."""
    for k, v in more.items():
        row = into.setdefault(k, [0, 0, 0])
        for i in range(3):
            row[i] += v[i]
