"""Every slash command over a real WebSocket; the stored history stays consistent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core.settings import Settings
from tests.chat_server import ChatClient, ChatServer, User, chat_socket, running_server
from tests.web.test_ws_chat import expected


@pytest.fixture
async def server(db_settings: Settings, redis_actor: object) -> AsyncIterator[ChatServer]:
    async with running_server(db_settings, default_model="mock-gpt") as running:
        yield running


async def command(client: ChatClient, text: str) -> dict[str, object]:
    await client.send(text)
    return await client.reply()


async def history(server: ChatServer, user: User, room: str = "0") -> list[tuple[str, str]]:
    snap = await server.services.chat.registry.snapshot(user.user_id, room)
    return [(m.role, m.content) for m in snap.messages]


async def test_simple_commands(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        assert (await command(client, "/ping"))["msg"] == "pong"
        help_text = str((await command(client, "/help"))["msg"])
        for name in ("/clear", "/retry", "/settemperature", "/poplastmessage", "/changemodel",
                     "/codeblock", "/stop", "/info"):
            assert name in help_text
        assert (await command(client, "/echo hi there"))["msg"] == "hi there"
        block = (await command(client, "/codeblock python print(1)"))["msg"]
        assert block == "```python\nprint(1)\n```"
        info = str((await command(client, "/info"))["msg"])
        assert "mock-gpt" in info and "context window" in info


async def test_unknown_command_and_bad_arguments(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        frame = await command(client, "/nosuchthing")
        assert frame["error"]["code"] == "unknown_command" and "/help" in frame["msg"]  # type: ignore[index]
        for bad in ("/settemperature 5", "/temp abc", "/settopp 1.5", "/pop nobody",
                    "/changemodel no-such-model", "/settemperature"):
            frame = await command(client, bad)
            assert frame["error"]["code"] == "bad_argument", (bad, frame)  # type: ignore[index]
        assert (await command(client, "/ping"))["msg"] == "pong"


async def test_sampling_and_model_change_reach_the_upstream(server: ChatServer,
                                                            user: User) -> None:
    import httpx

    async with chat_socket(server, user.access_key) as client:
        await command(client, "/settemperature 0.5")
        await command(client, "/topp 0.9")
        assert "gpt-4o" in str((await command(client, "/changemodel gpt-4o"))["msg"])
        await client.send("check the knobs")
        await client.answer()
    async with httpx.AsyncClient() as http:
        body = (await http.get(f"{server.mock_url}/mock/requests?n=1")).json()["requests"][-1]["body"]
    assert body["temperature"] == 0.5 and body["top_p"] == 0.9 and body["model"] == "gpt-4o"


async def test_system_codex_and_pop(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        await command(client, "/system You are terse.")
        await client.send("first")
        await client.answer()
        await client.send("second")
        await client.answer()
        assert [r for r, _ in await history(server, user)] == [
            "system", "user", "assistant", "user", "assistant"]
        # Popping a user message takes its answer along: turns stay paired.
        assert "second" in str((await command(client, "/pop user"))["msg"])
        assert await history(server, user) == [
            ("system", "You are terse."), ("user", "first"), ("assistant", expected("first"))]
        await command(client, "/pop gpt")
        assert [r for r, _ in await history(server, user)] == ["system", "user"]
        await command(client, "/pop system")
        assert await history(server, user) == [("user", "first")]
        assert "CODEX" in str((await command(client, "/codex"))["msg"])
        roles = [r for r, _ in await history(server, user)]
        assert roles.count("system") == 1
    async with chat_socket(server, user.access_key, read_init=False) as client:
        visible = await client.init()
    assert [m["content"] for m in visible] == ["first"]  # system messages are not shown


async def test_retry_regenerates_the_last_answer(server: ChatServer, user: User) -> None:
    import httpx

    async def upstream_requests() -> list[dict[str, object]]:
        async with httpx.AsyncClient() as http:
            r = await http.get(f"{server.mock_url}/mock/requests?n=10")
        return [req["body"] for req in r.json()["requests"]]

    async with chat_socket(server, user.access_key) as client:
        await client.send("again please")
        first, _ = await client.answer()
        before = await upstream_requests()
        await client.send("/retry")
        second, last = await client.answer()
        assert "error" not in last and second == first == expected("again please")
    # The mock is deterministic, so the text alone cannot tell a new answer from a replayed
    # one: the upstream must have been asked again, with the same question and no old answer.
    after = await upstream_requests()
    assert len(after) == len(before) + 1
    assert after[-1]["messages"] == before[-1]["messages"] == [
        {"role": "user", "content": "again please"}]
    assert await history(server, user) == [
        ("user", "again please"), ("assistant", expected("again please"))]


async def test_retry_with_nothing_to_retry(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        frame = await command(client, "/retry")
        assert "no message" in str(frame["msg"]).lower()


async def test_clear_and_reset(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        await command(client, "/system be nice")
        await client.send("hello")
        await client.answer()
        await command(client, "/clear")
        assert await history(server, user) == []
        await command(client, "/settemperature 1.5")
        await command(client, "/reset")
        snap = await server.services.chat.registry.snapshot(user.user_id, "0")
        assert snap.profile.temperature == 0.7 and snap.messages == []
    async with chat_socket(server, user.access_key, read_init=False) as client:
        assert await client.init() == []


async def test_stop_with_nothing_running(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        frame = await command(client, "/stop")
        assert "nothing" in str(frame["msg"]).lower()


async def test_deletechatroom(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key, room="7") as client:
        await client.send("to be deleted")
        await client.answer()
        frame = await command(client, "/deletechatroom")
        assert "deleted" in str(frame["msg"]).lower()
    async with chat_socket(server, user.access_key, room="7", read_init=False) as client:
        assert await client.init() == []


async def test_translate_without_translator(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        await client.send("bonjour", translate=True)
        frame = await client.reply()
        assert frame["error"]["code"] == "translation_unavailable"  # type: ignore[index]
        text, _ = await client.answer()
        assert text == expected("bonjour")
