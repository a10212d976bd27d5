"""JWTs: HS256 only, with ``sub`` (the user id), ``iat`` and ``exp``.

``decode_token`` pins the algorithm list to HS256, so ``alg: none``, HS512, RS256 and friends are
refused whatever the header says, and requires all three claims.
"""

from __future__ import annotations

import time

import jwt

from core.errors import ApiError
from core.settings import Settings

ALGORITHM = "HS256"


def issue_token(settings: Settings, user_id: int, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    claims = {"sub": str(user_id), "iat": issued, "exp": issued + settings.jwt_ttl_seconds}
    return jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM)


def decode_token(settings: Settings, token: str) -> int:
    """The user id in a valid token; ``ApiError(401)`` otherwise."""
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "iat", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise ApiError(401, "token_expired", "The token has expired.") from None
    except jwt.PyJWTError:
        raise ApiError(401, "invalid_token", "The token is invalid.") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.isdigit():
        raise ApiError(401, "invalid_token", "The token is invalid.")
    return int(sub)


def bearer_value(token: str) -> str:
    return f"Bearer {token}"


def strip_bearer(value: str) -> str:
    """``Bearer <jwt>`` (any case) or a bare ``<jwt>`` → ``<jwt>``."""
    value = value.strip().strip('"')
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        return rest.strip()
    return value
