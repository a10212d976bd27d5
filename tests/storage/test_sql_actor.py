"""SqlActor against the real MariaDB: units of work, concurrency, errors, cancellation."""

from __future__ import annotations

import asyncio
import random
from functools import partial

import pytest
import trio
from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import StorageConflict, StorageError, StorageTimeout
from core.settings import Settings
from storage.models import ApiKey, ChatRoom, SnsType, User, UserStatus
from storage.sql_actor import SqlActor, open_sql_actor, statement_timeout_sql


async def _add_user(sql: SqlActor, email: str) -> int:
    async def unit(s: AsyncSession) -> int:
        user = User(email=email)
        s.add(user)
        await s.flush()
        return user.id

    return await sql.run(unit)


async def test_unit_commits_and_returns_plain_data(sql_actor: SqlActor) -> None:
    uid = await _add_user(sql_actor, "a@example.com")

    async def read(s: AsyncSession) -> User:
        return (await s.execute(select(User).where(User.id == uid))).scalar_one()

    user = await sql_actor.run(read)
    assert (user.email, user.sns_type, user.status, user.marketing_agree) == (
        "a@example.com",
        SnsType.EMAIL,
        UserStatus.ACTIVE,
        False,
    )
    assert user.created_at.tzinfo is None  # naive UTC, see storage.models


async def test_exception_rolls_back(sql_actor: SqlActor) -> None:
    async def unit(s: AsyncSession) -> None:
        s.add(User(email="gone@example.com"))
        await s.flush()
        raise LookupError("changed my mind")

    with pytest.raises(LookupError):
        await sql_actor.run(unit)

    async def count(s: AsyncSession) -> int:
        return len((await s.execute(select(User.id))).all())

    assert await sql_actor.run(count) == 0


async def test_unique_violation_is_conflict(sql_actor: SqlActor) -> None:
    await _add_user(sql_actor, "dup@example.com")
    with pytest.raises(StorageConflict):
        await _add_user(sql_actor, "dup@example.com")


async def test_cascade_delete(sql_actor: SqlActor) -> None:
    uid = await _add_user(sql_actor, "c@example.com")

    async def add(s: AsyncSession) -> None:
        s.add(ApiKey(user_id=uid, access_key="ak", secret_key="sk"))
        s.add(ChatRoom(user_id=uid, room_key="r1", name="room"))

    await sql_actor.run(add)

    async def drop(s: AsyncSession) -> tuple[int, int]:
        await s.execute(delete(User).where(User.id == uid))
        keys = len((await s.execute(select(ApiKey.id))).all())
        rooms = len((await s.execute(select(ChatRoom.id))).all())
        return keys, rooms

    assert await sql_actor.run(drop) == (0, 0)


async def test_thousand_concurrent_units_get_their_own_answer(sql_actor: SqlActor) -> None:
    answers: dict[int, int] = {}

    async def one(i: int) -> None:
        async def unit(s: AsyncSession) -> int:
            return int((await s.execute(text("SELECT :i + 1"), {"i": i})).scalar_one())

        answers[i] = await sql_actor.run(unit)

    async with trio.open_nursery() as nursery:
        for i in range(1000):
            nursery.start_soon(one, i)
    assert answers == {i: i + 1 for i in range(1000)}


async def _sleep(s: AsyncSession, seconds: float) -> object:
    return (await s.execute(text("SELECT SLEEP(:t)"), {"t": seconds})).scalar_one()


async def test_every_connection_has_max_statement_time(
    settings: Settings, fresh_database: str
) -> None:
    pool_size = 4
    async with open_sql_actor(fresh_database, statement_timeout=2.5, pool_size=pool_size) as sql:
        inside = 0
        seen: list[tuple[int, float]] = []

        async def unit(s: AsyncSession) -> None:
            nonlocal inside
            row = (await s.execute(text("SELECT CONNECTION_ID(), @@max_statement_time"))).one()
            seen.append((int(row[0]), float(row[1])))
            inside += 1
            for _ in range(500):  # hold this connection until all pool_size are held at once
                if inside >= pool_size:
                    break
                await asyncio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            for _ in range(pool_size):
                nursery.start_soon(sql.run, unit)
        assert len({conn for conn, _ in seen}) == pool_size  # all distinct, held together
        assert [limit for _, limit in seen] == [2.5] * pool_size


@pytest.mark.parametrize(("version", "statement"), [
    ("11.4.2-MariaDB-ubu2204", "SET SESSION max_statement_time = 1.500"),
    ("5.5.5-10.11.6-MariaDB-0+deb12u1", "SET SESSION max_statement_time = 1.500"),
    ("8.0.36", "SET SESSION max_execution_time = 1500"),
    ("8.4.0-commercial", "SET SESSION max_execution_time = 1500"),
])
def test_statement_limit_follows_the_server_flavour(version: str, statement: str) -> None:
    assert statement_timeout_sql(version, 1.5) == statement


async def test_errors_never_carry_sql_parameters(sql_actor: SqlActor) -> None:
    secret = "argon2-hash-that-must-not-leak-5c1e"

    async def unit(s: AsyncSession) -> None:
        # the server's own message (no such table) does not echo the statement
        await s.execute(text("SELECT * FROM no_such_table WHERE h = :secret"), {"secret": secret})

    with pytest.raises(StorageError) as info:
        await sql_actor.run(unit)
    chain = []
    exc: BaseException | None = info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__
    assert "no_such_table" in "\n".join(chain)
    assert secret not in "\n".join(chain)


async def test_statement_timeout_is_storage_timeout(fresh_database: str) -> None:
    async with open_sql_actor(fresh_database, statement_timeout=0.3, pool_size=2) as sql:
        start = trio.current_time()
        with pytest.raises(StorageTimeout):
            await sql.run(lambda s: _sleep(s, 3))
        assert trio.current_time() - start < 2.0
        assert await sql.run(lambda s: _sleep(s, 0)) == 0


async def test_cancelled_mid_statement_returns_fast_and_actor_recovers(
    sql_actor: SqlActor,
) -> None:
    start = trio.current_time()
    with trio.move_on_after(0.2):
        await sql_actor.run(lambda s: _sleep(s, 3))
    assert trio.current_time() - start < 0.5
    for _ in range(20):  # every pooled connection is usable, none desynchronised
        assert await sql_actor.run(lambda s: _sleep(s, 0)) == 0
    assert await _add_user(sql_actor, "after@example.com") > 0


async def test_sql_syntax_error_is_storage_error(sql_actor: SqlActor) -> None:
    async def unit(s: AsyncSession) -> None:
        await s.execute(text("SELEKT 1"))

    with pytest.raises(StorageError) as info:
        await sql_actor.run(unit)
    assert type(info.value) is StorageError


async def test_ping(sql_actor: SqlActor) -> None:
    await sql_actor.ping()


async def test_random_deadlines_never_desynchronise_connections(sql_actor: SqlActor) -> None:
    rng = random.Random(7)
    wrong: list[tuple[int, int]] = []
    answered: list[int] = []
    hung: list[int] = []

    async def one(i: int, deadline: float, *, must_answer: bool = False) -> None:
        async def unit(s: AsyncSession) -> int:
            return int((await s.execute(text("SELECT :i"), {"i": i})).scalar_one())

        with trio.move_on_after(deadline) as scope:
            got = await sql_actor.run(unit)
            if got != i:
                wrong.append((i, got))
            answered.append(i)
        if must_answer and scope.cancelled_caught:
            hung.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(400):
            nursery.start_soon(one, i, rng.uniform(0, 0.004))
    # Then calls with a generous deadline: every one answers, and rightly (a connection or
    # pool slot lost to the cancellations above would leave them hanging: that fails here).
    answered.clear()
    async with trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(partial(one, i, 10.0, must_answer=True))
    assert hung == [], f"{len(hung)} units got no answer within 10 s"
    assert sorted(answered) == list(range(100))
    assert wrong == []
