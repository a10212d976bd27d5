"""The session registry: finds or starts the session actor of a (user, room), here or on the
process that owns it.

Session actors run under a ``DynamicSupervisor`` as *transient* children: a crash restarts the
session (it reloads its context from Redis; the attached sockets live in its ``SessionSlot`` and
stay attached), a normal stop (idle, room deleted) ends it for good.

Several processes share the sessions (``chat_actors.cluster``). A session's actor starts where
its lease could be taken (``SessionActor.on_start``); a socket whose session is owned by
another process gets a remote ``SessionHandle``: its attach, inputs and detach go to the owner
by mail and the session's inbox, the owner's frames come back by mail. The registry also keeps
the leases of its own sessions (one renewal script for all of them), watches the owners of its
remote handles (a lease that changed hands or lapsed: the sockets attach again, which takes a
dead owner's session over), and forgets the sockets of processes that died.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections import defaultdict, deque
from collections.abc import Hashable
from typing import Any

import trio
import trio.lowlevel

from chat_actors import frames
from chat_actors.actor import ActorRef
from chat_actors.cluster import Cluster, RemoteOutbox, SessionHandle
from chat_actors.moves import MoveSignal
from chat_actors.outbox import Outbox
from chat_actors.session import (
    Attach,
    CrashForTest,
    Detach,
    Drain,
    IdleTick,
    InboxPoke,
    LeaseLost,
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
from core import metrics
from core.errors import (
    AccountClosed,
    ActorDead,
    MailboxFull,
    SessionOwnedElsewhere,
    StorageError,
    SupervisorGaveUp,
)
from storage.session_leases import node_of

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
        assert deps.cluster is not None
        self.cluster: Cluster = deps.cluster
        # Sockets of this process attached to sessions owned elsewhere, by the id of the
        # attachment (``SessionHandle.sock``: a socket that changes rooms is a new one, so the
        # owner's letters about the old room never reach it).
        self._remote: dict[int, tuple[SessionHandle, Outbox]] = {}
        self._attachments = itertools.count(1)
        # Mail about one session is handled in arrival order, sessions side by side.
        self._mail: defaultdict[SessionKey, deque[tuple[str, dict[str, Any]]]] = (
            defaultdict(deque))
        self._nursery: trio.Nursery | None = None
        self.draining = False

    async def run(self, *, task_status: trio.TaskStatus[SessionRegistry] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Run the session supervisor; ``nursery.start(registry.run)`` returns when ready."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._sup.run)
            nursery.start_soon(self._sweep_idle)
            await nursery.start(self.cluster.link.run, self._on_letter)
            nursery.start_soon(self._keep_leases)
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

    def begin_drain(self) -> None:
        """Shutting down: no session starts here any more, and each one stops as soon as its
        answer in progress ends (idle ones now), so it moves to another process."""
        self.draining = True
        for key, slot in list(self._slots.items()):
            slot.draining = True
            ref = self._sup.get(key)
            if ref is not None:
                try:
                    ref.cast_nowait(Drain())
                except (MailboxFull, ActorDead):  # busy: it stops after its answer anyway
                    pass  # (slot.draining), or it is gone already

    async def stop(self) -> None:
        """Every session stops (answers cut are stored partial, their leases released, the
        sockets of other processes told to attach again); then the mail and the leases'
        keeper stop, after the last letters went out."""
        self.draining = True
        for slot in list(self._slots.values()):
            slot.draining = True
        await self._sup.stop()
        with trio.move_on_after(2) as scope:
            scope.shield = True
            while self.cluster.link.pending():
                await trio.sleep(0.01)
            try:
                await self.cluster.leases.leave()
            except StorageError as exc:
                log.warning("could not leave the node list: %s", exc)
        self._sweeper_scope.cancel()

    # ------------------------------------------------------------ leases and owners
    async def _keep_leases(self) -> None:
        """Every third of a lease time: renew this process's leases (a session whose lease
        moved stops without writing), beat its heartbeat, follow the owners of its remote
        handles, and forget the sockets of processes that died."""
        leases = self.cluster.leases
        every = leases.lease_ms / 3000
        while True:
            try:
                await leases.heartbeat()
                owned = [(slot.key.user_id, slot.key.room, slot.fence)
                         for slot in list(self._slots.values())
                         if slot.fence is not None and not slot.lost]
                for index in await leases.renew(owned):
                    user_id, room, _ = owned[index]
                    self._lease_lost(SessionKey(user_id, room))
                await self._follow_owners()
                await self._forget_dead_nodes()
            except StorageError as exc:
                log.warning("session leases not renewed (%s): retrying", exc)
                await trio.sleep(min(every, 0.5))
                continue
            await trio.sleep(every)

    def _lease_lost(self, key: SessionKey) -> None:
        log.error("session %s/%s: its lease moved to another process; stopping here",
                  key.user_id, key.room)
        ref = self._sup.get(key)
        if ref is not None:
            try:
                ref.cast_nowait(LeaseLost())
            except (MailboxFull, ActorDead):
                if self._nursery is not None:
                    self._nursery.start_soon(self.stop_session, key.user_id, key.room)

    async def _follow_owners(self) -> None:
        by_owner: defaultdict[tuple[int, str, str], list[SessionHandle]] = defaultdict(list)
        for handle, _outbox in list(self._remote.values()):
            if not handle.moved.is_set():
                by_owner[(handle.user_id, handle.room, handle.owner)].append(handle)
        if not by_owner:
            return
        sessions = list(by_owner)
        holders = await self.cluster.leases.holders([(u, r) for u, r, _ in sessions])
        for session, holder in zip(sessions, holders, strict=True):
            if holder != session[2]:
                for handle in by_owner[session]:
                    handle.moved.set()

    async def _forget_dead_nodes(self) -> None:
        remote = self.cluster.remote_outboxes
        if not remote:
            return
        alive = await self.cluster.leases.live_nodes()
        for (node, sock), outbox in list(remote.items()):
            if node not in alive:
                log.warning("socket %s of %s: its process is gone", sock, node)
                self._forget_remote(node, sock)
                outbox.forget()

    def _forget_remote(self, node: str, sock: int) -> RemoteOutbox | None:
        return self.cluster.remote_outboxes.pop((node, sock), None)

    # ------------------------------------------------------------ mail
    def _on_letter(self, kind: str, data: dict[str, Any]) -> None:
        """A letter from another process (never waits: the mail reader calls it)."""
        match kind:
            case "f":
                letters: list[tuple[int, Any]] = data  # type: ignore[assignment]
                for sock, frame in letters:
                    entry = self._remote.get(int(sock))
                    if entry is not None:
                        entry[1].push(frame)
            case "close":
                entry = self._remote.get(int(data["sock"]))
                if entry is not None:
                    entry[1].close(str(data.get("reason", "")), drop=bool(data.get("drop")))
            case "moved":
                entry = self._remote.get(int(data["sock"]))
                if entry is not None:
                    entry[0].moved.set()
            case "att" | "det" | "poke" | "stop":
                key = SessionKey(int(data["u"]), str(data["r"]))
                queue = self._mail[key]
                queue.append((kind, data))
                if len(queue) == 1 and self._nursery is not None:
                    self._nursery.start_soon(self._handle_mail, key)
            case "close_user":
                self._closed_users.add(int(data["u"]))
                if self._nursery is not None:
                    self._nursery.start_soon(self._stop_user, int(data["u"]))
            case _:
                log.warning("unknown letter %r", kind)

    async def _handle_mail(self, key: SessionKey) -> None:
        queue = self._mail[key]
        try:
            while queue:
                kind, data = queue[0]
                try:
                    await self._mail_for_session(key, kind, data)
                except (StorageError, ActorDead, AccountClosed) as exc:
                    log.warning("letter %s for session %s/%s not handled: %r", kind,
                                key.user_id, key.room, exc)
                queue.popleft()
        finally:
            if not queue:
                del self._mail[key]

    async def _mail_for_session(self, key: SessionKey, kind: str, data: dict[str, Any]) -> None:
        link = self.cluster.link
        if kind == "att":
            node, sock = str(data["node"]), int(data["sock"])
            outbox = RemoteOutbox(link, node, sock)
            self.cluster.remote_outboxes[(node, sock)] = outbox
            try:
                await self._attach_here(key, outbox)
            except (SessionOwnedElsewhere, ActorDead):
                self._forget_remote(node, sock)
                outbox.moved()  # not ours (any more, or shutting down): the socket looks again
        elif kind == "det":
            gone = self._forget_remote(str(data["node"]), int(data["sock"]))
            ref = self._sup.get(key)
            if gone is not None:
                gone.forget()
                if ref is not None:
                    await self.detach(SessionHandle(key.user_id, key.room, ref), gone)
        elif kind == "poke":
            ref = self._sup.get(key)
            if ref is None:  # stopped meanwhile: a start reads the inbox
                try:
                    await self.session(key.user_id, key.room)
                except SessionOwnedElsewhere:
                    pass  # its owner got the poke too
            else:
                await ref.cast(InboxPoke())
        elif kind == "stop":
            await self.stop_session(key.user_id, key.room)

    async def _stop_user(self, user_id: int) -> None:
        for key in self.keys_of(user_id):
            await self.stop_session(key.user_id, key.room)

    def _on_crash(self, key: Hashable, exc: BaseException) -> None:
        log.error("session %s crashed: %r", key, exc)
        slot = self._slots.get(key)  # keys are SessionKeys: this registry starts every child
        if isinstance(exc, SupervisorGaveUp) and slot is not None:
            if slot.fence is not None and self._nursery is not None:
                self._nursery.start_soon(self._release, slot)
            # Restarting did not help: tell the sockets and close them; their clients
            # reconnect to a fresh session, the stored history is still there.
            frame = frames.error_frame(
                slot.key.room, "session_failed",
                "The chat session kept failing and was stopped; reconnect to continue.",
                close=True)
            for outbox in list(slot.outboxes.values()):
                outbox.push(frame)
                outbox.close("session failed")

    async def _release(self, slot: SessionSlot) -> None:
        if slot.fence is not None:
            try:
                await self.cluster.leases.release(slot.key.user_id, slot.key.room, slot.fence)
            except StorageError as exc:
                log.warning("lease of %s not released (it lapses): %s", slot.key, exc)

    def _spec(self, key: SessionKey) -> ChildSpec[SessionMsg]:
        slot = SessionSlot(key, cluster=self.cluster)

        def incarnation() -> SessionActor:
            self._slots[key] = slot  # the slot of the child really started (not a spare spec)
            slot.draining = self.draining
            return SessionActor(slot, self.deps)

        return ChildSpec(
            key=key,
            factory=incarnation,
            restart=Restart.TRANSIENT,
            mailbox_size=self._mailbox_size,
        )

    async def session(self, user_id: int, room: str) -> SessionRef:
        """Get or start the session actor of (user, room) here; ``SessionOwnedElsewhere`` when
        another process holds its lease."""
        if user_id in self._closed_users:
            raise AccountClosed(f"user {user_id} was deleted")
        key = SessionKey(user_id, room)
        ref = self._sup.get(key)
        if ref is None:
            if self.draining:
                raise ActorDead(f"session {user_id}/{room}: this process is shutting down")
            ref = await self._sup.start_child(self._spec(key))
        return ref

    async def _attach_here(self, key: SessionKey, outbox: Outbox) -> SessionRef:
        for _ in range(3):
            ref = await self.session(key.user_id, key.room)
            try:
                await ref.call(Attach(outbox))
                return ref
            except ActorDead:
                await trio.lowlevel.checkpoint()  # it was stopping (idle): start a fresh one
        raise ActorDead(f"session {key.user_id}/{key.room} could not be started")

    async def attach(self, user_id: int, room: str, outbox: Outbox) -> SessionHandle:
        """Attach a socket's outbox; the session pushes the init frame into it (by mail when
        it is owned by another process)."""
        key = SessionKey(user_id, room)
        try:
            ref = await self._attach_here(key, outbox)
        except SessionOwnedElsewhere as elsewhere:
            handle = SessionHandle(user_id, room, owner=elsewhere.owner,
                                   sock=next(self._attachments))
            self._remote[handle.sock] = (handle, outbox)
            self.cluster.link.post(node_of(elsewhere.owner), "att", {
                "u": user_id, "r": room, "node": self.cluster.node, "sock": handle.sock})
            # The owner sends the init frame before it handles what this socket sends next
            # (its inputs go by the session's inbox, which pokes the owner's mail too).
            await self.cluster.link.written()
            return handle
        slot = self._slots.get(key)
        return SessionHandle(user_id, room, ref,
                             moved=slot.moved if slot is not None else MoveSignal())

    async def detach(self, handle: SessionHandle, outbox: Outbox) -> None:
        """Once this returns, the session pushes nothing more into ``outbox``. Safe in
        ``finally``; if the session cannot answer in time it still drops the outbox once it
        sees it closed."""
        if handle.remote:
            if self._remote.pop(handle.sock, None) is not None:
                self.cluster.link.post(node_of(handle.owner), "det", {
                    "u": handle.user_id, "r": handle.room, "node": self.cluster.node,
                    "sock": handle.sock})
            return
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await handle.ref.call(Detach(outbox.id))
            except ActorDead:
                pass

    async def send(self, handle: SessionHandle, outbox: Outbox, text: str,
                   key_id: int | None = None) -> None:
        """One input for the session; ``ActorDead`` when the session is not where the handle
        says (stopped, moved): attach again and resend."""
        if not handle.remote:
            await handle.ref.cast(UserInput(outbox.id, text, key_id))
            return
        holder = await self.cluster.inbox.send(handle.user_id, handle.room, handle.owner,
                                               self.cluster.node, handle.sock, text, key_id)
        if holder is not None:
            handle.moved.set()
            raise ActorDead(f"session {handle.user_id}/{handle.room} moved")
        metrics.message_forwarded()

    async def close_user(self, user_id: int) -> None:
        """The account is gone: no session of it starts again, here or elsewhere; its
        sessions stop."""
        self._closed_users.add(user_id)
        try:
            for node in await self.cluster.leases.live_nodes() - {self.cluster.node}:
                self.cluster.link.post(node, "close_user", {"u": user_id})
        except StorageError as exc:
            log.warning("other processes not told of deleted user %s: %s", user_id, exc)
        await self._stop_user(user_id)

    async def stop_session(self, user_id: int, room: str) -> None:
        """Stop the session here, or ask its owner to."""
        key = SessionKey(user_id, room)
        if key in list(self._sup.keys()):  # a supervisor, not a dict
            await self._sup.terminate_child(key)
            return
        try:
            holder = (await self.cluster.leases.holders([(user_id, room)]))[0]
        except StorageError:
            return
        if holder and node_of(holder) != self.cluster.node:
            self.cluster.link.post(node_of(holder), "stop", {"u": user_id, "r": room})

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
