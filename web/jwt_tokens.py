"""JWTs: HS256 only, with ``sub`` (the user id), ``iat``, ``exp``, ``jti`` and ``pwd``.

``decode_token`` pins the algorithm list to HS256, so ``alg: none``, HS512, RS256 and friends are
refused whatever the header says, and requires all five claims (a token of the older format,
without ``jti`` / ``pwd``, is refused: its holder signs in again).

- ``jti``: 128 random bits naming this one token, what logout puts on the denylist
  (``web.token_revocation``).
- ``pwd``: the *password stamp*, an HMAC (keyed with ``JWT_SECRET``) of the user's password hash
  at issue time, 128 bits. Every check compares it with the stamp of the hash stored now
  (``web.access_control.authenticate_token``): changing the password (a new Argon2 hash, with
  a new salt, even for the same password) invalidates every token issued before, exactly, with
  no clock involved: a token issued in the same millisecond as the change is judged by the
  hash it was issued for, not by its time. It reveals nothing about the hash (an HMAC under the
  server's secret) and costs nothing (JWT checks read the user row anyway).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import jwt
from quart import Response, jsonify

from core.errors import ApiError
from core.settings import Settings
from web.schemas import TokenOut

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["exp", "iat", "sub", "jti", "pwd"]


@dataclass(frozen=True)
class TokenClaims:
    user_id: int
    jti: str
    expires_at: int  # ``exp``, unix seconds
    password_stamp: str


def password_stamp(settings: Settings, password_hash: str | None) -> str:
    """What a token's ``pwd`` claim must equal while ``password_hash`` is the user's."""
    mac = hmac.new(settings.jwt_secret.encode(), b"password-stamp:" + (password_hash or "").encode(),
                   hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:16]).rstrip(b"=").decode()


def stamp_matches(settings: Settings, claims: TokenClaims, password_hash: str | None) -> bool:
    return hmac.compare_digest(claims.password_stamp, password_stamp(settings, password_hash))


def issue_token(
    settings: Settings, user_id: int, password_hash: str | None, now: float | None = None
) -> str:
    """A token for ``user_id``, valid while ``password_hash`` stays the user's password hash."""
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": str(user_id),
        "iat": issued,
        "exp": issued + settings.jwt_ttl_seconds,
        "jti": secrets.token_urlsafe(16),
        "pwd": password_stamp(settings, password_hash),
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM)


def decode_token(settings: Settings, token: str) -> TokenClaims:
    """The claims of a validly signed, unexpired token; ``ApiError(401)`` otherwise. Whether it
    was revoked is ``authenticate_token``'s question."""
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[ALGORITHM],
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.ExpiredSignatureError:
        raise ApiError(401, "token_expired", "The token has expired.") from None
    except jwt.PyJWTError:
        raise ApiError(401, "invalid_token", "The token is invalid.") from None
    sub, jti, stamp, exp = claims.get("sub"), claims.get("jti"), claims.get("pwd"), claims["exp"]
    if (not isinstance(sub, str) or not sub.isdigit() or not isinstance(jti, str)
            or not 0 < len(jti) <= 64 or not isinstance(stamp, str) or not isinstance(exp, int)):
        raise ApiError(401, "invalid_token", "The token is invalid.")
    return TokenClaims(user_id=int(sub), jti=jti, expires_at=exp, password_stamp=stamp)


def bearer_value(token: str) -> str:
    return f"Bearer {token}"


def strip_bearer(value: str) -> str:
    """``Bearer <jwt>`` (any case) or a bare ``<jwt>`` → ``<jwt>``."""
    value = value.strip().strip('"')
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        return rest.strip()
    return value


def token_response(
    settings: Settings, user_id: int, password_hash: str | None, status: int
) -> Response:
    """``{"Authorization": "Bearer <jwt>"}``, the same value set as the HttpOnly cookie."""
    value = bearer_value(issue_token(settings, user_id, password_hash))
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
