"""Supervisors: restart crashed actors, one_for_one, after OTP's supervisor behaviour.

Refs across restarts: the mailbox belongs to the child's *slot*, not to the actor instance.
Every incarnation reads the same mailbox, so an ``ActorRef`` handed out once stays valid after a
restart and messages not yet taken are kept for the next incarnation. Only the message being
handled when an incarnation dies is lost: its caller gets the handler's exception or
``ActorDead``. The mailbox closes for good (refs raise ``ActorDead``) when the slot ends: a
temporary/transient child finished, the restart intensity was hit, the child was terminated,
or the supervisor stopped.

Restart intensity: at most ``max_restarts`` restarts within ``max_seconds`` (measured with
``trio.current_time()``, so ``MockClock`` drives it). ``Supervisor`` counts all its children
together and, past the limit, stops the others in reverse start order and raises
``SupervisorGaveUp`` from ``run``. ``DynamicSupervisor`` counts per child and gives up on that
child only (reported to ``on_crash``); a crash in one child never touches another.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio

from chat_actors.actor import DEFAULT_MAILBOX_SIZE, Actor, ActorRef, Mailbox
from core.errors import ActorDead, SupervisorGaveUp

M = TypeVar("M")
log = logging.getLogger(__name__)

CrashHook = Callable[[Hashable, BaseException], None]
"""Called synchronously with ``(child key, exception)`` on each crash and on giving up; must
not block (e.g. ``send_nowait`` into your own bounded channel)."""


class Restart(enum.Enum):
    PERMANENT = "permanent"  # always restarted (even after a normal exit)
    TRANSIENT = "transient"  # restarted only after a crash
    TEMPORARY = "temporary"  # never restarted


@dataclass(frozen=True)
class ChildSpec(Generic[M]):
    key: Hashable
    factory: Callable[[], Actor[M]]  # a fresh actor (fresh state) per incarnation
    restart: Restart = Restart.PERMANENT
    mailbox_size: int = DEFAULT_MAILBOX_SIZE
    shutdown: float = 5.0  # grace for a graceful stop before the child is cancelled


class _Intensity:
    """At most ``max_restarts`` restarts in any ``max_seconds`` window."""

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._times: deque[float] = deque()

    def allow_restart(self) -> bool:
        now = trio.current_time()
        while self._times and self._times[0] <= now - self.max_seconds:
            self._times.popleft()
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now)
        return True


class _Ready(trio.TaskStatus[ActorRef[M]]):
    """Records that an incarnation became ready; forwards only the first one's readiness."""

    def __init__(self, slot: _Slot[M], outer: trio.TaskStatus[ActorRef[M]] | None) -> None:
        self.slot = slot
        self.outer = outer
        self.fired = False

    def started(self, value: ActorRef[M] | None = None) -> None:
        self.fired = True
        if self.outer is not None:
            self.slot.started = True
            self.slot.ready.set()
            self.outer.started(self.slot.ref)


class _Slot(Generic[M]):
    """One supervised child: its lasting mailbox and its loop of incarnations."""

    def __init__(self, spec: ChildSpec[M], intensity: _Intensity, on_crash: CrashHook) -> None:
        self.spec = spec
        self.intensity = intensity
        self.on_crash = on_crash
        self.mailbox = Mailbox[M](spec.mailbox_size)
        self.ref = self.mailbox.ref
        self.scope = trio.CancelScope()
        self.ready = trio.Event()  # first incarnation started, or failed to
        self.started = False
        self.done = trio.Event()
        self.stopping = False
        self.gave_up: SupervisorGaveUp | None = None

    async def run(
        self, *, task_status: trio.TaskStatus[ActorRef[M]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Returns when the child is over for good; a crash never escapes (only a start failure
        of the first incarnation, which ``nursery.start`` hands to the starter)."""
        try:
            with self.scope:
                await self._incarnations(task_status)
        finally:
            self.mailbox.close()
            self.ready.set()
            self.done.set()

    async def _incarnations(self, task_status: trio.TaskStatus[ActorRef[M]]) -> None:
        key, restart = self.spec.key, self.spec.restart
        outer: trio.TaskStatus[ActorRef[M]] | None = task_status
        while True:
            ready = _Ready(self, outer)
            try:
                await self.spec.factory().serve(self.mailbox, task_status=ready)
            except Exception as exc:
                if outer is not None and not ready.fired:
                    raise  # the first start failed: nursery.start raises it to the starter
                log.warning("child %r crashed", key, exc_info=exc)
                self._report(exc)
                if self.stopping or restart is Restart.TEMPORARY:
                    return
                cause: BaseException = exc
            else:
                if self.stopping or restart is not Restart.PERMANENT:
                    return
                cause = ActorDead(f"permanent child {key!r} exited")
            outer = None
            if not self.intensity.allow_restart():
                self.gave_up = SupervisorGaveUp(
                    f"child {key!r}: more than {self.intensity.max_restarts} restarts "
                    f"in {self.intensity.max_seconds}s"
                )
                self.gave_up.__cause__ = cause
                log.error("giving up on child %r", key)
                self._report(self.gave_up)
                return

    def _report(self, exc: BaseException) -> None:
        try:
            self.on_crash(self.spec.key, exc)
        except Exception:
            log.exception("on_crash hook failed for %r", self.spec.key)

    async def stop(self) -> None:
        """Graceful stop within ``spec.shutdown`` seconds, then cancel. Never restarted."""
        self.stopping = True
        if self.done.is_set():
            return
        with trio.move_on_after(self.spec.shutdown):
            await self.ref.stop()
            await self.done.wait()
        self.scope.cancel()
        await self.done.wait()


def _ignore(key: Hashable, exc: BaseException) -> None:
    pass


class Supervisor:
    """Static children, started in order (each ready before the next), stopped in reverse.

    ``sup = await nursery.start(Supervisor([spec_a, spec_b]).run)``; ``sup.ref(spec_a)``.
    """

    def __init__(
        self,
        children: Sequence[ChildSpec[Any]],
        *,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        on_crash: CrashHook | None = None,
    ) -> None:
        if len({spec.key for spec in children}) != len(children):
            raise ValueError("child keys must be unique")
        self._specs = list(children)
        self._intensity = _Intensity(max_restarts, max_seconds)
        self._on_crash = on_crash or _ignore
        self._slots: dict[Hashable, _Slot[Any]] = {}
        self._finish = trio.Event()
        self._finished = trio.Event()
        self._gave_up: SupervisorGaveUp | None = None

    def ref(self, spec: ChildSpec[M]) -> ActorRef[M]:
        slot: _Slot[M] = self._slots[spec.key]
        return slot.ref

    async def run(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Runs until ``stop()``; raises ``SupervisorGaveUp`` past the restart intensity, or
        the start error of a child that failed to start (the others are stopped first)."""
        start_error: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    for spec in self._specs:
                        slot = _Slot(spec, self._intensity, self._on_crash)
                        self._slots[spec.key] = slot
                        await nursery.start(self._run_slot, slot)
                except Exception as exc:  # noqa: BLE001 - re-raised after the ordered stop
                    start_error = exc
                else:
                    task_status.started(self)
                    await self._finish.wait()
                for slot in reversed(list(self._slots.values())):
                    await slot.stop()
        finally:
            self._finished.set()
        if start_error is not None:
            raise start_error
        if self._gave_up is not None:
            raise self._gave_up

    async def stop(self) -> None:
        """Stop every child in reverse start order and wait until ``run`` has returned."""
        self._finish.set()
        await self._finished.wait()

    async def _run_slot(
        self,
        slot: _Slot[Any],
        *,
        task_status: trio.TaskStatus[ActorRef[Any]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await slot.run(task_status=task_status)
        if slot.gave_up is not None and self._gave_up is None:
            self._gave_up = slot.gave_up
            self._finish.set()


class DynamicSupervisor(Generic[M]):
    """Children started at run time by key (e.g. one session actor per chat session).

    Restart policy and intensity apply per child. ``stop()`` stops all children concurrently
    (each within its ``shutdown`` grace), as OTP does for dynamic children.
    """

    def __init__(
        self,
        *,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        on_crash: CrashHook | None = None,
    ) -> None:
        self._max_restarts = max_restarts
        self._max_seconds = max_seconds
        self._on_crash = on_crash or _ignore
        self._slots: dict[Hashable, _Slot[M]] = {}
        self._nursery: trio.Nursery | None = None
        self._finish = trio.Event()
        self._finished = trio.Event()

    def get(self, key: Hashable) -> ActorRef[M] | None:
        slot = self._slots.get(key)
        return slot.ref if slot is not None and slot.started and not slot.stopping else None

    def keys(self) -> list[Hashable]:
        return list(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    async def run(
        self, *, task_status: trio.TaskStatus[DynamicSupervisor[M]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started(self)
                await self._finish.wait()
                self._nursery = None
                while self._slots:  # also catches children whose start was in progress
                    async with trio.open_nursery() as stopper:
                        for slot in list(self._slots.values()):
                            stopper.start_soon(slot.stop)
        finally:
            self._nursery = None
            self._finished.set()

    async def stop(self) -> None:
        self._finish.set()
        await self._finished.wait()

    async def start_child(self, spec: ChildSpec[M]) -> ActorRef[M]:
        """Start ``spec`` and return its ref once ready, or return the running child's ref if
        ``spec.key`` is already running (get-or-start). A start error is raised here."""
        while (existing := self._slots.get(spec.key)) is not None:
            if existing.stopping:
                await existing.done.wait()
                continue
            await existing.ready.wait()
            if existing.started:
                return existing.ref
            await existing.done.wait()  # its start failed (its starter got the error): retry
        if self._nursery is None:
            raise ActorDead("the dynamic supervisor is not running")
        slot = _Slot(spec, _Intensity(self._max_restarts, self._max_seconds), self._on_crash)
        self._slots[spec.key] = slot
        try:
            ref: ActorRef[M] = await self._nursery.start(self._run_slot, slot)
        except BaseException:
            if self._slots.get(spec.key) is slot:
                del self._slots[spec.key]
            raise
        return ref

    async def terminate_child(self, key: Hashable) -> None:
        """Stop the child gracefully (within its ``shutdown`` grace) and forget it."""
        slot = self._slots.get(key)
        if slot is not None:
            await slot.stop()

    async def _run_slot(
        self,
        slot: _Slot[M],
        *,
        task_status: trio.TaskStatus[ActorRef[M]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await slot.run(task_status=task_status)
        finally:
            if self._slots.get(slot.spec.key) is slot:
                del self._slots[slot.spec.key]
