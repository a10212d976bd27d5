"""``GET /metrics``: every worker's metrics (``core.metrics``) in Prometheus' text format
(``text/plain; version=0.0.4``), for the operator's scraper only.

- ``METRICS_TOKEN`` unset: 404, exactly as for a path the server does not have. With no token
  nobody can be let in, so there is nothing to refuse: the endpoint is off and says nothing
  about it (a 401/403 would tell a prober that metrics exist and are worth guessing at).
- Set: the request must carry ``Authorization: Bearer <METRICS_TOKEN>``; without it, or with
  another token, 401 with ``WWW-Authenticate: Bearer`` and the usual JSON error body. The
  token is compared in constant time: the SHA-256 digests of both through
  ``hmac.compare_digest``, so neither its content nor its length shows in response times.

The check runs as the app's first ``before_request`` hook, ahead of the JWT access control
(the token is not a JWT, as the socket's access key at ``/ws`` is not: each authenticates
itself), behind the trusted-host and access-log layers like every other path: a scraper must
use a host name of ``TRUSTED_HOSTS``, and its requests are logged without their header.

Each running app also counts its live sessions and open sockets into the process's gauges
(``metrics.add_live_source``), refreshed every ``SAMPLE_SECONDS`` by a task of its own and at
each scrape it answers, and, when it stops, takes its process out of the live gauges.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import NotFound

from chat_actors.service import Chat
from core import metrics
from core.settings import Settings
from web.errors import error_response
from web.services import SERVICES_EXTENSION, Services

PATH = "/metrics"


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def bearer_matches(header: str | None, expected: bytes) -> bool:
    """Whether ``header`` is ``Bearer <token>`` with the token of digest ``expected``."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        token = ""
    return hmac.compare_digest(_digest(token.strip()), expected) and bool(token)


def _live_counts(app: QuartTrio) -> tuple[int, int]:
    services = app.extensions.get(SERVICES_EXTENSION)
    if not isinstance(services, Services):
        return 0, 0
    sessions = len(services.chat.registry) if isinstance(services.chat, Chat) else 0
    sockets = len(services.socket_watch) if services.socket_watch is not None else 0
    return sessions, sockets


def install(app: QuartTrio, settings: Settings) -> None:
    """Set the process's metrics up and serve them at ``PATH``; call it before any other
    ``before_request`` hook is registered."""
    metrics.configure(settings.metrics_multiproc_dir)
    expected = _digest(settings.metrics_token) if settings.metrics_token else None
    running: list[tuple[trio.CancelScope, Callable[[], None]]] = []  # (sampler, its source)

    @app.before_request
    async def serve_metrics() -> Response | None:
        if request.path != PATH or request.method not in ("GET", "HEAD"):
            return None
        if expected is None:
            raise NotFound()
        if not bearer_matches(request.headers.get("Authorization"), expected):
            response = error_response(401, "not_authenticated",
                                      "The metrics token is missing or wrong.")
            response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        metrics.sample()  # this process's live gauges, exact as of now
        body = await trio.to_thread.run_sync(metrics.render)
        response = Response(body, status=200, content_type=metrics.CONTENT_TYPE)
        response.headers["Cache-Control"] = "no-store"
        return response

    async def sample_forever(scope: trio.CancelScope) -> None:
        with scope:
            while True:
                metrics.sample()
                await trio.sleep(metrics.SAMPLE_SECONDS)

    @app.before_serving
    async def start_sampling() -> None:
        scope = trio.CancelScope()
        running.append((scope, metrics.add_live_source(lambda: _live_counts(app))))
        app.nursery.start_soon(sample_forever, scope)

    @app.after_serving
    async def stop_sampling() -> None:
        while running:
            scope, remove_source = running.pop()
            scope.cancel()
            remove_source()
        metrics.sample()  # without this app
        metrics.release()
