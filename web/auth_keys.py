"""Authentication with an API key: the WebSocket's access key and HMAC-signed service calls.

``authenticate_access_key`` is what ``/ws/chatgpt/{access_key}`` calls before accepting:
unknown / disabled / deleted key, an owner who is not active, or a client IP outside the key's
allow-list (when it has one) → ``ApiError(403)``.

``authenticate_signed_query`` checks ``/api/services/*`` calls: query ``key=<access key>&
timestamp=<unix seconds>`` (more parameters allowed) and header ``secret: base64(HMAC-SHA256(
secret_key, raw query string exactly as sent))``. Timestamp within ±``hmac_window_seconds``,
constant-time comparison, each (key, timestamp, signature) accepted once (remembered in Redis
with ``SET NX EX 2×window``), then the same key / owner / allow-list rules.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

from core.errors import ApiError
from storage import accounts
from web.services import Services
from web.state import ip_in, parse_networks


@dataclass(frozen=True)
class AuthedKey:
    user_id: int
    email: str
    key_id: int


def sign(secret_key: str, raw_query: bytes) -> str:
    """The signature of a query string: base64 of HMAC-SHA256 keyed with the secret key."""
    digest = hmac.new(secret_key.encode(), raw_query, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _check_key(record: accounts.KeyAuthRecord, client_ip: str) -> AuthedKey:
    if record.key.status != "active":
        raise ApiError(403, "key_disabled", "This API key is disabled.")
    if record.owner.status == "blocked":
        raise ApiError(403, "user_blocked", "This account is blocked.")
    if record.owner.status != "active":
        raise ApiError(403, "user_inactive", "This account is not active.")
    if record.allowed and not ip_in(client_ip, parse_networks(record.allowed)):
        raise ApiError(403, "ip_not_allowed", "This IP address may not use this API key.")
    return AuthedKey(user_id=record.owner.id, email=record.owner.email, key_id=record.key.id)


async def authenticate_access_key(services: Services, access_key: str, client_ip: str) -> AuthedKey:
    """The key's owner, for the WebSocket edge; ``ApiError(403)`` when refused."""
    record = None
    if 0 < len(access_key) <= 64:
        record = await accounts.get_key_for_auth(services.storage.sql, access_key)
    if record is None:
        raise ApiError(403, "key_invalid", "Unknown API key.")
    return _check_key(record, client_ip)


def _one(params: dict[str, list[str]], name: str) -> str:
    values = params.get(name, [])
    if len(values) != 1 or not values[0]:
        raise ApiError(401, "signature_missing", f"Query parameter '{name}' is required once.")
    return values[0]


async def authenticate_signed_query(
    services: Services,
    raw_query: bytes,
    signature: str | None,
    client_ip: str,
    now: float | None = None,
) -> AuthedKey:
    settings = services.settings
    try:
        params = parse_qs(raw_query.decode("ascii"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise ApiError(401, "signature_missing", "The query string is not ASCII.") from None
    access_key = _one(params, "key")
    timestamp_text = _one(params, "timestamp")
    if not signature:
        raise ApiError(401, "signature_missing", "Header 'secret' is required.")
    if not timestamp_text.isdigit() or len(timestamp_text) > 12:
        raise ApiError(401, "timestamp_invalid", "'timestamp' must be unix seconds.")
    current = time.time() if now is None else now
    if abs(current - int(timestamp_text)) > settings.hmac_window_seconds:
        raise ApiError(401, "timestamp_skew", "'timestamp' is outside the allowed window.")

    record = None
    if len(access_key) <= 64:
        record = await accounts.get_key_for_auth(services.storage.sql, access_key)
    expected = sign(record.key.secret_key if record else "", raw_query)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode("latin-1")) or (
        record is None
    ):
        raise ApiError(401, "signature_invalid", "The signature does not match.")

    nonce = hashlib.sha256(f"{access_key}\n{timestamp_text}\n{signature}".encode()).hexdigest()
    redis = services.storage.redis
    fresh = await redis.execute(
        "SET", redis.key("hmac-nonce", nonce), "1", "NX", "EX", settings.hmac_window_seconds * 2
    )
    if not fresh:
        raise ApiError(401, "signature_replayed", "This signed request was already used.")
    return _check_key(record, client_ip)
