"""The load generator's lean WebSocket client against a wsproto server over real TCP: the
server side is scripted frame by frame, so fragments, pings, rejections and closes are exact."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, ConnectionTimeout
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from scripts.loadtest_ws import open_websocket_url


class Peer:
    """The server's end of one connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)
        self.events: list[Event] = []

    async def next_event(self) -> Event:
        while not self.events:
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data or None)
            self.events.extend(self.ws.events())
        return self.events.pop(0)

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))


Script = Callable[[Peer], Awaitable[None]]


@asynccontextmanager
async def server(script: Script) -> AsyncIterator[tuple[str, list[Event]]]:
    """A server playing ``script`` for each connection; yields its URL and what it saw after
    the script (the client's last events)."""
    seen: list[Event] = []

    async def handle(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        request = await peer.next_event()
        assert isinstance(request, Request)
        await script(peer)
        with trio.move_on_after(5):
            while True:
                try:
                    seen.append(await peer.next_event())
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                event = seen[-1]
                if isinstance(event, CloseConnection):
                    if peer.ws.state is ConnectionState.REMOTE_CLOSING:
                        await peer.send(event.response())
                    break

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws/chatgpt/key?chat_room_id=r", seen
        nursery.cancel_scope.cancel()


async def test_messages_fragments_and_pings() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(AcceptConnection())
        await peer.send(TextMessage(data='{"init": true}'))
        await peer.send(Ping(payload=b"p1"))
        await peer.send(TextMessage(data="frag", message_finished=False))
        await peer.send(TextMessage(data="ments", message_finished=True))
        assert await peer.next_event() == Pong(payload=b"p1")  # answered while reading
        echo = await peer.next_event()
        assert isinstance(echo, TextMessage)
        await peer.send(TextMessage(data="echo:" + echo.data))

    async with server(script) as (url, seen):
        async with open_websocket_url(url, connect_timeout=5, disconnect_timeout=5) as ws:
            assert await ws.get_message() == '{"init": true}'
            assert await ws.get_message() == "fragments"
            await ws.send_message("hi")
            assert await ws.get_message() == "echo:hi"
        assert ws.closed is not None and ws.closed.code == 1000
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
    # leaving the block closed it with the closing handshake
    assert [e for e in seen if isinstance(e, CloseConnection)] == [CloseConnection(code=1000, reason="")]


async def test_a_rejection_carries_its_status_and_body() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(RejectConnection(status_code=403, has_body=True,
                                         headers=[(b"content-type", b"application/json")]))
        await peer.send(RejectData(data=b'{"error": "forbidden"}', body_finished=True))

    async with server(script) as (url, _seen):
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(url, connect_timeout=5, disconnect_timeout=5):
                raise AssertionError("not reached")
    assert info.value.status_code == 403
    assert info.value.body == b'{"error": "forbidden"}'


async def test_a_close_by_the_server_is_answered_and_raised_with_its_code() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(AcceptConnection())
        await peer.send(TextMessage(data="last"))
        await peer.send(CloseConnection(code=1012, reason="restarting"))

    async with server(script) as (url, seen), \
            open_websocket_url(url, connect_timeout=5, disconnect_timeout=5) as ws:
        assert await ws.get_message() == "last"
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        assert info.value.reason.code == 1012
        assert info.value.reason.reason == "restarting"
        with pytest.raises(ConnectionClosed):
            await ws.send_message("too late")
    assert seen == [CloseConnection(code=1012, reason="restarting")]  # its close, echoed


async def test_a_dropped_connection_is_a_close_1006() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(AcceptConnection())
        await peer.stream.aclose()

    async with server(script) as (url, _seen), \
            open_websocket_url(url, connect_timeout=5, disconnect_timeout=5) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        assert info.value.reason.code == 1006


async def test_a_silent_server_is_a_connect_timeout(autojump_clock: trio.abc.Clock) -> None:
    async def script(peer: Peer) -> None:
        await trio.sleep_forever()  # the TCP connection is accepted, the handshake never ends

    async with server(script) as (url, _seen):
        start = trio.current_time()
        with pytest.raises(ConnectionTimeout):
            async with open_websocket_url(url, connect_timeout=30, disconnect_timeout=5):
                raise AssertionError("not reached")
        assert trio.current_time() - start == pytest.approx(30)
