"""Outermost ASGI layer: request state, and one JSON access-log line per request.

Logged to ``chat.access``: method, path, status, duration in ms, client IP, user id, error code.
Never the query string (it carries access keys), headers, bodies or cookies; the WebSocket path
``/ws/chatgpt/<access key>`` is logged as ``/ws/chatgpt/***``.
"""

from __future__ import annotations

import json
import logging
import re
import time

from core.networks import IPNetwork
from web.asgi_types import ASGIApp, Message, Receive, Scope, Send
from web.state import SCOPE_KEY, RequestState, client_ip

access_log = logging.getLogger("chat.access")

# Everything after /ws/<endpoint>/ may be a credential (the access key): never log it.
_WS_SECRET = re.compile(r"^(/ws/[^/]+/).+$", re.DOTALL)


def redact_path(path: str) -> str:
    return _WS_SECRET.sub(r"\1***", path)


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, trusted_proxies: list[IPNetwork]) -> None:
        self.app = app
        self.trusted_proxies = trusted_proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state = RequestState(client_ip=client_ip(scope, self.trusted_proxies))
        scope[SCOPE_KEY] = state
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start") and not status:
                status = int(message["status"])
            elif kind == "websocket.accept" and not status:
                status = 101
            elif kind == "websocket.close" and not status:
                status = 403
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            status = status or 500
            raise
        finally:
            self._log(scope, state, status)

    @staticmethod
    def _log(scope: Scope, state: RequestState, status: int) -> None:
        method = scope.get("method", "WS") if scope["type"] == "http" else "WS"
        line = {
            "method": method,
            "path": redact_path(str(scope.get("path", ""))),
            "status": status,
            "duration_ms": round((time.perf_counter() - state.started) * 1000, 2),
            "client_ip": state.client_ip,
            "user_id": state.user_id,
            "error_code": state.error_code,
            "at": state.utc_now.isoformat(timespec="milliseconds"),
        }
        access_log.info(json.dumps(line))
