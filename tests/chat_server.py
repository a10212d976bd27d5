"""A whole server for end-to-end tests: Hypercorn (trio worker) on a free port, the mock
upstream over real HTTP, real Redis and a fresh MariaDB database. Plus a small WebSocket client.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from core.settings import Settings, load_settings
from scripts.mock_upstream import serve_mock_upstream
from web.app import create_app

PASSWORD = "correct horse battery staple"


@dataclass
class ChatServer:
    url: str  # http://127.0.0.1:PORT
    mock_url: str  # http://127.0.0.1:PORT (no /v1)
    settings: Settings
    app: Any

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    @property
    def services(self) -> Any:
        from web.services import SERVICES_EXTENSION

        return self.app.extensions[SERVICES_EXTENSION]

    async def new_user(self, email: str | None = None) -> User:
        email = email or f"u{uuid.uuid4().hex[:10]}@example.com"
        async with httpx.AsyncClient(base_url=self.url) as http:
            r = await http.post("/api/auth/register/email",
                                json={"email": email, "password": PASSWORD})
            assert r.status_code == 201, r.text
            jwt = r.json()["Authorization"]
            r = await http.post("/api/user/apikeys", json={"user_memo": "test"},
                                headers={"Authorization": jwt})
            assert r.status_code == 201, r.text
            key = r.json()
            r = await http.get("/api/user/me", headers={"Authorization": jwt})
            user_id = r.json()["id"]
        return User(email=email, jwt=jwt, access_key=key["access_key"],
                    secret_key=key["secret_key"], key_id=key["id"], user_id=user_id)


@dataclass
class User:
    email: str
    jwt: str
    access_key: str
    secret_key: str
    key_id: int
    user_id: int


def server_settings(db_settings: Settings, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_env": "test",
        "redis_key_prefix": db_settings.redis_key_prefix,
        "database_url": db_settings.database_url,
        "cookie_secure": False,
        "trusted_hosts": ["localhost", "127.0.0.1"],
        "upstream_backoff_base": 0.01,
        "upstream_first_byte_timeout": 2.0,
        "upstream_chunk_gap_timeout": 2.0,
        # Per-user limits off unless a test turns them on (tests/web/test_ws_limits.py): many
        # tests give one user more sessions or messages than a person would.
        "chat_messages_per_minute": 0,
        "chat_answers_at_once": 0,
        "ws_connections_per_key": 0,
        # Sign-in limits likewise (tests/web/test_auth_limits.py): every user registers from
        # 127.0.0.1.
        "login_failures_per_email": 0,
        "login_attempts_per_ip": 0,
        "registrations_per_ip": 0,
    }
    values.update(overrides)
    return load_settings(**values)


@asynccontextmanager
async def running_server(
    db_settings: Settings, *, mock: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[ChatServer]:
    """Mock upstream + the app on Hypercorn, both on free ports, torn down after."""
    async with trio.open_nursery() as nursery:
        mock_port = await nursery.start(
            partial(serve_mock_upstream, "127.0.0.1", 0, **(mock or {"tokens": 8, "delay_ms": 5})))
        mock_url = f"http://127.0.0.1:{mock_port}"
        settings = server_settings(db_settings, openai_base_url=mock_url + "/v1", **overrides)
        app = create_app(settings, shutdown_grace=2.0)
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.graceful_timeout = 1.0
        binds = await nursery.start(partial(serve, app, config, mode="asgi"))
        url = binds[0]
        yield ChatServer(url=url, mock_url=mock_url, settings=settings, app=app)
        nursery.cancel_scope.cancel()


class ChatClient:
    """A WebSocket client speaking PROTOCOL.md, with helpers to read answers."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, msg: str, **extra: Any) -> None:
        await self.ws.send_message(json.dumps({"msg": msg, **extra}))

    async def send_raw(self, data: str) -> None:
        await self.ws.send_message(data)

    async def frame(self, timeout: float = 10) -> dict[str, Any]:
        with trio.fail_after(timeout):
            data = await self.ws.get_message()
        frame: dict[str, Any] = json.loads(data)
        return frame

    async def init(self) -> list[dict[str, Any]]:
        frame = await self.frame()
        assert frame["init"] is True and frame["finish"] is True, frame
        history: list[dict[str, Any]] = json.loads(frame["msg"])
        return history

    async def answer(self, timeout: float = 15) -> tuple[str, dict[str, Any]]:
        """Read deltas up to the answer's last frame; (text, last frame)."""
        parts: list[str] = []
        while True:
            frame = await self.frame(timeout)
            if frame.get("is_user"):
                continue
            if frame["finish"]:
                return "".join(parts), frame
            parts.append(frame["msg"])

    async def events(self, answers: int, timeout: float = 15) -> list[tuple[str, str]]:
        """What this socket saw up to the end of ``answers`` answers, as events: ``("echo",
        text)``, ``("text", deltas joined)`` (each socket may merge deltas differently),
        ``("end", msg)`` for a terminator or reply, ``("error", code)``."""
        seen: list[tuple[str, str]] = []
        while answers:
            frame = await self.frame(timeout)
            if frame.get("is_user"):
                seen.append(("echo", frame["msg"]))
            elif not frame["finish"]:
                if seen and seen[-1][0] == "text":
                    seen[-1] = ("text", seen[-1][1] + frame["msg"])
                else:
                    seen.append(("text", frame["msg"]))
            else:
                error = frame.get("error")
                seen.append(("error", error["code"]) if error else ("end", frame["msg"]))
                answers -= 1
        return seen

    async def until_closed(self, timeout: float = 10) -> tuple[list[dict[str, Any]], int]:
        """Every frame up to the server's close, and the close code."""
        seen: list[dict[str, Any]] = []
        with trio.fail_after(timeout):
            while True:
                try:
                    seen.append(await self.frame(timeout))
                except ConnectionClosed as closed:
                    return seen, closed.reason.code

    async def reply(self) -> dict[str, Any]:
        """The next finished, non-echo frame (a command reply or an error)."""
        while True:
            frame = await self.frame()
            if frame["finish"] and not frame.get("is_user"):
                return frame


@asynccontextmanager
async def chat_socket(server: ChatServer, access_key: str, room: str | None = None,
                      *, read_init: bool = True) -> AsyncIterator[ChatClient]:
    url = f"{server.ws_url}/ws/chatgpt/{access_key}"
    if room is not None:
        url += f"?chat_room_id={room}"
    async with open_websocket_url(url) as ws:
        client = ChatClient(ws)
        if read_init:
            await client.init()
        yield client
