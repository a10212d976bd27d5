"""``POST /api/auth/register/{sns_type}``, ``POST /api/auth/login/{sns_type}``, ``POST
/api/auth/logout`` and the original server's ``DELETE /api/auth/register`` (delete the signed-in
account: JWT required, 204).

Only ``email`` is supported; the other known types (facebook, google, kakao) answer 400
``sns_not_supported``, anything else 400 ``sns_type_invalid``. Both routes answer
``{"Authorization": "Bearer <jwt>"}`` and set the same value as an HttpOnly, SameSite=Lax cookie
(``Secure`` unless ``COOKIE_SECURE=false`` for local HTTP).
"""

from __future__ import annotations

from quart import Blueprint, Response, current_app, jsonify, request
from quart_schema import document_response, security_scheme, tag, validate_request

from core.errors import ApiError, StorageConflict
from core.settings import Settings
from storage import accounts
from web.access_control import load_active_user
from web.errors import ErrorBody
from web.jwt_tokens import bearer_value, decode_token, issue_token, strip_bearer
from web.routes_user import delete_account
from web.schemas import Credentials, LoggedOut, TokenOut
from web.services import Services, get_services
from web.state import state_of
from web.user_status import check_user_status

bp = Blueprint("auth", __name__, url_prefix="/api/auth")

KNOWN_SNS = frozenset({"email", "facebook", "google", "kakao"})


def _check_sns(sns_type: str) -> None:
    if sns_type == "email":
        return
    if sns_type in KNOWN_SNS:
        raise ApiError(400, "sns_not_supported", f"Sign-in with '{sns_type}' is not supported.")
    raise ApiError(400, "sns_type_invalid", "Unknown sign-in type.", {"allowed": sorted(KNOWN_SNS)})


def _token_response(settings: Settings, user_id: int, status: int) -> Response:
    value = bearer_value(issue_token(settings, user_id))
    response = jsonify(TokenOut(Authorization=value).model_dump())
    response.status_code = status
    response.set_cookie(
        "Authorization",
        value,
        max_age=settings.jwt_ttl_seconds,
        httponly=True,
        secure=settings.cookie_secure,
        samesite="Lax",
        path="/",
    )
    return response


@bp.post("/register/<sns_type>")
@tag(["auth"])
@validate_request(Credentials)
@document_response(TokenOut, 201)
@document_response(ErrorBody, 400)
@document_response(ErrorBody, 422)
async def register(sns_type: str, data: Credentials) -> Response:
    """Create an account with an email and a password (8+ characters); returns a JWT."""
    _check_sns(sns_type)
    services = get_services(current_app)
    sql = services.storage.sql
    if await accounts.get_user_by_email(sql, data.email) is not None:
        raise ApiError(400, "email_exists", "This email is already registered.")
    password_hash = await services.passwords.hash(data.password)
    try:
        user = await accounts.create_user(sql, data.email, password_hash, sns_type)
    except StorageConflict:
        raise ApiError(400, "email_exists", "This email is already registered.") from None
    state_of(request.scope).user_id = user.id
    return _token_response(services.settings, user.id, 201)


@bp.post("/login/<sns_type>")
@tag(["auth"])
@validate_request(Credentials)
@document_response(TokenOut, 200)
@document_response(ErrorBody, 400)
@document_response(ErrorBody, 401)
@document_response(ErrorBody, 403)
@document_response(ErrorBody, 422)
async def login(sns_type: str, data: Credentials) -> Response:
    """Exchange an email and password for a JWT."""
    _check_sns(sns_type)
    services = get_services(current_app)
    user = await accounts.get_user_by_email(services.storage.sql, data.email)
    stored = user.password_hash if user is not None else None
    if not await services.passwords.verify(stored, data.password):
        raise ApiError(401, "invalid_credentials", "Wrong email or password.")
    user = check_user_status(user, "login")
    state_of(request.scope).user_id = user.id
    return _token_response(services.settings, user.id, 200)


@bp.post("/logout")
@tag(["auth"])
@document_response(LoggedOut, 200)
async def logout() -> Response:
    """Expire the ``Authorization`` cookie (a bearer token simply stops being sent)."""
    response = jsonify(LoggedOut().model_dump())
    response.delete_cookie("Authorization", path="/", secure=get_services(current_app).settings
                           .cookie_secure, httponly=True, samesite="Lax")
    return response


async def _signed_in_user(services: Services) -> accounts.UserRecord:
    """``/api/auth/*`` is public to access control: this route checks the JWT itself."""
    sent = request.headers.get("Authorization") or request.cookies.get("Authorization")
    token = strip_bearer(sent) if sent else ""
    if not token:
        raise ApiError(401, "not_authenticated", "A bearer token is required.")
    user = await load_active_user(services, decode_token(services.settings, token))
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
