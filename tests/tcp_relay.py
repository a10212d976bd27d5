"""A TCP relay that a test can cut: a network partition between one server process and Redis,
made in the test's own Trio loop (the server connects to the relay instead of to Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio


class TcpRelay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cut_off = False
        self.connections = 0
        self._pipes: set[trio.CancelScope] = set()

    def cut(self) -> None:
        """Every connection through the relay closes, and new ones close as soon as made."""
        self.cut_off = True
        for scope in list(self._pipes):
            scope.cancel()

    def heal(self) -> None:
        self.cut_off = False

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self.cut_off:
                return
            self.connections += 1
            with trio.CancelScope() as scope:
                self._pipes.add(scope)
                try:
                    target = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                    async with target, trio.open_nursery() as nursery:
                        nursery.start_soon(_pipe, client, target, nursery.cancel_scope)
                        nursery.start_soon(_pipe, target, client, nursery.cancel_scope)
                finally:
                    self._pipes.discard(scope)


async def _pipe(source: trio.SocketStream, sink: trio.SocketStream,
                both: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    both.cancel()  # one side closed: the other goes too


@asynccontextmanager
async def tcp_relay(target_port: int) -> AsyncIterator[TcpRelay]:
    relay = TcpRelay(target_port)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, relay._handle, 0,
                                                host="127.0.0.1"))
        relay.port = listeners[0].socket.getsockname()[1]
        yield relay
        nursery.cancel_scope.cancel()
