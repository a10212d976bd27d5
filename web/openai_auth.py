"""Authentication of the OpenAI-compatible API: ``Authorization: Bearer <access_key>.<secret_key>``.

The bearer token is one of the user's API keys, access key and secret joined by a dot (neither
contains one: both are URL-safe base64). Checked in this order, so that someone who knows only
an access key (it appears in chat socket URLs) learns nothing about it:

1. the key is read through the key cache (``services.key_cache``, as the chat socket reads it);
   a deleted key is an unknown key;
2. the secret is compared in constant time with the key's plaintext secret, obtained as the
   HMAC check obtains it (``web.auth_keys``: decrypted for this check only; one that does not
   decrypt is a server fault, 503 ``secret_unavailable``); an unknown key is compared with a
   dummy so that it costs the same. Any mismatch: 401 ``invalid_api_key``;
3. then the chat socket's rule (``web.auth_keys.check_key_record``): key status, owner status,
   the key's IP allow-list against the client address → 403 with its code.

Cookies are never credentials here: a browser cannot be made to call ``/v1`` on its user's
behalf.
"""

from __future__ import annotations

import hmac

from core.errors import ApiError
from storage import accounts
from web.auth_keys import AuthedKey, check_key_record, plain_secret
from web.openai_errors import OpenAIError
from web.services import Services

MAX_TOKEN_CHARS = 256
_DUMMY_SECRET = "x" * 40  # an unknown key's secret is compared with this


def _unauthorized(message: str, code: str = "invalid_api_key") -> OpenAIError:
    return OpenAIError(401, message, code=code)


def parse_bearer(header: str | None) -> tuple[str, str]:
    """(access key, secret) of an ``Authorization`` header, or 401."""
    if not header:
        raise _unauthorized("You didn't provide an API key: send 'Authorization: Bearer "
                            "<access_key>.<secret_key>' of one of your API keys.",
                            "missing_api_key")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("The Authorization header must be 'Bearer <access_key>.<secret_key>'.")
    access_key, dot, secret = token.partition(".")
    if not dot or not access_key or not secret or len(token) > MAX_TOKEN_CHARS:
        raise _unauthorized("Incorrect API key provided: use '<access_key>.<secret_key>' of one "
                            "of your API keys.")
    return access_key, secret


async def authenticate_openai_key(
    services: Services, header: str | None, client_ip: str
) -> AuthedKey:
    """The key's owner; ``OpenAIError`` 401 / 403 (503 when the secret cannot be read)."""
    access_key, secret = parse_bearer(header)
    record = None
    if len(access_key) <= 64:
        record = await services.key_cache.get(
            access_key, lambda: accounts.get_key_for_auth(services.storage.sql, access_key))
    if record is not None and record.key.status == "deleted":
        record = None
    try:
        expected = plain_secret(services, record) if record is not None else _DUMMY_SECRET
    except ApiError as exc:  # the secret does not decrypt (logged there)
        raise OpenAIError(exc.status, exc.msg, type="server_error", code=exc.code) from None
    same = hmac.compare_digest(expected.encode(), secret.encode("utf-8", "replace"))
    if not same or record is None:
        raise _unauthorized("Incorrect API key provided.")
    try:
        return check_key_record(record, client_ip)
    except ApiError as exc:
        raise OpenAIError(exc.status, exc.msg, code=exc.code) from None
