"""The long-lived services behind the edge, and the task that owns them.

``run_services`` runs in ``app.nursery`` for the whole life of the app: it opens storage,
enters each extra *service starter* in order (the chat session registry plugs in here), hands
a ``ServicesHandle`` back through ``task_status.started`` and waits for ``stop``. On shutdown
the starters exit in reverse order, then storage closes. A starter is an async context manager
factory::

    @asynccontextmanager
    async def open_chat(services: Services) -> AsyncIterator[None]:
        async with open_registry(services.settings, services.storage) as registry:
            services.chat = registry
            services.user_deleted_hooks.append(forget_user_chats)
            yield

and is passed as ``create_app(settings, extra_services=[open_chat])``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from core.errors import ApiError
from core.settings import Settings
from storage import Storage, open_storage
from web.key_cache import KeyAuthCache
from web.passwords import Passwords

if TYPE_CHECKING:
    from web.socket_watch import SocketWatch

UserDeletedHook = Callable[["Services", int], Awaitable[None]]
"""Called with ``(services, user_id)`` after ``DELETE /api/user/me`` marked the user deleted."""

ServiceStarter = Callable[["Services"], AbstractAsyncContextManager[None]]


@dataclass
class Services:
    """What a request handler may reach. Mutable on purpose: starters fill their field."""

    settings: Settings
    storage: Storage
    chat: object | None = None
    socket_watch: SocketWatch | None = None  # set by the chat service: open sockets' key checks
    draining: bool = False  # shutting down: no new chat sockets (web.drain)
    user_deleted_hooks: list[UserDeletedHook] = field(default_factory=list)
    passwords: Passwords = field(default_factory=Passwords)
    key_cache: KeyAuthCache = field(init=False)

    def __post_init__(self) -> None:
        self.key_cache = KeyAuthCache(self.settings.key_cache_seconds)


@dataclass
class ServicesHandle:
    services: Services
    stop: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)


async def run_services(
    settings: Settings,
    starters: Sequence[ServiceStarter],
    passwords: Passwords | None = None,
    *,
    task_status: trio.TaskStatus[ServicesHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Own storage and the extra services until ``handle.stop`` is set (or cancelled)."""
    done = trio.Event()
    try:
        async with open_storage(settings) as storage:
            services = Services(settings=settings, storage=storage)
            if passwords is not None:
                services.passwords = passwords
            async with AsyncExitStack() as stack:
                for starter in starters:
                    await stack.enter_async_context(starter(services))
                handle = ServicesHandle(services=services, done=done)
                task_status.started(handle)
                await handle.stop.wait()
    finally:
        done.set()


SERVICES_EXTENSION = "chat.services"


def get_services(app: object) -> Services:
    """The running app's ``Services`` (``get_services(current_app)``); 503 before startup."""
    services = getattr(app, "extensions", {}).get(SERVICES_EXTENSION)
    if not isinstance(services, Services):
        raise ApiError(503, "not_ready", "The server is starting or stopping.")
    return services
