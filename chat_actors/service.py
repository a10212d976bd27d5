"""Opens the chat side of the server: upstream pool, context store, registry.

    async with open_chat(settings, storage) as chat:
        ref = await chat.registry.attach(user_id, room, outbox)

Shutdown runs in reverse: the session supervisor stops its sessions (each within its grace),
then the upstream clients close.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from chat_actors.chat_limits import ChatLimits
from chat_actors.cluster import Cluster, NodeLink, new_node_id
from chat_actors.registry import SessionRegistry
from chat_actors.session_commands import CommandRunner
from chat_actors.session_deps import SessionDeps
from chat_actors.tokens import preload
from chat_actors.translate import Translator
from chat_actors.upstream import UpstreamClient, open_upstream
from core.errors import StorageError
from core.settings import Settings
from storage import Storage
from storage.context_store import ContextStore
from storage.node_mail import NodeMail
from storage.rooms import delete_room, touch_rooms
from storage.session_inbox import SessionInbox
from storage.session_leases import SessionLeases
from storage.usage import UsageWriter


class RoomHooks:
    """Keeps the MariaDB room rows in step with the sessions.

    A socket entering a room must not wait for SQL: ``touched`` only notes the room, and one
    writer task records every room noted meanwhile in one upsert (creating new rooms, setting
    ``last_used_at``). ``flush`` waits until what was noted is written (before listing rooms).
    A batch MariaDB refused is kept and written with the next one (retried every
    ``RETRY_EVERY`` while it fails); meanwhile ``flush`` does not wait for it.
    """

    FLUSH_EVERY = 0.2  # seconds: how long touches gather before one write
    RETRY_EVERY = 2.0  # seconds between attempts while MariaDB refuses

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._dirty: set[tuple[int, str]] = set()
        self._writing = False
        self._failing = False
        self._wakeup = trio.Event()
        self._flushed = trio.Event()

    def touched(self, user_id: int, room: str) -> None:
        self._dirty.add((user_id, room))
        self._wakeup.set()

    async def flush(self) -> None:
        while (self._dirty or self._writing) and not self._failing:
            await self._flushed.wait()

    async def deleted(self, user_id: int, room: str | None = None) -> None:
        """One room of the user's, or all of them (``room`` None), is gone: after any write in
        flight (which would bring its rows back, or hand its batch back if it failed), drop its
        pending touches, then delete its rows."""
        if self._writing:
            await self._flushed.wait()  # the next write waits FLUSH_EVERY at least
        self._dirty = {(u, r) for u, r in self._dirty
                       if u != user_id or (room is not None and r != room)}
        await self.storage.sql.run(delete_room(user_id, room))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wakeup.wait()
            await trio.sleep(self.FLUSH_EVERY)
            self._wakeup = trio.Event()
            batch, self._dirty, self._writing = self._dirty, set(), True
            try:
                await self.storage.sql.run(touch_rooms(sorted(batch)))
                self._failing = False
            except StorageError as exc:
                if not self._failing:
                    log.warning("could not record %d room(s), kept for later: %s",
                                len(batch), exc)
                self._failing = True
                self._dirty |= batch  # minus rooms deleted meanwhile: deleted() drops those
            finally:
                self._writing = False
            self._flushed.set()
            self._flushed = trio.Event()
            if self._failing:
                await trio.sleep(self.RETRY_EVERY)
                self._wakeup.set()


log = logging.getLogger("chat.rooms")


@dataclass(frozen=True)
class Chat:
    settings: Settings
    registry: SessionRegistry
    store: ContextStore
    upstream: UpstreamClient
    rooms: RoomHooks
    translator: Translator
    limits: ChatLimits
    usage: UsageWriter

    async def delete_room(self, user_id: int, room: str) -> None:
        """Stop the room's session, then remove its stored context and its row."""
        await self.registry.stop_session(user_id, room)
        await self.store.delete(user_id, room)
        await self.rooms.deleted(user_id, room)

    async def forget_user(self, user_id: int) -> None:
        """A deleted user's chat data goes (sessions stopped for good, contexts removed)."""
        await self.registry.close_user(user_id)
        await self.store.delete_user(user_id)
        await self.rooms.deleted(user_id)  # touches queued or in flight would re-create rows


def open_cluster(settings: Settings, storage: Storage) -> Cluster:
    """This process as a node: an id of its own, its leases, the inboxes and its mail."""
    node = new_node_id()
    lease_ms = int(settings.session_lease_seconds * 1000)
    mail_ttl_ms = max(60_000, 10 * lease_ms)  # outlives a reader's pause, not its death
    return Cluster(
        node=node,
        leases=SessionLeases(storage.redis, node=node,
                             lease_seconds=settings.session_lease_seconds,
                             fence_ttl=settings.context_ttl_seconds),
        inbox=SessionInbox(storage.redis, ttl_seconds=settings.context_ttl_seconds,
                           mail_ttl_ms=mail_ttl_ms),
        link=NodeLink(NodeMail(storage.redis, ttl_ms=mail_ttl_ms), node),
    )


async def _warm_tokenizer(model: str) -> None:
    try:
        await preload([model])
    except Exception:  # the first message will try again and report it
        log.exception("could not build the tokenizer for %s", model)


@asynccontextmanager
async def open_chat(settings: Settings, storage: Storage) -> AsyncIterator[Chat]:
    store = ContextStore(storage.redis, ttl_seconds=settings.context_ttl_seconds,
                         default_model=settings.default_model)
    rooms = RoomHooks(storage)
    async with open_upstream(settings) as upstream, Translator.open(settings) as translator:
        limits = ChatLimits.from_settings(storage.redis, settings)
        deps = SessionDeps(settings=settings, store=store, upstream=upstream,
                           commands=CommandRunner(), rooms=rooms, limits=limits,
                           cluster=open_cluster(settings, storage))
        registry = SessionRegistry(deps, test_hooks=settings.api_env == "test")
        usage = UsageWriter(storage.redis, storage.sql, every=settings.usage_flush_seconds)
        async with trio.open_nursery() as nursery:
            await nursery.start(rooms.run)
            await nursery.start(registry.run)
            await nursery.start(usage.run)
            # Build the default model's tokenizer now (~1 s, in a thread), not on the first
            # message a user sends.
            nursery.start_soon(_warm_tokenizer, settings.default_model)
            try:
                yield Chat(settings=settings, registry=registry, store=store,
                           upstream=upstream, rooms=rooms, translator=translator,
                           limits=limits, usage=usage)
            finally:
                await registry.stop()
                with trio.move_on_after(2) as scope:
                    scope.shield = True
                    await rooms.flush()
                    try:  # what the stopped sessions counted; else the next start does
                        await usage.flush(wait=1)
                    except StorageError as exc:
                        log.warning("usage not written at shutdown: %s", exc)
                nursery.cancel_scope.cancel()

