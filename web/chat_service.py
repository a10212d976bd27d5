"""Plugs the chat side (``chat_actors.service.open_chat``) into the app's services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from chat_actors.service import Chat, open_chat
from web.services import Services


async def _forget_user(services: Services, user_id: int) -> None:
    if isinstance(services.chat, Chat):
        await services.chat.forget_user(user_id)


@asynccontextmanager
async def open_chat_service(services: Services) -> AsyncIterator[None]:
    async with open_chat(services.settings, services.storage) as chat:
        services.chat = chat
        services.user_deleted_hooks.append(_forget_user)
        try:
            yield
        finally:
            services.chat = None
