"""Authentication with an API key: the WebSocket's access key and HMAC-signed service calls.

``authenticate_access_key`` is what ``/ws/chatgpt/{access_key}`` calls before accepting:
unknown / disabled / deleted key, an owner who is not active, or a client IP outside the key's
allow-list (when it has one) → ``ApiError(403)``.

``authenticate_signed_query`` checks ``/api/services/*`` calls: query ``key=<access key>&
timestamp=<unix seconds>`` (more parameters allowed) and header ``secret: base64(HMAC-SHA256(
secret_key, raw query string exactly as sent))``. Timestamp within ±``hmac_window_seconds``,
constant-time comparison of the header's exact bytes (nothing stripped: ``str.strip`` would drop
``\xa0`` / ``\x85``, which HTTP keeps, and every variant would be a new request), each signed
query accepted once, then the same key / owner / allow-list rules. The replay nonce is built
from server-controlled values only (access key + raw query string, remembered in Redis with
``SET NX EX 2×window``): nothing a client adds to the header can make a used query fresh.

The secret is stored encrypted (``core.secret_box``) and decrypted here, for this check only. A
secret that does not decrypt (encrypted under a key no longer configured, altered, or stored in
clear) is a server-side fault, not the caller's: it is logged (``chat.errors``, with the key's
row id and the key id, never key material) and answered 503 ``secret_unavailable``, as a store
that cannot be read is. Not 401: the signature may well be right, and a client told it is not
would replace a good key while the operator sees nothing; once the key is configured again (see
README, "Rotating secrets") the same client call succeeds.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

from core.errors import ApiError, SecretUndecryptable
from core.hmac_signing import sign_query_string
from core.networks import ip_in, parse_networks
from core.secret_box import SecretBox
from storage import accounts
from web.services import Services
from web.user_status import check_user_status

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
log = logging.getLogger("chat.errors")


@dataclass(frozen=True)
class AuthedKey:
    user_id: int
    email: str
    key_id: int | None  # None: a socket ticket's user, no API key


def check_key_record(record: accounts.KeyAuthRecord | None, client_ip: str) -> AuthedKey:
    """The one rule for a key read from the store; ``ApiError(403)`` when refused."""
    if record is None:
        raise ApiError(403, "key_invalid", "Unknown API key.")
    if record.key.status != "active":
        raise ApiError(403, "key_disabled", "This API key is disabled.")
    check_user_status(record.owner, "key")
    if record.allowed and not ip_in(client_ip, parse_networks(record.allowed)):
        raise ApiError(403, "ip_not_allowed", "This IP address may not use this API key.")
    return AuthedKey(user_id=record.owner.id, email=record.owner.email, key_id=record.key.id)


async def authenticate_access_key(services: Services, access_key: str, client_ip: str) -> AuthedKey:
    """The key's owner, for the WebSocket edge; ``ApiError(403)`` when refused."""
    record = None
    if 0 < len(access_key) <= 64:
        record = await services.key_cache.get(
            access_key, lambda: accounts.get_key_for_auth(services.storage.sql, access_key))
    return check_key_record(record, client_ip)


def _one(params: dict[str, list[str]], name: str) -> str:
    values = params.get(name, [])
    if len(values) != 1 or not values[0]:
        raise ApiError(401, "signature_missing", f"Query parameter '{name}' is required once.")
    return values[0]


def plain_secret(services: Services, record: accounts.KeyAuthRecord) -> str:
    """The key's plaintext secret; ``ApiError(503)`` (logged) when it does not decrypt."""
    try:
        return accounts.reveal_secret(SecretBox.from_settings(services.settings), record.key)
    except SecretUndecryptable as exc:
        log.error("API key id %s: its secret does not decrypt (%s, key id %s): %s; check "
                  "SECRETS_KEY and SECRETS_OLD_KEYS", record.key.id, exc.reason,
                  exc.key_id or "-", exc)
        raise ApiError(503, "secret_unavailable", "The server cannot check this API key's "
                       "signature right now; retry later.") from None


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
    if not _TIMESTAMP.fullmatch(timestamp_text):
        raise ApiError(401, "timestamp_invalid", "'timestamp' must be unix seconds.")
    current = time.time() if now is None else now
    if abs(int(current) - int(timestamp_text)) > settings.hmac_window_seconds:  # whole seconds
        raise ApiError(401, "timestamp_skew", "'timestamp' is outside the allowed window.")

    record = None
    if len(access_key) <= 64:
        record = await accounts.get_key_for_auth(services.storage.sql, access_key)
    expected = sign_query_string(plain_secret(services, record) if record else "", raw_query)
    # The header exactly as received (Quart decodes header bytes as latin-1): no stripping.
    sent = signature.encode("latin-1", errors="replace")
    if not hmac.compare_digest(expected.encode(), sent) or record is None:
        raise ApiError(401, "signature_invalid", "The signature does not match.")

    nonce = hashlib.sha256(access_key.encode() + b"\n" + raw_query).hexdigest()
    redis = services.storage.redis
    mine = secrets.token_hex(8)  # a repeat of this very SET (a reconnect) finds its own mark
    earlier = await redis.execute(
        "SET", redis.key("hmac-nonce", nonce), mine, "NX", "GET", "EX",
        settings.hmac_window_seconds * 2,
    )
    if earlier is not None and earlier != mine:
        raise ApiError(401, "signature_replayed", "This signed request was already used.")
    return check_key_record(record, client_ip)
