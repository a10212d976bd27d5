"""What every session actor shares: settings, the context store, the upstream, the commands,
the per-user limits."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from chat_actors.chat_limits import ChatLimits
from chat_actors.cluster import Cluster
from core.settings import Settings
from storage.context_store import ContextStore

if TYPE_CHECKING:
    from chat_actors.session import SessionActor
    from chat_actors.upstream import ChatRequest


class Upstream(Protocol):
    async def stream(self, request: ChatRequest, on_delta: DeltaSink) -> object: ...


class DeltaSink(Protocol):
    async def __call__(self, delta: str) -> None: ...


class CommandRunner(Protocol):
    def is_immediate(self, text: str) -> bool:
        """True for commands that may run while an answer streams (read-only ones)."""

    async def run(self, session: SessionActor, outbox_id: int, text: str) -> None: ...


class RoomHooks(Protocol):
    def touched(self, user_id: int, room: str) -> None: ...

    async def deleted(self, user_id: int, room: str) -> None: ...


@dataclass(frozen=True)
class SessionDeps:
    settings: Settings
    store: ContextStore
    upstream: Upstream
    commands: CommandRunner
    rooms: RoomHooks
    limits: ChatLimits
    cluster: Cluster | None = None

    def opaque_user_id(self, user_id: int) -> str:
        """What the upstream sees instead of the user's email: a keyed hash of the id."""
        digest = hmac.new(self.settings.jwt_secret.encode(), str(user_id).encode(),
                          hashlib.sha256).hexdigest()
        return f"u-{digest[:24]}"
