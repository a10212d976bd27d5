"""An httpx transport for the upstream's streamed answers: one keep-alive HTTP/1.1 connection,
h11 on a Trio stream, the body handed out once per network read.

Why not httpx's own transport: httpcore hands a body out one HTTP chunk at a time, and an SSE
upstream sends one chunk per token; each chunk crossed six async generators and a context
manager per h11 event on its way up (~1.5 ms of CPU per 64-token answer, against ~3 ms for
the whole read done here; ``scripts/bench_cpu.py``, ``docs/performance.md``). Here every event
h11 has buffered is taken in one go, and the body's consumer sees one piece of bytes per
network read: what one read brought can go on as one delta. The body is ``ResponseBody``,
whose ``before_read`` hook (when set) runs before each network read: the upstream client
delivers the text it holds there and paces the next read (``chat_actors.upstream``).

httpx stays the client's API (``httpx.Request`` in, ``httpx.Response`` out, httpx's exceptions
on failure); h11 does the HTTP. One transport holds at most one connection: the pool of
transports (``upstream_pool``) is the connection pool. A connection is reused only after a
body read to its end, and dropped when it turns readable while idle (the server closed it).
A body left unread (a cancelled answer, an error) closes its connection at once, so the
upstream sees the request end.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import h11
import httpx
import trio

__all__ = ["ResponseBody", "StreamingTransport"]

BeforeRead = Callable[[], Awaitable[None]]
_READ_BYTES = 64 * 1024


class _Connection:
    def __init__(self, stream: trio.abc.Stream, socket: trio.socket.SocketType) -> None:
        self.stream = stream
        self.socket = socket
        self.h11 = h11.Connection(h11.CLIENT)
        self.closed = False

    def reusable(self) -> bool:
        """Idle, and not closed by the server meanwhile (an idle connection that turned
        readable has an EOF or garbage waiting: either way it is done)."""
        return (not self.closed and self.h11.our_state is h11.IDLE
                and self.h11.their_state is h11.IDLE and not self.socket.is_readable())

    async def receive(self) -> None:
        try:
            data = await self.stream.receive_some(_READ_BYTES)
        except (trio.BrokenResourceError, OSError) as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
        self.h11.receive_data(bytes(data))

    def next_event(self) -> type[h11.NEED_DATA | h11.PAUSED] | h11.Event:
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            with trio.CancelScope(shield=True):
                await self.stream.aclose()


class ResponseBody(httpx.AsyncByteStream):
    """The body of one response, one piece per network read; ``before_read`` (when set) is
    awaited before each network read."""

    def __init__(self, conn: _Connection, transport: StreamingTransport) -> None:
        self._conn, self._transport = conn, transport
        self.before_read: BeforeRead | None = None
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while not self._done:
            pieces: list[bytes] = []
            event = conn.next_event()
            while isinstance(event, h11.Data):
                pieces.append(bytes(event.data))
                event = conn.next_event()
            if pieces:
                yield b"".join(pieces)
            if event is h11.NEED_DATA:
                if self.before_read is not None:
                    await self.before_read()
                await conn.receive()
            elif isinstance(event, h11.EndOfMessage):
                self._done = True
            elif isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError("the upstream closed the connection mid-body")

    async def aclose(self) -> None:
        self.before_read = None
        conn = self._conn
        if self._done and conn.h11.their_state is h11.DONE and conn.h11.our_state is h11.DONE:
            try:
                conn.h11.start_next_cycle()
            except h11.LocalProtocolError:  # "Connection: close", or HTTP/1.0
                await conn.aclose()
            else:
                self._transport._idle = conn
                return
        await conn.aclose()


class StreamingTransport(httpx.AsyncBaseTransport):
    """One HTTP/1.1 connection at a time to the upstream, kept alive between requests."""

    def __init__(self, ssl_context: ssl.SSLContext, connect_timeout: float) -> None:
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._idle: _Connection | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        conn, self._idle = self._idle, None
        if conn is not None and not conn.reusable():
            await conn.aclose()
            conn = None
        if conn is None:
            conn = await self._connect(request.url)
        try:
            return await self._exchange(conn, request)
        except BaseException:
            await conn.aclose()
            raise

    async def _exchange(self, conn: _Connection, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = [(k, v) for k, v in request.headers.raw]
        head = conn.h11.send(h11.Request(method=request.method, target=request.url.raw_path,
                                         headers=headers))
        data = (head or b"") + (conn.h11.send(h11.Data(data=body)) or b"") + (
            conn.h11.send(h11.EndOfMessage()) or b"")
        try:
            with trio.fail_after(self._connect_timeout):
                await conn.stream.send_all(data)
        except trio.TooSlowError as exc:
            raise httpx.WriteTimeout("sending the request timed out") from exc
        except (trio.BrokenResourceError, OSError) as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__) from exc
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                await conn.receive()
            elif isinstance(event, h11.Response):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError("the upstream closed the connection "
                                                "before answering")
            # an InformationalResponse (100 Continue...) is skipped
        return httpx.Response(
            event.status_code, headers=list(event.headers), stream=ResponseBody(conn, self),
            extensions={"http_version": b"HTTP/" + event.http_version,
                        "reason_phrase": event.reason})

    async def _connect(self, url: httpx.URL) -> _Connection:
        host = url.host
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            with trio.fail_after(self._connect_timeout):
                tcp = await trio.open_tcp_stream(host, port)  # TCP_NODELAY set by Trio
                stream: trio.abc.Stream = tcp
                if url.scheme == "https":
                    tls = trio.SSLStream(tcp, self._ssl, server_hostname=host,
                                         https_compatible=True)
                    try:
                        await tls.do_handshake()
                    except BaseException:
                        await tcp.aclose()
                        raise
                    stream = tls
        except trio.TooSlowError as exc:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except (trio.BrokenResourceError, OSError) as exc:
            raise httpx.ConnectError(f"{host}:{port}: {exc}") from exc
        return _Connection(stream, tcp.socket)

    async def aclose(self) -> None:
        conn, self._idle = self._idle, None
        if conn is not None:
            await conn.aclose()
