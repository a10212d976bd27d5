"""The mock upstream over real HTTP on 127.0.0.1 (raw httpx as the client)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial

import httpx
import pytest
import trio

from scripts.mock_upstream import (
    continuation_offset,
    expected_answer,
    expected_chunks,
    parse_knobs,
    serve_mock_upstream,
)

TOKENS = 12


@pytest.fixture
async def base(nursery: trio.Nursery) -> str:
    port = await nursery.start(
        partial(serve_mock_upstream, "127.0.0.1", 0, tokens=TOKENS, delay_ms=1, stall_s=30)
    )
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as c:
        yield c


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


async def sse_chunks(
    client: httpx.AsyncClient, base: str, messages: list[dict[str, str]], **extra: object
) -> tuple[list[dict[str, object]], list[str]]:
    """All chunk objects and the raw data lines of one streamed answer."""
    body = {"model": "mock-gpt", "messages": messages, "stream": True, **extra}
    lines: list[str] = []
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line:
                assert line.startswith("data: ")
                lines.append(line[6:])
    assert lines[-1] == "[DONE]"
    return [json.loads(data) for data in lines[:-1]], lines


def contents(chunks: list[dict[str, object]]) -> list[str]:
    out = []
    for chunk in chunks:
        choice = chunk["choices"][0]  # type: ignore[index]
        if choice["delta"].get("content"):
            out.append(choice["delta"]["content"])
    return out


def test_expected_answer_is_deterministic_and_marker_aware() -> None:
    a = expected_answer(user("hello"), 20)
    assert a == expected_answer(user("hello"), 20)
    assert a != expected_answer(user("hello!"), 20)
    assert len(expected_chunks(user("hello"), 20)) == 20
    assert len(expected_chunks(user("hello [mock tokens=7]"), 20)) == 7
    assert "".join(expected_chunks(user("x"), 5)) == expected_answer(user("x"), 5)
    # only the last user message matters
    assert expected_answer([*user("q"), {"role": "assistant", "content": "a"},
                            {"role": "user", "content": "hello"}], 20) == a


def test_knobs_from_model_and_marker() -> None:
    assert parse_knobs(user("hi"), "mock-429x2").status_fault() == (429, 2)
    assert parse_knobs(user("hi [mock fault=503]"), "mock-gpt").status_fault() == (503, None)
    knobs = parse_knobs(user("hi [mock tokens=5 delay_ms=2.5 fault=stall_mid after=1]"),
                        "mock-drop_mid")
    assert (knobs.tokens, knobs.delay_ms, knobs.fault, knobs.after) == (5, 2.5, "stall_mid", 1)
    with pytest.raises(ValueError):
        parse_knobs(user("hi [mock nonsense=1]"))


def test_continuation_offset() -> None:
    messages = user("hi")
    chunks = expected_chunks(messages, 6)
    assert continuation_offset(messages, chunks) == 0
    partial_answer = {"role": "assistant", "content": "".join(chunks[:2])}
    assert continuation_offset([*messages, partial_answer], chunks) == 2
    with pytest.raises(ValueError):
        continuation_offset([*messages, {"role": "assistant", "content": "nope"}], chunks)


async def test_stream_is_one_word_per_chunk_and_deterministic(
    base: str, client: httpx.AsyncClient
) -> None:
    messages = user("tell me something")
    chunks, _ = await sse_chunks(client, base, messages)
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}  # type: ignore[index]
    assert contents(chunks) == list(expected_chunks(messages, TOKENS))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    again, _ = await sse_chunks(client, base, messages)
    assert contents(again) == contents(chunks)
    stats = (await client.get(f"{base}/mock/stats")).json()
    assert stats["connections_total"] == 1  # keep-alive: one connection for all requests
    assert stats["answers_completed"] == 2


async def test_marker_sets_length(base: str, client: httpx.AsyncClient) -> None:
    messages = user("long one [mock tokens=40 delay_ms=0]")
    chunks, _ = await sse_chunks(client, base, messages)
    assert "".join(contents(chunks)) == expected_answer(messages, TOKENS)
    assert len(contents(chunks)) == 40


async def test_non_streaming_completion(base: str, client: httpx.AsyncClient) -> None:
    messages = user("whole please")
    response = await client.post(f"{base}/v1/chat/completions",
                                 json={"model": "gpt-4o", "messages": messages})
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o"
    assert body["choices"][0]["message"] == {"role": "assistant",
                                             "content": expected_answer(messages, TOKENS)}
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_models(base: str, client: httpx.AsyncClient) -> None:
    body = (await client.get(f"{base}/v1/models")).json()
    assert body["object"] == "list"
    assert "mock-gpt" in [m["id"] for m in body["data"]]


async def test_records_requests_with_user_field(base: str, client: httpx.AsyncClient) -> None:
    await sse_chunks(client, base, user("who am i"), user="opaque-42")
    recorded = (await client.get(f"{base}/mock/requests?n=1")).json()["requests"]
    assert recorded[0]["body"]["user"] == "opaque-42"
    assert recorded[0]["has_auth"] is False
    await client.post(f"{base}/mock/reset")
    assert (await client.get(f"{base}/mock/requests")).json()["requests"] == []


async def test_rate_limit_then_success(base: str, client: httpx.AsyncClient) -> None:
    body = {"model": "mock-429x2", "messages": user("limit me"), "stream": True}
    url = f"{base}/v1/chat/completions"
    for _ in range(2):
        response = await client.post(url, json=body)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
    response = await client.post(url, json={**body, "stream": False})
    assert response.status_code == 200
    server_error = await client.post(url, json={"model": "mock-500", "messages": user("x")})
    assert server_error.status_code == 500


async def test_length_continuation_protocol(base: str, client: httpx.AsyncClient) -> None:
    messages = user("cut me [mock fault=length]")
    first, _ = await sse_chunks(client, base, messages)
    assert first[-1]["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
    partial_text = "".join(contents(first))
    rest, _ = await sse_chunks(
        client, base, [*messages, {"role": "assistant", "content": partial_text}]
    )
    assert rest[-1]["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    assert partial_text + "".join(contents(rest)) == expected_answer(messages, TOKENS)
    bad = await client.post(f"{base}/v1/chat/completions", json={
        "model": "m", "messages": [*messages, {"role": "assistant", "content": "wrong"}]})
    assert bad.status_code == 400


async def test_max_tokens_cuts_with_length(base: str, client: httpx.AsyncClient) -> None:
    chunks, _ = await sse_chunks(client, base, user("short"), max_tokens=4)
    assert len(contents(chunks)) == 4
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"  # type: ignore[index]


async def test_drop_mid_closes_the_connection(base: str, client: httpx.AsyncClient) -> None:
    body = {"model": "mock-drop_mid", "messages": user("drop"), "stream": True}
    got: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                got.append(line)
    assert sum('"content":' in line and '"role"' not in line for line in got) == 3


async def test_require_key(nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
    port = await nursery.start(partial(serve_mock_upstream, "127.0.0.1", 0, require_key="*"))
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"model": "m", "messages": user("hi [mock delay_ms=0]")}
    assert (await client.post(url, json=body)).status_code == 401
    ok = await client.post(url, json=body, headers={"Authorization": "Bearer sk-x"})
    assert ok.status_code == 200


async def test_many_concurrent_streams(base: str) -> None:
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=None)) as c:
        results: dict[int, str] = {}

        async def one(i: int) -> None:
            chunks, _ = await sse_chunks(c, base, user(f"n{i}"))
            results[i] = "".join(contents(chunks))

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(one, i)
    assert all(results[i] == expected_answer(user(f"n{i}"), TOKENS) for i in range(100))


async def paced_arrivals(client: httpx.AsyncClient, base: str, text: str) -> list[float]:
    """When each content chunk of one streamed answer arrived, from the request."""
    body = {"model": "mock-gpt", "messages": user(text), "stream": True}
    start, times = trio.current_time(), []
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"role"' not in line:
                times.append(trio.current_time() - start)
    return times


async def test_chunks_are_paced_one_per_delay_streams_side_by_side(
        base: str, client: httpx.AsyncClient) -> None:
    """The mock's one pacer serves every stream: each chunk when it is due, not earlier, with
    streams of different paces side by side."""
    async with httpx.AsyncClient(timeout=10) as other:
        found: dict[str, list[float]] = {}

        async def run(name: str, c: httpx.AsyncClient, text: str) -> None:
            found[name] = await paced_arrivals(c, base, text)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "slow", client, "slow [mock tokens=4 delay_ms=150]")
            nursery.start_soon(run, "fast", other, "fast [mock tokens=20 delay_ms=10]")
    slow, fast = found["slow"], found["fast"]
    assert len(slow) == 4 and len(fast) == 20
    for times, delay in ((slow, 0.15), (fast, 0.01)):
        for k, at in enumerate(times):
            assert at >= (k + 1) * delay - 0.005, (k, at, times)  # never early
    # the fast one was not held until the slow one's next chunk was due
    assert fast[0] < 0.1 and fast[-1] < slow[1]
    assert slow[-1] < 0.6 + 1.0  # nor the slow one lost
