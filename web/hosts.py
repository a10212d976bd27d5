"""ASGI layer: refuse requests whose Host header is not a trusted host (400).

``TRUSTED_HOSTS`` entries are exact names (``chat.example.com``), ``*.example.com`` wildcards
(any subdomain, not the bare domain) or ``*`` (anything: local only, refused in prod by the
settings). ``/health`` and ``/health/*`` are exempt so probes by IP keep working.
"""

from __future__ import annotations

from web.asgi_types import ASGIApp, Receive, Scope, Send, header, send_json
from web.errors import error_body
from web.state import state_of


def host_name(host_header: str) -> str:
    """``Host`` without its port, lower case; IPv6 literals keep their brackets."""
    host = host_header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        pattern = pattern.strip().lower()
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
            return True
    return False


class TrustedHostMiddleware:
    def __init__(self, app: ASGIApp, trusted_hosts: list[str]) -> None:
        self.app = app
        self.patterns = [p for p in trusted_hosts if p.strip()]
        self.allow_all = "*" in self.patterns

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allow_all:
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        if path == "/health" or path.startswith("/health/"):
            await self.app(scope, receive, send)
            return
        host = host_name(header(scope, b"host") or "")
        if host and host_allowed(host, self.patterns):
            await self.app(scope, receive, send)
            return
        state_of(scope).error_code = "invalid_host"
        body = error_body(400, "invalid_host", "Invalid host header.")
        await send_json(scope, send, 400, body)
