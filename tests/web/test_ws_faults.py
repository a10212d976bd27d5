"""Every fault mode of the mock upstream, seen through a real WebSocket: the right frame, the
session alive, the stored history consistent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core.settings import Settings
from scripts.mock_upstream import expected_answer
from tests.chat_server import ChatServer, User, chat_socket, running_server


@pytest.fixture
async def server(db_settings: Settings, redis_actor: object) -> AsyncIterator[ChatServer]:
    async with running_server(
        db_settings, upstream_retries=2, upstream_first_byte_timeout=0.5,
        upstream_chunk_gap_timeout=0.5, mock={"tokens": 8, "delay_ms": 2, "stall_s": 30},
    ) as running:
        yield running


async def stored(server: ChatServer, user: User) -> list[tuple[str, str, bool]]:
    snap = await server.services.chat.registry.snapshot(user.user_id, "0")
    return [(m.role, m.content, m.partial) for m in snap.messages]


def full(text: str, tokens: int = 8) -> str:
    return expected_answer([{"role": "user", "content": text}], tokens)


async def test_429_then_success_is_retried(server: ChatServer, user: User) -> None:
    text = "retry me [mock fault=429x2 retry_after=0]"
    async with chat_socket(server, user.access_key) as client:
        await client.send(text)
        answer, last = await client.answer()
    assert "error" not in last and answer == full(text)


async def test_500_then_success_is_retried(server: ChatServer, user: User) -> None:
    text = "flaky [mock fault=500x1]"
    async with chat_socket(server, user.access_key) as client:
        await client.send(text)
        answer, last = await client.answer()
    assert "error" not in last and answer == full(text)


@pytest.mark.parametrize(("fault", "code"), [
    ("429", "rate_limited"),
    ("500", "upstream_error"),
    ("stall_first", "upstream_timeout"),
])
async def test_failures_before_any_text(server: ChatServer, user: User, fault: str,
                                        code: str) -> None:
    text = f"fails [mock fault={fault} retry_after=0]"
    async with chat_socket(server, user.access_key) as client:
        await client.send(text)
        answer, last = await client.answer()
        assert answer == "" and last["error"]["code"] == code
        await client.send("/ping")
        assert (await client.reply())["msg"] == "pong"
    # The question stays; no answer was stored.
    assert await stored(server, user) == [("user", text, False)]


@pytest.mark.parametrize(("fault", "code"), [
    ("stall_mid", "upstream_timeout"),
    ("drop_mid", "upstream_error"),
    ("malformed", "upstream_error"),
])
async def test_failures_mid_answer_keep_the_partial(server: ChatServer, user: User, fault: str,
                                                    code: str) -> None:
    text = f"breaks [mock fault={fault} after=3]"
    async with chat_socket(server, user.access_key) as client:
        await client.send(text)
        answer, last = await client.answer()
        assert last["error"]["code"] == code and last["finish"] is True
        assert answer and full(text).startswith(answer)
    assert await stored(server, user) == [("user", text, False), ("assistant", answer, True)]
    async with chat_socket(server, user.access_key, read_init=False) as client:
        history = await client.init()
    assert history[-1]["partial"] is True


async def test_length_is_continued_without_duplicates(server: ChatServer, user: User) -> None:
    text = "long one [mock fault=length tokens=12 length_after=5]"
    async with chat_socket(server, user.access_key) as client:
        await client.send(text)
        answer, last = await client.answer()
    assert "error" not in last and answer == full(text, 12)
    assert await stored(server, user) == [("user", text, False), ("assistant", answer, False)]


async def test_content_filter_stores_no_answer(server: ChatServer, user: User) -> None:
    text = "filtered [mock fault=content_filter]"
    async with chat_socket(server, user.access_key) as client:
        await client.send(text)
        _, last = await client.answer()
        assert last["error"]["code"] == "content_filter"
    assert await stored(server, user) == [("user", text, False)]
