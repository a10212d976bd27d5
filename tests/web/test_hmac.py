"""HMAC-signed /api/services/* calls with the client-side signer, and access-key auth.

The signature is checked against an independent computation too (``hmac`` + ``hashlib`` +
``base64`` here, and a known answer computed with ``openssl``), not only against the server's
own function; the window is ±``hmac_window_seconds`` (60 s), on the real clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator

import pytest
import trio
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import ApiError
from core.hmac_signing import sign_query_string
from core.secret_box import SecretBox
from core.settings import Settings
from scripts.hmac_sign import main as sign_cli
from scripts.hmac_sign import sign_query
from storage import accounts
from storage.models import ApiKey
from storage.redis_actor import RedisActor
from tests.web.conftest import CHEAP_HASHER, Client, bearer, error_code, new_key, register
from web.app import create_app
from web.auth_keys import authenticate_access_key
from web.services import get_services

# printf '%s' "$KAT_QUERY" | openssl dgst -sha256 -hmac "$KAT_SECRET" -binary | base64
KAT_SECRET = "kat-secret-0123456789"
KAT_ACCESS = "kat-access-key"
KAT_QUERY = "key=kat-access-key&timestamp=1700000000&q=a+b"
KAT_SIGNATURE = "v3snzL074uO/bWp0nxIOqimB4XuhO+5SvldSgj6knsc="


def independent_signature(secret_key: str, query: str) -> str:
    """base64(HMAC-SHA256(secret, query)), written out here rather than imported."""
    digest = hmac.new(secret_key.encode("utf-8"), query.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


@pytest.fixture
async def keyed(client: Client) -> tuple[str, dict[str, object]]:
    token = await register(client, "svc@example.com")
    return token, await new_key(client, token)


async def call(client: Client, key: dict[str, object], secret: str | None = None, **kw: object):  # type: ignore[no-untyped-def]
    query, headers = sign_query(str(key["access_key"]), secret or str(key["secret_key"]), **kw)  # type: ignore[arg-type]
    return await client.get(f"/api/services/?{query}", headers=headers)


async def test_signed_call_and_replay(client: Client, keyed: tuple[str, dict[str, object]]) -> None:
    _, key = keyed
    query, headers = sign_query(
        str(key["access_key"]), str(key["secret_key"]), {"q": "a b&c", "n": 3}, nonce=False
    )
    r = await client.get(f"/api/services/?{query}", headers=headers)
    assert r.status_code == 200 and (await r.get_json()) == {"your_email": "svc@example.com"}
    replay = await client.get(f"/api/services/?{query}", headers=headers)
    assert replay.status_code == 401 and await error_code(replay) == "signature_replayed"
    # a new signature (another timestamp or parameter) is fine
    assert (await call(client, key, params={"n": 4})).status_code == 200


async def test_skew_wrong_secret_and_tampering(client: Client, keyed: tuple[str, dict[str, object]], web_settings: Settings) -> None:
    _, key = keyed
    window = web_settings.hmac_window_seconds
    old = await call(client, key, now=time.time() - window - 5)
    assert old.status_code == 401 and await error_code(old) == "timestamp_skew"
    future = await call(client, key, now=time.time() + window + 5)
    assert future.status_code == 401 and await error_code(future) == "timestamp_skew"
    assert (await call(client, key, now=time.time() - window + 5)).status_code == 200
    wrong = await call(client, key, secret="not-the-secret")
    assert wrong.status_code == 401 and await error_code(wrong) == "signature_invalid"
    query, headers = sign_query(str(key["access_key"]), str(key["secret_key"]), {"amount": "1"})
    assert "amount=1" in query
    tampered = await client.get(f"/api/services/?{query.replace('amount=1', 'amount=9')}", headers=headers)
    assert tampered.status_code == 401 and await error_code(tampered) == "signature_invalid"
    unknown = await call(client, {"access_key": "no-such-key", "secret_key": "x"})
    assert unknown.status_code == 401 and await error_code(unknown) == "signature_invalid"


async def test_missing_parts(client: Client, keyed: tuple[str, dict[str, object]]) -> None:
    _, key = keyed
    query, headers = sign_query(str(key["access_key"]), str(key["secret_key"]), nonce=False)
    for path, hdrs in [
        (f"/api/services/?{query}", {}),
        ("/api/services/", headers),
        (f"/api/services/?key={key['access_key']}", headers),
        (f"/api/services/?{query}&key=again", headers),
    ]:
        r = await client.get(path, headers=hdrs)
        assert r.status_code == 401 and await error_code(r) == "signature_missing", path
    r = await client.get(f"/api/services/?key={key['access_key']}&timestamp=soon", headers=headers)
    assert r.status_code == 401 and await error_code(r) == "timestamp_invalid"


async def test_key_and_owner_status_and_allow_list(client: Client, keyed: tuple[str, dict[str, object]], app: object) -> None:
    token, key = keyed
    key_path = f"/api/user/apikeys/{key['id']}"
    await client.put(key_path, json={"status": "disabled"}, headers=bearer(token))
    r = await call(client, key)
    assert r.status_code == 403 and await error_code(r) == "key_disabled"
    await client.put(key_path, json={"status": "active"}, headers=bearer(token))
    assert (await call(client, key)).status_code == 200

    await client.post(f"{key_path}/whitelists", json={"ip_addr": "203.0.113.0/24"}, headers=bearer(token))
    r = await call(client, key)  # the test client comes from 127.0.0.1
    assert r.status_code == 403 and await error_code(r) == "ip_not_allowed"
    query, headers = sign_query(str(key["access_key"]), str(key["secret_key"]))
    inside = await client.get(f"/api/services/?{query}", headers=headers, client=("203.0.113.9", 1234))
    assert inside.status_code == 200
    # X-Forwarded-For counts only from a trusted proxy (10.0.0.0/8 in the test settings)
    query, headers = sign_query(str(key["access_key"]), str(key["secret_key"]))
    spoofed = await client.get(f"/api/services/?{query}", headers={**headers, "X-Forwarded-For": "203.0.113.9"})
    assert spoofed.status_code == 403
    query, headers = sign_query(str(key["access_key"]), str(key["secret_key"]))
    proxied = await client.get(
        f"/api/services/?{query}", headers={**headers, "X-Forwarded-For": "203.0.113.9, 10.1.1.1"},
        client=("10.0.0.1", 1234),
    )
    assert proxied.status_code == 200

    me = await (await client.get("/api/user/me", headers=bearer(token))).get_json()
    await accounts.set_user_status(get_services(app).storage.sql, me["id"], "blocked")
    r = await call(client, key)
    assert r.status_code == 403 and await error_code(r) == "user_blocked"


async def test_authenticate_access_key(client: Client, keyed: tuple[str, dict[str, object]], app: object) -> None:
    token, key = keyed
    services = get_services(app)
    authed = await authenticate_access_key(services, str(key["access_key"]), "127.0.0.1")
    assert (authed.email, authed.key_id) == ("svc@example.com", key["id"])
    for bad in ["nope", "", "x" * 500]:
        with pytest.raises(ApiError) as info:
            await authenticate_access_key(services, bad, "127.0.0.1")
        assert (info.value.status, info.value.code) == (403, "key_invalid")
    await client.post(f"/api/user/apikeys/{key['id']}/whitelists", json={"ip_addr": "::1"}, headers=bearer(token))
    assert (await authenticate_access_key(services, str(key["access_key"]), "::1")).key_id == key["id"]
    with pytest.raises(ApiError) as info:
        await authenticate_access_key(services, str(key["access_key"]), "127.0.0.1")
    assert info.value.code == "ip_not_allowed"
    await client.delete(f"/api/user/apikeys/{key['id']}", headers=bearer(token))
    with pytest.raises(ApiError) as info:
        await authenticate_access_key(services, str(key["access_key"]), "::1")
    assert (info.value.status, info.value.code) == (403, "key_disabled")


def test_signer_cli(capsys: pytest.CaptureFixture[str]) -> None:
    sign_cli(["AK", "SK", "a=1"])
    query, header = capsys.readouterr().out.splitlines()
    assert query.startswith("key=AK&timestamp=") and "&a=1&nonce=" in query
    assert header.startswith("secret: ")
    sign_cli(["AK", "SK", "--url", "http://127.0.0.1:8000/api/services/"])
    assert capsys.readouterr().out.startswith("curl -H 'secret: ")


def test_known_answer_vector() -> None:
    assert independent_signature(KAT_SECRET, KAT_QUERY) == KAT_SIGNATURE
    assert sign_query_string(KAT_SECRET, KAT_QUERY) == KAT_SIGNATURE  # what the server checks
    assert sign_query_string(KAT_SECRET, KAT_QUERY.encode()) == KAT_SIGNATURE
    query, headers = sign_query(KAT_ACCESS, KAT_SECRET, {"q": "a b"}, now=1700000000.9, nonce=False)
    assert (query, headers) == (KAT_QUERY, {"secret": KAT_SIGNATURE})  # the client signer


async def key_with_secret(client: Client, app: object, email: str, secret_key: str) -> str:
    """A new key whose secret is ``secret_key`` (set in the database, encrypted as the server
    stores it); its access key."""
    token = await register(client, email)
    key = await new_key(client, token)
    box = SecretBox.from_settings(get_services(app).settings)

    async def set_secret(session: AsyncSession) -> None:
        row = await session.get(ApiKey, key["id"])
        assert row is not None
        row.secret_key = box.encrypt(secret_key, accounts.secret_context(row.user_id,
                                                                         row.access_key))

    await get_services(app).storage.sql.run(set_secret)
    return str(key["access_key"])


async def call_signed_at(client: Client, access_key: str, timestamp: int, extra: str = ""):  # type: ignore[no-untyped-def]
    query = f"key={access_key}&timestamp={timestamp}{extra}"
    headers = {"secret": independent_signature(KAT_SECRET, query)}
    return await client.get(f"/api/services/?{query}", headers=headers)


async def whole_second() -> int:
    """The current unix second, early in it (so that a request sent now lands in it too)."""
    if time.time() % 1 > 0.5:
        await trio.sleep(1.01 - time.time() % 1)
    return int(time.time())


async def test_an_independently_signed_query_is_accepted(client: Client, app: object) -> None:
    access = await key_with_secret(client, app, "kat@example.com", KAT_SECRET)
    r = await call_signed_at(client, access, int(time.time()), "&q=a%20b&n=%C3%A9")
    assert r.status_code == 200 and (await r.get_json()) == {"your_email": "kat@example.com"}
    # the signature covers the bytes as sent: the same query re-encoded is another query
    query = f"key={access}&timestamp={int(time.time())}&q=a%20b"
    headers = {"secret": independent_signature(KAT_SECRET, query.replace("%20", "+"))}
    r = await client.get(f"/api/services/?{query}", headers=headers)
    assert r.status_code == 401 and await error_code(r) == "signature_invalid"


async def test_window_edges(client: Client, app: object, web_settings: Settings) -> None:
    """+60 s is inside the window, ±61 s outside (the timestamp is in whole seconds)."""
    window = web_settings.hmac_window_seconds
    assert window == 60
    access = await key_with_secret(client, app, "edges@example.com", KAT_SECRET)
    now = await whole_second()
    ahead = await call_signed_at(client, access, now + window)
    assert ahead.status_code == 200, await ahead.get_data(as_text=True)
    for skew in (window + 1, -(window + 1)):
        r = await call_signed_at(client, access, now + skew)
        assert r.status_code == 401 and await error_code(r) == "timestamp_skew", skew


async def test_sixty_seconds_old_is_inside_the_window(client: Client, app: object) -> None:
    access = await key_with_secret(client, app, "old@example.com", KAT_SECRET)
    now = await whole_second()
    behind = await call_signed_at(client, access, now - 60)
    assert behind.status_code == 200, await behind.get_data(as_text=True)


@pytest.fixture
async def one_second_window(web_settings: Settings, redis_actor: RedisActor) -> AsyncIterator[tuple[Client, object]]:
    settings = web_settings.model_copy(update={"hmac_window_seconds": 1})
    app = create_app(settings, extra_services=(), password_hasher=CHEAP_HASHER)
    async with app.test_app() as running:
        yield Client(running.test_client()), app


async def test_a_replay_after_the_window_is_refused(
    one_second_window: tuple[Client, object], redis_actor: RedisActor
) -> None:
    """Once the window is over, the used-signature record expires (after 2 x window); the
    timestamp alone still refuses the replay."""
    client, app = one_second_window
    access = await key_with_secret(client, app, "replay@example.com", KAT_SECRET)
    now = await whole_second()
    assert (await call_signed_at(client, access, now)).status_code == 200
    pattern = redis_actor.key("hmac-nonce", "*")
    assert len(await redis_actor.execute("KEYS", pattern)) == 1  # the used signature, remembered
    at_once = await call_signed_at(client, access, now)
    assert at_once.status_code == 401 and await error_code(at_once) == "signature_replayed"
    await trio.sleep(now + 2.5 - time.time())  # the nonce's EX is 2 s
    assert await redis_actor.execute("KEYS", pattern) == []  # forgotten
    later = await call_signed_at(client, access, now)
    assert later.status_code == 401 and await error_code(later) == "timestamp_skew"
