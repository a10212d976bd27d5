"""RedisActor against the real Redis: batching, per-caller answers and errors, cancellation."""

from __future__ import annotations

import random
from functools import partial

import pytest
import trio

from core.errors import StorageError, StorageTimeout
from core.settings import Settings
from storage.redis_actor import RedisActor, open_redis_actor
from storage.redis_commands import block_seconds, check_args
from tests.storage.servers import Server


async def test_key_helper(redis_actor: RedisActor) -> None:
    assert redis_actor.key("ctx", 7, "messages") == redis_actor.prefix + "ctx:7:messages"


async def test_thousand_concurrent_callers_get_their_own_answer(redis_actor: RedisActor) -> None:
    answers: dict[int, tuple[object, object]] = {}

    async def one(i: int) -> None:
        await redis_actor.execute("SET", redis_actor.key("n", i), i)
        got = await redis_actor.execute("GET", redis_actor.key("n", i))
        echo = await redis_actor.execute("ECHO", f"e{i}")
        answers[i] = (got, echo)

    async with trio.open_nursery() as nursery:
        for i in range(1000):
            nursery.start_soon(one, i)
    assert answers == {i: (str(i), f"e{i}") for i in range(1000)}


async def test_errors_stay_with_their_caller_in_a_batch(redis_actor: RedisActor) -> None:
    await redis_actor.execute("SET", redis_actor.key("s"), "v")
    outcomes: dict[int, object] = {}

    async def one(i: int) -> None:
        try:
            if i % 2:
                outcomes[i] = await redis_actor.execute("HGET", redis_actor.key("s"), "f")
            else:
                outcomes[i] = await redis_actor.execute("GET", redis_actor.key("s"))
        except StorageError as exc:
            outcomes[i] = type(exc)

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(one, i)
    assert outcomes == {i: (StorageError if i % 2 else "v") for i in range(200)}
    with pytest.raises(StorageError):
        await redis_actor.execute("NOSUCHCOMMAND")


@pytest.mark.parametrize("args", [
    ("BLPOP", "q", 0), ("brpop", "q", 1), ("BLMOVE", "a", "b", "LEFT", "RIGHT", 1),
    ("BZPOPMIN", "z", 1), ("BLMPOP", 1, 1, "q", "LEFT"), ("WAIT", 1, 1000),
    ("XREAD", "BLOCK", 100, "STREAMS", "s", "$"), ("xreadgroup", "GROUP", "g", "c", "block", 0,
                                                   "STREAMS", "s", ">"),
    ("SUBSCRIBE", "ch"), ("PSUBSCRIBE", "c*"), ("MONITOR",), ("MULTI",), ("WATCH", "k"),
    ("SELECT", 1), ("RESET",),
])
async def test_blocking_and_stateful_commands_are_refused_by_execute(
    redis_actor: RedisActor, args: tuple[object, ...]
) -> None:
    with pytest.raises(TypeError) as info:
        with trio.fail_after(5):
            await redis_actor.execute(*args)
    assert str(args[0]).upper() in str(info.value)
    # the shared pipeline is not stalled: the next caller is answered at once
    with trio.fail_after(2):
        assert await redis_actor.execute("ECHO", "still here") == "still here"


async def test_non_blocking_stream_read_is_allowed(redis_actor: RedisActor) -> None:
    stream = redis_actor.key("stream")
    await redis_actor.execute("XADD", stream, "*", "f", "v")
    got = await redis_actor.execute("XREAD", "COUNT", 1, "STREAMS", stream, "0")
    assert got[0][0] == stream


async def test_invalid_argument_type_is_refused_before_queueing(redis_actor: RedisActor) -> None:
    with pytest.raises(TypeError):
        await redis_actor.execute("SET", redis_actor.key("x"), {"a": 1})
    with pytest.raises(TypeError):
        await redis_actor.execute("SET", redis_actor.key("x"), True)


async def test_transaction_is_atomic_and_returns_results(redis_actor: RedisActor) -> None:
    k = redis_actor.key("tx")
    assert await redis_actor.transaction([["INCR", k], ["INCRBY", k, 5], ["GET", k]]) == [1, 6, "6"]


async def test_eval_uses_a_cached_script(redis_actor: RedisActor) -> None:
    script = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
    k = redis_actor.key("lua")
    assert await redis_actor.eval(script, [k], [2]) == 2
    assert await redis_actor.eval(script, [k], [3]) == 5
    assert len(redis_actor._scripts) == 1


async def test_eval_loads_its_script_again_after_a_flush(own_redis: Server) -> None:
    script = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    async with open_redis_actor(url, prefix="t:", timeout=2.0) as actor:
        assert await actor.eval(script, ["t:n"], [2]) == 2
        await actor.execute("SCRIPT", "FLUSH")  # as a restart of Redis without persistence does
        assert await actor.eval(script, ["t:n"], [3]) == 5


async def test_concurrent_evals_share_one_crossing(redis_actor: RedisActor) -> None:
    script = "return redis.call('INCR', KEYS[1])"
    k = redis_actor.key("lua-batch")
    await redis_actor.eval(script, [k], [])
    crossings = 0
    run = redis_actor._bridge.run

    async def counted(make: object) -> object:
        nonlocal crossings
        crossings += 1
        return await run(make)  # type: ignore[arg-type]

    redis_actor._bridge.run = counted  # type: ignore[method-assign,assignment]
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(redis_actor.eval, script, [k], [])
    finally:
        del redis_actor._bridge.run
    assert await redis_actor.execute("GET", k) == "51"
    assert crossings <= 3  # one batch, or a few if the first left before the rest queued


async def test_ping(redis_actor: RedisActor) -> None:
    await redis_actor.ping()


async def test_cancelled_blpop_returns_fast_and_steals_nothing(redis_actor: RedisActor) -> None:
    q = redis_actor.key("q")
    start = trio.current_time()
    with trio.move_on_after(0.2):
        await redis_actor.blocking("BLPOP", q, 3)
    assert trio.current_time() - start < 0.5
    await redis_actor.execute("RPUSH", q, "later")
    assert await redis_actor.execute("LPOP", q) == "later"
    # and the actor goes on working, blocking calls included
    await redis_actor.execute("RPUSH", q, "next")
    assert list(await redis_actor.blocking("BLPOP", q, 1)) == [q, "next"]


async def test_blocking_call_times_out_by_itself(redis_actor: RedisActor) -> None:
    assert await redis_actor.blocking("BLPOP", redis_actor.key("empty"), 0.1) is None


async def test_queued_cancelled_op_is_not_sent_sent_op_runs_whole(
    redis_actor: RedisActor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A BLPOP with a short timeout is the test's way to keep a batch in flight for 0.3 s
    # without slowing the shared server: let execute() take it here (it refuses it otherwise).
    monkeypatch.setattr("storage.redis_actor.check_batchable", check_args)
    r = redis_actor
    late_scope = trio.CancelScope()
    left: list[float] = []

    async def late() -> None:
        with late_scope:
            await r.execute("SET", r.key("late"), "1")
        left.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        # batch 1 keeps the actor busy for 0.3 s
        nursery.start_soon(r.execute, "BLPOP", r.key("q1"), 0.3)
        await trio.sleep(0.1)
        # queued behind it and cancelled while queued: never sent
        with trio.move_on_after(0.05):
            await r.execute("SET", r.key("never"), "1")
        # queued behind it too: these two go out together as batch 2 (0.3 s in flight)
        nursery.start_soon(r.execute, "BLPOP", r.key("q2"), 0.3)
        nursery.start_soon(late)
        await trio.sleep(0.3)  # t ~ 0.45: batch 2 is in flight
        cancelled_at = trio.current_time()
        late_scope.cancel()
    assert late_scope.cancelled_caught
    assert left[0] - cancelled_at < 0.1  # the caller left at once...
    assert await r.execute("GET", r.key("never")) is None
    assert await r.execute("GET", r.key("late")) == "1"  # ...but its sent write ran whole


async def test_command_past_the_socket_timeout_is_storage_timeout(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("storage.redis_actor.check_batchable", check_args)  # a slow command
    async with open_redis_actor(
        settings.redis_url, prefix=settings.redis_key_prefix, timeout=0.3
    ) as r:
        start = trio.current_time()
        with pytest.raises(StorageTimeout):
            await r.execute("BLPOP", r.key("never"), 2)
        assert trio.current_time() - start < 1.5
        assert await r.execute("ECHO", "still fine") == "still fine"


async def test_closed_actor_refuses_calls(settings: Settings) -> None:
    async with open_redis_actor(
        settings.redis_url, prefix=settings.redis_key_prefix, timeout=1
    ) as r:
        pass
    with pytest.raises(StorageError):
        await r.execute("PING")


async def test_random_deadlines_never_mix_up_answers(redis_actor: RedisActor) -> None:
    rng = random.Random(11)
    r = redis_actor
    wrong: list[object] = []
    answered: list[int] = []
    hung: list[int] = []

    async def one(i: int, deadline: float, *, must_answer: bool = False) -> None:
        with trio.move_on_after(deadline) as scope:
            if i % 10 == 0:
                got = await r.blocking("BLPOP", r.key("never", i), 0.05)
                if got is not None:
                    wrong.append(got)
            else:
                got = await r.execute("ECHO", f"v{i}")
                if got != f"v{i}":
                    wrong.append(got)
            answered.append(i)
        if must_answer and scope.cancelled_caught:
            hung.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(2000):
            nursery.start_soon(one, i, rng.uniform(0, 0.003))
    # Then calls with a generous deadline: every one answers, and rightly (a call left
    # hanging by the cancellations above would fail here, not pass silently).
    answered.clear()
    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(partial(one, i, 10.0, must_answer=True))
    assert hung == [], f"{len(hung)} calls got no answer within 10 s"
    assert sorted(answered) == list(range(200))
    assert wrong == []


@pytest.mark.parametrize(
    ("args", "seconds"),
    [
        (("BLPOP", "a", "b", 2), 2.0),
        (("brpop", "a", "0.5"), 0.5),
        (("BLPOP", "a", 0), None),  # forever: bounded by the caller's scope only
        (("BLMPOP", 1.5, 1, "a", "LEFT"), 1.5),
        (("XREAD", "BLOCK", 100, "STREAMS", "s", "$"), None),
    ],
)
def test_block_seconds(args: tuple[object, ...], seconds: float | None) -> None:
    assert block_seconds(args) == seconds
