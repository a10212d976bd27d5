"""HMAC-signed /api/services/* calls with the client-side signer, and access-key auth."""

from __future__ import annotations

import time

import pytest

from core.errors import ApiError
from core.settings import Settings
from scripts.hmac_sign import main as sign_cli
from scripts.hmac_sign import sign_query
from storage import accounts
from tests.web.conftest import Client, bearer, error_code, new_key, register
from web.auth_keys import authenticate_access_key
from web.services import get_services


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
