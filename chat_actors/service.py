"""Opens the chat side of the server: upstream pool, context store, session registry.

    async with open_chat(settings, storage) as chat:
        ref = await chat.registry.attach(user_id, room, outbox)

Shutdown runs in reverse: the session supervisor stops its sessions (each within its grace),
then the upstream clients close.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from chat_actors.registry import SessionRegistry
from chat_actors.session_commands import CommandRunner
from chat_actors.session_deps import SessionDeps
from chat_actors.translate import Translator
from chat_actors.upstream import UpstreamClient, open_upstream
from core.settings import Settings
from storage import Storage
from storage.context_store import ContextStore
from storage.rooms import delete_room, touch_room


@dataclass(frozen=True)
class RoomHooks:
    """Keeps the MariaDB room rows in step with the sessions."""

    storage: Storage

    async def touched(self, user_id: int, room: str) -> None:
        await self.storage.sql.run(touch_room(user_id, room))

    async def deleted(self, user_id: int, room: str) -> None:
        await self.storage.sql.run(delete_room(user_id, room))


@dataclass(frozen=True)
class Chat:
    settings: Settings
    registry: SessionRegistry
    store: ContextStore
    upstream: UpstreamClient
    rooms: RoomHooks

    async def delete_room(self, user_id: int, room: str) -> None:
        """Stop the room's session, then remove its stored context and its row."""
        await self.registry.stop_session(user_id, room)
        await self.store.delete(user_id, room)
        await self.rooms.deleted(user_id, room)

    async def forget_user(self, user_id: int) -> None:
        """A deleted user's chat data goes (sessions stopped, contexts removed)."""
        for key in self.registry.keys_of(user_id):
            await self.registry.stop_session(key.user_id, key.room)
        await self.store.delete_user(user_id)


@asynccontextmanager
async def open_chat(settings: Settings, storage: Storage) -> AsyncIterator[Chat]:
    store = ContextStore(storage.redis, ttl_seconds=settings.context_ttl_seconds,
                         default_model=settings.default_model)
    rooms = RoomHooks(storage)
    async with open_upstream(settings) as upstream, Translator.open(settings) as translator:
        deps = SessionDeps(settings=settings, store=store, upstream=upstream,
                           commands=CommandRunner(), translate=translator, rooms=rooms)
        registry = SessionRegistry(deps, test_hooks=settings.api_env == "test")
        async with trio.open_nursery() as nursery:
            await nursery.start(registry.run)
            try:
                yield Chat(settings=settings, registry=registry, store=store,
                           upstream=upstream, rooms=rooms)
            finally:
                await registry.stop()
