"""Access control, run before every HTTP route (after trusted host and CORS).

Paths fall into three classes:
- public: ``/``, ``/health*``, ``/docs``, ``/openapi.json``, ``/api/auth/*``, ``/chatgpt*`` (the
  page), static files and docs assets, ``/ws/*`` (the socket handler authenticates itself);
- services ``/api/services`` and ``/api/services/*`` (exactly that prefix): HMAC API key;
- everything else: a JWT from ``Authorization: Bearer <jwt>`` or the ``Authorization`` cookie,
  then the user's status (``web.user_status``: deleted → 401, blocked → 403) on every request.
The outcome lands in the request state (``web.state``) and, for JWT routes, ``g.user``.
"""

from __future__ import annotations

from enum import Enum

from quart import current_app, g, request

from core.errors import ApiError
from storage import accounts
from web.auth_keys import authenticate_signed_query
from web.jwt_tokens import decode_token, strip_bearer
from web.services import Services, get_services
from web.state import state_of
from web.user_status import check_user_status

PUBLIC_EXACT = frozenset({"/", "/docs", "/openapi.json", "/favicon.ico"})
PUBLIC_PREFIXES = ("/health", "/api/auth", "/chatgpt", "/docs-assets", "/ws")


class PathClass(Enum):
    PUBLIC = "public"
    SERVICE = "service"
    USER = "user"


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def classify(path: str) -> PathClass:
    if path in PUBLIC_EXACT or any(_under(path, p) for p in PUBLIC_PREFIXES):
        return PathClass.PUBLIC
    if _under(path, "/api/services"):
        return PathClass.SERVICE
    return PathClass.USER


def _token_from_request() -> str | None:
    header = request.headers.get("Authorization")
    if header:
        return strip_bearer(header)
    cookie = request.cookies.get("Authorization")
    if cookie:
        return strip_bearer(cookie)
    return None


async def load_active_user(services: Services, user_id: int) -> accounts.UserRecord:
    return check_user_status(await accounts.get_user(services.storage.sql, user_id), "token")


async def access_control() -> None:
    """The ``before_request`` hook."""
    if request.routing_exception is not None or request.method == "OPTIONS":
        return  # 404 / 405 / automatic OPTIONS: nothing to protect
    kind = classify(request.path)
    if kind is PathClass.PUBLIC:
        return
    state = state_of(request.scope)
    services = get_services(current_app)
    if kind is PathClass.SERVICE:
        authed = await authenticate_signed_query(
            services, request.scope.get("query_string", b""), request.headers.get("secret"),
            state.client_ip,
        )
        state.user_id, state.email, state.api_key_id = authed.user_id, authed.email, authed.key_id
        return
    token = _token_from_request()
    if not token:
        raise ApiError(401, "not_authenticated", "A bearer token is required.")
    user = await load_active_user(services, decode_token(services.settings, token))
    state.user_id, state.email = user.id, user.email
    g.user = user
