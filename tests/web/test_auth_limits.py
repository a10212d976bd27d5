"""Sign-in throttling through the real app (real Redis, real MariaDB): failed sign-ins per
account, login attempts per client IP, registrations per client IP. Each limit: the N-th
attempt goes through, the N+1-th is a 429 with ``Retry-After`` and the JSON error body, and the
window lets attempts in again once it has moved on. Exact under concurrency, also when the
attempts are split between two app instances sharing Redis (two processes)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from quart_trio import QuartTrio

from core.settings import Settings
from tests.web.conftest import CHEAP_HASHER, PASSWORD, Client, bearer, error_code
from web import auth_limits
from web.app import create_app

WRONG = "not the password at all"
WINDOW = 2.5  # seconds: each test's window, patched over the 5-minute / 1-hour ones


@pytest.fixture(autouse=True)
def short_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_limits, "LOGIN_WINDOW", WINDOW)
    monkeypatch.setattr(auth_limits, "REGISTRATION_WINDOW", WINDOW)


@asynccontextmanager
async def limited_app(web_settings: Settings, **limits: int) -> AsyncIterator[QuartTrio]:
    """The app with sign-in limits turned on (the shared fixtures turn them off)."""
    app = create_app(web_settings.model_copy(update=limits), extra_services=(),
                     password_hasher=CHEAP_HASHER)
    async with app.test_app():
        yield app


@asynccontextmanager
async def limited(web_settings: Settings, **limits: int) -> AsyncIterator[Client]:
    async with limited_app(web_settings, **limits) as app:
        yield Client(app.test_client())


async def login(http: Client, email: str, password: str, **kw: Any) -> Any:
    return await http.post("/api/auth/login/email",
                             json={"email": email, "password": password}, **kw)


async def register(http: Client, email: str, **kw: Any) -> Any:
    return await http.post("/api/auth/register/email",
                             json={"email": email, "password": PASSWORD}, **kw)


async def assert_too_many(response: Any, window: float = WINDOW) -> int:
    """A 429 ``too_many_attempts`` with the JSON body and a whole-second Retry-After."""
    assert response.status_code == 429, await response.get_data(as_text=True)
    assert await error_code(response) == "too_many_attempts"
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= math.ceil(window)
    assert (await response.get_json())["detail"] == {"retry_after": int(retry_after)}
    return int(retry_after)


async def test_failed_logins_per_account(web_settings: Settings, redis_actor: object) -> None:
    """3 failures per window: the right password after 2 failures works and erases nothing;
    the 4th failure is refused, and so is the right password, until the window moves on."""
    async with limited(web_settings, login_failures_per_email=3) as client:
        assert (await register(client, "owner@example.com")).status_code == 201
        assert (await register(client, "other@example.com")).status_code == 201
        for _ in range(2):
            assert (await login(client, "owner@example.com", WRONG)).status_code == 401
        assert (await login(client, "owner@example.com", PASSWORD)).status_code == 200
        assert (await login(client, "owner@example.com", WRONG)).status_code == 401  # the 3rd
        await assert_too_many(await login(client, "owner@example.com", WRONG))
        await assert_too_many(await login(client, "owner@example.com", PASSWORD))
        # Other spellings MariaDB's collation finds as the same account share its counter:
        # case, and accents (each would otherwise be 3 more guesses).
        for spelling in ("OWNER@Example.com", "ownér@example.com", "Öwnèr@example.com"):
            await assert_too_many(await login(client, spelling, WRONG))
        assert (await login(client, "other@example.com", PASSWORD)).status_code == 200
        await trio.sleep(WINDOW + 0.1)
        assert (await login(client, "owner@example.com", PASSWORD)).status_code == 200


async def test_an_unknown_email_is_limited_alike(web_settings: Settings,
                                                 redis_actor: object) -> None:
    """A 429 must not tell whether an account exists."""
    async with limited(web_settings, login_failures_per_email=2) as client:
        for _ in range(2):
            r = await login(client, "nobody@example.com", WRONG)
            assert r.status_code == 401 and await error_code(r) == "invalid_credentials"
        await assert_too_many(await login(client, "nobody@example.com", WRONG))


async def test_30_concurrent_failures_against_10_over_two_processes(
    web_settings: Settings, redis_actor: object
) -> None:
    """Two app instances (as two server processes) on one Redis: exactly 10 password checks."""
    async with (limited(web_settings, login_failures_per_email=10) as one,
                limited(web_settings, login_failures_per_email=10) as two):
        assert (await register(one, "target@example.com")).status_code == 201
        statuses: list[int] = []

        async def attempt(client: Client) -> None:
            statuses.append((await login(client, "target@example.com", WRONG)).status_code)

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(attempt, (one, two)[i % 2])
        assert sorted(statuses) == [401] * 10 + [429] * 20
        await assert_too_many(await login(two, "target@example.com", PASSWORD))


async def test_login_attempts_per_ip(web_settings: Settings, redis_actor: object) -> None:
    """Every attempt counts, right or wrong; the address is the request state's (the
    X-Forwarded-For client behind a trusted proxy, the peer otherwise)."""
    async with limited(web_settings, login_attempts_per_ip=4) as client:
        assert (await register(client, "ip@example.com")).status_code == 201
        for password in (PASSWORD, WRONG, PASSWORD, WRONG):  # 4 from 127.0.0.1
            assert (await login(client, "ip@example.com", password)).status_code in (200, 401)
        await assert_too_many(await login(client, "ip@example.com", PASSWORD))
        await assert_too_many(await login(client, "someone-else@example.com", PASSWORD))
        other = {"client": ("127.0.0.2", 40000)}
        assert (await login(client, "ip@example.com", PASSWORD, **other)).status_code == 200

        proxy, behind = ("10.0.0.5", 40000), {"X-Forwarded-For": "203.0.113.7"}
        for _ in range(4):
            r = await login(client, "ip@example.com", PASSWORD, client=proxy, headers=behind)
            assert r.status_code == 200
        await assert_too_many(
            await login(client, "ip@example.com", PASSWORD, client=proxy, headers=behind))
        # The proxy's other clients are other addresses...
        r = await login(client, "ip@example.com", PASSWORD, client=proxy,
                        headers={"X-Forwarded-For": "203.0.113.8"})
        assert r.status_code == 200
        # ... but an untrusted peer cannot pick its address: its header is ignored.
        await assert_too_many(await login(client, "ip@example.com", PASSWORD,
                                          headers={"X-Forwarded-For": "198.51.100.1"}))
        await trio.sleep(WINDOW + 0.1)
        assert (await login(client, "ip@example.com", PASSWORD)).status_code == 200


async def test_registrations_per_ip(web_settings: Settings, redis_actor: object) -> None:
    """Attempts count, taken or not (an ``email_exists`` answer too: probing is bounded)."""
    async with limited(web_settings, registrations_per_ip=3) as client:
        assert (await register(client, "r1@example.com")).status_code == 201
        r = await register(client, "r1@example.com")
        assert r.status_code == 400 and await error_code(r) == "email_exists"
        assert (await register(client, "r2@example.com")).status_code == 201
        await assert_too_many(await register(client, "r3@example.com"))
        assert (await register(client, "r3@example.com",
                               client=("127.0.0.2", 1))).status_code == 201
        await trio.sleep(WINDOW + 0.1)
        assert (await register(client, "r4@example.com")).status_code == 201


async def test_concurrent_registrations_per_ip_are_exact(web_settings: Settings,
                                                         redis_actor: object) -> None:
    async with limited(web_settings, registrations_per_ip=5) as client:
        statuses: list[int] = []

        async def attempt(i: int) -> None:
            statuses.append((await register(client, f"burst{i}@example.com")).status_code)

        async with trio.open_nursery() as nursery:
            for i in range(15):
                nursery.start_soon(attempt, i)
        assert sorted(statuses) == [201] * 5 + [429] * 10


async def test_wrong_current_passwords_count_as_failed_sign_ins(
    web_settings: Settings, redis_actor: object
) -> None:
    """A stolen token is no way around the limit: the password change's checks share it."""
    async with limited(web_settings, login_failures_per_email=3) as client:
        token = (await (await register(client, "stolen@example.com")).get_json())["Authorization"]
        body = {"current_password": WRONG, "new_password": "attacker's choice 123"}
        for _ in range(2):
            r = await client.put("/api/user/me/password", json=body, headers=bearer(token))
            assert r.status_code == 403 and await error_code(r) == "wrong_password"
        assert (await login(client, "stolen@example.com", WRONG)).status_code == 401
        await assert_too_many(
            await client.put("/api/user/me/password", json=body, headers=bearer(token)))
        await assert_too_many(await login(client, "stolen@example.com", PASSWORD))
        await trio.sleep(WINDOW + 0.1)
        assert (await login(client, "stolen@example.com", PASSWORD)).status_code == 200

