"""API keys' secrets encrypted at rest (core/secret_box.py), end to end on the real stack.

The rows are read and written with plain SQL on a connection of their own (what someone holding
a dump or the database's credentials sees and can do), never through the app's models. The
migration and the rotation command run as the subprocesses an operator runs.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from sqlalchemy.engine import make_url

from core.secret_box import SecretBox, key_id, key_id_of, parse_key
from core.settings import Settings
from scripts.hmac_sign import sign_query
from storage import accounts
from storage.migrate import current, downgrade, upgrade
from tests.conftest import admin_sql, database_url
from tests.web.conftest import CHEAP_HASHER, Client, bearer, error_code, new_key, register
from web.app import create_app

ROOT = Path(__file__).resolve().parents[2]
KEY_1 = "a" * 42 + "A"  # base64url of 32 bytes, as SECRETS_KEY takes them
KEY_2 = "b" * 42 + "A"
KEY_3 = "c" * 42 + "A"


@asynccontextmanager
async def serving(settings: Settings, **changes: object) -> AsyncIterator[Client]:
    """A running app on ``settings`` with ``changes`` (SECRETS_KEY, ...), and its client."""
    app = create_app(settings.model_copy(update=changes), extra_services=(),
                     password_hasher=CHEAP_HASHER)
    async with app.test_app() as running:
        yield Client(running.test_client())


def sql(url: str, *statements: str) -> list[tuple[tuple[object, ...], ...]]:
    """Statements on the database of ``url``, on an admin connection of their own."""
    name = make_url(url).database
    return admin_sql(Settings(_env_file=None, api_env="test"),  # type: ignore[call-arg]
                     f"USE `{name}`", *statements)[1:]


async def stored_secret(url: str, key_id_: object) -> str:
    (rows,) = await trio.to_thread.run_sync(
        sql, url, f"SELECT secret_key FROM api_keys WHERE id = {int(str(key_id_))}")
    return str(rows[0][0])


async def signed_call(client: Client, access_key: object, secret: object):  # type: ignore[no-untyped-def]
    query, headers = sign_query(str(access_key), str(secret))
    return await client.get(f"/api/services/?{query}", headers=headers)


async def test_the_secret_is_encrypted_in_the_database_and_still_verifies(
        client: Client, web_settings: Settings) -> None:
    token = await register(client, "at-rest@example.com")
    key = await new_key(client, token)
    plain = str(key["secret_key"])
    stored = await stored_secret(str(web_settings.database_url), key["id"])
    assert stored != plain and plain not in stored
    assert key_id_of(stored) == SecretBox.from_settings(web_settings).current_key_id
    r = await signed_call(client, key["access_key"], plain)
    assert r.status_code == 200 and (await r.get_json()) == {"your_email": "at-rest@example.com"}
    # listing or changing keys shows neither the secret nor its ciphertext
    listed = await client.get("/api/user/apikeys", headers=bearer(token))
    changed = await client.put(f"/api/user/apikeys/{key['id']}", json={"user_memo": "m"},
                               headers=bearer(token))
    for response in (listed, changed):
        text = await response.get_data(as_text=True)
        assert response.status_code == 200 and plain not in text and stored not in text, text
        assert "secret_key" not in text, text


async def test_a_ciphertext_moved_to_another_row_does_not_verify(
        client: Client, web_settings: Settings) -> None:
    url = str(web_settings.database_url)
    alice = await new_key(client, await register(client, "alice@example.com"))
    mallory = await new_key(client, await register(client, "mallory@example.com"))
    # someone with write access to the table copies Alice's ciphertext into Mallory's row...
    await trio.to_thread.run_sync(
        sql, url, f"UPDATE api_keys SET secret_key = '{await stored_secret(url, alice['id'])}' "
                  f"WHERE id = {mallory['id']}")
    stolen = await signed_call(client, mallory["access_key"], alice["secret_key"])
    assert stolen.status_code == 503 and await error_code(stolen) == "secret_unavailable"
    # ...or moves their own key (whose secret they know) to Alice's account
    mallory2 = await new_key(client, await register(client, "mallory2@example.com"))
    (((alice_id,),),) = await trio.to_thread.run_sync(
        sql, url, f"SELECT user_id FROM api_keys WHERE id = {alice['id']}")
    await trio.to_thread.run_sync(
        sql, url, f"UPDATE api_keys SET user_id = {alice_id} WHERE id = {mallory2['id']}")
    moved = await signed_call(client, mallory2["access_key"], mallory2["secret_key"])
    assert moved.status_code == 503 and await error_code(moved) == "secret_unavailable"
    # ...or writes a secret of their choosing in clear
    await trio.to_thread.run_sync(
        sql, url, f"UPDATE api_keys SET secret_key = 'chosen-by-mallory' WHERE id = {alice['id']}")
    chosen = await signed_call(client, alice["access_key"], "chosen-by-mallory")
    assert chosen.status_code == 503 and await error_code(chosen) == "secret_unavailable"


async def test_a_secret_under_an_unknown_key_is_a_logged_503_not_a_500_or_401(
        web_settings: Settings, redis_actor: object, caplog: pytest.LogCaptureFixture) -> None:
    async with serving(web_settings, secrets_key=KEY_1) as client:
        key = await new_key(client, await register(client, "rotated@example.com"))
    stored = await stored_secret(str(web_settings.database_url), key["id"])
    async with serving(web_settings, secrets_key=KEY_2) as client:  # KEY_1 forgotten
        with caplog.at_level(logging.ERROR, logger="chat.errors"):
            r = await signed_call(client, key["access_key"], key["secret_key"])
        assert r.status_code == 503 and r.content_type == "application/json"
        body = await r.get_json()
        assert body["code"] == "secret_unavailable" and body["status"] == 503
        (line,) = [rec.getMessage() for rec in caplog.records if "does not decrypt" in rec.message]
        assert f"API key id {key['id']}" in line and key_id(parse_key(KEY_1)) in line
        for secret in (str(key["secret_key"]), stored, KEY_1, KEY_2):
            assert secret not in line and secret not in await r.get_data(as_text=True)
        # nothing was spent: the same signed call works once the old key is configured again
    async with serving(web_settings, secrets_key=KEY_2, secrets_old_keys=[KEY_1]) as client:
        assert (await signed_call(client, key["access_key"], key["secret_key"])).status_code == 200


@pytest.fixture
def database_at_0001(settings: Settings) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:8]}"
    admin_sql(settings, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        url = database_url(settings, name)
        upgrade(url, "0001")
        yield url
    finally:
        admin_sql(settings, f"DROP DATABASE IF EXISTS `{name}`")


def run_module(module: str, url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m module`` as an operator runs it, its settings from the environment only."""
    base = {**os.environ, "CHAT_ENV_FILE": "", "API_ENV": "test", "DATABASE_URL": url}
    base.pop("MYSQL_ROOT_PASSWORD", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=120, check=False)


async def test_the_migration_encrypts_clear_rows_and_their_signatures_still_verify(
        database_at_0001: str, web_settings: Settings, redis_actor: object) -> None:
    url = database_at_0001
    box = SecretBox(parse_key(KEY_1))
    already = box.encrypt("already-encrypted-secret", accounts.secret_context(1, "ak-done"))
    await trio.to_thread.run_sync(
        sql, url,
        "INSERT INTO users (id, email, status, sns_type, marketing_agree, created_at, updated_at)"
        " VALUES (1, 'old@example.com', 'active', 'email', 0, NOW(), NOW())",
        "INSERT INTO api_keys (id, user_id, access_key, secret_key, status, is_whitelisted,"
        " created_at, updated_at) VALUES"
        " (1, 1, 'ak-clear-1', 'clear-secret-number-one-0123456789abcdef', 'active', 0, NOW(),"
        " NOW()), (2, 1, 'ak-clear-2', 'clear-secret-number-two', 'active', 0, NOW(), NOW())",
    )
    # a row converted before (by hand, or a run cut short) is left as it is: idempotent
    await trio.to_thread.run_sync(
        sql, url, "ALTER TABLE api_keys MODIFY secret_key VARCHAR(255) NOT NULL",
        "INSERT INTO api_keys (id, user_id, access_key, secret_key, status, is_whitelisted,"
        f" created_at, updated_at) VALUES (3, 1, 'ak-done', '{already}', 'active', 0, NOW(),"
        " NOW())")
    done = await trio.to_thread.run_sync(
        lambda: run_module("storage.migrate", url, SECRETS_KEY=KEY_1))
    assert done.returncode == 0, done.stderr
    assert "upgraded to 0003" in done.stdout  # the head, through 0002 (0003: usage tables)
    rows = dict((await trio.to_thread.run_sync(
        sql, url, "SELECT id, secret_key FROM api_keys ORDER BY id"))[0])
    assert rows[3] == already
    for row_id, plain, access in ((1, "clear-secret-number-one-0123456789abcdef", "ak-clear-1"),
                                  (2, "clear-secret-number-two", "ak-clear-2")):
        value = str(rows[row_id])
        assert plain not in value and key_id_of(value) == box.current_key_id
        assert box.decrypt(value, accounts.secret_context(1, access)) == plain
    # the server, with the key from its settings, verifies the original secret
    migrated = web_settings.model_copy(update={"database_url": url})
    async with serving(migrated, secrets_key=KEY_1) as client:
        r = await signed_call(client, "ak-clear-1", "clear-secret-number-one-0123456789abcdef")
        assert r.status_code == 200 and (await r.get_json()) == {"your_email": "old@example.com"}
        wrong = await signed_call(client, "ak-clear-2", "clear-secret-number-one-0123456789abcdef")
        assert wrong.status_code == 401
    # and the downgrade gives the clear rows back
    await trio.to_thread.run_sync(lambda: downgrade(url, "0001", box=box))
    assert await trio.to_thread.run_sync(current, url) == "0001"
    rows = dict((await trio.to_thread.run_sync(
        sql, url, "SELECT id, secret_key FROM api_keys ORDER BY id"))[0])
    assert rows == {1: "clear-secret-number-one-0123456789abcdef",
                    2: "clear-secret-number-two", 3: "already-encrypted-secret"}


async def test_rotation_is_one_command_and_afterwards_only_the_new_key_is_needed(
        web_settings: Settings, redis_actor: object) -> None:
    url = str(web_settings.database_url)
    async with serving(web_settings, secrets_key=KEY_1) as client:
        token = await register(client, "rotate@example.com")
        keys = [await new_key(client, token, f"k{i}") for i in range(3)]
    rotate = ("storage.rotate_secrets", url, "--batch-size", "2")
    done = await trio.to_thread.run_sync(
        lambda: run_module(*rotate, SECRETS_KEY=KEY_2, SECRETS_OLD_KEYS=KEY_1))
    assert done.returncode == 0, done.stderr
    new_id = key_id(parse_key(KEY_2))
    assert done.stdout.strip() == (f"rotate_secrets: SECRETS_KEY {new_id}: 3 rows: 3 "
                                   "re-encrypted, 0 already under it, 0 left (undecryptable or "
                                   "in clear)")
    again = await trio.to_thread.run_sync(
        lambda: run_module(*rotate, SECRETS_KEY=KEY_2, SECRETS_OLD_KEYS=KEY_1))
    assert again.returncode == 0 and "3 rows: 0 re-encrypted, 3 already under it" in again.stdout
    only_new = SecretBox(parse_key(KEY_2))
    for key in keys:
        stored = await stored_secret(url, key["id"])
        assert key_id_of(stored) == new_id and str(key["secret_key"]) not in stored
        record = await accounts_record(url, key)
        assert accounts.reveal_secret(only_new, record) == key["secret_key"]
    async with serving(web_settings, secrets_key=KEY_2) as client:  # the old key is dropped
        for key in keys:
            r = await signed_call(client, key["access_key"], key["secret_key"])
            assert r.status_code == 200, await r.get_data(as_text=True)
    async with serving(web_settings, secrets_key=KEY_1) as client:  # the old key alone: dead
        r = await signed_call(client, keys[0]["access_key"], keys[0]["secret_key"])
        assert r.status_code == 503

    # a row under a key nobody configured, and one in clear: named, left as they were, status 1
    lost = SecretBox(parse_key(KEY_3)).encrypt("x", b"")
    await trio.to_thread.run_sync(
        sql, url, f"UPDATE api_keys SET secret_key = '{lost}' WHERE id = {keys[0]['id']}",
        f"UPDATE api_keys SET secret_key = 'in-clear' WHERE id = {keys[1]['id']}")
    left = await trio.to_thread.run_sync(lambda: run_module(*rotate, SECRETS_KEY=KEY_2))
    assert left.returncode == 1, left.stderr
    assert "3 rows: 0 re-encrypted, 1 already under it, 2 left" in left.stdout
    assert f"api_keys id {keys[0]['id']}: " in left.stderr and key_id(parse_key(KEY_3)) in left.stderr
    assert f"api_keys id {keys[1]['id']}: stored in clear" in left.stderr
    assert await stored_secret(url, keys[0]["id"]) == lost
    assert await stored_secret(url, keys[1]["id"]) == "in-clear"


async def accounts_record(url: str, key: dict[str, object]) -> accounts.ApiKeyRecord:
    """The stored key as ``storage.accounts`` returns it (read with plain SQL here)."""
    (rows,) = await trio.to_thread.run_sync(
        sql, url, "SELECT user_id, access_key, secret_key, created_at FROM api_keys "
                  f"WHERE id = {int(str(key['id']))}")
    user_id, access_key, secret_key, created = rows[0]
    return accounts.ApiKeyRecord(
        id=int(str(key["id"])), user_id=int(str(user_id)), access_key=str(access_key),
        secret_key=str(secret_key), user_memo=None, status="active", is_whitelisted=False,
        created_at=created, updated_at=created)  # type: ignore[arg-type]


def test_the_rotation_command_refuses_a_database_not_migrated(database_at_0001: str) -> None:
    done = run_module("storage.rotate_secrets", database_at_0001, SECRETS_KEY=KEY_2)
    assert done.returncode == 2 and "python -m storage.migrate" in done.stderr, done.stderr
