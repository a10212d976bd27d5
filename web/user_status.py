"""One rule for "may this user act?", used by JWT routes, API keys and login.

    status          JWT request                 API key (WS / service)   login
    (no such user)  401 user_not_found          (never: keys join users) 401 invalid_credentials
    deleted         401 user_deleted            403 user_deleted         401 invalid_credentials
    blocked         403 user_blocked            403 user_blocked         403 user_blocked

Login does not reveal that an account existed (a deleted account's email is free again).
"""

from __future__ import annotations

from typing import Literal

from core.errors import ApiError
from storage.accounts import UserRecord

Context = Literal["token", "key", "login"]


def check_user_status(user: UserRecord | None, context: Context) -> UserRecord:
    """``user`` if it is active, else the ``ApiError`` for ``context`` (table above)."""
    if user is not None and user.status == "active":
        return user
    if user is not None and user.status == "blocked":
        raise ApiError(403, "user_blocked", "This account is blocked.")
    if context == "login":
        raise ApiError(401, "invalid_credentials", "Wrong email or password.")
    if user is None:
        raise ApiError(401, "user_not_found", "The token's user does not exist.")
    status = 403 if context == "key" else 401
    raise ApiError(status, "user_deleted", "This account has been deleted.")
