"""Plugs the chat side (``chat_actors.service.open_chat``) into the app's services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from chat_actors.service import Chat, open_chat
from storage.limits import Slots
from web.services import Services
from web.socket_watch import SocketWatch

MIN_RECHECK_SECONDS = 1.0
SOCKET_SLOT_TTL = 60.0  # seconds; renewed every sweep while the socket is open


async def _forget_user(services: Services, user_id: int) -> None:
    if services.socket_watch is not None:
        services.socket_watch.close_user(user_id)
    if isinstance(services.chat, Chat):
        await services.chat.forget_user(user_id)


@asynccontextmanager
async def open_chat_service(services: Services) -> AsyncIterator[None]:
    settings = services.settings
    interval = max(settings.key_cache_seconds, MIN_RECHECK_SECONDS)
    slots = Slots(services.storage.redis, "ws-sockets", limit=settings.ws_connections_per_key,
                  ttl=max(SOCKET_SLOT_TTL, 4 * interval))
    watch = SocketWatch(services, slots, interval)
    async with (open_chat(services.settings, services.storage) as chat,
                trio.open_nursery() as nursery):
        await nursery.start(watch.run)
        services.chat, services.socket_watch = chat, watch
        services.user_deleted_hooks.append(_forget_user)
        try:
            yield
        finally:
            services.chat = services.socket_watch = None
            nursery.cancel_scope.cancel()
