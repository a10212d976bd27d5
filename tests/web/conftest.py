"""Fixtures for the web edge: a real app (real Redis, a fresh MariaDB) and its test client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from argon2 import PasswordHasher
from quart_trio import QuartTrio
from quart_trio.testing import TrioTestApp

from core.settings import Settings, load_settings
from storage.redis_actor import RedisActor
from web.app import create_app

if TYPE_CHECKING:
    from tests.chat_server import ChatServer, User

PASSWORD = "correct horse battery staple"
# Argon2id still, at test cost: the default profile takes ~0.5 s per hash on a loaded 2-core box.
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def web_settings(db_settings: Settings) -> Settings:
    return load_settings(
        api_env="test",
        redis_key_prefix=db_settings.redis_key_prefix,
        database_url=db_settings.database_url,
        cookie_secure=False,
        allowed_origins=["https://app.example.com", "http://localhost:3000"],
        trusted_hosts=["localhost", "127.0.0.1", "*.example.com"],
        trusted_proxies=["10.0.0.0/8"],
        # Sign-in limits off unless a test turns them on (tests/web/test_auth_limits.py):
        # many tests register and sign in over and over from one address.
        login_failures_per_email=0,
        login_attempts_per_ip=0,
        registrations_per_ip=0,
    )


@pytest.fixture
async def app(web_settings: Settings, redis_actor: RedisActor) -> QuartTrio:
    # ``redis_actor`` is here for its clean-up: it deletes every key under the test's prefix.
    return create_app(web_settings, extra_services=(), password_hasher=CHEAP_HASHER)


@pytest.fixture
async def test_app(app: QuartTrio) -> AsyncIterator[TrioTestApp]:
    async with app.test_app() as running:
        yield running


@dataclass
class Client:
    """The Quart test client with the Host header the trusted-host layer wants."""

    inner: object

    async def request(self, method: str, path: str, **kwargs: object):  # type: ignore[no-untyped-def]
        headers = dict(kwargs.pop("headers", None) or {})  # type: ignore[call-overload]
        headers.setdefault("Host", "localhost")
        client = kwargs.pop("client", ("127.0.0.1", 40000))
        return await self.inner.open(  # type: ignore[attr-defined]
            path, method=method, headers=headers, scope_base={"client": client}, **kwargs
        )  # type: ignore[attr-defined]

    async def get(self, path: str, **kw: object):  # type: ignore[no-untyped-def]
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: object):  # type: ignore[no-untyped-def]
        return await self.request("POST", path, **kw)

    async def put(self, path: str, **kw: object):  # type: ignore[no-untyped-def]
        return await self.request("PUT", path, **kw)

    async def delete(self, path: str, **kw: object):  # type: ignore[no-untyped-def]
        return await self.request("DELETE", path, **kw)


@pytest.fixture
def client(test_app: TrioTestApp) -> Client:
    return Client(test_app.test_client())


async def register(client: Client, email: str, password: str = PASSWORD) -> str:
    response = await client.post("/api/auth/register/email", json={"email": email, "password": password})
    assert response.status_code == 201, await response.get_data(as_text=True)
    token: str = (await response.get_json())["Authorization"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": token}


async def new_key(client: Client, token: str, memo: str = "test") -> dict[str, object]:
    response = await client.post("/api/user/apikeys", json={"user_memo": memo}, headers=bearer(token))
    assert response.status_code == 201, await response.get_data(as_text=True)
    body: dict[str, object] = await response.get_json()
    return body


async def error_code(response: object) -> str:
    body = await response.get_json()  # type: ignore[attr-defined]
    assert set(body) >= {"status", "msg", "detail", "code"}, body
    assert body["status"] == response.status_code  # type: ignore[attr-defined]
    code: str = body["code"]
    return code


@pytest.fixture
async def user(server: ChatServer) -> User:
    """A registered user with one API key on the module's ``server`` (a running chat server,
    see tests/chat_server.py); each test_ws_* module defines ``server`` with its settings."""
    return await server.new_user()
