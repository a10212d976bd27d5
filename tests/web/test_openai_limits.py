"""The OpenAI-compatible API draws on the chat's per-user limits, as one pool with the chat
socket: messages per minute (a request is one message), answers at once (a request holds a
slot while it generates) and the daily token budget (reserved before, settled after). The
``openai`` package is the client; refusals are ``openai.RateLimitError``."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import openai
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from core.settings import Settings
from scripts.mock_upstream import expected_answer
from tests.chat_server import ChatServer, User, chat_socket, running_server, server_settings
from web.app import create_app

T = TypeVar("T")
MODEL = "gpt-4o-mini"
LONG = "long [mock tokens=400 delay_ms=20]"


def client(server: ChatServer, user: User) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1",
                         api_key=f"{user.access_key}.{user.secret_key}", max_retries=0,
                         timeout=20)


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def complete(api: openai.OpenAI, text: str, **kwargs: Any) -> Callable[[], str]:
    def run() -> str:
        completion = api.chat.completions.create(model=MODEL, messages=ask(text),  # type: ignore[arg-type]
                                                 **kwargs)
        return completion.choices[0].message.content or ""
    return run


async def tokens_spent(server: ChatServer, user: User) -> int:
    redis = server.services.storage.redis
    keys = await redis.execute("KEYS", f"{redis.prefix}budget:tokens:{user.user_id}:*")
    return sum([int(await redis.execute("GET", key)) for key in keys])


@asynccontextmanager
async def streaming(api: openai.OpenAI, text: str, **kwargs: Any) -> AsyncIterator[
        trio.MemoryReceiveChannel[Any]]:
    """A /v1 stream read in a worker thread; its chunks arrive on the channel (first one
    already there), the thread ends when the stream does."""
    send, receive = trio.open_memory_channel[Any](math.inf)
    token = trio.lowlevel.current_trio_token()

    def run() -> None:
        try:
            for chunk in api.chat.completions.create(model=MODEL, messages=ask(text),  # type: ignore[arg-type]
                                                     stream=True, **kwargs):
                trio.from_thread.run_sync(send.send_nowait, chunk, trio_token=token)
        finally:  # a channel is closed from its own thread
            trio.from_thread.run_sync(send.close, trio_token=token)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.to_thread.run_sync, run))
        first = await receive.receive()
        assert first.choices[0].delta.role == "assistant"
        yield receive


async def test_messages_per_minute_are_one_pool_with_the_chat(db_settings: Settings,
                                                              redis_actor: object) -> None:
    async with running_server(db_settings, chat_messages_per_minute=2) as server:
        user = await server.new_user()
        api = client(server, user)
        async with chat_socket(server, user.access_key) as chat:
            await chat.send("one on the socket")
            assert (await chat.answer())[0] == expected_answer(ask("one on the socket"), 8)
            assert await in_thread(complete(api, "one over /v1")) == expected_answer(
                ask("one over /v1"), 8)
            # Two of two spent, one on each door: both doors refuse now.
            with pytest.raises(openai.RateLimitError) as info:
                await in_thread(complete(api, "a third over /v1"))
            assert info.value.code == "rate_limit_exceeded" and info.value.type == "requests"
            assert 1 <= int(info.value.response.headers["retry-after"]) <= 60
            with pytest.raises(openai.RateLimitError):  # streamed: refused before any event
                await in_thread(lambda: list(api.chat.completions.create(
                    model=MODEL, messages=ask("streamed third"), stream=True)))
            await chat.send("a third on the socket")
            _, refused = await chat.answer()
            assert refused["error"]["code"] == "rate_limited", refused


async def test_answers_at_once_are_one_pool_with_the_chat(db_settings: Settings,
                                                          redis_actor: object) -> None:
    async with running_server(db_settings, chat_answers_at_once=1) as server:
        user = await server.new_user()
        api = client(server, user)
        async with chat_socket(server, user.access_key) as chat:
            await chat.send(LONG)
            assert (await chat.frame())["finish"] is False  # the socket's answer holds the slot
            with pytest.raises(openai.RateLimitError) as info:
                await in_thread(complete(api, "beside a chat answer"))
            assert info.value.code == "too_many_answers"
            await chat.send("/stop")
            await chat.answer()
            async with streaming(api, LONG) as chunks:  # now a /v1 stream holds it
                await chat.send("beside a /v1 stream")
                refused = await chat.reply()
                assert refused["error"]["code"] == "too_many_answers", refused
                async for _ in chunks:
                    pass
            await chat.send("after it")
            assert (await chat.answer())[0] == expected_answer(ask("after it"), 8)


async def test_the_daily_token_budget_is_one_pool_with_the_chat(db_settings: Settings,
                                                                redis_actor: object) -> None:
    reserve = server_settings(db_settings).models[MODEL].max_answer_tokens
    async with running_server(db_settings, daily_token_budget=reserve + 2000) as server:
        user = await server.new_user()
        api = client(server, user)
        async with chat_socket(server, user.access_key) as chat:
            async with streaming(api, LONG, stream_options={"include_usage": True}) as chunks:
                # Reserved while it streams: its prompt and the whole answer limit...
                held = await tokens_spent(server, user)
                assert reserve < held < reserve + 100
                # ...so neither the chat nor another request fits beside it.
                await chat.send("beside a /v1 stream")
                refused = await chat.reply()
                assert refused["error"]["code"] == "budget_exceeded", refused
                with pytest.raises(openai.RateLimitError) as info:
                    await in_thread(complete(api, "beside it too"))
                assert info.value.code == "insufficient_quota"
                assert info.value.response.headers["x-should-retry"] == "false"
                rest = [chunk async for chunk in chunks]
            usage = rest[-1].usage
            assert rest[-1].choices == [] and usage is not None
            # Settled to what it spent, as its usage says.
            assert await tokens_spent(server, user) == usage.total_tokens
            assert await in_thread(complete(api, "a small one", max_tokens=5))
            after_small = await tokens_spent(server, user)
            assert usage.total_tokens < after_small < usage.total_tokens + 30
            await chat.send("now the chat fits")  # and spends from the same budget
            assert (await chat.answer())[0] == expected_answer(ask("now the chat fits"), 8)
            before_leaving = await tokens_spent(server, user)
            assert before_leaving > after_small

        def leave() -> None:
            stream = api.chat.completions.create(model=MODEL, messages=ask(LONG),  # type: ignore[arg-type]
                                                 stream=True)
            for i, _ in enumerate(stream):
                if i == 3:
                    break
            stream.close()

        await in_thread(leave)
        # A client that left mid-answer: settled to its prompt and the text read so far.
        with trio.fail_after(2):
            while (spent := await tokens_spent(server, user)) > before_leaving + reserve:
                await trio.sleep(0.02)
        assert before_leaving < spent < before_leaving + 200


# ---- an upstream that reports its own usage ----------------------------------------------


USAGE_EVENTS = (
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":"Counted "}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":"upstream."}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":111,"completion_tokens":7,'
    b'"total_tokens":118}}\n\n'
    b"data: [DONE]\n\n"
)


async def _usage_upstream(stream: trio.SocketStream) -> None:
    """One HTTP/1.1 request per connection, answered with ``USAGE_EVENTS`` (then closed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some()
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += await stream.receive_some()
    await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                          b"connection: close\r\n\r\n" + USAGE_EVENTS)
    await stream.aclose()


async def test_the_upstreams_own_usage_is_reported_and_settled(db_settings: Settings,
                                                                redis_actor: object) -> None:
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, _usage_upstream, 0,
                                                 host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        settings = server_settings(db_settings, openai_base_url=f"http://127.0.0.1:{port}/v1",
                                   daily_token_budget=100_000)
        app = create_app(settings, shutdown_grace=1.0)
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        [url] = await nursery.start(partial(serve, app, config, mode="asgi"))
        server = ChatServer(url=url, mock_url="", settings=settings, app=app)
        user = await server.new_user()
        api = client(server, user)
        whole = await in_thread(lambda: api.chat.completions.create(
            model=MODEL, messages=ask("count it")))
        assert whole.choices[0].message.content == "Counted upstream."
        assert whole.usage is not None
        assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (111, 7)
        chunks = await in_thread(lambda: list(api.chat.completions.create(
            model=MODEL, messages=ask("count it"), stream=True,
            stream_options={"include_usage": True})))
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 118
        assert await tokens_spent(server, user) == 2 * 118
        nursery.cancel_scope.cancel()
