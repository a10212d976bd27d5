"""The body of a streamed chat completion: SSE events read from the completion's channel.

Quart sends a response body inside ``async with body: async for data in body`` in the
request's own task, the task Quart cancels when the client disconnects. Leaving that block in
any way (the stream ended, the client went, the send failed) cancels the completion's scope,
so the upstream request is closed at once; the completion task itself lives in the request's
nursery (``web.request_nursery``), which also ends with the request.

Events: the assistant's role, one chunk per text delta, a chunk with the finish reason, with
``include_usage`` one more chunk (no choices) with the usage, then ``data: [DONE]``. A stream
that breaks after its first text ends with an error event in OpenAI's shape
(``data: {"error": {...}}``, which OpenAI's SDKs raise as ``APIError``) and no ``[DONE]``.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import Self

import trio
from quart.wrappers.response import ResponseBody

from web.openai_completion import StreamEnd, StreamEvent, StreamFailed
from web.openai_objects import DONE_EVENT, ChunkMaker, sse_event


class CompletionStreamBody(ResponseBody):
    def __init__(self, events: trio.MemoryReceiveChannel[StreamEvent], chunks: ChunkMaker,
                 completion_scope: trio.CancelScope) -> None:
        self._events = events
        self._chunks = chunks
        self._scope = completion_scope
        self._pending: deque[bytes] = deque([chunks.role()])
        self._ended = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc_value: BaseException | None, tb: TracebackType | None) -> None:
        self._scope.cancel()
        self._events.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        while not self._pending:
            if self._ended:
                raise StopAsyncIteration
            try:
                event = await self._events.receive()
            except trio.EndOfChannel:  # the completion ended without a last event: cancelled
                raise StopAsyncIteration from None
            self._pending.extend(self._render(event))
        return self._pending.popleft()

    def _render(self, event: StreamEvent) -> list[bytes]:
        if isinstance(event, str):
            return [self._chunks.text(event)]
        self._ended = True
        if isinstance(event, StreamFailed):
            return [sse_event(event.error.body())]
        assert isinstance(event, StreamEnd)
        out = [self._chunks.finish(event.finish_reason)]
        if self._chunks.include_usage:
            out.append(self._chunks.usage(event.usage))
        out.append(DONE_EVENT)
        return out
