"""Server-sent events from a streamed httpx response, grouped by network read.

httpx-sse's ``EventSource.aiter_sse`` yields one event at a time, so its reader cannot tell
which events arrived together. Grouped, everything one read brought can go on as one delta,
and the upstream client can pace its reads (``Settings.delta_interval``): at 10 ms per token a
read every 60 ms gathers ~6 tokens into one delta (64-token answers leave in ~12 frames).
Built on httpx-sse's own line and event decoders (pinned in pyproject.toml); the raw body is
read straight from the transport's byte stream when it is not compressed.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncGenerator, AsyncIterator

import httpx
from httpx_sse import ServerSentEvent, SSEError
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

__all__ = ["aiter_sse_batches"]


async def aiter_sse_batches(response: httpx.Response) -> AsyncGenerator[list[ServerSentEvent], None]:
    """The events of ``response``, one list per network read (in order; empty when the read
    completed no event: a comment, or part of an event)."""
    content_type = response.headers.get("content-type", "").partition(";")[0]
    if "text/event-stream" not in content_type:
        raise SSEError("Expected response header Content-Type to contain 'text/event-stream', "
                       f"got {content_type!r}")
    lines, events = SSELineDecoder(), SSEDecoder()

    def decode(new_lines: list[str]) -> list[ServerSentEvent]:
        return [event for line in new_lines if (event := events.decode(line)) is not None]

    text = codecs.getincrementaldecoder("utf-8")("replace")
    # The request asks for identity encoding; a compressed body is still decoded by httpx.
    encoded = response.headers.get("content-encoding", "identity") != "identity"
    # Unencoded, the transport's own byte stream: no per-chunk bookkeeping of the response's.
    raw = response.aiter_bytes() if encoded else _transport_stream(response)
    async for data in raw:
        yield decode(lines.decode(text.decode(data)))
    if batch := decode(lines.decode(text.decode(b"", final=True)) + lines.flush()):
        yield batch


def _transport_stream(response: httpx.Response) -> AsyncIterator[bytes]:
    stream = response.stream
    if not isinstance(stream, httpx.AsyncByteStream):
        raise TypeError("an async response is needed")
    return stream.__aiter__()
