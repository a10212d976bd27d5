"""The app factory: ``create_app(settings) -> QuartTrio``.

Layers, outermost first: security headers (``web.security_headers``, on every response) →
access log (request state, one JSON line per request) → trusted host → CORS → a nursery per
request under ``/v1`` (``web.request_nursery``: a streamed completion's upstream task) → Quart
(access control as ``before_request``, then the route). Lifespan: before serving,
``run_services`` starts in ``app.nursery`` (storage, then each extra service starter) and hands
back the ``Services``; after serving, it is asked to stop and given ``shutdown_grace`` seconds
before QuartTrio's nursery deadline cancels it.

Run it with ``hypercorn --worker-class trio 'web.asgi:app'`` (keep Hypercorn's own access log
off: it would log raw paths, which carry access keys on the WebSocket route).
"""

from __future__ import annotations

from collections.abc import Sequence

from argon2 import PasswordHasher
from quart import Response, current_app, request
from quart_trio import QuartTrio

from core.heap import tune_collector
from core.networks import parse_networks
from core.settings import Settings
from web import (
    auth_limits,
    metrics_endpoint,
    openai_api,
    routes_apikeys,
    routes_auth,
    routes_health,
    routes_page,
    routes_rooms,
    routes_services,
    routes_usage,
    routes_user,
    ws,
)
from web.access_control import access_control
from web.access_log import AccessLogMiddleware
from web.chat_service import open_chat_service
from web.cors import CorsMiddleware
from web.docs import install_docs
from web.errors import JsonErrorRequest, install_error_handlers
from web.hosts import TrustedHostMiddleware
from web.passwords import Passwords
from web.request_nursery import RequestNurseryMiddleware
from web.security_headers import SecurityHeadersMiddleware
from web.services import SERVICES_EXTENSION, ServicesHandle, ServiceStarter, run_services

MAX_BODY_BYTES = 1024 * 1024


async def forget_key_checks(response: Response) -> Response:
    """A change to keys, allow-lists or the user: cached key checks must not outlive it.

    A 503 changed nothing (storage refused the unit, or the server is not serving): clearing
    then would turn a MariaDB outage into refused sockets for every key a client retries on
    (a commit whose acknowledgement was lost is the exception, seen within the TTL as any
    change made elsewhere)."""
    if response.status_code == 503:
        return response
    if request.method not in ("GET", "HEAD", "OPTIONS") and request.path.startswith("/api/user"):
        services = current_app.extensions.get(SERVICES_EXTENSION)
        if services is not None:
            services.key_cache.clear()
    return response


def create_app(
    settings: Settings,
    *,
    extra_services: Sequence[ServiceStarter] = (open_chat_service,),
    shutdown_grace: float = 10.0,
    password_hasher: PasswordHasher | None = None,
    tune_gc: bool = False,
) -> QuartTrio:
    """``tune_gc``: this app is the process's server (``core.heap``), not one of a test's."""
    app = QuartTrio("web", static_folder=None)  # the page serves its files with its CSP
    app.request_class = JsonErrorRequest
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        BACKGROUND_TASK_SHUTDOWN_TIMEOUT=shutdown_grace,
        PROPAGATE_EXCEPTIONS=False,
    )
    app.config["CHAT_SETTINGS"] = settings

    install_error_handlers(app)
    auth_limits.install(app)
    openai_api.install_docs(install_docs(app))
    metrics_endpoint.install(app, settings)  # before access control: its own bearer token
    app.before_request(access_control)
    app.after_request(forget_key_checks)
    for bp in (
        routes_health.bp,
        routes_auth.bp,
        routes_user.bp,
        routes_apikeys.bp,
        routes_services.bp,
        routes_rooms.bp,
        routes_usage.bp,
        ws.bp,
        routes_page.page_bp,
        openai_api.bp,
    ):
        app.register_blueprint(bp)

    starters = list(extra_services)
    handles: list[ServicesHandle] = []

    @app.before_serving
    async def start_services() -> None:
        passwords = Passwords(password_hasher) if password_hasher is not None else None
        handle: ServicesHandle = await app.nursery.start(
            run_services, settings, starters, passwords
        )
        handles.append(handle)
        app.extensions[SERVICES_EXTENSION] = handle.services
        if tune_gc:  # once start-up garbage exists and start-up objects are all made
            tune_collector()

    @app.after_serving
    async def stop_services() -> None:
        app.extensions.pop(SERVICES_EXTENSION, None)
        while handles:
            handle = handles.pop()
            handle.stop.set()
            await handle.done.wait()

    app.asgi_app = SecurityHeadersMiddleware(  # type: ignore[method-assign,assignment]
        AccessLogMiddleware(
            TrustedHostMiddleware(
                CorsMiddleware(
                    RequestNurseryMiddleware(app.asgi_app,  # type: ignore[arg-type]
                                             (openai_api.PREFIX,)),
                    settings.allowed_origins),
                settings.trusted_hosts,
            ),
            parse_networks(settings.trusted_proxies),
        )
    )
    return app
