"""A minimal HTTP/1.1 server connection on Trio + h11, just enough for the mock upstream.

Keep-alive, chunked streaming responses, and a way to notice at once that the client went away
(``watch_peer_close``) so a stalled or streaming response is abandoned when the client closes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus

import h11
import trio

MAX_BODY = 16 * 1024 * 1024
_READ_SIZE = 65536


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> dict[str, str]:
        query = self.target.partition("?")[2]
        return dict(p.partition("=")[::2] for p in query.split("&") if p)


class PeerClosed(Exception):
    """The client closed its side of the connection."""


class HttpConnection:
    """One accepted socket; requests are read and answered one at a time (keep-alive)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        self._chunked = False

    async def _next_event(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(_READ_SIZE)
            self.conn.receive_data(data)

    async def read_request(self) -> Request | None:
        """The next request, or None when the client closed the connection between requests."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
        body = bytearray()
        while True:
            part = await self._next_event()
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("body too large")
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                raise h11.RemoteProtocolError("connection closed inside a request")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        return Request(event.method.decode(), event.target.decode("latin-1"), headers, bytes(body))

    @property
    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    def response_head(
        self, status: int, headers: list[tuple[str, str]], *, length: int | None = None
    ) -> bytes:
        """The status line and headers as bytes, to send (chunked unless ``length``)."""
        fields = [("server", "mock-upstream"), *headers]
        self._chunked = length is None
        if length is not None:
            fields.append(("content-length", str(length)))
        else:
            fields.append(("transfer-encoding", "chunked"))
        data = self.conn.send(h11.Response(
            status_code=status, headers=fields, reason=HTTPStatus(status).phrase.encode()
        ))
        assert data is not None
        return data

    async def start_response(
        self, status: int, headers: list[tuple[str, str]], *, length: int | None = None
    ) -> None:
        await self.stream.send_all(self.response_head(status, headers, length=length))

    @staticmethod
    def chunk_bytes(payload: bytes) -> bytes:
        """``payload`` framed as one HTTP/1.1 chunk (the hot path: without h11's machinery)."""
        return b"%x\r\n%b\r\n" % (len(payload), payload)

    async def send_data(self, payload: bytes) -> None:
        if self._chunked and payload:
            await self.stream.send_all(self.chunk_bytes(payload))
            return
        data = self.conn.send(h11.Data(data=payload))
        assert data is not None
        await self.stream.send_all(data)

    def end_bytes(self) -> bytes:
        """The end of the response as bytes, to send (the connection counts it as sent)."""
        data = self.conn.send(h11.EndOfMessage())
        assert data is not None
        return data

    async def end_response(self) -> None:
        await self.stream.send_all(self.end_bytes())

    async def send_json(
        self, status: int, body: object, headers: list[tuple[str, str]] | None = None
    ) -> None:
        payload = json.dumps(body).encode()
        await self.start_response(
            status, [("content-type", "application/json"), *(headers or [])], length=len(payload)
        )
        await self.send_data(payload)
        await self.end_response()

    async def watch_peer_close(self) -> None:
        """Return when the client closes its side (bytes sent meanwhile are kept for h11)."""
        while True:
            data = await self.stream.receive_some(_READ_SIZE)
            if not data:
                raise PeerClosed
            self.conn.receive_data(data)
