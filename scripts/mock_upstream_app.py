"""The mock upstream's routes: chat completions (SSE or JSON) with fault injection, models, and
the inspection endpoints tests use (``/mock/requests``, ``/mock/stats``, ``/mock/reset``).

Fault modes (marker ``[mock fault=...]`` in the last user message, or model ``mock-<fault>``):

- ``429`` / ``429xN``: 429 with ``Retry-After`` (knob ``retry_after``, default 1); ``xN`` fails
  only the first N attempts of the same last user message, then answers normally.
- ``500`` / ``500xN`` (any ``5xx``): the same with that status.
- ``stall_first``: no byte at all for ``stall_s`` seconds (default 3600), then the answer.
- ``stall_mid``: ``after`` chunks (default 3), then silence for ``stall_s``, then the end.
- ``drop_mid``: ``after`` chunks, then the TCP connection is closed mid-body.
- ``malformed``: ``after`` chunks, then a ``data:`` line that is not JSON, then ``[DONE]``.
- ``length``: at most ``length_after`` words (default half the answer) per response, with
  ``finish_reason: "length"`` while words remain; see ``continuation_offset`` for how a
  continuation request gets exactly the rest. A request's ``max_tokens`` cuts the same way.
- ``content_filter``: ``after`` chunks, then ``finish_reason: "content_filter"``.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace

import h11
import trio

from scripts.mock_upstream_answers import (
    Knobs,
    _words,
    continuation_offset,
    message_hash,
    parse_knobs,
)
from scripts.mock_upstream_http import HttpConnection, PeerClosed, Request
from scripts.mock_upstream_pacer import Pacer
from scripts.mock_upstream_play import Answer, Dropped

MODELS = ("mock-gpt", "gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-3.5-turbo")
STAT_NAMES = (
    "connections_open", "connections_total", "requests_total", "streams_active",
    "answers_completed", "answers_aborted", "faults_injected",
)


@dataclass(frozen=True)
class MockConfig:
    tokens: int = 64
    delay_ms: float = 10.0
    stall_s: float = 3600.0
    require_key: str | None = None  # None: no check; "*": any bearer; else that exact key
    record_limit: int = 1000


def _error(message: str, kind: str, code: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class MockUpstream:
    """State shared by every connection of one mock server."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.defaults = Knobs(tokens=config.tokens, delay_ms=config.delay_ms, stall_s=config.stall_s)
        self.requests: deque[dict[str, object]] = deque(maxlen=config.record_limit)
        self.attempts: dict[str, int] = {}
        self.stats = dict.fromkeys(STAT_NAMES, 0)
        self.pacer = Pacer()  # run by the server (serve_mock_upstream)

    def reset(self) -> None:
        self.requests.clear()
        self.attempts.clear()
        for name in STAT_NAMES:
            if name not in ("connections_open", "streams_active"):
                self.stats[name] = 0

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        http = HttpConnection(stream)
        self.stats["connections_open"] += 1
        self.stats["connections_total"] += 1
        try:
            while True:
                request = await http.read_request()
                if request is None:
                    break
                await self._dispatch(http, request)
                if not http.reusable:
                    break
        except (Dropped, PeerClosed, h11.ProtocolError, trio.BrokenResourceError,
                trio.ClosedResourceError):
            pass
        finally:
            self.stats["connections_open"] -= 1
            await trio.aclose_forcefully(stream)

    async def _dispatch(self, http: HttpConnection, request: Request) -> None:
        route = (request.method, request.path)
        if route in (("POST", "/v1/chat/completions"), ("POST", "/chat/completions")):
            await self._chat(http, request)
        elif route in (("GET", "/v1/models"), ("GET", "/models")):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "mock"} for m in MODELS]
            await http.send_json(200, {"object": "list", "data": data})
        elif route == ("GET", "/mock/requests"):
            n = int(request.query.get("n", "50"))
            await http.send_json(200, {"requests": list(self.requests)[-n:] if n else []})
        elif route == ("GET", "/mock/stats"):
            await http.send_json(200, self.stats)
        elif route == ("POST", "/mock/reset"):
            self.reset()
            await http.send_json(200, {"ok": True})
        else:
            await http.send_json(404, _error(f"no route {request.path}", "invalid_request_error"))

    def _authorized(self, request: Request) -> bool:
        wanted = self.config.require_key
        if wanted is None:
            return True
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(key) and wanted in ("*", key)

    async def _chat(self, http: HttpConnection, request: Request) -> None:
        self.stats["requests_total"] += 1
        try:
            body = json.loads(request.body)
            messages = body["messages"]
            model = str(body.get("model", ""))
            if not isinstance(messages, list) or not messages:
                raise ValueError("messages must be a non-empty list")
            self.requests.append(
                {"path": request.path, "has_auth": "authorization" in request.headers,
                 "body": body}
            )
            knobs = parse_knobs(messages, model, self.defaults)
        except (ValueError, KeyError, TypeError) as exc:
            await http.send_json(400, _error(f"bad request: {exc}", "invalid_request_error"))
            return
        if not self._authorized(request):
            await http.send_json(401, _error("missing API key", "invalid_request_error",
                                              "invalid_api_key"))
            return
        status_fault = knobs.status_fault()
        if status_fault is not None:
            status, times = status_fault
            key = f"{knobs.fault}:{message_hash(messages)}"
            self.attempts[key] = attempt = self.attempts.get(key, 0) + 1
            if times is None or attempt <= times:
                self.stats["faults_injected"] += 1
                headers = [("retry-after", str(knobs.retry_after))] if status == 429 else []
                kind = "rate_limit_error" if status == 429 else "server_error"
                await http.send_json(status, _error(f"mock fault {status}", kind), headers)
                return
            knobs = replace(knobs, fault=None)
        words = _words(message_hash(messages), knobs.tokens)
        chunks = [w if i == 0 else " " + w for i, w in enumerate(words)]
        try:
            offset = continuation_offset(messages, chunks)
        except ValueError as exc:
            await http.send_json(400, _error(str(exc), "invalid_request_error"))
            return
        limit = len(chunks) - offset
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(max_tokens, int) and max_tokens > 0:
            limit = min(limit, max_tokens)
        if knobs.fault == "length":
            limit = min(limit, knobs.length_after or max(1, math.ceil(len(chunks) / 2)))
        finish = "length" if offset + limit < len(chunks) else "stop"
        answer = Answer(model, chunks[offset:offset + limit], finish, knobs, self.pacer)
        if knobs.fault is not None:
            self.stats["faults_injected"] += 1
        self.stats["streams_active"] += 1
        try:
            outcome = await self._play(http, answer, bool(body.get("stream")))
        finally:
            self.stats["streams_active"] -= 1
        if outcome == "closed":
            self.stats["answers_aborted"] += 1
            raise PeerClosed
        if outcome == "dropped":
            raise Dropped
        self.stats["answers_completed"] += 1

    @staticmethod
    async def _play(http: HttpConnection, answer: Answer, stream: bool) -> str:
        """Send the answer while watching the socket: "done", "closed" (by the client) or
        "dropped" (by the drop_mid fault; the caller closes the socket)."""
        outcome = "done"
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal outcome
                try:
                    await http.watch_peer_close()
                except (PeerClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                    if http.conn.our_state is not h11.DONE:
                        outcome = "closed"
                        nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            try:
                await (answer.stream(http) if stream else answer.complete(http))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                outcome = "closed"
            except Dropped:
                outcome = "dropped"
            nursery.cancel_scope.cancel()
        return outcome


def config_from(values: Mapping[str, object]) -> MockConfig:
    known = {k: v for k, v in values.items() if k in MockConfig.__dataclass_fields__}
    unknown = set(values) - set(known)
    if unknown:
        raise TypeError(f"unknown mock upstream settings: {sorted(unknown)}")
    return MockConfig(**known)  # type: ignore[arg-type]
