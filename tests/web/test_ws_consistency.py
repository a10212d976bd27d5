"""Edge cases where the stored history must stay consistent and the session alive."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from chat_actors.service import RoomHooks
from core.settings import Settings
from storage.rooms import list_rooms
from tests.chat_server import ChatServer, User, chat_socket, running_server
from tests.web.test_ws_chat import expected


@pytest.fixture
async def server(db_settings: Settings, redis_actor: object) -> AsyncIterator[ChatServer]:
    async with running_server(db_settings, default_model="mock-gpt") as running:
        yield running


async def stored(server: ChatServer, user: User, room: str = "0") -> list[tuple[str, str]]:
    snap = await server.services.chat.registry.snapshot(user.user_id, room)
    return [(m.role, m.content) for m in snap.messages]


async def test_no_delta_follows_the_stop_terminator(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        await client.send("long [mock tokens=2000 delay_ms=1]")
        assert (await client.frame())["finish"] is False
        await client.send("/stop")
        started = trio.current_time()
        _, last = await client.answer()
        assert trio.current_time() - started < 0.5
        assert last["msg"] == "" and "error" not in last
        with trio.move_on_after(0.3):
            extra = await client.frame()
            pytest.fail(f"a frame followed the terminator: {extra}")


async def test_retry_over_budget_is_refused_and_keeps_the_answer(server: ChatServer,
                                                                 user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        await client.send("short question")
        await client.answer()
        before = await stored(server, user)
        # A system prompt that fits alone but leaves no room for the question (prompt limit of
        # mock-gpt: 7101 tokens; "word " * 7093 costs 7098): /retry must say so, not crash.
        await client.send("/system " + "word " * 7093)
        assert "error" not in await client.reply()
        await client.send("/retry")
        frame = await client.reply()
        assert frame.get("error", {}).get("code") in ("too_long", "context_overflow"), frame
        await client.send("/ping")
        assert (await client.reply())["msg"] == "pong"
    after = await stored(server, user)
    assert [m for m in after if m[0] != "system"] == before


async def test_codex_that_does_not_fit_keeps_the_old_system_prompt(server: ChatServer,
                                                                   user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        await client.send("/system " + "word " * 8000)
        assert (await client.reply())["error"]["code"] == "context_overflow"
        await client.send("/system be brief")
        await client.reply()
        assert await stored(server, user) == [("system", "be brief")]
        await client.send("/system " + "word " * 7000)  # fits next to "be brief"
        await client.reply()
        await client.send("/codex")  # would replace both, and fits: done in one step
        assert "CODEX" in (await client.reply())["msg"]
        assert [r for r, _ in await stored(server, user)] == ["system"]


async def test_pop_gpt_never_repairs_turns(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        await client.send("q1")
        await client.answer()
        await client.send("q2 [mock fault=500]")
        _, last = await client.answer()  # q2 stays unanswered
        assert last["error"]["code"] == "upstream_error"
        await client.send("/pop gpt")
        assert "no gpt message" in (await client.reply())["msg"].lower()
        assert [r for r, _ in await stored(server, user)] == ["user", "assistant", "user"]
        await client.send("/pop user")
        await client.reply()
        assert await stored(server, user) == [("user", "q1"), ("assistant", expected("q1"))]


async def test_room_move_mid_answer_sends_nothing_more_from_the_old_room(
    server: ChatServer, user: User
) -> None:
    async with chat_socket(server, user.access_key) as client:
        await client.send("long [mock tokens=300 delay_ms=10]")
        assert (await client.frame())["chat_room_id"] == 0
        await client.send("/ping", chat_room_id="other")
        # Frames of room 0 may still be in flight before the init of the new room; after it,
        # only the new room speaks.
        while not (await client.frame())["init"]:
            pass
        reply = await client.reply()
        assert reply["chat_room_id"] == "other" and reply["msg"] == "pong"
        with trio.move_on_after(0.3):
            while True:
                assert (await client.frame())["chat_room_id"] == "other"


async def test_rest_delete_with_a_socket_attached(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key, room="9") as client:
        await client.send("soon gone")
        await client.answer()
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.delete("/api/user/chatrooms/9", headers={"Authorization": user.jwt})
            assert r.status_code == 200
        # The socket stays usable: its next message starts the room afresh (a new init first).
        await client.send("again")
        assert await client.init() == []
        text, _ = await client.answer()
        assert text == expected("again")
    assert await stored(server, user, "9") == [("user", "again"), ("assistant", expected("again"))]


async def test_context_lost_under_a_live_session_is_rewritten_whole(server: ChatServer,
                                                                    user: User) -> None:
    async with chat_socket(server, user.access_key) as client:
        await client.send("one")
        await client.answer()
        redis = server.services.storage.redis
        keys = await redis.execute("KEYS", f"{redis.prefix}ctx:{user.user_id}:0:*")
        assert keys and await redis.execute("DEL", *keys)
        await client.send("two")
        await client.answer()
    assert await stored(server, user) == [
        ("user", "one"), ("assistant", expected("one")), ("user", "two"), ("assistant", expected("two"))]
    async with chat_socket(server, user.access_key, read_init=False) as client:
        assert len(await client.init()) == 4  # a fresh load sees all of it


async def test_two_sockets_get_identical_frame_sequences(server: ChatServer, user: User) -> None:
    # Each socket may merge deltas differently; apart from that, the echo that only the other
    # socket gets and the command reply that only the sender gets, both see the same frames in
    # the same order.
    questions = ["same frames?", "and a queued one", "/ping", "a third"]
    async with chat_socket(server, user.access_key) as a, chat_socket(server, user.access_key) as b:
        for q in questions:
            await a.send(q)
        seen_a, seen_b = await a.events(4), await b.events(3)
    answers = {q: expected(q) for q in questions if not q.startswith("/")}
    expected_a = [("text", answers["same frames?"]), ("end", ""),
                  ("text", answers["and a queued one"]), ("end", ""),
                  ("end", "pong"),
                  ("text", answers["a third"]), ("end", "")]
    assert seen_a == expected_a
    assert [e for e in seen_b if e[0] != "echo"] == [e for e in expected_a if e != ("end", "pong")]
    assert [e for e in seen_b if e[0] == "echo"] == [
        ("echo", q) for q in questions if not q.startswith("/")]


async def test_a_deleted_account_gets_no_room_rows_back(server: ChatServer, user: User) -> None:
    # The socket's room touch is still queued (written every 0.2 s) when the account goes.
    async with (chat_socket(server, user.access_key, room="just-opened"),
                httpx.AsyncClient(base_url=server.url) as http):
        r = await http.delete("/api/user/me", headers={"Authorization": user.jwt})
        assert r.status_code == 200, r.text
    await trio.sleep(2 * RoomHooks.FLUSH_EVERY)
    assert await server.services.storage.sql.run(list_rooms(user.user_id)) == []
