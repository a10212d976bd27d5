"""``POST /api/auth/register/{sns_type}``, ``POST /api/auth/login/{sns_type}``, ``POST
/api/auth/logout`` and the original server's ``DELETE /api/auth/register`` (delete the signed-in
account: JWT required, 204).

Only ``email`` is supported; the other known types (facebook, google, kakao) answer 400
``sns_not_supported``, anything else 400 ``sns_type_invalid``. Both routes answer
``{"Authorization": "Bearer <jwt>"}`` and set the same value as an HttpOnly, SameSite=Lax cookie
(``Secure`` unless ``COOKIE_SECURE=false`` for local HTTP).

Registration and login are throttled per client IP and failed logins per account
(``web.auth_limits``: 429 ``too_many_attempts`` with ``Retry-After``). Logout revokes the token
it is called with (``web.token_revocation``): the bearer header's and the cookie's, whichever
are valid; it answers 200 and expires the cookie whatever was sent.
"""

from __future__ import annotations

from quart import Blueprint, Response, current_app, jsonify, request
from quart_schema import document_response, security_scheme, tag, validate_request

from core.errors import ApiError, StorageConflict
from storage import accounts
from web.access_control import authenticate_token
from web.auth_limits import AuthLimits, account_subject
from web.errors import ErrorBody
from web.jwt_tokens import decode_token, strip_bearer, token_response
from web.routes_user import delete_account
from web.schemas import Credentials, LoggedOut, TokenOut
from web.services import Services, get_services
from web.state import state_of
from web.token_revocation import revoke
from web.user_status import check_user_status

bp = Blueprint("auth", __name__, url_prefix="/api/auth")

KNOWN_SNS = frozenset({"email", "facebook", "google", "kakao"})


def _check_sns(sns_type: str) -> None:
    if sns_type == "email":
        return
    if sns_type in KNOWN_SNS:
        raise ApiError(400, "sns_not_supported", f"Sign-in with '{sns_type}' is not supported.")
    raise ApiError(400, "sns_type_invalid", "Unknown sign-in type.", {"allowed": sorted(KNOWN_SNS)})


def _limits(services: Services) -> AuthLimits:
    return AuthLimits.from_settings(services.storage.redis, services.settings)


@bp.post("/register/<sns_type>")
@tag(["auth"])
@validate_request(Credentials)
@document_response(TokenOut, 201)
@document_response(ErrorBody, 400)
@document_response(ErrorBody, 422)
@document_response(ErrorBody, 429)
async def register(sns_type: str, data: Credentials) -> Response:
    """Create an account with an email and a password (8+ characters); returns a JWT.

    At most ``REGISTRATIONS_PER_IP`` attempts per client IP per hour (429 with
    ``Retry-After`` past it)."""
    _check_sns(sns_type)
    services = get_services(current_app)
    await _limits(services).count_registration(state_of(request.scope).client_ip)
    sql = services.storage.sql
    if await accounts.get_user_by_email(sql, data.email) is not None:
        raise ApiError(400, "email_exists", "This email is already registered.")
    password_hash = await services.passwords.hash(data.password)
    try:
        user = await accounts.create_user(sql, data.email, password_hash, sns_type)
    except StorageConflict:
        raise ApiError(400, "email_exists", "This email is already registered.") from None
    state_of(request.scope).user_id = user.id
    return token_response(services.settings, user.id, user.password_hash, 201)


@bp.post("/login/<sns_type>")
@tag(["auth"])
@validate_request(Credentials)
@document_response(TokenOut, 200)
@document_response(ErrorBody, 400)
@document_response(ErrorBody, 401)
@document_response(ErrorBody, 403)
@document_response(ErrorBody, 422)
@document_response(ErrorBody, 429)
async def login(sns_type: str, data: Credentials) -> Response:
    """Exchange an email and password for a JWT.

    At most ``LOGIN_ATTEMPTS_PER_IP`` attempts per client IP and ``LOGIN_FAILURES_PER_EMAIL``
    failures per account per 5 minutes; past either, 429 with ``Retry-After``, the right
    password included, until the window lets one more in."""
    _check_sns(sns_type)
    services = get_services(current_app)
    limits = _limits(services)
    await limits.count_login(state_of(request.scope).client_ip)
    user = await accounts.get_user_by_email(services.storage.sql, data.email)
    reservation = await limits.reserve_failure(
        account_subject(user.id if user is not None else None, data.email))
    stored = user.password_hash if user is not None else None
    if not await services.passwords.verify(stored, data.password):
        raise ApiError(401, "invalid_credentials", "Wrong email or password.")
    await limits.refund(reservation)  # not a failure after all
    user = check_user_status(user, "login")
    state_of(request.scope).user_id = user.id
    return token_response(services.settings, user.id, user.password_hash, 200)


@bp.post("/logout")
@tag(["auth"])
@document_response(LoggedOut, 200)
@document_response(ErrorBody, 503)
async def logout() -> Response:
    """Revoke the token sent (bearer header and/or cookie) until it expires, and expire the
    ``Authorization`` cookie. A missing, expired or invalid token is not an error (there is
    nothing to revoke); 503 when the revocation could not be stored."""
    services = get_services(current_app)
    sent = {strip_bearer(v) for v in (request.headers.get("Authorization"),
                                      request.cookies.get("Authorization")) if v}
    for token in sent - {""}:
        try:
            claims = decode_token(services.settings, token)
        except ApiError:
            continue
        await revoke(services, claims)
        state_of(request.scope).user_id = claims.user_id
    response = jsonify(LoggedOut().model_dump())
    response.delete_cookie("Authorization", path="/", secure=services.settings.cookie_secure,
                           httponly=True, samesite="Lax")
    return response


async def _signed_in_user(services: Services) -> accounts.UserRecord:
    """``/api/auth/*`` is public to access control: this route checks the JWT itself."""
    sent = request.headers.get("Authorization") or request.cookies.get("Authorization")
    token = strip_bearer(sent) if sent else ""
    if not token:
        raise ApiError(401, "not_authenticated", "A bearer token is required.")
    user = await authenticate_token(services, token)
    state = state_of(request.scope)
    state.user_id, state.email = user.id, user.email
    return user


@bp.delete("/register")
@tag(["auth"])
@security_scheme([{"bearer": []}, {"cookie": []}])
@document_response(ErrorBody, 401)
@document_response(ErrorBody, 403)
async def unregister() -> Response:
    """Delete the signed-in account, as ``DELETE /api/user/me`` does; 204 without a body."""
    services = get_services(current_app)
    user = await _signed_in_user(services)
    await delete_account(services, user.id)
    return Response(b"", 204)  # a bytes body: an empty iterable needs asyncio to stream
