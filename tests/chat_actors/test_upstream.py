"""The upstream client against the mock upstream over real HTTP on 127.0.0.1 (no httpx mocks)."""

from __future__ import annotations

import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial

import httpx
import pytest
import trio

from chat_actors.upstream import ChatRequest, FinishInfo, UpstreamClient, open_upstream
from chat_actors.upstream_types import backoff_delay, parse_chunk, retry_after_seconds
from core.errors import (
    UpstreamContentFilter,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from core.settings import Settings, load_settings
from scripts.mock_upstream import expected_answer, expected_chunks, serve_mock_upstream

TOKENS = 16


def make_settings(base_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "openai_base_url": base_url, "openai_api_key": "sk-test", "upstream_clients": 4,
        "upstream_connect_timeout": 2.0, "upstream_first_byte_timeout": 0.5,
        "upstream_chunk_gap_timeout": 0.3, "upstream_retries": 3, "upstream_backoff_base": 0.01,
        "upstream_max_continuations": 2, "delta_interval": 0.0,  # unpaced reads
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
async def base(nursery: trio.Nursery) -> str:
    port = await nursery.start(partial(
        serve_mock_upstream, "127.0.0.1", 0, tokens=TOKENS, delay_ms=1, stall_s=30,
        require_key="sk-test",
    ))
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def upstream(base: str) -> AsyncIterator[UpstreamClient]:
    async with open_upstream(make_settings(base + "/v1"), retry_after_cap=0.05) as client:
        yield client


async def mock_get(base: str, path: str) -> dict[str, object]:
    async with httpx.AsyncClient() as client:
        body: dict[str, object] = (await client.get(base + path)).json()
        return body


def ask(text: str, model: str = "mock-gpt", **extra: object) -> ChatRequest:
    return ChatRequest(model, [{"role": "system", "content": "sys"},
                               {"role": "user", "content": text}], **extra)  # type: ignore[arg-type]


async def run(upstream: UpstreamClient, request: ChatRequest) -> tuple[list[str], FinishInfo]:
    deltas: list[str] = []

    async def send(delta: str) -> None:
        deltas.append(delta)

    return deltas, await upstream.stream(request, send)


async def run_failing(
    upstream: UpstreamClient, request: ChatRequest, error: type[Exception]
) -> tuple[list[str], pytest.ExceptionInfo[Exception]]:
    deltas: list[str] = []

    async def send(delta: str) -> None:
        deltas.append(delta)

    with pytest.raises(error) as info:
        await upstream.stream(request, send)
    return deltas, info


def assert_whole_chunks(deltas: list[str], chunks: Sequence[str]) -> None:
    """Each delta is one or more of the upstream's chunks, in order, nothing else: what one
    network read brought goes on as one delta."""
    rest = list(chunks)
    for delta in deltas:
        taken = ""
        while rest and len(taken) < len(delta):
            taken += rest.pop(0)
        assert delta == taken
    assert rest == []


async def test_streams_the_exact_answer(upstream: UpstreamClient, base: str) -> None:
    request = ask("hello", user="opaque-7", temperature=0.5, max_tokens=100)
    deltas, info = await run(upstream, request)
    assert_whole_chunks(deltas, expected_chunks(request.messages, TOKENS))
    assert info == FinishInfo(expected_answer(request.messages, TOKENS), "stop", 0, 0)
    assert upstream.in_flight == 0 and upstream.requests_in_flight == 0
    recorded = (await mock_get(base, "/mock/requests?n=1"))["requests"]
    body = recorded[0]["body"]  # type: ignore[index]
    assert body["user"] == "opaque-7" and body["stream"] is True and body["temperature"] == 0.5
    assert recorded[0]["has_auth"] is True  # type: ignore[index]


async def test_paced_reads_hold_a_lone_token_but_never_the_first() -> None:
    # 16 tokens 10 ms apart, reads paced at 0.4 s: the first token goes on at once; the rest
    # arrives in the kernel meanwhile and is read and delivered in one go 0.4 s later.
    async with serve_paced(tokens=16, delay_ms=10) as (upstream, deltas, times):
        request = ask("pace me", model="mock-gpt")
        start = trio.current_time()
        info = await upstream.stream(request, deltas_at(deltas, times))
    assert_whole_chunks(deltas, expected_chunks(request.messages, 16))
    assert info.text == "".join(deltas)
    assert times[0] - start < 0.3
    later = times[1:]
    assert later and min(later) - times[0] >= 0.39
    # read in one go, and delivered as one delta per network read (a pause of the process
    # mid-read may split it: that only delays)
    assert sum(t - min(later) < 0.1 for t in later) >= len(later) / 2
    assert len(deltas) <= 3, deltas


async def test_paced_reads_never_hold_a_slow_stream() -> None:
    # Tokens 0.3 s apart, interval 0.25 s: each token arrives more than an interval after the
    # last delivery, so it goes on as soon as it is read, not 0.25 s later.
    async with serve_paced(tokens=5, delay_ms=300, interval=0.25,
                           upstream_chunk_gap_timeout=2.0) as (upstream, deltas, times):
        request = ask("slow", model="mock-gpt")
        await upstream.stream(request, deltas_at(deltas, times))
    assert_whole_chunks(deltas, expected_chunks(request.messages, 5))
    assert len(deltas) == 5
    late = [t - times[0] - 0.3 * i for i, t in enumerate(times)]
    assert max(late) < 0.2, late


async def test_paced_read_delivers_the_text_before_a_malformed_event() -> None:
    async with serve_paced(tokens=16, delay_ms=1) as (upstream, deltas, times):
        request = ask("garbage [mock fault=malformed]")
        with pytest.raises(UpstreamError, match="malformed"):
            await upstream.stream(request, deltas_at(deltas, times))
    assert "".join(deltas) == "".join(expected_chunks(request.messages)[:3])


@asynccontextmanager
async def serve_paced(
    *, tokens: int, delay_ms: float, interval: float = 0.4, **overrides: object
) -> AsyncIterator[tuple[UpstreamClient, list[str], list[float]]]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_mock_upstream, "127.0.0.1", 0, tokens=tokens,
                                           delay_ms=delay_ms, require_key="sk-test"))
        settings = make_settings(f"http://127.0.0.1:{port}/v1", delta_interval=interval,
                                 **overrides)
        async with open_upstream(settings) as upstream:
            yield upstream, [], []
        nursery.cancel_scope.cancel()


def deltas_at(deltas: list[str], times: list[float]) -> Callable[[str], Awaitable[None]]:
    async def send(delta: str) -> None:
        deltas.append(delta)
        times.append(trio.current_time())

    return send


async def test_keep_alive_connection_is_reused(upstream: UpstreamClient, base: str) -> None:
    for i in range(3):
        await run(upstream, ask(f"again {i}"))
    assert upstream.idle_connections == 1
    # one connection for the three answers, one for this stats request
    assert (await mock_get(base, "/mock/stats"))["connections_total"] == 2


def test_user_must_not_be_an_email() -> None:
    with pytest.raises(ValueError):
        ask("hi", user="someone@example.com")


@pytest.mark.parametrize("fault", ["429x2", "500x2", "503x1"])
async def test_retries_until_success(upstream: UpstreamClient, fault: str) -> None:
    request = ask(f"retry {fault}", model=f"mock-{fault}")
    deltas, info = await run(upstream, request)
    assert "".join(deltas) == info.text == expected_answer(request.messages, TOKENS)
    assert info.retries == int(fault[-1])


async def test_rate_limited_after_the_retries(upstream: UpstreamClient, base: str) -> None:
    deltas, _ = await run_failing(upstream, ask("limit [mock fault=429x9]"), UpstreamRateLimited)
    assert deltas == []
    assert (await mock_get(base, "/mock/stats"))["requests_total"] == 4  # 1 + 3 retries


async def test_server_errors_after_the_retries(upstream: UpstreamClient) -> None:
    _, info = await run_failing(upstream, ask("boom [mock fault=500]"), UpstreamError)
    assert not isinstance(info.value, UpstreamRateLimited)


async def test_retry_after_is_honoured(base: str) -> None:
    async with open_upstream(make_settings(base + "/v1"), retry_after_cap=5) as upstream:
        start = trio.current_time()
        await run(upstream, ask("wait [mock fault=429x1 retry_after=1]"))
        assert 0.9 <= trio.current_time() - start < 4


async def test_retry_after_is_capped(upstream: UpstreamClient) -> None:
    start = trio.current_time()
    await run(upstream, ask("wait [mock fault=429x2 retry_after=60]"))
    assert trio.current_time() - start < 2


async def test_client_errors_are_not_retried(base: str) -> None:
    settings = make_settings(base + "/v1", openai_api_key="wrong")
    async with open_upstream(settings) as upstream:
        _, info = await run_failing(upstream, ask("hi"), UpstreamError)
    assert "401" in str(info.value)
    assert (await mock_get(base, "/mock/stats"))["requests_total"] == 1


async def test_connect_error_after_retries() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with open_upstream(make_settings(f"http://127.0.0.1:{port}/v1")) as upstream:
        with trio.fail_after(5):
            await run_failing(upstream, ask("anyone?"), UpstreamError)


async def test_stall_before_first_byte_times_out(upstream: UpstreamClient, base: str) -> None:
    start = trio.current_time()
    deltas, _ = await run_failing(upstream, ask("stall [mock fault=stall_first]"),
                                  UpstreamTimeout)
    assert deltas == [] and 0.4 < trio.current_time() - start < 3
    assert (await mock_get(base, "/mock/stats"))["requests_total"] == 1  # timeouts: no retry


async def test_stall_mid_times_out_keeping_the_partial(upstream: UpstreamClient) -> None:
    request = ask("stall later [mock fault=stall_mid]")
    deltas, _ = await run_failing(upstream, request, UpstreamTimeout)
    assert_whole_chunks(deltas, expected_chunks(request.messages, TOKENS)[:3])


async def test_drop_mid_raises_after_the_partial(upstream: UpstreamClient, base: str) -> None:
    request = ask("drop [mock fault=drop_mid after=5]")
    deltas, info = await run_failing(upstream, request, UpstreamError)
    assert not isinstance(info.value, UpstreamTimeout)
    assert_whole_chunks(deltas, expected_chunks(request.messages, TOKENS)[:5])
    assert (await mock_get(base, "/mock/stats"))["requests_total"] == 1  # no retry after a delta


async def test_malformed_chunk_is_an_error(upstream: UpstreamClient) -> None:
    request = ask("garbage [mock fault=malformed]")
    deltas, info = await run_failing(upstream, request, UpstreamError)
    assert "malformed" in str(info.value)
    assert_whole_chunks(deltas, expected_chunks(request.messages, TOKENS)[:3])


async def test_length_is_continued_without_duplicates(upstream: UpstreamClient) -> None:
    request = ask("long [mock fault=length tokens=30]")
    deltas, info = await run(upstream, request)
    assert "".join(deltas) == info.text == expected_answer(request.messages, TOKENS)
    assert (info.finish_reason, info.continuations) == ("stop", 1)


async def test_length_continuations_are_bounded(upstream: UpstreamClient) -> None:
    request = ask("very long [mock fault=length tokens=30 length_after=4]")
    deltas, info = await run(upstream, request)
    assert (info.finish_reason, info.continuations) == ("length", 2)
    assert "".join(deltas) == "".join(expected_chunks(request.messages)[:12])


async def test_content_filter_raises(upstream: UpstreamClient) -> None:
    await run_failing(upstream, ask("naughty", model="mock-content_filter"),
                      UpstreamContentFilter)


async def test_cancel_closes_the_upstream_connection(
    upstream: UpstreamClient, base: str
) -> None:
    request = ask("slow [mock tokens=500 delay_ms=20]")
    deltas: list[str] = []
    with trio.CancelScope() as scope:

        async def send(delta: str) -> None:
            deltas.append(delta)
            if len(deltas) == 3:
                scope.cancel()

        await upstream.stream(request, send)
    assert len(deltas) == 3 and upstream.in_flight == 0
    with trio.fail_after(2):  # the mock sees the client hang up well before the answer's 10 s
        while (await mock_get(base, "/mock/stats"))["answers_aborted"] != 1:
            await trio.sleep(0.02)
    assert (await mock_get(base, "/mock/stats"))["streams_active"] == 0


async def test_300_concurrent_streams_are_exact(base: str) -> None:
    """Correctness under concurrency (generous timeouts: the 2 cores are shared)."""
    settings = make_settings(base + "/v1", upstream_first_byte_timeout=30,
                             upstream_chunk_gap_timeout=30)
    async with open_upstream(settings) as upstream:
        await _300_streams(upstream)


async def _300_streams(upstream: UpstreamClient) -> None:
    results: dict[int, str] = {}
    peak = 0

    async def one(i: int) -> None:
        nonlocal peak
        _, info = await run(upstream, ask(f"question {i} [mock delay_ms=5]"))
        peak = max(peak, upstream.in_flight)
        results[i] = info.text

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(one, i)
    assert peak > 100
    for i in range(300):
        assert results[i] == expected_answer(ask(f"question {i} [mock delay_ms=5]").messages,
                                             TOKENS)


def test_parse_chunk() -> None:
    chunk = parse_chunk('{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}')
    assert (chunk.delta, chunk.finish_reason) == ("hi", None)
    assert parse_chunk('{"choices":[],"usage":{"total_tokens":3}}').delta == ""
    for bad in ["{not json", "[1]", '{"error":{"message":"x"}}', '{"choices":[{"delta":1}]}']:
        with pytest.raises(UpstreamError):
            parse_chunk(bad)


def test_backoff_and_retry_after() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, 0.5, 8.0, rng) for n in range(8)]
    assert 0.25 <= delays[0] <= 0.5 and 4.0 <= delays[-1] <= 8.0
    assert retry_after_seconds("2", cap=8) == 2.0
    assert retry_after_seconds("120", cap=8) == 8.0
    assert retry_after_seconds(None, cap=8) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", cap=8) == 0.0


# --- a held token is never lost or kept waiting ------------------------------------------------


@pytest.mark.parametrize("interval", [0.0, 0.15])
async def test_a_dropped_connection_keeps_every_token_read(interval: float) -> None:
    # Tokens 100 ms apart, each arriving alone less than 0.15 s after the last delivery: paced,
    # the third is held, and the close right behind it makes the socket readable, so the held
    # token is there when the connection drops.
    request = ask("drop [mock fault=drop_mid after=3]")
    async with serve_paced(tokens=16, delay_ms=100, interval=interval) as (upstream, _, _):
        deltas, _ = await run_failing(upstream, request, UpstreamError)
    assert "".join(deltas) == "".join(expected_chunks(request.messages, 16)[:3])


async def test_the_gap_timeout_replaces_a_longer_first_byte_timeout(base: str) -> None:
    settings = make_settings(base + "/v1", upstream_first_byte_timeout=5.0)
    async with open_upstream(settings) as upstream:
        start = trio.current_time()
        await run_failing(upstream, ask("stall later [mock fault=stall_mid]"), UpstreamTimeout)
    assert trio.current_time() - start < 1.5  # the 0.3 s gap, not the 5 s first byte


def sse_event(text: str, finish: str | None = None) -> bytes:
    body = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def serve_then(tail: bytes, pause: float, rest: bytes, behind: float = 0.01,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """An upstream sending A, B, C 100 ms apart, then ``tail`` ``behind`` C (0: in the same
    write), then ``rest`` after ``pause``."""
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                              b"connection: close\r\n\r\n" + sse_event(""))
        for word in ("A", " B"):
            await trio.sleep(0.1)
            await stream.send_all(sse_event(word))
        await trio.sleep(0.1)
        if behind:
            await stream.send_all(sse_event(" C"))
            await trio.sleep(behind)
            await stream.send_all(tail)
        else:
            await stream.send_all(sse_event(" C") + tail)
        await trio.sleep(pause)
        await stream.send_all(rest)
        await stream.send_eof()  # then wait for the client: closing first could reset it
        with trio.move_on_after(5):
            while await stream.receive_some(65536):
                pass
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


async def stream_from(tail: bytes, pause: float, rest: bytes, gap: float, *,
                      interval: float = 0.15, behind: float = 0.01,
                      ) -> tuple[list[str], list[float], Exception | None]:
    deltas: list[str] = []
    times: list[float] = []
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_then, tail, pause, rest, behind))
        # B and C arrive 0.1 s after the last delivery, within the 0.15 s interval: held.
        settings = make_settings(f"http://127.0.0.1:{port}/v1", delta_interval=interval,
                                 upstream_chunk_gap_timeout=gap)
        start = trio.current_time()
        async with open_upstream(settings) as upstream:
            try:
                await upstream.stream(ask("x"), deltas_at(deltas, times))
            except UpstreamError as exc:
                failure = exc
        nursery.cancel_scope.cancel()
    return deltas, [t - start for t in times], failure


async def test_a_held_token_survives_a_stall_in_the_middle_of_an_event() -> None:
    deltas, _, failure = await stream_from(b'data: {"choi', 2.0, b"", gap=0.3)
    assert isinstance(failure, UpstreamTimeout) and "".join(deltas) == "A B C"


async def test_a_keep_alive_does_not_keep_a_held_token_waiting() -> None:
    deltas, times, failure = await stream_from(
        b": keep-alive\n\n", 1.0, sse_event(" D", "stop") + b"data: [DONE]\n\n", gap=5.0)
    assert failure is None and "".join(deltas) == "A B C D"
    assert deltas[-2:] == [" C", " D"] and times[-2] < 0.6  # C did not wait for D (~1.3 s)


async def test_the_end_of_an_answer_waits_at_most_one_interval() -> None:
    # Paced at 0.19 s: B goes out ~0.19 s after A; C arrives 0.01 s later in one write with the
    # finish reason ([DONE] follows 0.3 s later). Reads are paced before they happen, so C is
    # read once the interval after B is over, and goes out at once with its finish reason: it
    # does not wait for [DONE].
    deltas, times, failure = await stream_from(sse_event("", "stop"), 0.3, b"data: [DONE]\n\n",
                                               gap=5.0, interval=0.19, behind=0.0)
    assert failure is None and deltas == ["A", " B", " C"]
    assert 0.15 < times[2] - times[1] < 0.19 + 0.1, times


def test_the_environment_proxy_is_taken_as_httpx_would(monkeypatch: pytest.MonkeyPatch) -> None:
    from chat_actors.upstream import _environment_proxy

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert _environment_proxy("https://api.openai.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert _environment_proxy("https://api.openai.com/v1") == "http://proxy.example:3128"
    assert _environment_proxy("http://127.0.0.1:8001/v1") is None  # only https is proxied
    monkeypatch.setenv("NO_PROXY", "api.openai.com")
    assert _environment_proxy("https://api.openai.com/v1") is None
