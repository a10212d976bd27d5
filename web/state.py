"""Per-request state: when it started, who sent it, who it turned out to be.

The outermost ASGI layer (``web.access_log``) creates one ``RequestState`` per HTTP request or
WebSocket and stores it in the ASGI scope; everything inside reads it with ``state_of(scope)``
(in Quart: ``state_of(request.scope)`` / ``state_of(websocket.scope)``).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.networks import IPNetwork, ip_in

SCOPE_KEY = "chat.request_state"


@dataclass
class RequestState:
    client_ip: str
    utc_now: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    user_id: int | None = None
    email: str | None = None
    api_key_id: int | None = None
    error_code: str | None = None


def state_of(scope: Mapping[str, Any]) -> RequestState:
    state = scope.get(SCOPE_KEY)
    if not isinstance(state, RequestState):
        # Reached without the access-log layer (a bare test of an inner layer).
        client = scope.get("client")
        state = RequestState(client_ip=client[0] if client else "unknown")
        if isinstance(scope, dict):
            scope[SCOPE_KEY] = state
    return state


def client_ip(scope: Mapping[str, Any], trusted_proxies: list[IPNetwork]) -> str:
    """The peer address, or the X-Forwarded-For client when the peer is a trusted proxy.

    X-Forwarded-For is read right to left, skipping trusted proxies; the first address that is
    not one is the client. An untrusted peer's X-Forwarded-For is ignored entirely.
    """
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    if not trusted_proxies or not ip_in(peer, trusted_proxies):
        return peer
    forwarded: list[str] = []
    for name, value in scope.get("headers", ()):
        if name.lower() == b"x-forwarded-for":
            forwarded.extend(p.strip() for p in value.decode("latin-1").split(","))
    for hop in reversed([h for h in forwarded if h]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # garbage in the header: trust only what we saw
        if not ip_in(hop, trusted_proxies):
            return hop
    return forwarded[0] if forwarded and forwarded[0] else peer
