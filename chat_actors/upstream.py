"""Streams answers from any OpenAI-compatible ``/v1/chat/completions`` (``stream: true``).

Usage::

    async with open_upstream(settings) as upstream:
        info = await upstream.stream(ChatRequest(model, messages, user=opaque_id), send_delta)

``send_delta`` is awaited with each text delta in order and should return promptly (its time
counts toward the gap timeout; the session's only pushes into outboxes); the caller owns the
text (on an error after some deltas it keeps what it got, a held token included). Cancel the caller's scope to stop: the HTTP response is
closed at once and the upstream sees the connection close.

- Pool: one-connection transports (``upstream_transport``) checked out per request
  (``upstream_pool`` explains why this beats N shared clients); up to
  ``128 * upstream_clients`` idle ones
  (1,024 by default) keep their keep-alive connection warm.
- Pacing: text goes out as one delta per network read, and at most about once per
  ``delta_interval`` (60 ms) while the answer streams quickly, so that several tokens leave as
  one frame; ``_Pacer`` says when text is held and when it never is.
- Timeouts: ``upstream_connect_timeout`` (TCP connect and each write, by the transport),
  ``upstream_first_byte_timeout`` (request sent → first SSE event), ``upstream_chunk_gap_timeout`` (between events; comments
  and keep-alives do not count as progress) → ``UpstreamTimeout``.
- Retries, only while the current HTTP request has delivered no delta: connect / transport
  errors, 429 (``Retry-After`` honoured, capped at ``upstream_retry_after_cap``, default 8 s) and
  5xx, at most ``upstream_retries`` times, exponential backoff with jitter. Exhausted 429s →
  ``UpstreamRateLimited``; other failures → ``UpstreamError``; timeouts are not retried.
- ``finish_reason: "length"``: the request is repeated with the text so far appended as the last
  (assistant) message, and the upstream's next text is appended to it, at most
  ``upstream_max_continuations`` times; then ``FinishInfo.finish_reason == "length"``.
  (The mock upstream implements exactly this protocol; real models treat the trailing assistant
  message as a prefix to continue, best effort.)
- ``finish_reason: "content_filter"`` → ``UpstreamContentFilter``.
- Usage: a chunk's ``usage`` (sent when the request asks with ``stream_options``) comes back
  as ``FinishInfo.usage``; the chat does not ask for it.
"""

from __future__ import annotations

import math
import random
import ssl
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from functools import partial
from urllib.parse import urlsplit

import httpx
import httpx_sse
import trio

from chat_actors import chat_metrics
from chat_actors.upstream_pool import ClientPool
from chat_actors.upstream_sse import aiter_sse_batches
from chat_actors.upstream_transport import ResponseBody, StreamingTransport
from chat_actors.upstream_types import (
    ChatRequest,
    FinishInfo,
    Usage,
    backoff_delay,
    parse_chunk,
    retry_after_seconds,
)
from core.errors import UpstreamContentFilter, UpstreamError, UpstreamRateLimited, UpstreamTimeout
from core.settings import Settings

__all__ = ["ChatRequest", "FinishInfo", "SendDelta", "UpstreamClient", "Usage", "open_upstream"]

SendDelta = Callable[[str], Awaitable[None]]
_SSE_HEADERS = {"Accept": "text/event-stream", "Accept-Encoding": "identity",
                "Cache-Control": "no-store", "User-Agent": "llmchat-trio"}
_DONE_GRACE = 1.0  # after [DONE], how long the end of the body may take (keeps keep-alive)


class _Failed(Exception):
    """One HTTP attempt failed with ``error``; ``retryable`` if nothing of it was delivered."""

    def __init__(self, error: UpstreamError, retryable: bool, retry_after: float | None = None):
        super().__init__(str(error))
        self.error, self.retryable, self.retry_after = error, retryable, retry_after


class UpstreamClient:
    """Streams answers over a pool of httpx transports; see the module docstring."""

    def __init__(
        self,
        pool: ClientPool,
        settings: Settings,
        *,
        retry_after_cap: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._pool = pool
        self._in_flight = 0
        self._url = settings.openai_base_url.rstrip("/") + "/chat/completions"
        self._headers = dict(_SSE_HEADERS)
        if settings.openai_api_key:
            self._headers["Authorization"] = f"Bearer {settings.openai_api_key}"
        connect = settings.upstream_connect_timeout
        # The gap and first-byte timeouts are the caller's cancel scope (``_attempt``).
        self._extensions = {"timeout": {"connect": connect, "read": None, "write": connect,
                                        "pool": None}}
        self._first_byte = settings.upstream_first_byte_timeout
        self._gap = settings.upstream_chunk_gap_timeout
        self._retries = settings.upstream_retries
        self._backoff_base = settings.upstream_backoff_base
        self._max_continuations = settings.upstream_max_continuations
        self._interval = settings.delta_interval
        if retry_after_cap is None:
            retry_after_cap = settings.upstream_retry_after_cap
        self._retry_after_cap = retry_after_cap
        self._rng = rng or random.Random()

    @property
    def in_flight(self) -> int:
        """Answers being streamed right now (for metrics)."""
        return self._in_flight

    @property
    def requests_in_flight(self) -> int:
        """HTTP requests to the upstream in flight right now (retries and continuations too)."""
        return self._pool.busy

    @property
    def idle_connections(self) -> int:
        """Pooled transports waiting with (usually) a keep-alive connection."""
        return self._pool.idle

    async def stream(
        self, request: ChatRequest, send_delta: SendDelta, *, max_continuations: int | None = None
    ) -> FinishInfo:
        """Stream one answer into ``send_delta``; return how it finished. ``max_continuations``
        replaces ``upstream_max_continuations`` for this answer (0: a ``"length"`` finish is
        returned as it is, e.g. when the caller's own ``max_tokens`` cut it)."""
        if max_continuations is None:
            max_continuations = self._max_continuations
        self._in_flight += 1
        try:
            parts: list[str] = []
            usage: list[Usage] = []
            retries = continuations = 0
            while True:
                finish, used = await self._request(request.payload("".join(parts)), parts,
                                                   send_delta, usage)
                retries += used
                if finish == "length" and continuations < max_continuations:
                    continuations += 1
                    continue
                if finish == "content_filter":
                    raise UpstreamContentFilter("the upstream's content filter stopped the answer")
                return FinishInfo("".join(parts), finish, continuations, retries,
                                  Usage.combined(usage))
        finally:
            self._in_flight -= 1

    async def complete(self, request: ChatRequest) -> FinishInfo:
        """The whole answer at once (``FinishInfo.text``), streamed underneath."""

        async def ignore(_: str) -> None:
            pass

        return await self.stream(request, ignore)

    async def _request(
        self, payload: dict[str, object], parts: list[str], send_delta: SendDelta,
        usage: list[Usage],
    ) -> tuple[str, int]:
        """One request with its retries: (finish_reason, retries used); its usage, if the
        upstream reported it, is appended to ``usage`` (the last one it sent: some upstreams
        send a running total with every chunk)."""
        attempt = 0
        while True:
            delivered = len(parts)
            seen: list[Usage] = []
            try:
                async with self._pool.checkout() as transport:
                    finish = await self._attempt(transport, payload, parts, send_delta, seen)
                usage.extend(seen[-1:])
                return finish, attempt
            except _Failed as failed:
                chat_metrics.upstream_failed(failed.error, failed.__cause__)
                if not failed.retryable or len(parts) > delivered or attempt >= self._retries:
                    raise failed.error from failed.__cause__
                delay = failed.retry_after
                if delay is None:
                    delay = backoff_delay(attempt, self._backoff_base, self._retry_after_cap,
                                          self._rng)
            attempt += 1
            await trio.sleep(delay)

    async def _attempt(
        self,
        transport: httpx.AsyncBaseTransport,
        payload: dict[str, object],
        parts: list[str],
        send_delta: SendDelta,
        usage: list[Usage],
    ) -> str:
        """One HTTP request; returns its finish_reason or raises ``_Failed``.

        Sent on the transport itself, not through an ``httpx.AsyncClient``: the client's
        per-request work (merging defaults, the auth and redirect flows, the cookie jar) was
        ~0.5 ms of every answer, and this request needs none of it. The connect and write
        timeouts are the transport's; the gap and first-byte ones are ``scope``."""
        start = len(parts)
        finish: str | None = None
        done = False
        held: list[str] = []  # text read, not yet delivered (``_Pacer``); goes out before any end
        try:
            with trio.CancelScope(deadline=trio.current_time() + self._first_byte) as scope:
                try:
                    request = httpx.Request("POST", self._url, headers=self._headers,
                                            json=payload, extensions=self._extensions)
                    response = await transport.handle_async_request(request)
                    response.request = request
                    try:
                        if response.status_code != 200:
                            raise await self._status_failure(response)
                        done, finish = await self._read_events(
                            response, scope, parts, held, send_delta, usage)
                    finally:
                        await response.aclose()
                except httpx.ConnectTimeout as exc:
                    raise _Failed(UpstreamTimeout(f"connect to the upstream timed out: {exc}"),
                                  True) from exc
                except httpx.TimeoutException as exc:
                    raise _Failed(UpstreamTimeout(f"upstream timed out: {exc!r}"),
                                  False) from exc
                except httpx.TransportError as exc:
                    error = UpstreamError(f"upstream connection failed: {exc!r}")
                    raise _Failed(error, True) from exc
                except httpx_sse.SSEError as exc:
                    raise _Failed(UpstreamError(f"upstream did not stream: {exc}"),
                                  False) from exc
                except UpstreamError as exc:
                    raise _Failed(exc, False) from exc
            if scope.cancelled_caught and not done:
                what = "first byte" if len(parts) + len(held) == start else "next chunk"
                raise _Failed(UpstreamTimeout(f"upstream timed out waiting for the {what}"),
                              False)
        except _Failed:
            await _deliver(held, parts, send_delta)  # text read before the failure is kept
            raise
        await _deliver(held, parts, send_delta)
        if finish is None:
            if not done:
                raise _Failed(UpstreamError("upstream stream ended before finishing"), True)
            finish = "stop"
        return finish

    async def _read_events(
        self,
        response: httpx.Response,
        scope: trio.CancelScope,
        parts: list[str],
        held: list[str],
        send_delta: SendDelta,
        usage: list[Usage],
    ) -> tuple[bool, str | None]:
        """Deliver the body's text, paced; returns ([DONE] seen, finish_reason).

        Text read is held, and goes out as one delta when the events of its network read are
        used up (``_Pacer``, run before each read of a ``ResponseBody``), or at once with the
        end of the answer."""
        finish: str | None = None
        done = False
        stream = response.stream if isinstance(response.stream, ResponseBody) else None
        pacer = _Pacer(self._interval, scope, self._gap, held, parts, send_delta)
        if stream is not None:
            stream.before_read = pacer.before_read
        batches = aiter_sse_batches(response)
        try:
            async with aclosing(batches):
                async for batch in batches:
                    if done:
                        continue  # read the body to its end: the connection is reused
                    if not batch:  # a comment or part of an event: no text, and no progress
                        continue
                    text, finish, done, error = _read_batch(batch, finish, usage)
                    if text:
                        held.append(text)
                    if done or error is not None or finish is not None or stream is None:
                        await _deliver(held, parts, send_delta)
                        if stream is not None:
                            stream.before_read = None  # the rest of the body is not paced
                    if error is not None:
                        raise error
                    wait = min(self._gap, _DONE_GRACE) if done else self._gap + self._interval
                    _extend(scope, wait, exact=done)
        finally:
            if stream is not None:
                stream.before_read = None
        return done, finish

    async def _status_failure(self, response: httpx.Response) -> _Failed:
        body = (await response.aread())[:300].decode("utf-8", "replace")
        status = response.status_code
        retry_after = retry_after_seconds(response.headers.get("retry-after"),
                                          self._retry_after_cap)
        if status == 429:
            return _Failed(UpstreamRateLimited(f"upstream rate limited (429): {body}"), True,
                           retry_after)
        error = UpstreamError(f"upstream answered {status}: {body}")
        return _Failed(error, status >= 500, retry_after if status >= 500 else None)


def _extend(scope: trio.CancelScope, wait: float, *, exact: bool = False) -> None:
    """Move ``scope``'s deadline to ``wait`` from now, unless it is less than an eighth stale:
    moving a deadline costs more than reading an event, and a gap timeout need not be exact."""
    deadline = trio.current_time() + wait
    if exact or abs(deadline - scope.deadline) > wait / 8:
        scope.deadline = deadline


class _Pacer:
    """Run before each network read of a response (``ResponseBody.before_read``): delivers
    the text held from the reads before as one delta, then, while the answer streams quickly,
    waits until ``interval`` after the last delivery, so that the tokens arriving meanwhile
    wait in the kernel and come in with the next read, as one delta (one frame on the socket).

    The first delta of a request goes out as soon as its read is used up; a token arriving
    ``interval`` or more after the last delivery (a slow model, a pause) goes out as soon as
    it is read; the end of the answer (a finish reason, ``[DONE]``, an error) is delivered by
    the reader at once. An end that comes in a later read is not foreseen: the last token may
    wait out the interval. A wrong guess costs at most one interval of delay, never text.
    """

    def __init__(self, interval: float, scope: trio.CancelScope, gap: float, held: list[str],
                 parts: list[str], send_delta: SendDelta) -> None:
        self._interval = interval
        self._scope, self._gap = scope, gap  # the read's gap timeout, moved past each pause
        self._held, self._parts, self._send = held, parts, send_delta
        self._last = -math.inf  # when text last went out

    async def before_read(self) -> None:
        now = trio.current_time()
        if await _deliver(self._held, self._parts, self._send):
            self._last = now
        until = self._last + self._interval
        if until > now:
            _extend(self._scope, until - now + self._gap)
            await trio.sleep_until(until)


async def _deliver(held: list[str], parts: list[str], send_delta: SendDelta) -> bool:
    """Send the held text as one delta; False when nothing was held."""
    if not held:
        return False
    text = "".join(held)
    held.clear()
    parts.append(text)
    await send_delta(text)
    return True


def _read_batch(
    batch: list[httpx_sse.ServerSentEvent], finish: str | None, usage: list[Usage] | None = None
) -> tuple[str, str | None, bool, UpstreamError | None]:
    """The events of one read as (their text, finish_reason so far, [DONE] seen, the error a
    malformed event raised): the text before a bad event is still delivered. A chunk's usage
    is appended to ``usage``."""
    text: list[str] = []
    for event in batch:
        if event.data == "[DONE]":
            return "".join(text), finish, True, None
        try:
            chunk = parse_chunk(event.data)
        except UpstreamError as exc:
            return "".join(text), finish, False, exc
        text.append(chunk.delta)
        finish = chunk.finish_reason or finish
        if chunk.usage is not None and usage is not None:
            usage.append(chunk.usage)
    return "".join(text), finish, False, None


def _make_transport(settings: Settings, ssl_context: ssl.SSLContext) -> httpx.AsyncBaseTransport:
    """One connection, kept alive between requests (``upstream_transport``); through a proxy
    from the environment (``HTTPS_PROXY``, ``NO_PROXY``, ... as an ``httpx.AsyncClient`` would
    take it), httpx's own transport, whose reads are not paced (one delta per HTTP chunk)."""
    proxy = _environment_proxy(settings.openai_base_url)
    if proxy is None:
        return StreamingTransport(ssl_context, settings.upstream_connect_timeout)
    return httpx.AsyncHTTPTransport(
        verify=ssl_context, proxy=proxy,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1,
                            keepalive_expiry=30.0))


def _environment_proxy(url: str) -> str | None:
    parts = urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    proxies = urllib.request.getproxies_environment()
    return proxies.get(parts.scheme) or proxies.get("all")


@asynccontextmanager
async def open_upstream(
    settings: Settings, *, retry_after_cap: float | None = None
) -> AsyncIterator[UpstreamClient]:
    """The upstream client and its pool of httpx transports, closed on exit."""
    ssl_context = httpx.create_ssl_context()  # once: building one costs ~0.1 s
    pool = ClientPool(partial(_make_transport, settings, ssl_context),
                      max_idle=128 * settings.upstream_clients)
    try:
        yield UpstreamClient(pool, settings, retry_after_cap=retry_after_cap)
    finally:
        await pool.aclose()
