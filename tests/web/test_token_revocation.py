"""Revoked JWTs through the real app (real Redis, real MariaDB): logout revokes the token it is
called with, a password change revokes every token issued before it; a revoked token is
refused by every route that takes a JWT (REST, the socket-ticket route, ``/api/auth``'s own)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import jwt
import trio
from quart_trio import QuartTrio

from core.settings import Settings
from storage import accounts
from tests.storage.servers import redis_server
from tests.web.conftest import CHEAP_HASHER, PASSWORD, Client, bearer, error_code, register
from web.access_control import PathClass, classify
from web.app import create_app
from web.jwt_tokens import bearer_value, issue_token
from web.services import get_services
from web.token_revocation import EXPIRY_MARGIN

NEW_PASSWORD = "a brand new passphrase"


async def login(client: Client, email: str, password: str = PASSWORD) -> Any:
    return await client.post("/api/auth/login/email", json={"email": email, "password": password})


async def login_token(client: Client, email: str, password: str = PASSWORD) -> str:
    r = await login(client, email, password)
    assert r.status_code == 200, await r.get_data(as_text=True)
    token: str = (await r.get_json())["Authorization"]
    return token


async def me_status(client: Client, token: str) -> tuple[int, str | None]:
    r = await client.get("/api/user/me", headers=bearer(token))
    return r.status_code, (await error_code(r) if r.status_code != 200 else None)


def jwt_routes(app: QuartTrio) -> list[tuple[str, str]]:
    """(method, path) of every route that takes a JWT: what access control sends to the JWT
    check, and ``/api/auth``'s own signed-in route."""
    routes = [("DELETE", "/api/auth/register")]
    for rule in app.url_map.iter_rules():
        if rule.websocket or classify(rule.rule) is not PathClass.USER:
            continue
        path = re.sub(r"<[^>]+>", "1", rule.rule)
        routes += [(m, path) for m in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})]
    return routes


async def test_logout_revokes_the_token_it_was_called_with(
    client: Client, app: QuartTrio, test_app: Any
) -> None:
    token = await register(client, "logout@example.com")
    device = Client(test_app.test_client())  # another device: its own cookie jar
    other = await login_token(device, "logout@example.com")
    assert await me_status(client, token) == (200, None)
    r = await client.post("/api/auth/logout", headers=bearer(token))
    assert r.status_code == 200 and await r.get_json() == {"logged_out": True}
    assert await me_status(client, token) == (401, "token_revoked")
    assert await me_status(client, other) == (200, None)  # only the token sent
    again = await client.post("/api/auth/logout", headers=bearer(token))
    assert again.status_code == 200  # nothing left to do, not an error

    # Kept until the token expires (and a margin), not for ever.
    claims = jwt.decode(token.removeprefix("Bearer "), options={"verify_signature": False})
    redis = get_services(app).storage.redis
    ttl = await redis.execute("PTTL", redis.key("jwt-revoked", claims["jti"])) / 1000
    expected = claims["exp"] + EXPIRY_MARGIN - time.time()
    assert expected - 5 < ttl <= expected + 1


async def test_a_revoked_token_is_refused_by_every_jwt_route(
    client: Client, app: QuartTrio
) -> None:
    token = await register(client, "everywhere@example.com")
    assert (await client.post("/api/auth/logout", headers=bearer(token))).status_code == 200
    routes = jwt_routes(app)
    assert ("POST", "/api/user/ws-ticket") in routes and ("GET", "/api/user/me") in routes
    for method, path in routes:
        r = await client.request(method, path, headers=bearer(token), json={})
        assert r.status_code == 401, (method, path, r.status_code)
        assert await error_code(r) == "token_revoked", (method, path)
    # The account itself was not touched by the refusals.
    assert await me_status(client, await login_token(client, "everywhere@example.com")) == (
        200, None)


async def test_logout_by_cookie_revokes_the_cookie_token(client: Client) -> None:
    token = await register(client, "cookie-out@example.com")  # the client keeps the cookie
    assert (await client.post("/api/auth/logout")).status_code == 200  # no header: the cookie
    assert await me_status(client, token) == (401, "token_revoked")


async def test_a_password_change_revokes_every_older_token(
    client: Client, app: QuartTrio, web_settings: Settings
) -> None:
    first = await register(client, "change@example.com")
    second = await login_token(client, "change@example.com")
    me = await (await client.get("/api/user/me", headers=bearer(first))).get_json()
    sql = get_services(app).storage.sql
    old_hash = (await accounts.get_user(sql, me["id"])).password_hash  # type: ignore[union-attr]

    r = await client.put("/api/user/me/password", headers=bearer(second),
                         json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert r.status_code == 200, await r.get_data(as_text=True)
    # Issued for the old password, dated after the change: its date does not save it.
    later = bearer_value(issue_token(web_settings, me["id"], old_hash))
    fresh = (await r.get_json())["Authorization"]
    assert r.headers["Set-Cookie"].startswith("Authorization=")
    for old in (first, second, later):  # the same second as the change, or "later"
        assert await me_status(client, old) == (401, "token_revoked")
        ticket = await client.post("/api/user/ws-ticket", headers=bearer(old))
        assert ticket.status_code == 401 and await error_code(ticket) == "token_revoked"
    assert await me_status(client, fresh) == (200, None)
    assert (await client.post("/api/user/ws-ticket", headers=bearer(fresh))).status_code == 201

    old_login = await login(client, "change@example.com")
    assert old_login.status_code == 401 and await error_code(old_login) == "invalid_credentials"
    newest = await login_token(client, "change@example.com", NEW_PASSWORD)
    assert await me_status(client, newest) == (200, None)
    assert await me_status(client, fresh) == (200, None)  # a later sign-in revokes nothing


async def test_a_password_change_needs_the_current_password(client: Client) -> None:
    token = await register(client, "careful@example.com")
    r = await client.put("/api/user/me/password", headers=bearer(token),
                         json={"current_password": "not it at all", "new_password": NEW_PASSWORD})
    assert r.status_code == 403 and await error_code(r) == "wrong_password"
    assert await me_status(client, token) == (200, None)  # nothing changed
    for body in ({"current_password": PASSWORD, "new_password": "short"},  # registration's rule
                 {"current_password": PASSWORD},
                 {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "extra": 1}):
        r = await client.put("/api/user/me/password", headers=bearer(token), json=body)
        assert r.status_code == 422 and await error_code(r) == "validation_error", body
    assert await me_status(client, token) == (200, None)
    assert (await login(client, "careful@example.com")).status_code == 200
    anonymous = await client.put("/api/user/me/password", headers=bearer("Bearer x.y.z"),
                                 json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert anonymous.status_code == 401


async def test_the_new_routes_are_in_the_openapi_schema(client: Client) -> None:
    spec = await (await client.get("/openapi.json")).get_json()
    change = spec["paths"]["/api/user/me/password"]["put"]
    schema = change["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert set(schema["properties"]) == {"current_password", "new_password"}
    assert schema["properties"]["new_password"]["minLength"] == 8
    assert {"200", "401", "403", "409", "422", "429"} <= set(change["responses"])
    for path in ("/api/auth/login/{sns_type}", "/api/auth/register/{sns_type}"):
        assert "429" in spec["paths"][path]["post"]["responses"], path


async def test_without_redis_jwt_checks_and_sign_ins_fail_closed(
    web_settings: Settings, tmp_path: Path
) -> None:
    """Revocation cannot be checked without Redis: 503, never a revoked token let through;
    sign-ins (whose limits live there too) are 503 as well. Back to normal once it is back;
    on a durable Redis (append-only file) the denylist outlives the restart."""
    private = redis_server(tmp_path, durable=True)
    private.start()
    try:
        settings = web_settings.model_copy(update={
            "redis_url": f"redis://127.0.0.1:{private.port}/0", "redis_timeout": 1.0,
            "login_failures_per_email": 10, "login_attempts_per_ip": 50})
        app = create_app(settings, extra_services=(), password_hasher=CHEAP_HASHER)
        async with app.test_app() as running:
            client = Client(running.test_client())
            token = await register(client, "outage@example.com")
            revoked = await login_token(client, "outage@example.com")
            assert (await client.post("/api/auth/logout", headers=bearer(revoked))).status_code == 200
            await trio.to_thread.run_sync(private.kill)
            for response in (await client.get("/api/user/me", headers=bearer(token)),
                             await client.get("/api/user/me", headers=bearer(revoked)),
                             await login(client, "outage@example.com"),
                             await client.post("/api/auth/logout", headers=bearer(token))):
                assert response.status_code == 503
                assert await error_code(response) == "storage_unavailable"
            await trio.to_thread.run_sync(private.start)
            with trio.fail_after(10):
                while (await client.get("/api/user/me", headers=bearer(token))).status_code != 200:
                    await trio.sleep(0.1)
            assert await me_status(client, revoked) == (401, "token_revoked")
    finally:
        private.kill()
