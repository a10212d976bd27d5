"""The chat socket's doors: the Origin check (cross-site WebSocket hijacking), single-use socket
tickets instead of a key in the URL, and the open-socket limit per key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest
import trio
from sqlalchemy.engine import make_url
from trio_websocket import ConnectionRejected, open_websocket_url

from core.settings import Settings
from tests.chat_server import ChatClient, ChatServer, User, chat_socket, running_server
from tests.conftest import admin_sql


@pytest.fixture
async def server(db_settings: Settings, redis_actor: object) -> AsyncIterator[ChatServer]:
    async with running_server(db_settings, allowed_origins=["https://app.example.com"],
                              ws_connections_per_key=3, ws_ticket_seconds=1.0,
                              key_cache_seconds=1.0) as running:
        yield running


async def refusal(url: str, headers: list[tuple[bytes, bytes]] | None = None) -> int:
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(url, extra_headers=headers or []):
            pass
    return info.value.status_code


async def opens(url: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    async with open_websocket_url(url, extra_headers=headers or []) as ws:
        await ChatClient(ws).init()


async def test_a_foreign_origin_is_refused_before_the_upgrade(server: ChatServer,
                                                             user: User) -> None:
    url = f"{server.ws_url}/ws/chatgpt/{user.access_key}"
    host = server.url.removeprefix("http://")
    assert await refusal(url, [(b"Origin", b"https://evil.example")]) == 403
    assert await refusal(url, [(b"Origin", b"null")]) == 403  # sandboxed frames, file://
    await opens(url, [(b"Origin", f"http://{host}".encode())])  # the server's own page
    await opens(url, [(b"Origin", b"https://app.example.com")])  # ALLOWED_ORIGINS
    await opens(url)  # scripts and apps send no Origin


async def ticket(server: ChatServer, user: User) -> str:
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.post("/api/user/ws-ticket", headers={"Authorization": user.jwt})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["expires_in"] == 1
    return str(body["ticket"])


async def test_a_ticket_opens_one_socket_once(server: ChatServer, user: User) -> None:
    first = await ticket(server, user)
    url = f"{server.ws_url}/ws/chatgpt?ticket={first}&chat_room_id=5"
    async with open_websocket_url(url) as ws:
        client = ChatClient(ws)
        assert await client.init() == []
        await client.send("via a ticket")
        text, last = await client.answer()
        assert "error" not in last and text
    assert await refusal(url) == 403  # spent
    stale = await ticket(server, user)
    await trio.sleep(1.5)
    assert await refusal(f"{server.ws_url}/ws/chatgpt?ticket={stale}") == 403  # expired
    assert await refusal(f"{server.ws_url}/ws/chatgpt?ticket=made-up") == 403
    assert await refusal(f"{server.ws_url}/ws/chatgpt") == 403
    async with httpx.AsyncClient(base_url=server.url) as http:  # a JWT is required
        assert (await http.post("/api/user/ws-ticket")).status_code == 401
    # The ticket socket chatted in the user's room 5, as a key socket would see it.
    async with chat_socket(server, user.access_key, room="5", read_init=False) as client:
        assert [m["content"] for m in await client.init()][:1] == ["via a ticket"]


async def test_a_ticket_socket_closes_when_its_user_is_blocked(server: ChatServer,
                                                               user: User) -> None:
    url = f"{server.ws_url}/ws/chatgpt?ticket={await ticket(server, user)}"
    async with open_websocket_url(url) as ws:
        client = ChatClient(ws)
        await client.init()
        database = make_url(server.settings.sqlalchemy_url).database
        await trio.to_thread.run_sync(
            admin_sql, server.settings,
            f"UPDATE `{database}`.users SET status = 'blocked' WHERE id = {user.user_id}")
        frames, code = await client.until_closed(5)
    assert frames[-1]["error"]["code"] == "account_closed" and code == 1008


async def test_a_key_holds_at_most_its_limit_of_open_sockets(server: ChatServer,
                                                            user: User) -> None:
    url = f"{server.ws_url}/ws/chatgpt/{user.access_key}"
    async with AsyncExitStack() as stack:
        for room in range(3):
            await stack.enter_async_context(chat_socket(server, user.access_key, room=str(room)))
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(url):
                pass
        assert info.value.status_code == 429
        assert dict(info.value.headers).get(b"retry-after") == b"5"
        other = await server.new_user()  # another key is not affected
        await opens(f"{server.ws_url}/ws/chatgpt/{other.access_key}")
    await opens(url)  # the closed sockets gave their slots back


async def test_logging_out_ends_the_ticket_and_the_socket_it_opened(
    db_settings: Settings, redis_actor: object
) -> None:
    async with running_server(db_settings) as server:  # tickets live 30 s here
        user = await server.new_user()
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.post("/api/user/ws-ticket", headers={"Authorization": user.jwt})
            unspent, used = r.json()["ticket"], None
            r = await http.post("/api/user/ws-ticket", headers={"Authorization": user.jwt})
            used = r.json()["ticket"]
        async with open_websocket_url(f"{server.ws_url}/ws/chatgpt?ticket={used}") as ws:
            client = ChatClient(ws)
            await client.init()
            async with httpx.AsyncClient(base_url=server.url) as http:
                r = await http.post("/api/auth/logout", headers={"Authorization": user.jwt})
                assert r.status_code == 200, r.text
            frames, code = await client.until_closed(5)
        assert frames[-1]["error"]["code"] == "token_revoked" and code == 1008
        # A ticket asked for before the logout (still fresh) is worth nothing after it.
        assert await refusal(f"{server.ws_url}/ws/chatgpt?ticket={unspent}") == 403
        # Key sockets are not a sign-in: the logout leaves them alone.
        async with chat_socket(server, user.access_key) as key_socket:
            await key_socket.send("/ping")
            assert (await key_socket.reply())["msg"] == "pong"
