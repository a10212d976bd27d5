"""The chat WebSocket end to end: real Hypercorn, real Redis and MariaDB, the mock upstream
over HTTP, trio-websocket as the client (PROTOCOL.md v1)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from core.settings import Settings
from scripts.mock_upstream import expected_answer
from tests.chat_server import ChatServer, User, chat_socket, running_server


def expected(text: str, tokens: int = 8) -> str:
    return expected_answer([{"role": "user", "content": text}], tokens)


@pytest.fixture
async def server(db_settings: Settings, redis_actor: object) -> AsyncIterator[ChatServer]:
    async with running_server(db_settings) as running:
        yield running


async def test_unknown_key_is_refused_before_upgrade(server: ChatServer) -> None:
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(f"{server.ws_url}/ws/chatgpt/not-a-key"):
            pass
    assert info.value.status_code == 403


async def test_message_is_streamed_then_stored(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key, read_init=False) as client:
        assert await client.init() == []
        await client.send("Hello there")
        deltas = []
        while True:
            frame = await client.frame()
            assert frame["is_user"] is False and frame["chat_room_id"] == 0
            if frame["finish"]:
                assert frame["msg"] == "" and "error" not in frame
                break
            deltas.append(frame["msg"])
        assert deltas and "".join(deltas) == expected("Hello there")
    async with chat_socket(server, user.access_key, read_init=False) as client:
        history = await client.init()
    assert [(m["content"], m["is_user"]) for m in history] == [
        ("Hello there", True), (expected("Hello there"), False)]
    assert all(isinstance(m["timestamp"], int) and m["tokens"] > 0 for m in history)


async def test_email_never_goes_upstream(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        await client.send("who am I")
        await client.answer()
    async with httpx.AsyncClient() as http:
        bodies = (await http.get(f"{server.mock_url}/mock/requests?n=5")).json()["requests"]
    assert bodies, "the mock saw no request"
    raw = json.dumps(bodies)
    assert user.email not in raw
    sent_user = bodies[-1]["body"]["user"]
    assert sent_user and "@" not in sent_user


async def test_two_sockets_see_the_same_stream_and_echo(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as a, chat_socket(server, user.access_key) as b:
        await a.send("shared question")
        echo = await b.frame()
        assert echo["is_user"] is True and echo["msg"] == "shared question"
        text_a, end_a = await a.answer()
        text_b, end_b = await b.answer()
    assert text_a == text_b == expected("shared question")
    assert end_a == end_b


async def test_queued_messages_are_answered_in_order(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        for i in range(3):
            await client.send(f"question {i}")
        answers = [(await client.answer())[0] for _ in range(3)]
    assert answers == [expected(f"question {i}") for i in range(3)]


async def test_busy_past_the_queue_limit(db_settings: Settings, redis_actor: object) -> None:
    async with running_server(db_settings, session_queue_limit=1,
                              mock={"tokens": 50, "delay_ms": 20}) as server:
        user = await server.new_user()
        async with chat_socket(server, user.access_key) as client:
            for i in range(3):
                await client.send(f"q{i}")
            codes = []
            for _ in range(3):  # one busy error, then the two answers
                _, last = await client.answer()
                codes.append(last.get("error", {}).get("code"))
    assert codes.count("busy") == 1 and codes.count(None) == 2


async def test_stop_ends_the_answer_at_once(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        await client.send("a long one [mock tokens=400 delay_ms=20]")
        first = await client.frame()
        assert first["finish"] is False
        await client.send("/stop")
        started = trio.current_time()
        text, last = await client.answer()
        elapsed = trio.current_time() - started
        assert last["msg"] == "" and "error" not in last
        assert elapsed < 1.0, f"/stop took {elapsed:.3f}s"
        partial = first["msg"] + text
    async with chat_socket(server, user.access_key, read_init=False) as client:
        history = await client.init()
    assert history[-1]["content"] == partial and history[-1].get("partial") is True
    async with httpx.AsyncClient() as http:
        with trio.fail_after(3):
            while (await http.get(f"{server.mock_url}/mock/stats")).json()["answers_aborted"] < 1:
                await trio.sleep(0.05)


async def test_resume_after_reconnect_mid_answer(server: ChatServer, user: User) -> None:
    text = "resume me [mock tokens=60 delay_ms=20]"
    async with chat_socket(server, user.access_key) as client:
        await client.send(text)
        for _ in range(5):
            assert (await client.frame())["finish"] is False
    # The first socket is gone; the answer goes on. A new socket resumes it.
    async with chat_socket(server, user.access_key, read_init=False) as client:
        history = await client.init()
        assert history[-1]["content"] == text
        rest, last = await client.answer()
        assert "error" not in last
    full = expected_answer([{"role": "user", "content": text}], 60)
    assert rest == full
    async with chat_socket(server, user.access_key, read_init=False) as client:
        assert (await client.init())[-1]["content"] == full


async def test_bad_frames_get_errors_and_the_session_goes_on(server: ChatServer,
                                                            user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        await client.send_raw("not json")
        assert (await client.reply())["error"]["code"] == "bad_frame"
        await client.send_raw(json.dumps({"nomsg": 1}))
        assert (await client.reply())["error"]["code"] == "bad_frame"
        await client.send_raw(json.dumps({"msg": 5}))
        assert (await client.reply())["error"]["code"] == "bad_frame"
        await client.send_raw(json.dumps({"msg": "x", "chat_room_id": [1]}))
        assert (await client.reply())["error"]["code"] == "bad_frame"
        await client.send("x" * (server.settings.max_frame_bytes + 10))
        assert (await client.reply())["error"]["code"] == "too_long"
        await client.send("still here?")
        text, _ = await client.answer()
        assert text == expected("still here?")
    async with chat_socket(server, user.access_key, read_init=False) as client:
        assert len(await client.init()) == 2


async def test_too_long_message_is_refused_and_not_stored(db_settings: Settings,
                                                          redis_actor: object) -> None:
    async with running_server(db_settings, max_message_tokens=50) as server:
        user = await server.new_user()
        async with chat_socket(server, user.access_key) as client:
            await client.send("word " * 200)
            frame = await client.reply()
            assert frame["error"]["code"] == "too_long"
        async with chat_socket(server, user.access_key, read_init=False) as client:
            assert await client.init() == []


async def test_crashed_session_restarts_with_history(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        await client.send("remember me")
        await client.answer()
        chat = server.services.chat
        await chat.registry.crash_for_test(user.user_id, "0")
        frame = await client.reply()
        assert frame["error"]["code"] == "session_restarted"
        await client.send("/ping")
        assert (await client.reply())["msg"] == "pong"
        snapshot = await chat.registry.snapshot(user.user_id, "0")
        assert [m.content for m in snapshot.messages] == ["remember me", expected("remember me")]


async def test_rooms_switch_list_and_delete(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        await client.send("in room zero")
        await client.answer()
        await client.send("in room two", chat_room_id=2)
        history = await client.init()
        assert history == []
        text, last = await client.answer()
        assert last["chat_room_id"] == 2 and text == expected("in room two")
    auth = {"Authorization": user.jwt}
    async with httpx.AsyncClient(base_url=server.url) as http:
        rooms = (await http.get("/api/user/chatrooms", headers=auth)).json()["chat_rooms"]
        assert {r["chat_room_id"] for r in rooms} == {"0", "2"}
        r = await http.put("/api/user/chatrooms/2", json={"name": "Work"}, headers=auth)
        assert r.status_code == 200 and r.json()["name"] == "Work"
        assert (await http.delete("/api/user/chatrooms/2", headers=auth)).status_code == 200
        assert (await http.delete("/api/user/chatrooms/2", headers=auth)).status_code == 404
        other = await server.new_user()
        r = await http.delete("/api/user/chatrooms/0", headers={"Authorization": other.jwt})
        assert r.status_code == 404
    async with chat_socket(server, user.access_key, room="2", read_init=False) as client:
        assert await client.init() == []
    async with chat_socket(server, user.access_key, room="0", read_init=False) as client:
        assert len(await client.init()) == 2


async def test_a_fast_stream_leaves_in_fewer_frames_than_tokens(
    server: ChatServer, user: User
) -> None:
    # 64 tokens 10 ms apart, DELTA_INTERVAL 60 ms: the first token goes alone and at once, the
    # rest in frames of several tokens (load on the machine only merges more).
    text = "pace [mock tokens=64 delay_ms=10]"
    async with chat_socket(server, user.access_key) as client:
        await client.send("warm up")  # the first message of a process loads the tokenizer
        await client.answer()
        await client.send(text)
        sent = trio.current_time()
        frames: list[str] = []
        while True:
            frame = await client.frame()
            if frame["finish"]:
                break
            if not frames:
                first_after = trio.current_time() - sent
            frames.append(frame["msg"])
    assert "".join(frames) == expected(text, 64)
    assert first_after < 0.5 and len(frames[0].split()) == 1  # the first token, alone
    assert len(frames) <= 32
