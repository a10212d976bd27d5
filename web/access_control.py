"""Access control, run before every HTTP route (after trusted host and CORS).

Paths fall into four classes:
- public: ``/``, ``/health*``, ``/docs``, ``/openapi.json``, ``/api/auth/*``, ``/chatgpt*`` (the
  page), static files and docs assets, ``/ws/*`` (the socket handler authenticates itself);
- services ``/api/services`` and ``/api/services/*`` (exactly that prefix): HMAC API key;
- the OpenAI-compatible API ``/v1`` and ``/v1/*``: ``Authorization: Bearer <access_key>.
  <secret_key>`` (``web.openai_auth``), never a JWT or a cookie; refusals are OpenAI-shaped
  (the ``/v1`` blueprint's error handlers answer them);
- everything else: a JWT from ``Authorization: Bearer <jwt>`` or the ``Authorization`` cookie,
  checked by ``authenticate_token`` on every request: signature and expiry, not logged out
  (``web.token_revocation``, 401 ``token_revoked``), the user's status (``web.user_status``:
  deleted → 401, blocked → 403), and issued for the user's current password (401
  ``token_revoked`` after a password change, ``web.jwt_tokens``).
The outcome lands in the request state (``web.state``) and, for JWT routes, ``g.user``. The
routes under ``/api/auth`` that need a signed-in user call ``authenticate_token`` themselves.
"""

from __future__ import annotations

from enum import Enum

from quart import current_app, g, request

from core.errors import ApiError
from storage import accounts
from web.auth_keys import authenticate_signed_query
from web.jwt_tokens import decode_token, stamp_matches, strip_bearer
from web.openai_auth import authenticate_openai_key
from web.services import Services, get_services
from web.state import state_of
from web.token_revocation import is_revoked
from web.user_status import check_user_status

PUBLIC_EXACT = frozenset({"/", "/docs", "/openapi.json", "/favicon.ico"})
PUBLIC_PREFIXES = ("/health", "/api/auth", "/chatgpt", "/docs-assets", "/ws")


class PathClass(Enum):
    PUBLIC = "public"
    SERVICE = "service"
    OPENAI = "openai"
    USER = "user"


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def classify(path: str) -> PathClass:
    if path in PUBLIC_EXACT or any(_under(path, p) for p in PUBLIC_PREFIXES):
        return PathClass.PUBLIC
    if _under(path, "/api/services"):
        return PathClass.SERVICE
    if _under(path, "/v1"):
        return PathClass.OPENAI
    return PathClass.USER


def token_from_request() -> str | None:
    header = request.headers.get("Authorization")
    if header:
        return strip_bearer(header)
    cookie = request.cookies.get("Authorization")
    if cookie:
        return strip_bearer(cookie)
    return None


def _revoked(msg: str) -> ApiError:
    return ApiError(401, "token_revoked", msg)


async def authenticate_token(services: Services, token: str) -> accounts.UserRecord:
    """The active user a JWT stands for, or the ``ApiError`` that refuses it (401 / 403).

    The one JWT check: every route that takes a JWT comes through here."""
    claims = decode_token(services.settings, token)
    if await is_revoked(services, claims):
        raise _revoked("The token was revoked (logged out).")
    user = check_user_status(await accounts.get_user(services.storage.sql, claims.user_id),
                             "token")
    if not stamp_matches(services.settings, claims, user.password_hash):
        raise _revoked("The token was revoked (the password changed since it was issued).")
    return user


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
    if kind is PathClass.OPENAI:
        authed = await authenticate_openai_key(
            services, request.headers.get("Authorization"), state.client_ip)
        state.user_id, state.email, state.api_key_id = authed.user_id, authed.email, authed.key_id
        return
    token = token_from_request()
    if not token:
        raise ApiError(401, "not_authenticated", "A bearer token is required.")
    user = await authenticate_token(services, token)
    state.user_id, state.email = user.id, user.email
    g.user = user
