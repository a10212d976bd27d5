"""Revoked JWTs: a denylist in Redis, keyed by the token's ``jti``, kept until it expires.

``P jwt-revoked:<jti>`` (a string, ``1``) lives until the token's ``exp`` plus
``EXPIRY_MARGIN`` (another process whose clock runs behind could still take the token for
unexpired a little past ``exp``); after that the token is refused as expired anyway, so the
list never grows beyond the tokens logged out within one ``JWT_TTL_SECONDS``. The ``jti`` is
128 random bits chosen by this server (``web.jwt_tokens``) and only reaches Redis from a token
whose signature was checked, so it cannot name anyone else's token.

Logout writes it; every JWT check reads it (one ``EXISTS``). A Redis that cannot answer makes
the check fail closed: ``StorageError`` → 503 ``storage_unavailable``, never a revoked token
let through. A Redis that *loses* its data (no append-only file, a flush) forgets the list: the
tokens logged out before come back until they expire. Run Redis durable (as the chat
histories want anyway); a password change does not depend on it (``web.jwt_tokens``: the
password stamp lives in MariaDB).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from web.jwt_tokens import TokenClaims
from web.services import Services

EXPIRY_MARGIN = 60.0  # seconds kept past ``exp``


def _key(services: Services, jti: str) -> str:
    return services.storage.redis.key("jwt-revoked", jti)


async def revoke(services: Services, claims: TokenClaims) -> None:
    ttl_ms = int((claims.expires_at + EXPIRY_MARGIN - time.time()) * 1000)
    if ttl_ms > 0:
        await services.storage.redis.execute("SET", _key(services, claims.jti), "1", "PX", ttl_ms)


async def is_revoked(services: Services, claims: TokenClaims) -> bool:
    return bool(await services.storage.redis.execute("EXISTS", _key(services, claims.jti)))


async def revoked_among(services: Services, jtis: Sequence[str]) -> set[str]:
    """Which of many tokens are revoked, in one command (the open ticket sockets' recheck)."""
    if not jtis:
        return set()
    found = await services.storage.redis.execute("MGET", *(_key(services, j) for j in jtis))
    return {jti for jti, mark in zip(jtis, found, strict=True) if mark is not None}
