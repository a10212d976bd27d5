"""ASGI layer: CORS with real origins.

``ALLOWED_ORIGINS`` lists origins (``https://chat.example.com``, ``http://localhost:3000``).
A listed origin gets ``Access-Control-Allow-Origin: <that origin>`` with credentials; ``*`` in the
list lets any other origin read responses *without* credentials (never ``*`` with credentials).
Preflights (OPTIONS + ``Access-Control-Request-Method``) are answered here, before access
control; a preflight from an origin that is not allowed gets 400 ``cors_origin_denied``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from web.asgi_types import ASGIApp, Message, Receive, Scope, Send, header, send_json
from web.errors import error_body
from web.state import state_of

ALLOW_METHODS = b"GET, POST, PUT, DELETE, OPTIONS"
ALLOW_HEADERS = b"authorization, content-type, secret"
MAX_AGE = b"600"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case, default port dropped; None if not an origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}:{port}"
    return f"{parts.scheme}://{host}"


class CorsMiddleware:
    def __init__(self, app: ASGIApp, allowed_origins: list[str]) -> None:
        self.app = app
        self.any_origin = "*" in allowed_origins
        self.origins = {o for o in map(normalize_origin, allowed_origins) if o is not None}

    def _cors_headers(self, origin: str) -> list[tuple[bytes, bytes]] | None:
        normalized = normalize_origin(origin)
        if normalized is not None and normalized in self.origins:
            return [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-credentials", b"true"),
                (b"vary", b"Origin"),
            ]
        if self.any_origin:
            return [(b"access-control-allow-origin", b"*")]
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = header(scope, b"origin") if scope["type"] == "http" else None
        if origin is None:
            await self.app(scope, receive, send)
            return
        cors = self._cors_headers(origin)
        if scope.get("method") == "OPTIONS" and header(scope, b"access-control-request-method"):
            await self._preflight(scope, send, cors)
            return
        if cors is None:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *cors]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(
        self, scope: Scope, send: Send, cors: list[tuple[bytes, bytes]] | None
    ) -> None:
        if cors is None:
            state_of(scope).error_code = "cors_origin_denied"
            body = error_body(400, "cors_origin_denied", "Origin not allowed.")
            await send_json(scope, send, 400, body, ((b"vary", b"Origin"),))
            return
        headers = [
            *cors,
            (b"access-control-allow-methods", ALLOW_METHODS),
            (b"access-control-allow-headers", ALLOW_HEADERS),
            (b"access-control-max-age", MAX_AGE),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
