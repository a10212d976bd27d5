"""The session registry: finds or starts the session actor of a (user, room).

Session actors run under a ``DynamicSupervisor`` as *transient* children: a crash restarts the
session (it reloads its context from Redis; the attached sockets live in its ``SessionSlot`` and
stay attached), a normal stop (idle, room deleted) ends it for good.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Hashable

import trio
import trio.lowlevel

from chat_actors import frames
from chat_actors.actor import ActorRef
from chat_actors.outbox import Outbox
from chat_actors.session import (
    Attach,
    CrashForTest,
    Detach,
    IdleTick,
    SessionActor,
    SessionKey,
    SessionMsg,
    SessionSlot,
    SessionSnapshot,
    Snapshot,
    UserInput,
)
from chat_actors.session_deps import SessionDeps
from chat_actors.supervisor import ChildSpec, DynamicSupervisor, Restart
from core.errors import AccountClosed, ActorDead, MailboxFull, SupervisorGaveUp

log = logging.getLogger("chat.registry")

SessionRef = ActorRef[SessionMsg]


class SessionRegistry:
    def __init__(self, deps: SessionDeps, *, test_hooks: bool = False,
                 mailbox_size: int = 64) -> None:
        self.deps = deps
        self._test_hooks = test_hooks
        self._mailbox_size = mailbox_size
        # The slot of each session's latest start; gone with its supervisor child.
        self._slots: weakref.WeakValueDictionary[Hashable, SessionSlot] = (
            weakref.WeakValueDictionary())
        self._sweeper_scope = trio.CancelScope()
        self._closed_users: set[int] = set()  # deleted accounts: ids are never reused
        self._sup: DynamicSupervisor[SessionMsg] = DynamicSupervisor(
            max_restarts=3, max_seconds=10.0, on_crash=self._on_crash)

    async def run(self, *, task_status: trio.TaskStatus[SessionRegistry] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Run the session supervisor; ``nursery.start(registry.run)`` returns when ready."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._sup.run)
            nursery.start_soon(self._sweep_idle)
            self._sweeper_scope = nursery.cancel_scope
            task_status.started(self)

    async def _sweep_idle(self) -> None:
        """One timer for all sessions (not one task each): nudge the ones that look idle; each
        session checks for itself and stops (its context stays in Redis)."""
        idle = self.deps.settings.session_idle_seconds
        while True:
            await trio.sleep(max(idle / 4, 0.05))
            now = trio.current_time()
            for key, slot in list(self._slots.items()):
                ref = self._sup.get(key)
                if ref is not None and slot.looks_idle(now, idle):
                    try:
                        ref.cast_nowait(IdleTick())
                    except (MailboxFull, ActorDead):
                        pass

    async def stop(self) -> None:
        await self._sup.stop()
        self._sweeper_scope.cancel()

    def _on_crash(self, key: Hashable, exc: BaseException) -> None:
        log.error("session %s crashed: %r", key, exc)
        slot = self._slots.get(key)  # keys are SessionKeys: this registry starts every child
        if isinstance(exc, SupervisorGaveUp) and slot is not None:
            # Restarting did not help: tell the sockets and close them; their clients
            # reconnect to a fresh session, the stored history is still there.
            frame = frames.error_frame(
                slot.key.room, "session_failed",
                "The chat session kept failing and was stopped; reconnect to continue.",
                close=True)
            for outbox in list(slot.outboxes.values()):
                outbox.push(frame)
                outbox.close("session failed")

    def _spec(self, key: SessionKey) -> ChildSpec[SessionMsg]:
        slot = SessionSlot(key)
        self._slots[key] = slot
        return ChildSpec(
            key=key,
            factory=lambda: SessionActor(slot, self.deps),
            restart=Restart.TRANSIENT,
            mailbox_size=self._mailbox_size,
        )

    async def session(self, user_id: int, room: str) -> SessionRef:
        """Get or start the session actor of (user, room)."""
        if user_id in self._closed_users:
            raise AccountClosed(f"user {user_id} was deleted")
        key = SessionKey(user_id, room)
        ref = self._sup.get(key)
        if ref is None:
            ref = await self._sup.start_child(self._spec(key))
        return ref

    async def attach(self, user_id: int, room: str, outbox: Outbox) -> SessionRef:
        """Attach a socket's outbox; the session pushes the init frame into it."""
        for _ in range(3):
            ref = await self.session(user_id, room)
            try:
                await ref.call(Attach(outbox))
                return ref
            except ActorDead:
                await trio.lowlevel.checkpoint()  # it was stopping (idle): start a fresh one
        raise ActorDead(f"session {user_id}/{room} could not be started")

    @staticmethod
    async def detach(ref: SessionRef, outbox: Outbox) -> None:
        """Once this returns, the session pushes nothing more into ``outbox``. Safe in
        ``finally``; if the session cannot answer in time it still drops the outbox once it
        sees it closed."""
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await ref.call(Detach(outbox.id))
            except ActorDead:
                pass

    @staticmethod
    async def send(ref: SessionRef, outbox: Outbox, text: str,
                   key_id: int | None = None) -> None:
        await ref.cast(UserInput(outbox.id, text, key_id))

    async def close_user(self, user_id: int) -> None:
        """The account is gone: no session of it starts again; its sessions stop."""
        self._closed_users.add(user_id)
        for key in self.keys_of(user_id):
            await self.stop_session(key.user_id, key.room)

    async def stop_session(self, user_id: int, room: str) -> None:
        await self._sup.terminate_child(SessionKey(user_id, room))

    async def snapshot(self, user_id: int, room: str) -> SessionSnapshot:
        ref = await self.session(user_id, room)
        return await ref.call(Snapshot())

    async def crash_for_test(self, user_id: int, room: str) -> None:
        """The test-only fault hook; refused unless the registry was built with test hooks."""
        if not self._test_hooks:
            raise PermissionError("test hooks are disabled")
        ref = await self.session(user_id, room)
        await ref.cast(CrashForTest())

    def generating(self) -> int:
        """How many sessions have an answer in progress."""
        return sum(1 for slot in list(self._slots.values()) if slot.generation is not None)

    def keys_of(self, user_id: int) -> list[SessionKey]:
        keys = self._sup.keys()  # a supervisor, not a dict: it is not iterable itself
        return [k for k in keys if isinstance(k, SessionKey) and k.user_id == user_id]

    def __len__(self) -> int:
        return len(self._sup)
