"""An open socket loses the right to chat with its key or account: a last error frame with
``close: true`` (``key_revoked`` / ``account_closed``), then the close; nothing of a deleted
account comes back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio
from sqlalchemy.engine import make_url
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from core.settings import Settings
from tests.chat_server import ChatClient, ChatServer, User, chat_socket, running_server
from tests.conftest import admin_sql

CLOSE_POLICY = 1008


@pytest.fixture
async def server(db_settings: Settings, redis_actor: object) -> AsyncIterator[ChatServer]:
    # A change made outside this process is seen within KEY_CACHE_SECONDS.
    async with running_server(db_settings, key_cache_seconds=1.0) as running:
        yield running


async def assert_revoked(client: ChatClient, code: str, timeout: float = 3.0) -> None:
    seen, close_code = await client.until_closed(timeout)
    assert seen, "the socket closed without an error frame"
    last = seen[-1]
    assert last["finish"] is True and last["error"]["code"] == code, last
    assert last["error"]["close"] is True
    assert close_code == CLOSE_POLICY


async def refused(server: ChatServer, user: User) -> int:
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(f"{server.ws_url}/ws/chatgpt/{user.access_key}"):
            pass
    return info.value.status_code


async def test_disabling_the_key_closes_its_open_socket(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        await client.send("/ping")
        assert (await client.reply())["msg"] == "pong"  # its check is cached now
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.put(f"/api/user/apikeys/{user.key_id}", json={"status": "disabled"},
                               headers={"Authorization": user.jwt})
            assert r.status_code == 200, r.text
        started = trio.current_time()
        await assert_revoked(client, "key_revoked")
        assert trio.current_time() - started < 1.0  # at once, not at the next sweep
    assert await refused(server, user) == 403


async def test_deleting_the_key_closes_its_open_socket(server: ChatServer, user: User) -> None:
    other = await server.new_user()
    async with (chat_socket(server, user.access_key) as client,
                chat_socket(server, other.access_key) as bystander):
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.delete(f"/api/user/apikeys/{user.key_id}",
                                  headers={"Authorization": user.jwt})
            assert r.status_code == 200, r.text
        await assert_revoked(client, "key_revoked")
        await bystander.send("/ping")  # another user's socket is untouched
        assert (await bystander.reply())["msg"] == "pong"


async def test_an_allow_list_without_the_socket_address_closes_it(server: ChatServer,
                                                                 user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.post(f"/api/user/apikeys/{user.key_id}/whitelists",
                                json={"ip_address": "192.0.2.1"},
                                headers={"Authorization": user.jwt})
            assert r.is_success, r.text
        await assert_revoked(client, "key_revoked")


async def test_a_user_blocked_in_the_database_is_closed_within_the_cache_time(
    server: ChatServer, user: User
) -> None:
    async with chat_socket(server, user.access_key) as client:
        database = make_url(server.settings.sqlalchemy_url).database
        await trio.to_thread.run_sync(
            admin_sql, server.settings,
            f"UPDATE `{database}`.users SET status = 'blocked' WHERE id = {user.user_id}")
        started = trio.current_time()
        await assert_revoked(client, "account_closed", timeout=1.0 + 2.0)
        assert trio.current_time() - started <= 1.0 + 1.0  # one sweep, plus a loaded machine
    assert await refused(server, user) == 403


async def test_a_deleted_account_closes_its_socket_and_nothing_comes_back(
    server: ChatServer, user: User
) -> None:
    redis = server.services.storage.redis
    async with (chat_socket(server, user.access_key) as client,
                chat_socket(server, user.access_key, room="7") as second):
        await client.send("private")
        await client.answer()
        await second.send("long [mock tokens=500 delay_ms=10]")  # an answer in progress
        assert (await second.frame())["finish"] is False
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.delete("/api/user/me", headers={"Authorization": user.jwt})
            assert r.status_code == 200, r.text
        # A client that has not noticed yet keeps sending: nothing of it may be stored.
        for text in ("after deletion", "/system back?"):
            try:
                await client.send(text)
                await second.send(text, chat_room_id="8")
            except ConnectionClosed:
                pass
        await assert_revoked(client, "account_closed")
        seen, code = await second.until_closed(3.0)
        assert seen and seen[-1]["error"]["code"] == "account_closed" and code == CLOSE_POLICY
    await trio.sleep(0.5)  # anything still on its way would land by now
    left = await redis.execute("KEYS", f"{redis.prefix}ctx:{user.user_id}:*")
    # Only the rooms' fences stay, as tombstones holding nothing of the user's: a process
    # that still believed it owned one of the sessions can write nothing more.
    assert left and all(key.endswith(":fence") for key in left), left
    assert {await redis.execute("GET", key) for key in left} == {"deleted"}
    assert server.services.chat.registry.keys_of(user.user_id) == []
