"""A nursery per HTTP request, for work that must outlive its handler but not its request.

A streamed response's status and headers go out when the handler returns; its body afterwards.
A streamed chat completion wants both: an upstream that fails before its first byte should be
answered with an HTTP error (502, 504, 429), yet its stream must go on feeding the body after
the handler returned. So the handler starts the upstream task with ``nursery.start`` in this
nursery, which returns once the first text came (or raises, while an error status can still
be sent), and the body reads what the task streams.

The nursery is opened around the app for the request's paths (``prefixes``) and cancelled as
soon as the app is done with the request (the response sent, or the client gone): a task in it
can never outlive its request. ``request_nursery(request.scope)`` finds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from web.asgi_types import ASGIApp, Receive, Scope, Send

SCOPE_KEY = "chat.request_nursery"


class RequestNurseryMiddleware:
    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.prefixes = prefixes

    def _wants(self, scope: Scope) -> bool:
        path = str(scope.get("path", ""))
        return scope["type"] == "http" and any(
            path == p or path.startswith(p + "/") for p in self.prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._wants(scope):
            await self.app(scope, receive, send)
            return
        async with trio.open_nursery() as nursery:
            scope[SCOPE_KEY] = nursery
            try:
                await self.app(scope, receive, send)
            finally:
                nursery.cancel_scope.cancel()
                scope.pop(SCOPE_KEY, None)


def request_nursery(scope: Mapping[str, Any]) -> trio.Nursery:
    nursery = scope.get(SCOPE_KEY)
    if not isinstance(nursery, trio.Nursery):
        raise RuntimeError(  # noqa: TRY004 - a wiring bug, not a bad argument
            "no request nursery: is RequestNurseryMiddleware installed for "
                           "this path?")
    return nursery
