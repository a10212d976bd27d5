"""A pool of one-connection httpx transports, checked out per request.

Why not N shared clients: httpcore's pool re-scans its connections on every request added or
removed, and its keep-alive check is quadratic in the number of idle connections
(``len([c.is_idle() for c in connections])`` inside a loop over connections). With 8 shared
clients at 300 concurrent streams the profile was dominated by ``is_idle`` (2.5 M calls for 600
answers); at 1,000 streams each client would hold ~125 connections. A client that never holds
more than one connection makes those scans O(1), and checking them out of a LIFO list keeps
the warm keep-alive connections in use. Measured numbers: see scripts/bench_mock_upstream.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import trio

_CLOSE_GRACE = 1.0


class ClientPool:
    """Idle clients in a LIFO list; a checkout takes the warmest or makes a new one."""

    def __init__(self, factory: Callable[[], httpx.AsyncBaseTransport], max_idle: int) -> None:
        self._factory = factory
        self._max_idle = max_idle
        self._idle: list[httpx.AsyncBaseTransport] = []
        self._busy = 0
        self._closed = False

    @property
    def busy(self) -> int:
        """Requests in flight."""
        return self._busy

    @property
    def idle(self) -> int:
        return len(self._idle)

    @asynccontextmanager
    async def checkout(self) -> AsyncIterator[httpx.AsyncBaseTransport]:
        if self._closed:
            raise RuntimeError("the upstream client pool is closed")
        client = self._idle.pop() if self._idle else self._factory()
        self._busy += 1
        try:
            yield client
        finally:
            self._busy -= 1
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(client)  # a cancelled stream closed its connection: still fine
            else:
                await _close(client)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for client in idle:
            await _close(client)


async def _close(client: httpx.AsyncBaseTransport) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_GRACE):
        await client.aclose()
