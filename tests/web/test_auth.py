"""Register / login, JWT checks on every request (forgery, expiry, user status)."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime

import jwt
import pytest
import trio

from core.errors import ApiError
from core.settings import Settings
from scripts.hmac_sign import sign_query
from storage import accounts
from tests.web.conftest import PASSWORD, Client, bearer, error_code, new_key, register
from web.jwt_tokens import issue_token
from web.services import get_services
from web.user_status import Context, check_user_status


async def test_register_returns_token_and_cookie(client: Client) -> None:
    r = await client.post("/api/auth/register/email", json={"email": "new@example.com", "password": PASSWORD})
    assert r.status_code == 201
    token = (await r.get_json())["Authorization"]
    assert token.startswith("Bearer ")
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("Authorization=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # cookie_secure=False in the test settings
    me = await client.get("/api/user/me", headers=bearer(token))
    assert me.status_code == 200 and (await me.get_json())["email"] == "new@example.com"


async def test_cookie_is_secure_by_default(db_settings: Settings, redis_actor: object) -> None:
    from web.app import create_app

    app = create_app(db_settings, extra_services=())
    async with app.test_app() as running:
        r = await Client(running.test_client()).post(
            "/api/auth/register/email", json={"email": "s@example.com", "password": PASSWORD}
        )
        assert r.status_code == 201 and "Secure" in r.headers["Set-Cookie"]


async def test_login(client: Client) -> None:
    await register(client, "login@example.com")
    r = await client.post("/api/auth/login/email", json={"email": "login@example.com", "password": PASSWORD})
    assert r.status_code == 200
    token = (await r.get_json())["Authorization"]
    assert (await client.get("/api/user/me", headers=bearer(token))).status_code == 200
    assert "HttpOnly" in r.headers["Set-Cookie"]


async def test_login_failures(client: Client) -> None:
    await register(client, "who@example.com")
    wrong = await client.post("/api/auth/login/email", json={"email": "who@example.com", "password": "wrong-password"})
    assert wrong.status_code == 401 and await error_code(wrong) == "invalid_credentials"
    nobody = await client.post("/api/auth/login/email", json={"email": "nobody@example.com", "password": PASSWORD})
    assert nobody.status_code == 401 and await error_code(nobody) == "invalid_credentials"


async def test_register_validation(client: Client) -> None:
    short = await client.post("/api/auth/register/email", json={"email": "a@example.com", "password": "short"})
    assert short.status_code == 422 and await error_code(short) == "validation_error"
    assert [d["field"] for d in (await short.get_json())["detail"]] == ["password"]
    bad = await client.post("/api/auth/register/email", json={"email": "not-an-email", "password": PASSWORD})
    assert bad.status_code == 422
    assert [d["field"] for d in (await bad.get_json())["detail"]] == ["email"]
    missing = await client.post("/api/auth/register/email", json={"password": PASSWORD})
    assert missing.status_code == 422 and "email" in (await missing.get_json())["msg"]
    malformed = await client.post(
        "/api/auth/register/email", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400 and await error_code(malformed) == "malformed_json"


async def test_sns_types(client: Client) -> None:
    body = {"email": "sns@example.com", "password": PASSWORD}
    for sns in ("google", "facebook", "kakao"):
        r = await client.post(f"/api/auth/register/{sns}", json=body)
        assert r.status_code == 400 and await error_code(r) == "sns_not_supported"
    r = await client.post("/api/auth/login/myspace", json=body)
    assert r.status_code == 400 and await error_code(r) == "sns_type_invalid"


async def test_existing_email(client: Client) -> None:
    await register(client, "dup@example.com")
    again = await client.post("/api/auth/register/email", json={"email": "dup@example.com", "password": PASSWORD})
    assert again.status_code == 400 and await error_code(again) == "email_exists"
    upper = await client.post("/api/auth/register/email", json={"email": "DUP@example.com", "password": PASSWORD})
    assert upper.status_code == 400 and await error_code(upper) == "email_exists"


async def test_twenty_concurrent_registrations_one_wins(client: Client) -> None:
    statuses: list[int] = []
    codes: list[str] = []

    async def one() -> None:
        r = await client.post("/api/auth/register/email", json={"email": "race@example.com", "password": PASSWORD})
        statuses.append(r.status_code)
        if r.status_code != 201:
            codes.append(await error_code(r))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(one)
    assert sorted(statuses) == [201] + [400] * 19
    assert set(codes) == {"email_exists"}


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_jwt_forgeries_are_refused(client: Client, web_settings: Settings) -> None:
    token = (await register(client, "forge@example.com")).removeprefix("Bearer ")
    real = jwt.decode(token, options={"verify_signature": False})
    user_id = real["sub"]
    now = int(time.time())
    claims = {**real, "iat": now, "exp": now + 600}  # a forgery differs only in what it forges
    header, _payload, signature = token.split(".")
    forgeries = {
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "hs512": jwt.encode(claims, web_settings.jwt_secret, algorithm="HS512"),
        "wrong_secret": jwt.encode(claims, "x" * 40, algorithm="HS256"),
        "tampered": f"{header}.{_b64({**claims, 'sub': '999'})}.{signature}",
        "garbage": "not.a.jwt",
        "no_sub": jwt.encode({"iat": now, "exp": now + 60}, web_settings.jwt_secret, algorithm="HS256"),
        "no_exp": jwt.encode({"sub": user_id, "iat": now}, web_settings.jwt_secret, algorithm="HS256"),
        # The older format: no jti (logout could not revoke it), no password stamp.
        "no_jti_no_pwd": jwt.encode({"sub": user_id, "iat": now, "exp": now + 600},
                                    web_settings.jwt_secret, algorithm="HS256"),
        "no_jti": jwt.encode({k: v for k, v in claims.items() if k != "jti"},
                             web_settings.jwt_secret, algorithm="HS256"),
        "no_pwd": jwt.encode({k: v for k, v in claims.items() if k != "pwd"},
                             web_settings.jwt_secret, algorithm="HS256"),
    }
    for name, forged in forgeries.items():
        r = await client.get("/api/user/me", headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401, name
        assert await error_code(r) == "invalid_token", name
    expired = jwt.encode(
        {**real, "iat": now - 7200, "exp": now - 3600}, web_settings.jwt_secret, algorithm="HS256"
    )
    r = await client.get("/api/user/me", headers=bearer(f"Bearer {expired}"))
    assert r.status_code == 401 and await error_code(r) == "token_expired"


async def test_token_from_cookie_and_missing_token(client: Client, test_app: object) -> None:
    await register(client, "cookie@example.com")
    # The test client kept the cookie set by register: that alone authenticates.
    assert (await client.get("/api/user/me")).status_code == 200
    fresh = Client(test_app.test_client())  # type: ignore[attr-defined]
    none = await fresh.get("/api/user/me")
    assert none.status_code == 401 and await error_code(none) == "not_authenticated"


async def test_user_status_checked_on_every_request(client: Client, app: object) -> None:
    token = await register(client, "status@example.com")
    me = await (await client.get("/api/user/me", headers=bearer(token))).get_json()
    sql = get_services(app).storage.sql
    await accounts.set_user_status(sql, me["id"], "blocked")
    r = await client.get("/api/user/me", headers=bearer(token))
    assert r.status_code == 403 and await error_code(r) == "user_blocked"
    login = await client.post("/api/auth/login/email", json={"email": "status@example.com", "password": PASSWORD})
    assert login.status_code == 403
    await accounts.set_user_status(sql, me["id"], "deleted")
    r = await client.get("/api/user/me", headers=bearer(token))
    assert r.status_code == 401 and await error_code(r) == "user_deleted"
    login = await client.post("/api/auth/login/email", json={"email": "status@example.com", "password": PASSWORD})
    assert login.status_code == 401 and await error_code(login) == "invalid_credentials"


def _user(status: str) -> accounts.UserRecord:
    now = datetime(2025, 1, 1)
    return accounts.UserRecord(
        id=1, email="u@example.com", password_hash=None, name=None, phone_number=None,
        profile_img=None, sns_type="email", status=status, marketing_agree=False,
        created_at=now, updated_at=now,
    )


@pytest.mark.parametrize(("status", "context", "expected"), [
    (None, "token", (401, "user_not_found")),
    (None, "login", (401, "invalid_credentials")),
    ("deleted", "token", (401, "user_deleted")),
    ("deleted", "key", (403, "user_deleted")),
    ("deleted", "login", (401, "invalid_credentials")),
    ("blocked", "token", (403, "user_blocked")),
    ("blocked", "key", (403, "user_blocked")),
    ("blocked", "login", (403, "user_blocked")),
])
def test_one_user_status_rule_for_every_way_in(status: str | None, context: Context,
                                               expected: tuple[int, str]) -> None:
    user = None if status is None else _user(status)
    with pytest.raises(ApiError) as info:
        check_user_status(user, context)
    assert (info.value.status, info.value.code) == expected
    active = _user("active")
    assert check_user_status(active, context) is active


async def test_token_for_unknown_user(client: Client, web_settings: Settings) -> None:
    r = await client.get("/api/user/me", headers=bearer("Bearer " + issue_token(web_settings, 424242, None)))
    assert r.status_code == 401 and await error_code(r) == "user_not_found"


async def test_logout_expires_the_cookie(client: Client) -> None:
    await register(client, "bye@example.com")
    r = await client.post("/api/auth/logout")
    assert r.status_code == 200 and (await r.get_json()) == {"logged_out": True}
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("Authorization=;") and "Max-Age=0" in cookie


async def test_unregister_as_the_original_server(client: Client, test_app: object) -> None:
    """``DELETE /api/auth/register``: the original's way to delete the signed-in account."""
    token = await register(client, "leaving@example.com")
    key = await new_key(client, token)
    query, headers = sign_query(str(key["access_key"]), str(key["secret_key"]))
    assert (await client.get(f"/api/services/?{query}", headers=headers)).status_code == 200
    anonymous = Client(test_app.test_client())  # type: ignore[attr-defined]
    refused = await anonymous.delete("/api/auth/register")
    assert refused.status_code == 401 and await error_code(refused) == "not_authenticated"
    forged = await anonymous.delete("/api/auth/register", headers=bearer("Bearer not.a.jwt"))
    assert forged.status_code == 401 and await error_code(forged) == "invalid_token"

    r = await client.delete("/api/auth/register", headers=bearer(token))
    assert r.status_code == 204 and await r.get_data() == b""
    again = await client.get("/api/user/me", headers=bearer(token))
    assert again.status_code == 401 and await error_code(again) == "user_deleted"
    query, headers = sign_query(str(key["access_key"]), str(key["secret_key"]))
    assert (await client.get(f"/api/services/?{query}", headers=headers)).status_code == 403
    login = await client.post("/api/auth/login/email",
                              json={"email": "leaving@example.com", "password": PASSWORD})
    assert login.status_code == 401
