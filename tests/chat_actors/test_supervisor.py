"""Supervisors: restart policies, intensity windows on a MockClock, ordered stop, dynamic children."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from chat_actors.actor import Actor, ActorRef, Request
from chat_actors.supervisor import ChildSpec, DynamicSupervisor, Restart, Supervisor
from core.errors import ActorDead, SupervisorGaveUp


@dataclass(frozen=True)
class Ping(Request[int]):
    """Answers the incarnation number (1 for the first start)."""


@dataclass(frozen=True)
class Crash:
    pass


@dataclass(frozen=True)
class Exit:
    pass


@dataclass(frozen=True)
class Record:
    item: int


@dataclass(frozen=True)
class Block:
    release: trio.Event


@dataclass(frozen=True)
class CrashChildAfter:
    seconds: float


@dataclass(frozen=True)
class Slow(Request[int]):
    seconds: float


WorkerMsg = Ping | Crash | Exit | Record | Block | CrashChildAfter | Slow


@dataclass
class Journal:
    """What the workers did, shared across incarnations (their own state is fresh each time)."""

    incarnations: dict[Hashable, int] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    records: list[int] = field(default_factory=list)
    fail_start: set[Hashable] = field(default_factory=set)


class Worker(Actor[WorkerMsg]):
    def __init__(self, key: Hashable, journal: Journal) -> None:
        self.key = key
        self.journal = journal
        self.n = journal.incarnations.get(key, 0) + 1
        journal.incarnations[key] = self.n

    async def on_start(self) -> None:
        if self.key in self.journal.fail_start:
            raise OSError(f"{self.key} cannot start")
        self.journal.events.append(f"start {self.key}")

    async def on_stop(self) -> None:
        self.journal.events.append(f"stop {self.key}")

    async def handle(self, msg: WorkerMsg) -> object:
        match msg:
            case Ping():
                return self.n
            case Crash():
                raise RuntimeError(f"{self.key} crashed")
            case Exit():
                self.stop()
            case Record(item=item):
                self.journal.records.append(item)
            case Block(release=release):
                await release.wait()
            case CrashChildAfter(seconds=seconds):
                self.nursery.start_soon(self._crash_after, seconds)
            case Slow(seconds=seconds):
                await trio.sleep(seconds)
                return self.n
        return None

    async def _crash_after(self, seconds: float) -> None:
        await trio.sleep(seconds)
        raise RuntimeError("child task crashed")


def spec(key: str, journal: Journal, restart: Restart = Restart.PERMANENT) -> ChildSpec[WorkerMsg]:
    return ChildSpec(key, lambda: Worker(key, journal), restart)


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


@pytest.mark.parametrize(
    ("restart", "after_crash", "after_exit"),
    [
        (Restart.PERMANENT, True, True),
        (Restart.TRANSIENT, True, False),
        (Restart.TEMPORARY, False, False),
    ],
)
async def test_restart_policies(restart: Restart, after_crash: bool, after_exit: bool) -> None:
    journal = Journal()
    crasher, exiter = spec("crasher", journal, restart), spec("exiter", journal, restart)
    async with trio.open_nursery() as nursery:
        sup: Supervisor = await nursery.start(Supervisor([crasher, exiter]).run)
        await sup.ref(crasher).cast(Crash())
        await sup.ref(exiter).cast(Exit())
        await settle()
        for child, expect_alive in ((crasher, after_crash), (exiter, after_exit)):
            ref = sup.ref(child)
            assert ref.alive is expect_alive
            if expect_alive:
                assert await ref.call(Ping()) == 2  # a new incarnation answers on the old ref
            else:
                with pytest.raises(ActorDead):
                    await ref.call(Ping())
        await sup.stop()


async def test_more_than_r_restarts_in_t_seconds_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    crashes: list[tuple[Hashable, str]] = []
    steady, crasher = spec("steady", journal), spec("crasher", journal)
    sup = Supervisor(
        [steady, crasher],
        max_restarts=3,
        max_seconds=5,
        on_crash=lambda key, exc: crashes.append((key, type(exc).__name__)),
    )
    with pytest.RaisesGroup(SupervisorGaveUp) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            ref = sup.ref(crasher)
            for expected in (2, 3, 4):  # three restarts are allowed
                await ref.cast(Crash())
                await trio.sleep(1)
                assert await ref.call(Ping()) == expected
            await ref.cast(Crash())  # the fourth crash within 5 s is one too many
            await trio.sleep_forever()
    assert isinstance(info.value.exceptions[0].__cause__, RuntimeError)
    assert crashes[-1] == ("crasher", "SupervisorGaveUp")
    assert [k for k, _ in crashes].count("crasher") == 5
    assert journal.events[-1] == "stop steady"  # the others were stopped gracefully
    assert not sup.ref(steady).alive


async def test_slow_crasher_spread_in_time_is_restarted_forever(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    crasher = spec("crasher", journal)
    async with trio.open_nursery() as nursery:
        sup: Supervisor = await nursery.start(
            Supervisor([crasher], max_restarts=3, max_seconds=5).run
        )
        ref = sup.ref(crasher)
        for _ in range(20):
            await ref.cast(Crash())
            await trio.sleep(2)
        assert await ref.call(Ping()) == 21
        await sup.stop()


async def test_children_start_in_order_and_stop_in_reverse() -> None:
    journal = Journal()
    specs = [spec(k, journal) for k in ("a", "b", "c")]
    async with trio.open_nursery() as nursery:
        sup: Supervisor = await nursery.start(Supervisor(specs).run)
        assert journal.events == ["start a", "start b", "start c"]
        await sup.stop()
    assert journal.events[3:] == ["stop c", "stop b", "stop a"]
    assert not any(sup.ref(s).alive for s in specs)


async def test_a_child_that_cannot_start_fails_the_supervisor_and_stops_earlier_ones() -> None:
    journal = Journal(fail_start={"c"})
    specs = [spec(k, journal) for k in ("a", "b", "c")]
    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="c cannot start")):
        async with trio.open_nursery() as nursery:
            await nursery.start(Supervisor(specs).run)
    assert journal.events == ["start a", "start b", "stop b", "stop a"]


async def test_messages_queued_across_a_restart_are_not_lost() -> None:
    journal = Journal()
    worker = spec("w", journal)
    async with trio.open_nursery() as nursery:
        sup: Supervisor = await nursery.start(Supervisor([worker]).run)
        ref = sup.ref(worker)
        release = trio.Event()
        await ref.cast(Block(release))
        await ref.cast(Crash())
        for i in range(5):
            await ref.cast(Record(i))
        release.set()
        assert await ref.call(Ping()) == 2
        assert journal.records == [0, 1, 2, 3, 4]
        await sup.stop()


async def test_pending_call_on_a_crashed_incarnation_gets_actor_dead(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    worker = spec("w", journal)
    async with trio.open_nursery() as nursery:
        sup: Supervisor = await nursery.start(Supervisor([worker]).run)
        ref = sup.ref(worker)
        await ref.cast(CrashChildAfter(1))
        with trio.fail_after(10), pytest.raises(ActorDead):
            await ref.call(Slow(100))
        assert await ref.call(Ping()) == 2
        await sup.stop()


async def test_shutdown_grace_then_cancel(autojump_clock: trio.testing.MockClock) -> None:
    journal = Journal()
    stuck = ChildSpec("stuck", lambda: Worker("stuck", journal), shutdown=3)
    async with trio.open_nursery() as nursery:
        sup: Supervisor = await nursery.start(Supervisor([stuck]).run)
        await sup.ref(stuck).cast(Block(trio.Event()))  # never released
        start = trio.current_time()
        await sup.stop()
        assert trio.current_time() - start == pytest.approx(3)
    assert "stop stuck" not in journal.events  # cancelled, not stopped gracefully


async def test_dynamic_children_are_isolated_from_each_others_crashes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    crashes: list[tuple[Hashable, str]] = []
    dyn = DynamicSupervisor[WorkerMsg](
        max_restarts=2,
        max_seconds=10,
        on_crash=lambda key, exc: crashes.append((key, type(exc).__name__)),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(dyn.run)
        a = await dyn.start_child(spec("a", journal))
        b = await dyn.start_child(spec("b", journal))
        await b.cast(Record(1))
        for _ in range(2):
            await a.cast(Crash())
            await settle()
        assert await a.call(Ping()) == 3
        await a.cast(Crash())  # third crash in 10 s: give up on "a" only
        await settle()
        assert not a.alive
        assert dyn.get("a") is None
        assert crashes == [("a", "RuntimeError")] * 3 + [("a", "SupervisorGaveUp")]
        assert await b.call(Ping()) == 1  # never restarted, never touched
        assert dyn.get("b") is b
        assert journal.records == [1]
        await b.cast(Crash())  # b has its own restart budget, untouched by a's crashes
        await settle()
        assert await b.call(Ping()) == 2
        await dyn.stop()
    assert not b.alive


async def test_dynamic_start_child_is_get_or_start() -> None:
    journal = Journal()
    dyn = DynamicSupervisor[WorkerMsg]()
    async with trio.open_nursery() as nursery:
        await nursery.start(dyn.run)
        refs: list[ActorRef[WorkerMsg]] = []

        async def attach() -> None:
            refs.append(await dyn.start_child(spec("s", journal)))

        async with trio.open_nursery() as attachers:
            for _ in range(5):
                attachers.start_soon(attach)
        assert len(refs) == 5 and all(r is refs[0] for r in refs)
        assert journal.incarnations == {"s": 1}
        assert len(dyn) == 1
        await dyn.stop()


async def test_dynamic_terminate_and_self_stop_forget_the_child() -> None:
    journal = Journal()
    dyn = DynamicSupervisor[WorkerMsg]()
    async with trio.open_nursery() as nursery:
        await nursery.start(dyn.run)
        a = await dyn.start_child(spec("a", journal, Restart.PERMANENT))
        idle = await dyn.start_child(spec("idle", journal, Restart.TRANSIENT))
        await dyn.terminate_child("a")
        assert "stop a" in journal.events
        assert not a.alive and dyn.get("a") is None
        with pytest.raises(ActorDead):
            await a.cast(Record(1))
        await idle.cast(Exit())  # a transient session stopping itself when idle
        await settle()
        assert dyn.keys() == []
        again = await dyn.start_child(spec("a", journal))
        assert again is not a and await again.call(Ping()) == 2
        await dyn.stop()


async def test_dynamic_start_error_is_raised_to_the_starter() -> None:
    journal = Journal(fail_start={"bad"})
    dyn = DynamicSupervisor[WorkerMsg]()
    async with trio.open_nursery() as nursery:
        await nursery.start(dyn.run)
        with pytest.raises(OSError):
            await dyn.start_child(spec("bad", journal))
        assert dyn.keys() == []
        good = await dyn.start_child(spec("good", journal))
        assert await good.call(Ping()) == 1
        await dyn.stop()
