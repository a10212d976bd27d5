"""Grouping server-sent events by network read (``chat_actors.upstream_sse``)."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import httpx
import pytest
from httpx_sse import SSEError

from chat_actors.upstream_sse import aiter_sse_batches


class Reads(httpx.AsyncByteStream):
    """A response body arriving in these pieces, one per network read."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def response(pieces: list[bytes], **headers: str) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream; charset=utf-8",
                                        **headers}, stream=Reads(pieces))


async def batches_of(resp: httpx.Response) -> list[list[tuple[str, str]]]:
    return [[(e.event, e.data) for e in batch] async for batch in aiter_sse_batches(resp)]


async def test_one_list_per_read_with_events_split_anywhere() -> None:
    snowman = "☃".encode()
    pieces = [b"data: a\n\ndata: b", b"\r", b"\n\r\n: comment\n\nevent: x\ndata: " + snowman[:1],
              snowman[1:] + b"\ndata: 2\n", b"\n", b"data: never finished"]
    assert await batches_of(response(pieces)) == [
        [("message", "a")], [], [("message", "b")], [], [("x", "☃\n2")], []]


async def test_a_compressed_body_is_decoded() -> None:
    body = gzip.compress(b"data: zipped\n\ndata: [DONE]\n\n")
    assert await batches_of(response([body], **{"content-encoding": "gzip"})) == [
        [("message", "zipped"), ("message", "[DONE]")]]


async def test_not_an_event_stream_is_refused() -> None:
    resp = httpx.Response(200, headers={"content-type": "application/json"}, stream=Reads([b"{}"]))
    with pytest.raises(SSEError, match="text/event-stream"):
        await batches_of(resp)
