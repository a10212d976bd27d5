"""How the mock upstream plays one answer: paced SSE chunks or one JSON body, with its fault."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import trio

from scripts.mock_upstream_answers import Knobs
from scripts.mock_upstream_http import HttpConnection
from scripts.mock_upstream_pacer import Pacer


@lru_cache(maxsize=1024)
def _json_bytes(text: str) -> bytes:
    return json.dumps(text).encode()


class Dropped(Exception):
    """The fault asks to close the connection without finishing the response."""


class Answer:
    """One response: the chunks to send, how it finishes, and which fault to play."""

    def __init__(self, model: str, chunks: Sequence[str], finish: str, knobs: Knobs,
                 pacer: Pacer) -> None:
        self.model, self.chunks, self.finish, self.knobs = model, chunks, finish, knobs
        self.pacer = pacer
        self.id = f"chatcmpl-mock{time.monotonic_ns():x}"
        self.created = int(time.time())
        self.prefix = (
            f'data: {{"id":"{self.id}","object":"chat.completion.chunk","created":{self.created},'
            f'"model":{json.dumps(model)},"choices":[{{"index":0,"delta":'
        ).encode()

    def _event(self, delta: bytes, finish: str | None) -> bytes:
        reason = b"null" if finish is None else _json_bytes(finish)
        return b"%s%s,\"finish_reason\":%s}]}\n\n" % (self.prefix, delta, reason)

    def _content(self, start: int, stop: int) -> bytes:
        return b"".join(
            self._event(b'{"content":%s}' % _json_bytes(c), None) for c in self.chunks[start:stop]
        )

    async def _paced(self, http: HttpConnection, stop: int, tail: bytes = b"") -> None:
        """Send chunks 0..stop, one per ``delay_ms``, by the process's ``Pacer``; ``tail``
        (wire bytes) goes out with the last of them."""
        delay = self.knobs.delay_ms / 1000
        if delay > 0 and stop > 0:
            await self.pacer.play(http, self._content, stop, delay, tail)
        else:
            await http.stream.send_all(http.chunk_bytes(self._content(0, stop)) + tail
                                       if stop > 0 else tail)

    async def stream(self, http: HttpConnection) -> None:
        """The SSE response. Its head goes out with the role event, and its end (the finish
        event, ``[DONE]``, the last chunk) with the last content chunk: one write each."""
        fault, after = self.knobs.fault, min(self.knobs.after, len(self.chunks))
        if fault == "stall_first":
            await trio.sleep(self.knobs.stall_s)
        head = http.response_head(200, [("content-type", "text/event-stream"),
                                        ("cache-control", "no-cache")])
        role = self._event(b'{"role":"assistant","content":""}', None)
        await http.stream.send_all(head + http.chunk_bytes(role))
        if fault in ("stall_mid", "drop_mid", "malformed", "content_filter"):
            await self._paced(http, after)
            if fault == "stall_mid":
                await trio.sleep(self.knobs.stall_s)
            elif fault == "drop_mid":
                raise Dropped
            elif fault == "malformed":
                await http.send_data(b'data: {"id": "broken", "choices": [{"delta": \n\n')
            else:
                await http.send_data(self._event(b"{}", "content_filter"))
            await http.send_data(b"data: [DONE]\n\n")
            await http.end_response()
            return
        end = self._event(b"{}", self.finish) + b"data: [DONE]\n\n"
        await self._paced(http, len(self.chunks), http.chunk_bytes(end) + http.end_bytes())

    async def complete(self, http: HttpConnection) -> None:
        fault, after = self.knobs.fault, min(self.knobs.after, len(self.chunks))
        if fault in ("stall_first", "stall_mid"):
            await trio.sleep(self.knobs.stall_s)
        count = after if fault in ("drop_mid", "malformed", "content_filter") else len(self.chunks)
        await trio.sleep(count * self.knobs.delay_ms / 1000)
        if fault == "drop_mid":
            raise Dropped
        if fault == "malformed":
            payload = b'{"id": "broken", "choices": ['
            await http.start_response(200, [("content-type", "application/json")],
                                      length=len(payload))
            await http.send_data(payload)
            await http.end_response()
            return
        finish = "content_filter" if fault == "content_filter" else self.finish
        await http.send_json(200, self.completion("".join(self.chunks[:count]), finish, count))

    def completion(self, text: str, finish: str, tokens: int) -> dict[str, Any]:
        return {
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens},
        }
