"""The OpenAI-compatible API (``/v1``) end to end, with the official ``openai`` package as the
client: real Hypercorn, Redis and MariaDB, the mock upstream over HTTP.

The sync client runs in a worker thread (``trio.to_thread``), the async one on its own asyncio
loop in a worker thread; the server runs in the test's Trio loop (``tests/chat_server.py``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
import trio

from chat_actors.tokens import REPLY_PRIMING_TOKENS, count_message_tokens, count_tokens
from core.settings import Settings
from scripts.mock_upstream import expected_answer
from tests.chat_server import PASSWORD, ChatServer, User, running_server
from tests.web.conftest_page import live_server
from web.access_control import PathClass, classify
from web.openai_schemas import ChatCompletion, ChatCompletionChunk, ModelList, OpenAIErrorBody

T = TypeVar("T")
MODEL = "gpt-4o-mini"


@pytest.fixture
async def server(db_settings: Settings, redis_actor: object) -> AsyncIterator[ChatServer]:
    async with running_server(db_settings) as running:
        yield running


def api_key(user: User) -> str:
    return f"{user.access_key}.{user.secret_key}"


def client(server: ChatServer, user: User | None = None, *, key: str | None = None,
           ) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or api_key(user),  # type: ignore[arg-type]
                         max_retries=0, timeout=20)


def async_client(server: ChatServer, user: User) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=api_key(user),
                              max_retries=0, timeout=20)


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def prompt_tokens(messages: list[dict[str, str]], model: str = MODEL) -> int:
    return REPLY_PRIMING_TOKENS + sum(count_message_tokens(m["content"], m["role"], model)
                                      for m in messages)


async def mock_stats(server: ChatServer) -> dict[str, int]:
    async with httpx.AsyncClient() as http:
        stats: dict[str, int] = (await http.get(f"{server.mock_url}/mock/stats")).json()
        return stats


async def mock_requests(server: ChatServer, n: int = 1) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        body = (await http.get(f"{server.mock_url}/mock/requests", params={"n": n})).json()
        requests: list[dict[str, Any]] = body["requests"]
        return requests


# ---- answers ---------------------------------------------------------------------------


async def test_sync_client_gets_the_whole_answer_with_usage(server: ChatServer,
                                                            user: User) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *ask("Hello over /v1")]
    completion = await in_thread(lambda: client(server, user).chat.completions.create(
        model=MODEL, messages=messages))  # type: ignore[arg-type]
    text = expected_answer(messages, 8)
    assert completion.object == "chat.completion" and completion.model == MODEL
    assert completion.id.startswith("chatcmpl-")
    [choice] = completion.choices
    assert choice.message.role == "assistant" and choice.message.content == text
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == prompt_tokens(messages)
    assert completion.usage.completion_tokens == count_tokens(text, MODEL)
    assert completion.usage.total_tokens == (completion.usage.prompt_tokens
                                             + completion.usage.completion_tokens)
    # The upstream got the messages, the answer limit, a request for its usage, no email.
    [sent] = await mock_requests(server)
    body = sent["body"]
    assert body["messages"] == messages and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == server.settings.models[MODEL].max_answer_tokens
    assert body["user"].startswith("u-") and user.email not in json.dumps(body)


async def test_sync_client_streams_chunks_then_usage(server: ChatServer, user: User) -> None:
    messages = ask("stream it [mock tokens=40 delay_ms=5]")

    def run() -> list[Any]:
        stream = client(server, user).chat.completions.create(
            model=MODEL, messages=messages, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True})
        return list(stream)

    chunks = await in_thread(run)
    text = expected_answer(messages, 8)
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    *with_choices, last = chunks
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == text
    assert len(with_choices) > 3  # streamed, not one block
    assert [c.choices[0].finish_reason for c in with_choices][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert all(c.usage is None for c in with_choices)
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == prompt_tokens(messages)
    assert last.usage.completion_tokens == count_tokens(text, MODEL)


async def test_a_stream_without_include_usage_has_no_usage_chunk(server: ChatServer,
                                                                 user: User) -> None:
    messages = ask("no usage please")

    def run() -> list[Any]:
        return list(client(server, user).chat.completions.create(
            model=MODEL, messages=messages, stream=True))  # type: ignore[arg-type]

    chunks = await in_thread(run)
    assert all(c.choices and c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected_answer(
        messages, 8)


async def test_async_client_on_asyncio_streams_and_completes(server: ChatServer,
                                                             user: User) -> None:
    messages = ask("async over asyncio")

    async def run() -> tuple[str, str, int]:
        async with async_client(server, user) as api:
            whole = await api.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
            parts, usage = [], 0
            stream = await api.chat.completions.create(
                model=MODEL, messages=messages, stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True})
            async for chunk in stream:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                elif chunk.usage is not None:
                    usage = chunk.usage.total_tokens
            return whole.choices[0].message.content or "", "".join(parts), usage

    whole, streamed, usage = await in_thread(lambda: asyncio.run(run()))
    text = expected_answer(messages, 8)
    assert whole == streamed == text
    assert usage == prompt_tokens(messages) + count_tokens(text, MODEL)


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(server: ChatServer,
                                                                    user: User) -> None:
    messages = ask("cut me short [mock tokens=50]")
    completion = await in_thread(lambda: client(server, user).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=5))  # type: ignore[arg-type]
    words = expected_answer(messages, 8).split(" ")
    assert completion.choices[0].message.content == " ".join(words[:5])
    assert completion.choices[0].finish_reason == "length"
    assert len(await mock_requests(server, 10)) == 1  # no continuation behind the client's back


async def test_the_supported_parameters_reach_the_upstream(server: ChatServer,
                                                          user: User) -> None:
    messages: Any = [
        {"role": "developer", "content": "Answer in words."},
        {"role": "user", "name": "ann", "content": [{"type": "text", "text": "in "},
                                                    {"type": "text", "text": "parts"}]},
    ]
    completion = await in_thread(lambda: client(server, user).chat.completions.create(
        model=MODEL, messages=messages, temperature=0.5, top_p=0.9, presence_penalty=0.1,
        frequency_penalty=0.2, max_completion_tokens=50, stop=["\n\n"], seed=7,
        response_format={"type": "text"}, user="someone@example.com"))
    flat = [{"role": "developer", "content": "Answer in words."},
            {"role": "user", "name": "ann", "content": "in parts"}]
    assert completion.choices[0].message.content == expected_answer(flat, 8)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == REPLY_PRIMING_TOKENS + sum(
        count_message_tokens(m["content"], m["role"], MODEL, m.get("name")) for m in flat)
    [sent] = await mock_requests(server)
    body = sent["body"]
    assert body["messages"] == flat
    assert {k: body[k] for k in ("temperature", "top_p", "presence_penalty",
                                 "frequency_penalty", "max_tokens", "stop", "seed",
                                 "response_format")} == {
        "temperature": 0.5, "top_p": 0.9, "presence_penalty": 0.1, "frequency_penalty": 0.2,
        "max_tokens": 50, "stop": ["\n\n"], "seed": 7, "response_format": {"type": "text"}}
    assert "someone@example.com" not in json.dumps(body)  # the client's `user` is not sent


async def test_content_filter_ends_the_answer_with_its_finish_reason(server: ChatServer,
                                                                     user: User) -> None:
    messages = ask("filtered [mock fault=content_filter after=3]")
    completion = await in_thread(lambda: client(server, user).chat.completions.create(
        model=MODEL, messages=messages))  # type: ignore[arg-type]
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.content == " ".join(
        expected_answer(messages, 8).split(" ")[:3])


async def test_models_are_the_model_table(server: ChatServer, user: User) -> None:
    api = client(server, user)
    models = await in_thread(lambda: api.models.list())
    assert [m.id for m in models.data] == list(server.settings.models)
    assert all(m.object == "model" for m in models.data)
    one = await in_thread(lambda: api.models.retrieve(MODEL))
    assert one.id == MODEL
    with pytest.raises(openai.NotFoundError) as info:
        await in_thread(lambda: api.models.retrieve("no-such-model"))
    assert info.value.code == "model_not_found"


async def test_objects_match_their_documented_schemas(server: ChatServer, user: User) -> None:
    headers = {"Authorization": f"Bearer {api_key(user)}"}
    async with httpx.AsyncClient(base_url=f"{server.url}/v1", headers=headers,
                                 timeout=20) as http:
        r = await http.post("/chat/completions", json={"model": MODEL, "messages": ask("raw")})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        ChatCompletion.model_validate(r.json())
        async with http.stream("POST", "/chat/completions", json={
                "model": MODEL, "messages": ask("raw stream"), "stream": True,
                "stream_options": {"include_usage": True}}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = [line async for line in r.aiter_lines() if line]
        assert events[-1] == "data: [DONE]"
        for event in events[:-1]:
            assert event.startswith("data: ")
            ChatCompletionChunk.model_validate_json(event[len("data: "):])
        ModelList.model_validate((await http.get("/models")).json())


async def test_the_routes_are_in_the_openapi_document(server: ChatServer) -> None:
    async with httpx.AsyncClient() as http:
        doc = (await http.get(f"{server.url}/openapi.json")).json()
    assert {"/v1/chat/completions", "/v1/models"} <= set(doc["paths"])
    post = doc["paths"]["/v1/chat/completions"]["post"]
    assert "requestBody" in post and {"200", "401", "404", "429", "502"} <= set(post["responses"])
    assert post["security"] == [{"openai_key": []}]
    assert doc["components"]["securitySchemes"]["openai_key"]["scheme"] == "bearer"
    assert not any(path.startswith("/v1/{") for path in doc["paths"])  # the catch-all is hidden


# ---- errors ----------------------------------------------------------------------------


def test_v1_is_its_own_path_class() -> None:
    for path in ("/v1", "/v1/", "/v1/chat/completions", "/v1/models/gpt-4o"):
        assert classify(path) is PathClass.OPENAI, path
    for path in ("/v1x", "/api/v1", "/v2/models"):
        assert classify(path) is PathClass.USER, path


async def test_bad_keys_are_authentication_errors(server: ChatServer, user: User) -> None:
    for key in (f"{user.access_key}.wrong-secret", f"unknown-key.{user.secret_key}",
                user.access_key, user.jwt.removeprefix("Bearer ")):
        with pytest.raises(openai.AuthenticationError) as info:
            await in_thread(lambda key=key: client(server, key=key).chat.completions.create(  # type: ignore[misc]
                model=MODEL, messages=ask("hi")))
        assert info.value.status_code == 401 and info.value.code == "invalid_api_key", key
        assert info.value.type == "invalid_request_error"
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{server.url}/v1/models")  # no key at all; no JWT accepted either
        r2 = await http.get(f"{server.url}/v1/models", headers={"Authorization": user.jwt})
    for response in (r, r2):
        assert response.status_code == 401
        OpenAIErrorBody.model_validate(response.json())
    assert r.json()["error"]["code"] == "missing_api_key"
    assert (await mock_stats(server))["requests_total"] == 0


async def test_a_disabled_key_and_an_address_outside_the_allow_list_are_refused(
        server: ChatServer, user: User) -> None:
    jwt = {"Authorization": user.jwt}
    async with httpx.AsyncClient(base_url=server.url, headers=jwt) as http:
        r = await http.post(f"/api/user/apikeys/{user.key_id}/whitelists",
                            json={"ip_address": "203.0.113.7"})
        assert r.status_code in (200, 201), r.text
    with pytest.raises(openai.PermissionDeniedError) as info:
        await in_thread(lambda: client(server, user).models.list())
    assert info.value.code == "ip_not_allowed"
    async with httpx.AsyncClient(base_url=server.url, headers=jwt) as http:
        r = await http.put(f"/api/user/apikeys/{user.key_id}", json={"status": "disabled"})
        assert r.status_code == 200, r.text
    with pytest.raises(openai.PermissionDeniedError) as info:
        await in_thread(lambda: client(server, user).models.list())
    assert info.value.code == "key_disabled"
    # A wrong secret is still 401: the key's state is told only to its holder.
    with pytest.raises(openai.AuthenticationError):
        await in_thread(lambda: client(server, key=f"{user.access_key}.x").models.list())


async def test_an_unknown_model_is_not_found(server: ChatServer, user: User) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await in_thread(lambda: client(server, user).chat.completions.create(
            model="no-such-model", messages=ask("hi")))
    assert info.value.code == "model_not_found" and info.value.param == "model"
    assert (await mock_stats(server))["requests_total"] == 0


async def test_bad_bodies_are_bad_requests(server: ChatServer, user: User) -> None:
    api = client(server, user)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"messages": []}, "messages", "invalid_value"),
        ({"temperature": 3}, "temperature", "invalid_value"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools",
         "unknown_parameter"),
        ({"n": 2}, "n", "invalid_value"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
         "messages.0.content", "invalid_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ({"max_tokens": 10**6}, "max_tokens", "invalid_value"),
        ({"messages": [{"role": "user", "content": "x " * 200_000}]}, "messages",
         "context_length_exceeded"),
    ]
    for change, param, code in cases:
        kwargs: dict[str, Any] = {"model": MODEL, "messages": ask("hi"), **change}
        with pytest.raises(openai.BadRequestError) as info:
            await in_thread(lambda kwargs=kwargs: api.chat.completions.create(**kwargs))  # type: ignore[misc]
        assert (info.value.param, info.value.code) == (param, code), change
    headers = {"Authorization": f"Bearer {api_key(user)}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=f"{server.url}/v1", headers=headers) as http:
        broken = await http.post("/chat/completions", content=b'{"model": ')
        missing = await http.post("/chat/completions", json={"messages": ask("hi")})
        unknown = await http.get("/no/such/route")
        wrong_method = await http.get("/chat/completions")
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "malformed_json"
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "missing_required_parameter"
    for response in (unknown, wrong_method):
        assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_url"
    for response in (broken, missing, unknown, wrong_method):
        OpenAIErrorBody.model_validate(response.json())
    assert (await mock_stats(server))["requests_total"] == 0


async def test_upstream_failures_are_502_and_504_streamed_or_not(server: ChatServer,
                                                                 user: User) -> None:
    api = client(server, user)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as info:
            await in_thread(lambda stream=stream: api.chat.completions.create(  # type: ignore[misc]
                model=MODEL, messages=ask(f"down {stream} [mock fault=500]"), stream=stream))
        assert info.value.status_code == 502 and info.value.code == "upstream_error"
        assert info.value.response.headers["x-should-retry"] == "false"
        with pytest.raises(openai.InternalServerError) as info:
            await in_thread(lambda stream=stream: api.chat.completions.create(  # type: ignore[misc]
                model=MODEL, messages=ask(f"slow {stream} [mock fault=stall_first stall_s=5]"),
                stream=stream))
        assert info.value.status_code == 504 and info.value.code == "upstream_timeout"


async def test_a_stream_that_breaks_midway_ends_with_an_error_event(server: ChatServer,
                                                                    user: User) -> None:
    messages = ask("break [mock fault=drop_mid after=3 tokens=20]")
    got: list[str] = []

    def run() -> None:
        stream = client(server, user).chat.completions.create(
            model=MODEL, messages=messages, stream=True)  # type: ignore[arg-type]
        for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as info:
        await in_thread(run)
    assert info.value.code == "upstream_error"
    assert "".join(got) == " ".join(expected_answer(messages, 8).split(" ")[:3])


# ---- a client that leaves --------------------------------------------------------------


async def test_a_client_that_leaves_mid_stream_aborts_the_upstream_request_at_once(
        db_settings: Settings, redis_actor: object) -> None:
    async with running_server(db_settings, chat_answers_at_once=1) as server:
        user = await server.new_user()
        api = client(server, user)
        left = trio.Event()

        def leave() -> None:
            stream = api.chat.completions.create(
                model=MODEL, messages=ask("a long one [mock tokens=400 delay_ms=20]"),
                stream=True)
            for i, _ in enumerate(stream):
                if i == 3:
                    break
            stream.close()  # the connection goes with it

        await in_thread(leave)
        left.set()
        started = trio.current_time()
        with trio.fail_after(2):
            while (await mock_stats(server))["answers_aborted"] < 1:
                await trio.sleep(0.02)
        assert trio.current_time() - started < 1.0
        stats = await mock_stats(server)
        assert stats["streams_active"] == 0 and stats["answers_completed"] == 0
        # Its answer slot went back at once: the one slot the user has is free again.
        completion = await in_thread(lambda: api.chat.completions.create(
            model=MODEL, messages=ask("next")))
        assert completion.choices[0].message.content == expected_answer(ask("next"), 8)


async def test_a_client_that_leaves_before_the_answer_aborts_it_too(
        db_settings: Settings, redis_actor: object) -> None:
    """A whole-answer request, and a stream whose upstream has sent nothing yet: the client
    gives up (its timeout) while the server still waits, and the upstream request ends."""
    async with running_server(db_settings, chat_answers_at_once=1,
                              upstream_first_byte_timeout=30) as server:
        user = await server.new_user()
        api = openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key(user), max_retries=0,
                            timeout=0.5)
        for aborted, (text, stream) in enumerate(
                [("long [mock tokens=400 delay_ms=20]", False),
                 ("silent [mock fault=stall_first stall_s=20]", True)], 1):
            with pytest.raises(openai.APITimeoutError):
                await in_thread(lambda text=text, stream=stream: api.chat.completions.create(  # type: ignore[misc]
                    model=MODEL, messages=ask(text), stream=stream))
            with trio.fail_after(2):
                while (await mock_stats(server))["answers_aborted"] < aborted:
                    await trio.sleep(0.02)
        assert (await mock_stats(server))["streams_active"] == 0
        # The one answer slot is free again.
        completion = await in_thread(lambda: client(server, user).chat.completions.create(
            model=MODEL, messages=ask("next")))
        assert completion.choices[0].message.content == expected_answer(ask("next"), 8)


# ---- the deployed process ----------------------------------------------------------------


def test_the_readme_example_against_a_real_server_process(tmp_path: Path) -> None:
    """``hypercorn --worker-class trio web.asgi:app`` as deployed (tests/web/conftest_page.py),
    driven from plain sync code with both clients, as the README shows it."""
    with live_server(tmp_path / "logs", mock_tokens=12, mock_delay_ms=5) as live:
        with httpx.Client(base_url=live.url) as http:
            r = http.post("/api/auth/register/email",
                          json={"email": "readme@example.com", "password": PASSWORD})
            jwt = r.json()["Authorization"]
            key = http.post("/api/user/apikeys", json={}, headers={"Authorization": jwt}).json()
        api = openai.OpenAI(base_url=f"{live.url}/v1",
                            api_key=f"{key['access_key']}.{key['secret_key']}", max_retries=0)
        messages: Any = ask("Hello!")
        answer = api.chat.completions.create(model=MODEL, messages=messages)
        text = expected_answer(messages, 12)
        assert answer.choices[0].message.content == text and answer.usage is not None
        parts, usage = [], None
        for chunk in api.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}):
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
            else:
                usage = chunk.usage
        assert "".join(parts) == text and usage == answer.usage

        async def with_async_client() -> str:
            async with openai.AsyncOpenAI(base_url=api.base_url, api_key=api.api_key,
                                          max_retries=0) as async_api:
                whole = await async_api.chat.completions.create(model=MODEL, messages=messages)
                return whole.choices[0].message.content or ""

        assert asyncio.run(with_async_client()) == text
        stream = api.chat.completions.create(
            model=MODEL, messages=ask("leave [mock tokens=400 delay_ms=20]"), stream=True)
        next(iter(stream))
        stream.close()
        deadline = time.monotonic() + 2
        while httpx.get(f"{live.mock_url}/mock/stats").json()["answers_aborted"] < 1:
            assert time.monotonic() < deadline, live.logs()
            time.sleep(0.02)
