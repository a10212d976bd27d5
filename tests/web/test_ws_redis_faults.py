"""Redis killed (kill -9) under a real server and restarted: what the clients see, frame by
frame, and what history holds afterwards, read back by an independent Redis client. An answer
whose terminator a client saw is in history exactly once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import trio

from core.settings import Settings
from scripts.mock_upstream import expected_answer
from tests.chat_server import ChatServer, User, chat_socket, running_server
from tests.storage.servers import Server


@pytest.fixture
async def server(db_settings: Settings, durable_redis: Server) -> AsyncIterator[ChatServer]:
    # A durable Redis, as the outage was measured (appendfsync always): a restart brings back
    # everything it acknowledged.
    async with running_server(db_settings, redis_url=f"redis://127.0.0.1:{durable_redis.port}/0",
                              redis_timeout=1.0) as running:
        yield running


def answer_to(text: str, tokens: int = 8) -> str:
    return expected_answer([{"role": "user", "content": text}], tokens)


async def history(server: ChatServer, redis_port: int, user: User,
                  room: str = "0") -> list[tuple[str, str]]:
    """The stored messages as another process would load them (not the session's memory)."""
    def read() -> list[tuple[str, str]]:
        client = redis.Redis(port=redis_port, decode_responses=True)
        try:
            key = f"{server.settings.redis_key_prefix}ctx:{user.user_id}:{room}:messages"
            return [(m["role"], m["content"]) for m in map(json.loads, client.lrange(key, 0, -1))]
        finally:
            client.close()
    return await trio.to_thread.run_sync(read)


async def until_stored(server: ChatServer, redis_port: int, user: User,
                       expected: list[tuple[str, str]], timeout: float = 15) -> None:
    with trio.fail_after(timeout):
        while True:
            try:
                if await history(server, redis_port, user) == expected:
                    return
            except redis.ConnectionError:
                pass
            await trio.sleep(0.1)


async def test_redis_killed_mid_answer_loses_no_acknowledged_answer(
    server: ChatServer, durable_redis: Server
) -> None:
    user = await server.new_user()
    question = "through the outage [mock tokens=60 delay_ms=20]"
    async with chat_socket(server, user.access_key) as client:
        await client.send("before")
        assert (await client.events(1)) == [("text", answer_to("before")), ("end", "")]
        await client.send(question)
        assert (await client.frame())["finish"] is False  # streaming
        await trio.to_thread.run_sync(durable_redis.kill)
        # The answer ends while Redis is down: whole, with its terminator, no error after it.
        first_frames = await client.events(1)
        assert first_frames[-1] == ("end", ""), first_frames
        await client.send("while down")
        assert (await client.events(1)) == [("text", answer_to("while down")), ("end", "")]
        await trio.sleep(1.0)
        await trio.to_thread.run_sync(durable_redis.start)
        expected = [("user", "before"), ("assistant", answer_to("before")),
                    ("user", question), ("assistant", answer_to(question, 60)),
                    ("user", "while down"), ("assistant", answer_to("while down"))]
        await until_stored(server, durable_redis.port, user, expected)
        await client.send("after")
        assert (await client.events(1)) == [("text", answer_to("after")), ("end", "")]
        with trio.move_on_after(0.3):
            extra = await client.frame()
            pytest.fail(f"a frame after the last terminator: {extra}")
    await until_stored(server, durable_redis.port, user,
                       expected + [("user", "after"), ("assistant", answer_to("after"))])


async def test_redis_killed_while_idle_first_messages_after_the_restart_succeed(
    server: ChatServer, durable_redis: Server, caplog: pytest.LogCaptureFixture
) -> None:
    users = [await server.new_user() for _ in range(4)]
    async with trio.open_nursery() as nursery:
        results: dict[int, list[Any]] = {}

        answered_once: list[int] = []

        async def chat(i: int, user: User, restarted: trio.Event) -> None:
            async with chat_socket(server, user.access_key, room=str(i)) as client:
                await client.send(f"first {i}")
                first = await client.events(1)
                answered_once.append(i)
                await restarted.wait()
                await client.send(f"second {i}")
                results[i] = [first, await client.events(1)]

        restarted = trio.Event()
        for i, user in enumerate(users * 5):  # 20 sockets: several pooled connections in use
            nursery.start_soon(chat, i, user, restarted)
        with trio.fail_after(20):
            while len(answered_once) < 20:  # every first answer is stored and over
                await trio.sleep(0.05)
        await trio.to_thread.run_sync(durable_redis.kill)
        await trio.to_thread.run_sync(durable_redis.start)
        await trio.sleep(1.0)  # the issue saw 14 of 20 first messages fail 1 s after a restart
        restarted.set()
    for i, (first, second) in sorted(results.items()):
        assert first == [("text", answer_to(f"first {i}")), ("end", "")], (i, first)
        assert second == [("text", answer_to(f"second {i}")), ("end", "")], (i, second)
    assert len(results) == 20
    # Not merely answered from memory: every write reached the restarted Redis at once.
    kept = [r.getMessage() for r in caplog.records if "keeps its changes" in r.getMessage()]
    assert kept == []
    for i, user in enumerate(users):  # and new sessions load from it
        async with chat_socket(server, user.access_key, room=f"new{i}") as client:
            await client.send("fresh")
            assert (await client.events(1)) == [("text", answer_to("fresh")), ("end", "")]
