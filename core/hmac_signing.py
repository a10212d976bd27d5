"""The signature of an ``/api/services/*`` query string, shared by the server and the signer.

``base64(HMAC-SHA256(secret_key, raw query string bytes))``. Dependency-free on purpose: the
server (``web.auth_keys``) and the client-side signer (``scripts.hmac_sign``) import this one
function, so the two can never disagree.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def sign_query_string(secret_key: str, query: bytes | str) -> str:
    """base64 of HMAC-SHA256 over the query string exactly as sent (``str`` is UTF-8 encoded)."""
    raw = query.encode() if isinstance(query, str) else query
    digest = hmac.new(secret_key.encode(), raw, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")
