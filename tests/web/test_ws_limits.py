"""Per-user chat limits through real sockets: messages per minute over all of a user's sockets
and rooms (exact under a burst), answers at once; a refusal is an error frame, nothing is
stored and the socket stays open."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from chat_actors import chat_limits
from core.settings import Settings
from scripts.mock_upstream import expected_answer
from tests.chat_server import ChatServer, User, chat_socket, running_server


def answer_to(text: str, tokens: int = 8) -> str:
    return expected_answer([{"role": "user", "content": text}], tokens)


async def stored_user_messages(server: ChatServer, user: User, room: str) -> list[str]:
    snap = await server.services.chat.registry.snapshot(user.user_id, room)
    return [m.content for m in snap.messages if m.role == "user"]


async def test_a_burst_of_100_against_a_limit_of_10_gets_exactly_10_answers(
    db_settings: Settings, redis_actor: object
) -> None:
    async with running_server(db_settings, chat_messages_per_minute=10,
                              session_queue_limit=100) as server:
        user = await server.new_user()
        outcomes: list[tuple[str, Any]] = []

        async def socket(room: int) -> None:
            async with chat_socket(server, user.access_key, room=str(room)) as client:
                for i in range(10):
                    await client.send(f"burst {room}.{i}")
                for _ in range(10):
                    text, last = await client.answer()
                    error = last.get("error")
                    outcomes.append(("error", error) if error else ("answer", text))

        async with trio.open_nursery() as nursery:  # 10 sockets, 10 rooms, one user
            for room in range(10):
                nursery.start_soon(socket, room)
        answers = [o for o in outcomes if o[0] == "answer"]
        refused = [o[1] for o in outcomes if o[0] == "error"]
        assert len(answers) == 10 and len(refused) == 90
        assert {e["code"] for e in refused} == {"rate_limited"}
        assert all(1 <= int(e["detail"]) <= 60 for e in refused)
        stored = [m for room in range(10)
                  for m in await stored_user_messages(server, user, str(room))]
        assert len(stored) == 10  # refused messages were never stored
        other = await server.new_user()  # the limit is per user
        async with chat_socket(server, other.access_key) as client:
            await client.send("someone else")
            assert (await client.answer())[0] == answer_to("someone else")


async def test_the_limit_counts_retry_not_other_commands_and_lifts_after_the_window(
    db_settings: Settings, redis_actor: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chat_limits, "MESSAGE_WINDOW", 1.0)
    async with running_server(db_settings, chat_messages_per_minute=2) as server:
        user = await server.new_user()
        async with chat_socket(server, user.access_key) as client:
            await client.send("one")
            assert (await client.answer())[0] == answer_to("one")
            await client.send("/ping")  # free
            assert (await client.reply())["msg"] == "pong"
            await client.send("/retry")  # the second
            assert (await client.answer())[0] == answer_to("one")
            await client.send("three")
            _, refused = await client.answer()
            assert refused["error"]["code"] == "rate_limited" and refused["error"]["detail"] == "1"
            await trio.sleep(1.1)
            await client.send("after the window")
            assert (await client.answer())[0] == answer_to("after the window")
        assert await stored_user_messages(server, user, "0") == ["one", "after the window"]


async def test_answers_at_once_are_limited_per_user(db_settings: Settings,
                                                    redis_actor: object) -> None:
    long = "long [mock tokens=400 delay_ms=20]"
    async with running_server(db_settings, chat_answers_at_once=2) as server:
        user = await server.new_user()
        async with (chat_socket(server, user.access_key, room="a") as a,
                    chat_socket(server, user.access_key, room="b") as b,
                    chat_socket(server, user.access_key, room="c") as c):
            for client in (a, b):
                await client.send(long)
                assert (await client.frame())["finish"] is False
            await c.send("a third at once")
            frame: dict[str, Any] = await c.reply()
            assert frame["error"]["code"] == "too_many_answers", frame
            assert await stored_user_messages(server, user, "c") == []
            await a.send("/stop")  # gives its slot back
            await a.answer()
            await c.send("now there is room")
            assert (await c.answer())[0] == answer_to("now there is room")
            await c.send("/ping")  # the refused socket stayed open all along
            assert (await c.reply())["msg"] == "pong"


async def test_the_daily_token_budget_reserves_then_settles(db_settings: Settings,
                                                           redis_actor: object) -> None:
    from chat_actors.budget import Budget

    probe = running_server(db_settings)
    async with probe as server:
        reserve = Budget.for_model(server.settings, server.settings.default_model).answer_reserve
    long = "long [mock tokens=300 delay_ms=10]"
    # A 300-word mock answer is ~600 tokens: one whole reserve and ~1,000 tokens more.
    async with running_server(db_settings, daily_token_budget=reserve + 1000) as server:
        user = await server.new_user()
        redis = server.services.storage.redis
        async with (chat_socket(server, user.access_key, room="a") as a,
                    chat_socket(server, user.access_key, room="b") as b):
            await a.send(long)
            assert (await a.frame())["finish"] is False
            # A's reserve (its prompt and a whole answer) is held: B's does not fit beside it.
            await b.send("beside it")
            refused = await b.reply()
            assert refused["error"]["code"] == "budget_exceeded", refused
            assert await stored_user_messages(server, user, "b") == []
            await a.answer()  # settled: A's prompt and its 300 words' tokens
            keys = await redis.execute("KEYS", f"{redis.prefix}budget:tokens:{user.user_id}:*")
            (spent,) = [int(await redis.execute("GET", k)) for k in keys]
            snap = await server.services.chat.registry.snapshot(user.user_id, "a")
            answer_tokens = snap.messages[-1].tokens
            assert answer_tokens < spent < answer_tokens + 100  # prompt + answer, not a reserve
            await b.send("now it fits")
            assert (await b.answer())[0] == answer_to("now it fits")
            await b.send(long)
            await b.answer()
            # ~1,300 tokens are spent now: a whole reserve no longer fits, whatever the room.
            await b.send("one more")
            refused = await b.reply()
            assert refused["error"]["code"] == "budget_exceeded", refused
