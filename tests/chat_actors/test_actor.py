"""The actor runtime: call/cast/stop through a real Trio task and a real bounded mailbox."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import trio
import trio.testing

from chat_actors.actor import Actor, ActorRef, Refuse, Request
from core.errors import ActorDead, MailboxFull


@dataclass(frozen=True)
class Add:
    n: int


@dataclass(frozen=True)
class Get(Request[int]):
    pass


@dataclass(frozen=True)
class Record:
    item: int


@dataclass(frozen=True)
class GetLog(Request[list[int]]):
    pass


@dataclass(frozen=True)
class Boom(Request[int]):
    pass


@dataclass(frozen=True)
class Nope(Request[int]):
    pass


@dataclass(frozen=True)
class Slow(Request[int]):
    seconds: float


@dataclass(frozen=True)
class Block:
    release: trio.Event


@dataclass(frozen=True)
class CrashChildAfter:
    seconds: float


@dataclass(frozen=True)
class Quit:
    pass


CounterMsg = Add | Get | Record | GetLog | Boom | Nope | Slow | Block | CrashChildAfter | Quit


class Counter(Actor[CounterMsg]):
    def __init__(self) -> None:
        self.total = -1
        self.log: list[int] = []
        self.slow_done = 0
        self.stopped = False

    async def on_start(self) -> None:
        self.total = 0  # state exists before anyone can send

    async def on_stop(self) -> None:
        self.stopped = True

    async def handle(self, msg: CounterMsg) -> object:
        match msg:
            case Add(n=n):
                self.total += n
            case Get():
                return self.total
            case Record(item=item):
                self.log.append(item)
            case GetLog():
                return list(self.log)
            case Boom():
                raise ValueError("boom")
            case Nope():
                return Refuse(KeyError("no such thing"))
            case Slow(seconds=seconds):
                await trio.sleep(seconds)
                self.slow_done += 1
                return self.slow_done
            case Block(release=release):
                await release.wait()
            case CrashChildAfter(seconds=seconds):
                self.nursery.start_soon(self._crash_after, seconds)
            case Quit():
                self.stop()
        return None

    async def _crash_after(self, seconds: float) -> None:
        await trio.sleep(seconds)
        raise RuntimeError("child task crashed")


async def test_call_returns_the_handlers_answer_and_on_start_ran_first() -> None:
    actor = Counter()
    async with trio.open_nursery() as nursery:
        ref: ActorRef[CounterMsg] = await nursery.start(actor.run)
        assert actor.total == 0
        await ref.cast(Add(2))
        ref.cast_nowait(Add(3))
        assert await ref.call(Get()) == 5
        await ref.stop()
    assert actor.stopped


async def test_casts_are_handled_in_order() -> None:
    async with trio.open_nursery() as nursery:
        ref: ActorRef[CounterMsg] = await nursery.start(Counter().run, 200)
        for i in range(100):
            await ref.cast(Record(i))
        assert await ref.call(GetLog()) == list(range(100))
        await ref.stop()


async def test_handler_exception_reaches_caller_and_crashes_the_actor() -> None:
    caught: list[BaseException] = []
    with pytest.RaisesGroup(ValueError):
        async with trio.open_nursery() as nursery:
            ref: ActorRef[CounterMsg] = await nursery.start(Counter().run)
            try:
                await ref.call(Boom())
            except ValueError as exc:
                caught.append(exc)
    assert [str(e) for e in caught] == ["boom"]
    assert not ref.alive
    with pytest.raises(ActorDead):
        await ref.cast(Add(1))
    with pytest.raises(ActorDead):
        ref.cast_nowait(Add(1))
    with pytest.raises(ActorDead):
        await ref.call(Get())


async def test_refuse_fails_the_call_without_crashing() -> None:
    async with trio.open_nursery() as nursery:
        ref: ActorRef[CounterMsg] = await nursery.start(Counter().run)
        with pytest.raises(KeyError):
            await ref.call(Nope())
        await ref.cast(Add(4))
        assert await ref.call(Get()) == 4
        await ref.stop()


async def test_actor_cancelled_mid_call_raises_actor_dead_promptly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as outer:
        actor_scope = trio.CancelScope()

        async def run_actor(*, task_status: trio.TaskStatus[ActorRef[CounterMsg]]) -> None:
            with actor_scope:
                await Counter().run(task_status=task_status)

        ref: ActorRef[CounterMsg] = await outer.start(run_actor)
        outer.start_soon(_cancel_at, actor_scope, 1.0)
        start = trio.current_time()
        with pytest.raises(ActorDead):
            await ref.call(Slow(100))
        assert trio.current_time() - start == pytest.approx(1.0)


async def _cancel_at(scope: trio.CancelScope, seconds: float) -> None:
    await trio.sleep(seconds)
    scope.cancel()


async def test_child_task_crash_ends_actor_and_pending_call_gets_actor_dead(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="child task crashed")):
        async with trio.open_nursery() as nursery:
            ref: ActorRef[CounterMsg] = await nursery.start(Counter().run)
            await ref.cast(CrashChildAfter(2))
            start = trio.current_time()
            with pytest.raises(ActorDead):
                await ref.call(Slow(100))
            assert trio.current_time() - start == pytest.approx(2.0)


async def test_calls_queued_behind_a_stop_get_actor_dead() -> None:
    results: list[str] = []

    async def late_call(ref: ActorRef[CounterMsg]) -> None:
        try:
            await ref.call(Get())
            results.append("answered")
        except ActorDead:
            results.append("dead")

    async with trio.open_nursery() as nursery:
        actor = Counter()
        ref: ActorRef[CounterMsg] = await nursery.start(actor.run)
        release = trio.Event()
        await ref.cast(Block(release))
        nursery.start_soon(ref.stop)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(late_call, ref)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert results == ["dead"]
    assert actor.stopped


async def test_mailbox_full_on_cast_nowait_and_cast_waits_for_room() -> None:
    async with trio.open_nursery() as nursery:
        ref: ActorRef[CounterMsg] = await nursery.start(Counter().run, 2)
        release = trio.Event()
        ref.cast_nowait(Block(release))
        await trio.testing.wait_all_tasks_blocked()  # the actor took Block: 2 free places
        ref.cast_nowait(Add(1))
        ref.cast_nowait(Add(1))
        with pytest.raises(MailboxFull):
            ref.cast_nowait(Add(1))
        sent = trio.Event()

        async def waiting_cast() -> None:
            await ref.cast(Add(10))
            sent.set()

        nursery.start_soon(waiting_cast)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()
        release.set()
        assert await ref.call(Get()) == 12
        assert sent.is_set()
        await ref.stop()


async def test_cancelled_caller_does_not_break_the_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        actor = Counter()
        ref: ActorRef[CounterMsg] = await nursery.start(actor.run)
        with trio.move_on_after(1) as scope:
            await ref.call(Slow(5))
        assert scope.cancelled_caught
        # the message is still handled; its reply goes nowhere and the actor goes on
        assert await ref.call(Slow(0)) == 2
        assert actor.slow_done == 2
        with trio.fail_after(1):
            assert await ref.call(Get()) == 0
        await ref.stop()


async def test_stop_from_inside_and_from_outside_end_the_run_normally() -> None:
    inside = Counter()
    async with trio.open_nursery() as nursery:
        ref: ActorRef[CounterMsg] = await nursery.start(inside.run)
        await ref.cast(Add(1))
        await ref.cast(Quit())
    assert inside.stopped  # run returned normally: the nursery exited without help
    assert not ref.alive
    await ref.stop()  # stopping a gone actor is a no-op
