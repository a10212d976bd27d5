"""core.secret_box: AES-256-GCM at rest, the stored format, key ids, the local/test KDF.

The format and the KDF are checked against independent computations (``AESGCM`` called on the
documented layout by hand, RFC 5869 HKDF written out with ``hmac``), not only round trips.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.errors import ChatServerError, ConfigError, SecretKeyInvalid, SecretUndecryptable
from core.secret_box import (
    KDF_INFO,
    KDF_SALT,
    KEY_ID_LABEL,
    SecretBox,
    derive_key,
    is_encrypted,
    key_id,
    key_id_of,
    parse_key,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
CONTEXT = b"api_keys.secret_key\n7\naccess-key-of-row-7"
SECRET = secrets.token_urlsafe(30)  # what storage.accounts generates: 40 characters
FORMAT = re.compile(r"sb1:([0-9a-f]{8}):([A-Za-z0-9_-]+)")


def test_the_stored_value_is_the_documented_format() -> None:
    value = SecretBox(KEY_A).encrypt(SECRET, CONTEXT)
    match = FORMAT.fullmatch(value)
    assert match is not None, value
    assert SECRET not in value and len(value) == 104  # the column holds 255
    kid, body = match.groups()
    assert kid == hmac.new(KEY_A, KEY_ID_LABEL, hashlib.sha256).hexdigest()[:8] == key_id(KEY_A)
    blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    nonce, sealed = blob[:12], blob[12:]
    # decrypted here by hand: AES-256-GCM, associated data = header + context
    plain = AESGCM(KEY_A).decrypt(nonce, sealed, f"sb1:{kid}:".encode() + CONTEXT)
    assert plain.decode() == SECRET
    assert is_encrypted(value) and key_id_of(value) == kid
    assert not is_encrypted(SECRET) and key_id_of(SECRET) is None


def test_round_trip_with_a_fresh_nonce_each_time() -> None:
    box = SecretBox(KEY_A)
    values = {box.encrypt(SECRET, CONTEXT) for _ in range(200)}
    assert len(values) == 200  # never the same nonce twice
    assert {box.decrypt(v, CONTEXT) for v in values} == {SECRET}
    assert box.decrypt(box.encrypt("é 🔑", CONTEXT), CONTEXT) == "é 🔑"


def test_a_value_bound_to_another_row_does_not_decrypt() -> None:
    box = SecretBox(KEY_A)
    value = box.encrypt(SECRET, CONTEXT)
    for other in (b"api_keys.secret_key\n8\naccess-key-of-row-7",  # another owner
                  b"api_keys.secret_key\n7\naccess-key-of-row-8",  # another key
                  b""):
        with pytest.raises(SecretUndecryptable) as info:
            box.decrypt(value, other)
        assert info.value.reason == "not_authentic" and info.value.key_id == key_id(KEY_A)


def test_any_altered_character_is_refused() -> None:
    box = SecretBox(KEY_A, [KEY_B])
    value = box.encrypt(SECRET, CONTEXT)
    header = len("sb1:xxxxxxxx:")
    for i in range(header, len(value)):
        flipped = "A" if value[i] != "A" else "B"
        altered = value[:i] + flipped + value[i + 1:]
        with pytest.raises(SecretUndecryptable):
            box.decrypt(altered, CONTEXT)
    # the key id is authenticated too: relabelled as the other configured key, it fails
    relabelled = value.replace(key_id(KEY_A), key_id(KEY_B), 1)
    with pytest.raises(SecretUndecryptable) as info:
        box.decrypt(relabelled, CONTEXT)
    assert info.value.reason == "not_authentic"


def test_old_keys_decrypt_by_key_id_and_the_current_key_encrypts() -> None:
    old_value = SecretBox(KEY_A).encrypt(SECRET, CONTEXT)
    rotated = SecretBox(KEY_B, [KEY_A])
    assert rotated.key_ids == (key_id(KEY_B), key_id(KEY_A))
    assert rotated.decrypt(old_value, CONTEXT) == SECRET
    assert not rotated.is_current(old_value)
    new_value = rotated.encrypt(SECRET, CONTEXT)
    assert key_id_of(new_value) == key_id(KEY_B) and rotated.is_current(new_value)
    with pytest.raises(SecretUndecryptable) as info:  # the new key alone: the old value is dead
        SecretBox(KEY_B).decrypt(old_value, CONTEXT)
    assert (info.value.reason, info.value.key_id) == ("unknown_key", key_id(KEY_A))
    assert key_id(KEY_A) in str(info.value) and "SECRETS_OLD_KEYS" in str(info.value)
    assert KEY_A.hex() not in str(info.value)


@pytest.mark.parametrize(("value", "reason"), [
    (SECRET, "clear"),
    ("", "clear"),
    ("sb1:nothex!!:AAAA", "malformed"),
    ("sb1:" + key_id(KEY_A), "malformed"),
    ("sb1:" + key_id(KEY_A) + ":AAAA", "malformed"),  # shorter than nonce + tag
    ("sb1:" + key_id(KEY_A) + ":" + "A" * 40 + "*", "malformed"),
    ("sb1:" + key_id(KEY_A) + ":x:y", "malformed"),
])
def test_values_that_are_not_ciphertexts_are_refused(value: str, reason: str) -> None:
    with pytest.raises(SecretUndecryptable) as info:
        SecretBox(KEY_A).decrypt(value, CONTEXT)
    assert info.value.reason == reason
    assert isinstance(info.value, ChatServerError) and info.value.code == "secret_unavailable"


def test_keys_are_base64url_of_32_bytes() -> None:
    key = secrets.token_bytes(32)
    text = base64.urlsafe_b64encode(key).decode()
    assert parse_key(text) == parse_key(text.rstrip("=")) == parse_key(f" {text}\n") == key
    made = secrets.token_urlsafe(32)  # what the docs tell people to run
    assert len(parse_key(made)) == 32
    for bad in ("", "short", base64.urlsafe_b64encode(b"x" * 31).decode(),
                base64.urlsafe_b64encode(b"x" * 33).decode(), "é" * 43, made[:-1] + "!"):
        with pytest.raises(SecretKeyInvalid) as info:
            parse_key(bad, "SECRETS_KEY")
        assert isinstance(info.value, ConfigError) and "SECRETS_KEY" in str(info.value)
    with pytest.raises(SecretKeyInvalid):
        SecretBox(b"x" * 16)


def test_the_local_key_is_rfc5869_hkdf_of_the_jwt_secret() -> None:
    jwt_secret = "change-me-local-only-jwt-secret-0123456789"
    prk = hmac.new(KDF_SALT, jwt_secret.encode(), hashlib.sha256).digest()  # extract
    okm = hmac.new(prk, KDF_INFO + b"\x01", hashlib.sha256).digest()  # expand, one block
    assert derive_key(jwt_secret) == okm
    assert derive_key(jwt_secret + "x") != okm
