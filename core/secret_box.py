"""Secrets encrypted at rest: AES-256-GCM (``cryptography``) under a server key.

Used for the API keys' ``secret_key`` column: the server must read the secret back (it verifies
HMAC-SHA256 signatures with it), so it is encrypted, not hashed. A stored value is ASCII text::

    sb1:<key id>:<base64url, unpadded, of nonce (12 bytes) || ciphertext || GCM tag (16 bytes)>

- ``sb1`` is the format's version; a value without the ``sb1:`` prefix is not encrypted (the
  secrets this server generates are URL-safe base64 and never contain ``:``);
- the key id is 8 hex digits, the first 4 bytes of HMAC-SHA256(key, ``KEY_ID_LABEL``): it names
  the key that encrypted the value without revealing anything about it, so decryption picks that
  key directly (no trial of every key) and rotation knows which rows are not yet on the current
  key;
- the nonce is 12 random bytes per encryption;
- the associated data is the header ``sb1:<key id>:`` followed by the caller's *context*: for an
  API key its owner's id and its access key (``storage.accounts.secret_context``), so a
  ciphertext copied into another row, or a row given to another user, does not decrypt.

A 40-character secret is stored in 104 characters; the column holds 255.

Keys are 32 random bytes, written as base64url (``SECRETS_KEY``; ``SECRETS_OLD_KEYS`` are accepted
for decryption only, during a rotation). Outside prod an unset ``SECRETS_KEY`` is derived from
``JWT_SECRET`` with HKDF-SHA256 (``derive_key``); while ``SECRETS_KEY`` is set, outside prod, that
derived key stays accepted for decryption, so rows written before it was set can be rotated.

Errors: ``SecretKeyInvalid`` (a ``ConfigError``) for key material that is not 32 bytes of
base64url, ``SecretUndecryptable`` for a value that does not decrypt (unknown key id, altered,
moved, or not in this format).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.errors import SecretKeyInvalid, SecretUndecryptable

if TYPE_CHECKING:
    from core.settings import Settings

VERSION = "sb1"
PREFIX = VERSION + ":"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_ID_LABEL = b"trio-chat-server secret-box key id v1"
#: HKDF parameters of the key derived from JWT_SECRET outside prod (``derive_key``).
KDF_SALT = b"trio-chat-server"
KDF_INFO = b"SECRETS_KEY from JWT_SECRET v1"
NEW_KEY_HINT = "python3 -c \"import secrets; print(secrets.token_urlsafe(32))\""


def parse_key(text: str, name: str = "SECRETS_KEY") -> bytes:
    """The 32 bytes of a base64url key (padding optional); ``SecretKeyInvalid`` naming ``name``."""
    stripped = text.strip()
    try:
        raw = base64.b64decode(stripped + "=" * (-len(stripped) % 4), altchars=b"-_",
                               validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise SecretKeyInvalid(
            f"{name} must be base64url of {KEY_BYTES} random bytes (make one with {NEW_KEY_HINT})")
    return raw


def derive_key(jwt_secret: str) -> bytes:
    """The local/test key when SECRETS_KEY is unset: HKDF-SHA256 (RFC 5869) of the UTF-8 bytes
    of ``jwt_secret``, salt ``KDF_SALT``, info ``KDF_INFO``, 32 bytes."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=KDF_SALT, info=KDF_INFO)
    return hkdf.derive(jwt_secret.encode("utf-8"))


def key_id(key: bytes) -> str:
    """The 8-hex-digit id of ``key`` written in every value it encrypts."""
    return hmac.new(key, KEY_ID_LABEL, hashlib.sha256).hexdigest()[:8]


def is_encrypted(value: str) -> bool:
    """Whether ``value`` is in the encrypted format (else: a secret stored in clear)."""
    return value.startswith(PREFIX)


def key_id_of(value: str) -> str | None:
    """The key id of an encrypted value; None for a value in clear or malformed."""
    if not is_encrypted(value):
        return None
    parts = value.split(":")
    return parts[1] if len(parts) == 3 and _is_key_id(parts[1]) else None


def _is_key_id(text: str) -> bool:
    return len(text) == 8 and all(c in "0123456789abcdef" for c in text)


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64decode(text: str) -> bytes:
    """Unpadded base64url, strictly: any other character is an error (not skipped), and so is
    a non-canonical last character (its unused low bits set: it would decode to the same bytes,
    so an altered value would still open)."""
    if not _B64URL.fullmatch(text):
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != text:
        raise ValueError("not canonical base64url")
    return raw


class SecretBox:
    """Encrypts under the current key; decrypts with the current or an old key (by key id)."""

    def __init__(self, current: bytes, old: Iterable[bytes] = ()) -> None:
        self._keys: dict[str, AESGCM] = {}
        seen: dict[str, bytes] = {}
        for key in (current, *old):
            if len(key) != KEY_BYTES:
                raise SecretKeyInvalid(f"a secrets key must be {KEY_BYTES} bytes")
            kid = key_id(key)
            if kid in seen:
                if not hmac.compare_digest(seen[kid], key):  # two keys, one 32-bit id: 2^-32
                    raise SecretKeyInvalid(f"two secrets keys share the id {kid}: make another")
                continue  # the same key listed twice
            seen[kid] = key
            self._keys[kid] = AESGCM(key)
        self.current_key_id = key_id(current)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        """The box of these settings (cached: the HMAC path asks for it on every call)."""
        return _box_for(settings.secrets_key, tuple(settings.secrets_old_keys),
                        settings.jwt_secret, settings.api_env == "prod")

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Ids of every key this box decrypts with, the current one first."""
        return tuple(self._keys)

    def encrypt(self, plaintext: str, context: bytes) -> str:
        """``plaintext`` encrypted under the current key, bound to ``context``."""
        header = f"{PREFIX}{self.current_key_id}:"
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self.current_key_id].encrypt(
            nonce, plaintext.encode("utf-8"), header.encode("ascii") + context)
        return header + base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")

    def decrypt(self, value: str, context: bytes) -> str:
        """The plaintext of ``value``, or ``SecretUndecryptable`` saying why not."""
        if not is_encrypted(value):
            raise SecretUndecryptable("the stored secret is not encrypted", key_id=None,
                                      reason="clear")
        parts = value.split(":")
        kid = parts[1] if len(parts) == 3 and _is_key_id(parts[1]) else None
        if kid is None:
            raise SecretUndecryptable("the stored secret is malformed", key_id=None,
                                      reason="malformed")
        aead = self._keys.get(kid)
        if aead is None:
            raise SecretUndecryptable(
                f"the stored secret is encrypted under key {kid}, which is neither SECRETS_KEY "
                "nor in SECRETS_OLD_KEYS", key_id=kid, reason="unknown_key")
        try:
            blob = _b64decode(parts[2])
        except (binascii.Error, ValueError):
            blob = b""
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise SecretUndecryptable("the stored secret is malformed", key_id=kid,
                                      reason="malformed")
        header = f"{PREFIX}{kid}:".encode("ascii")
        try:
            plain = aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], header + context)
        except InvalidTag:
            raise SecretUndecryptable(
                f"the stored secret (key {kid}) is not authentic: altered, or moved from "
                "another row", key_id=kid, reason="not_authentic") from None
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:  # authentic, so written by a buggy caller: still refuse
            raise SecretUndecryptable("the stored secret is not UTF-8", key_id=kid,
                                      reason="malformed") from None

    def is_current(self, value: str) -> bool:
        """Whether ``value`` is encrypted under the current key (rotation leaves it alone)."""
        return key_id_of(value) == self.current_key_id


@lru_cache(maxsize=8)
def _box_for(secrets_key: str | None, old_keys: tuple[str, ...], jwt_secret: str,
             prod: bool) -> SecretBox:
    old = [parse_key(text, "SECRETS_OLD_KEYS") for text in old_keys]
    if secrets_key is None:
        if prod:
            raise SecretKeyInvalid(f"SECRETS_KEY is required in prod (make one with "
                                   f"{NEW_KEY_HINT})")
        return SecretBox(derive_key(jwt_secret), old)
    if not prod:
        old.append(derive_key(jwt_secret))
    return SecretBox(parse_key(secrets_key), old)
