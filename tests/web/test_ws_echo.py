"""Two sockets on one session: the other socket sees each question before any frame of its
answer, on every path (first message, queued messages, /retry, after a session restart)."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from core.settings import Settings
from scripts.mock_upstream import expected_answer
from tests.chat_server import ChatServer, User, chat_socket, running_server
from tests.storage.servers import Server

Event = tuple[str, str]  # see ChatClient.events


@pytest.fixture
async def server(db_settings: Settings, redis_actor: object) -> AsyncIterator[ChatServer]:
    async with running_server(db_settings) as running:
        yield running


def answer_of(text: str, tokens: int = 8) -> str:
    return expected_answer([{"role": "user", "content": text}], tokens)


def answered(question: str, tokens: int = 8) -> list[Event]:
    return [("text", answer_of(question, tokens)), ("end", "")]


async def test_first_message_echo_precedes_its_answer(server: ChatServer, user: User) -> None:
    async with chat_socket(server, user.access_key) as a, chat_socket(server, user.access_key) as b:
        for i in range(5):  # every message, not only the session's first
            await a.send(f"sync me {i}")
            assert await b.events(1) == [("echo", f"sync me {i}"), *answered(f"sync me {i}")]
            assert await a.events(1) == answered(f"sync me {i}")


async def test_echo_precedes_the_answer_while_redis_is_slow(db_settings: Settings,
                                                            own_redis: Server) -> None:
    # The upstream answers while the user message is still being stored: Redis is paused
    # (SIGSTOP) for longer than the mock takes to send its first token.
    async with running_server(db_settings,
                              redis_url=f"redis://127.0.0.1:{own_redis.port}/0") as server:
        user = await server.new_user()
        async with (chat_socket(server, user.access_key) as a,
                    chat_socket(server, user.access_key) as b):
            assert own_redis.proc is not None
            os.kill(own_redis.proc.pid, signal.SIGSTOP)
            try:
                await a.send("slow store")
                await trio.sleep(0.5)
            finally:
                os.kill(own_redis.proc.pid, signal.SIGCONT)
            assert await b.events(1) == [("echo", "slow store"), *answered("slow store")]
            assert await a.events(1) == answered("slow store")


async def test_queued_messages_echo_before_each_answer(server: ChatServer, user: User) -> None:
    questions = [f"queued {i}" for i in range(4)]
    async with chat_socket(server, user.access_key) as a, chat_socket(server, user.access_key) as b:
        for q in questions:
            await a.send(q)
        expected_b = [e for q in questions for e in [("echo", q), *answered(q)]]
        assert await b.events(len(questions)) == expected_b
        assert await a.events(len(questions)) == [e for q in questions for e in answered(q)]


async def test_retry_streams_the_new_answer_on_both_sockets(server: ChatServer,
                                                            user: User) -> None:
    async with chat_socket(server, user.access_key) as a, chat_socket(server, user.access_key) as b:
        await a.send("retry me")
        assert await b.events(1) == [("echo", "retry me"), *answered("retry me")]
        assert await a.events(1) == answered("retry me")
        async with httpx.AsyncClient() as http:
            before = (await http.get(f"{server.mock_url}/mock/stats")).json()["requests_total"]
            await a.send("/retry")
            # No echo for a command; the regenerated answer, whole, on both sockets.
            assert await b.events(1) == answered("retry me")
            assert await a.events(1) == answered("retry me")
            after = (await http.get(f"{server.mock_url}/mock/stats")).json()["requests_total"]
        assert after == before + 1


async def test_after_a_restart_queued_messages_echo_before_their_answers(
    server: ChatServer, user: User
) -> None:
    long_q = "cut by a crash [mock tokens=400 delay_ms=20]"
    async with chat_socket(server, user.access_key) as a, chat_socket(server, user.access_key) as b:
        await a.send(long_q)
        await a.send("after the crash")
        first = await b.frame()
        assert first["is_user"] and first["msg"] == long_q
        assert (await b.frame())["finish"] is False  # the long answer is streaming
        await server.services.chat.registry.crash_for_test(user.user_id, "0")
        seen = await b.events(2)
        if seen[0][0] == "text":  # more of the cut answer, if any was read before the crash
            seen.pop(0)
        assert seen == [("error", "session_restarted"), ("echo", "after the crash"),
                        *answered("after the crash")]
