"""Outermost ASGI layer: security headers on every response this process sends.

Every ``http.response.start`` and ``websocket.http.response.start`` (a socket refused before
the upgrade) gets, unless the response already set them:

- ``X-Content-Type-Options: nosniff``: a browser takes the declared type (a JSON error body or
  a user's text never runs as script or renders as HTML by sniffing);
- ``Referrer-Policy: no-referrer``: nothing of our URLs leaves with a request elsewhere. The
  page's URL carries nothing secret, but the docs and API URLs may carry query strings
  (``/api/services/*`` signatures' keys), and the page links out only to what the model wrote.
  ``strict-origin-when-cross-origin`` would still send our origin; we never need a referrer
  (no analytics, CSRF is handled by SameSite cookies and the Origin check, not Referer), so
  the strictest value costs nothing. The chat page already sends the same.

Nothing else is added here: the chat page keeps its own Content-Security-Policy and framing
rules (``web.routes_page``), set on its own responses and left as they are. Responses Hypercorn
writes by itself (an unparseable request) never reach the app and carry none.
"""

from __future__ import annotations

from web.asgi_types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
_START = frozenset({"http.response.start", "websocket.http.response.start"})


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] in _START:
                headers = list(message.get("headers", ()))
                present = {bytes(name).lower() for name, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
