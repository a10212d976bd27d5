"""The load generator's WebSocket client: wsproto driven from the session's own task.

trio-websocket gives every connection a reader task that parses frames as they come and hands
each message to the caller through a memory channel. The load generator runs on the same two
cores as the server it measures, and at 1,000 sessions that machinery was most of its cost
per answer. Here ``get_message`` reads and parses in the caller's task, and nothing runs
between calls: frames wait in the kernel's socket buffer, as they waited in trio-websocket's
queue. wsproto (which trio-websocket uses too) does the protocol.

The errors are trio-websocket's (``ConnectionClosed``, ``ConnectionRejected``,
``ConnectionTimeout``, ``HandshakeError``), so callers catch the same ones with either client.
A socket that is not read does not notice that the server closed it: whoever needs that
(sockets held open, not read) uses trio-websocket.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    DisconnectionTimeout,
    HandshakeError,
)
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import ProtocolError

_READ_SIZE = 64 * 1024


class LeanWebSocket:
    """One client connection, used from one task at a time."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self._stream = stream
        self._ws = ws
        self._events: deque[Event] = deque()
        self._text: list[str] = []  # a message's frames so far
        self._binary = bytearray()
        self.closed: CloseReason | None = None

    async def _next_event(self) -> Event:
        """The next protocol event, reading the socket when none is parsed yet."""
        while not self._events:
            data = await self._stream.receive_some(_READ_SIZE)
            self._ws.receive_data(data or None)  # b"" is the end of the stream
            self._events.extend(self._ws.events())
            if not data and not self._events:
                self._gone(1006, "the connection ended without a close frame")
        return self._events.popleft()

    def _gone(self, code: int, reason: str | None) -> None:
        self.closed = CloseReason(code, reason)
        raise ConnectionClosed(self.closed)

    async def get_message(self) -> str | bytes:
        if self.closed is not None:
            raise ConnectionClosed(self.closed)
        while True:
            event = await self._next_event()
            if isinstance(event, TextMessage):
                if event.message_finished and not self._text:
                    return event.data
                self._text.append(event.data)
                if event.message_finished:
                    text, self._text = "".join(self._text), []
                    return text
            elif isinstance(event, BytesMessage):
                self._binary += event.data
                if event.message_finished:
                    data, self._binary = bytes(self._binary), bytearray()
                    return data
            elif isinstance(event, Ping):
                await self._stream.send_all(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self._ws.state is ConnectionState.REMOTE_CLOSING:  # not the stream's end
                    try:
                        await self._stream.send_all(self._ws.send(event.response()))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                self._gone(event.code, event.reason)

    async def send_message(self, message: str | bytes) -> None:
        if self.closed is not None:
            raise ConnectionClosed(self.closed)
        event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(message)
        try:
            await self._stream.send_all(self._ws.send(event))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._gone(1006, "the connection broke")

    async def aclose(self, timeout: float) -> None:
        """The closing handshake (what the server still sends meanwhile is dropped), then the
        TCP connection; ``DisconnectionTimeout`` if the server's close frame does not come."""
        try:
            if self.closed is None:
                self.closed = CloseReason(1000, None)
                with trio.move_on_after(timeout) as scope:
                    await self._stream.send_all(self._ws.send(CloseConnection(code=1000)))
                    while not isinstance(await self._next_event(), CloseConnection):
                        pass
                if scope.cancelled_caught:
                    raise DisconnectionTimeout
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server went first
        finally:
            await trio.aclose_forcefully(self._stream)


async def _handshake(url: str) -> LeanWebSocket:
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError(f"not a ws:// URL: {url}")
    port = parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        stream = await trio.open_tcp_stream(parts.hostname, port)
    except OSError as exc:
        raise HandshakeError from exc
    ws = WSConnection(ConnectionType.CLIENT)
    conn = LeanWebSocket(stream, ws)
    try:
        await stream.send_all(ws.send(Request(host=parts.netloc, target=target)))
        event = await conn._next_event()
        if isinstance(event, RejectConnection):
            body = b""
            while event.has_body:
                data = await conn._next_event()
                if not isinstance(data, RejectData):
                    break
                body += data.data
                if data.body_finished:
                    break
            raise ConnectionRejected(event.status_code, tuple(event.headers), body)
        if not isinstance(event, AcceptConnection):
            raise HandshakeError(f"unexpected {type(event).__name__} in the handshake")
    except ProtocolError as exc:
        await trio.aclose_forcefully(stream)
        raise HandshakeError(f"handshake: {exc}") from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return conn


@asynccontextmanager
async def open_websocket_url(url: str, *, connect_timeout: float,
                             disconnect_timeout: float) -> AsyncIterator[LeanWebSocket]:
    """Connect (``ConnectionTimeout`` past ``connect_timeout``), yield, close."""
    try:
        with trio.fail_after(connect_timeout):
            conn = await _handshake(url)
    except trio.TooSlowError:
        raise ConnectionTimeout from None
    except ConnectionClosed as exc:
        raise HandshakeError("the server closed the connection in the handshake") from exc
    try:
        yield conn
    finally:
        await conn.aclose(disconnect_timeout)
