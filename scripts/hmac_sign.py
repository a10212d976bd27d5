"""Client-side signer for ``/api/services/*`` calls.

    from scripts.hmac_sign import sign_query
    query, headers = sign_query(access_key, secret_key, {"foo": "bar"})
    httpx.get(f"{base}/api/services/?{query}", headers=headers)

The query string is built once (``key``, ``timestamp``, then your parameters, URL-encoded) and
the signature covers exactly those bytes, so send the query string as returned: re-encoding it
(a client that sorts or re-quotes parameters) breaks the signature. A signature is accepted once
and only within the server's window (±60 s by default): sign each request anew.

CLI::

    python -m scripts.hmac_sign ACCESS_KEY SECRET_KEY [name=value ...]
    # prints the query string and the header; with --url BASE prints a ready curl command
"""

from __future__ import annotations

import argparse
import secrets
import shlex
import time
from collections.abc import Mapping, Sequence
from urllib.parse import urlencode

from core.hmac_signing import sign_query_string

SIGNATURE_HEADER = "secret"


def signature(secret_key: str, query_string: str) -> str:
    """base64(HMAC-SHA256(secret_key, query string bytes)): the server's own function."""
    return sign_query_string(secret_key, query_string)


def sign_query(
    access_key: str,
    secret_key: str,
    params: Mapping[str, str | int] | Sequence[tuple[str, str | int]] | None = None,
    now: float | None = None,
    nonce: bool = True,
) -> tuple[str, dict[str, str]]:
    """``(query_string, headers)`` for one signed call made at ``now`` (default: the clock).

    The server accepts each signature once; with ``nonce`` (the default) a random ``nonce``
    parameter makes two identical calls within the same second differ.
    """
    timestamp = int(time.time() if now is None else now)
    extra = list(params.items()) if isinstance(params, Mapping) else list(params or [])
    if nonce:
        extra.append(("nonce", secrets.token_hex(8)))
    query = urlencode([("key", access_key), ("timestamp", str(timestamp)), *extra])
    return query, {SIGNATURE_HEADER: signature(secret_key, query)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Sign an /api/services/* query string.")
    parser.add_argument("access_key")
    parser.add_argument("secret_key")
    parser.add_argument("params", nargs="*", help="extra name=value query parameters")
    parser.add_argument("--url", help="base URL, e.g. http://127.0.0.1:8000/api/services/")
    args = parser.parse_args(argv)
    params = [tuple(p.split("=", 1)) if "=" in p else (p, "") for p in args.params]
    query, headers = sign_query(args.access_key, args.secret_key, params)
    if args.url:
        url = f"{args.url}?{query}"
        print(f"curl -H {shlex.quote(f'secret: {headers[SIGNATURE_HEADER]}')} {shlex.quote(url)}")
    else:
        print(query)
        print(f"{SIGNATURE_HEADER}: {headers[SIGNATURE_HEADER]}")


if __name__ == "__main__":
    main()
