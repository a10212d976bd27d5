"""``/api/user/me``: the signed-in user's profile and password (JWT routes)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from quart import Blueprint, Response, current_app, g
from quart_schema import (
    document_response,
    security_scheme_blueprint,
    tag_blueprint,
    validate_request,
    validate_response,
)

from core.errors import ApiError
from storage import accounts
from web.auth_limits import AuthLimits, account_subject
from web.errors import ErrorBody
from web.jwt_tokens import token_response
from web.schemas import DeletedOut, PasswordChange, TokenOut, UserOut, UserUpdate
from web.services import Services, get_services

bp = Blueprint("user", __name__, url_prefix="/api/user")
tag_blueprint(bp, ["user"])
security_scheme_blueprint(bp, [{"bearer": []}, {"cookie": []}])
log = logging.getLogger("chat.errors")

AUTH_ERRORS = (401, 403)


def current_user() -> accounts.UserRecord:
    user: accounts.UserRecord = g.user
    return user


def user_out(user: accounts.UserRecord) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        name=user.name,
        phone_number=user.phone_number,
        profile_img=user.profile_img,
        sns_type=user.sns_type,
        status=user.status,
        marketing_agree=user.marketing_agree,
        created_at=user.created_at,
        updated_at=user.updated_at,
    )


F = TypeVar("F", bound=Callable[..., Any])


def document_errors(*statuses: int) -> Callable[[F], F]:
    """Document the error body for each status (and the auth errors every JWT route has)."""

    def decorate(func: F) -> F:
        for status in sorted({*statuses, *AUTH_ERRORS}):
            func = document_response(ErrorBody, status)(func)
        return func

    return decorate


@bp.get("/me")
@validate_response(UserOut)
@document_errors()
async def get_me() -> UserOut:
    """The signed-in user."""
    return user_out(current_user())


@bp.put("/me")
@validate_request(UserUpdate)
@validate_response(UserOut)
@document_errors(422)
async def put_me(data: UserUpdate) -> UserOut:
    """Change profile fields: only the fields present in the body change."""
    changes = {name: getattr(data, name) for name in data.model_fields_set}
    services = get_services(current_app)
    updated = await accounts.update_user(services.storage.sql, current_user().id, changes)
    return user_out(updated or current_user())


@bp.put("/me/password")
@validate_request(PasswordChange)
@document_response(TokenOut, 200)
@document_errors(409, 422, 429, 503)
async def put_password(data: PasswordChange) -> Response:
    """Change the password. Every token issued before this call, the one making it included,
    stops working (401 ``token_revoked``); the answer carries a fresh token, also set as the
    cookie. A wrong current password is 403 ``wrong_password`` and counts as a failed sign-in
    of the account (``LOGIN_FAILURES_PER_EMAIL`` per 5 minutes, then 429 ``too_many_attempts``
    for logins and this route alike). 409 ``password_conflict``: another change won meanwhile.
    API keys are separate credentials and keep working."""
    services = get_services(current_app)
    user = current_user()
    limits = AuthLimits.from_settings(services.storage.redis, services.settings)
    reservation = await limits.reserve_failure(account_subject(user.id, user.email))
    if not await services.passwords.verify(user.password_hash, data.current_password):
        raise ApiError(403, "wrong_password", "The current password is wrong.")
    await limits.refund(reservation)
    new_hash = await services.passwords.hash(data.new_password)
    if not await accounts.set_password_hash(services.storage.sql, user.id, user.password_hash, new_hash):
        raise ApiError(409, "password_conflict",
                       "The password was changed (or the account closed) meanwhile.")
    return token_response(services.settings, user.id, new_hash, 200)


@bp.delete("/me")
@validate_response(DeletedOut)
@document_errors()
async def delete_me() -> DeletedOut:
    """Delete the account: marked deleted, personal data scrubbed, API keys disabled and chat
    room rows deleted (one transaction), then every ``Services.user_deleted_hooks`` hook called
    (the chat side removes the user's chat data from Redis)."""
    user_id = current_user().id
    await delete_account(get_services(current_app), user_id)
    return DeletedOut(id=user_id)


async def delete_account(services: Services, user_id: int) -> None:
    """What ``DELETE /api/user/me`` and the original's ``DELETE /api/auth/register`` do."""
    await accounts.delete_user(services.storage.sql, user_id)
    services.key_cache.clear()  # the keys stop working now, not at the cache's TTL
    for hook in services.user_deleted_hooks:
        await hook(services, user_id)
