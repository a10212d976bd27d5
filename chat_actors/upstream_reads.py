"""An httpcore network backend whose streams run a hook before each network read.

httpx hands a streamed body out one HTTP chunk at a time (an SSE upstream sends one chunk per
token), through six async generators, whether the chunk came alone or with the next twenty in
one ``recv``. Nothing above httpcore can tell "the chunks of this read are used up" from "the
next chunk is on its way". Below it, the connection's network stream can: httpcore calls its
``read`` exactly when h11 has no complete event left. That is where the upstream client
delivers what it holds (one delta per network read) and paces the next read
(``chat_actors.upstream``): one wake-up per ``delta_interval`` instead of one per token, and
no guessing from the clock.

``install_read_hooks(transport)`` puts the backend under an ``httpx.AsyncHTTPTransport``
(httpcore's ``AsyncConnectionPool(network_backend=...)`` is public; httpx does not pass it on,
so the pool built by httpx gets it afterwards: checked, with a clear error, against the pinned
versions). ``read_hook(response)`` is the stream of a response, to set ``before_read`` on for
the time of one response.
"""

from __future__ import annotations

import ssl
import typing
from collections.abc import Awaitable, Callable, Iterable

import httpcore
import httpx

__all__ = ["HookedStream", "install_read_hooks", "read_hook"]

BeforeRead = Callable[[], Awaitable[None]]


class HookedStream(httpcore.AsyncNetworkStream):
    """A connection's stream; ``before_read`` (when set) is awaited before each read."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self.before_read: BeforeRead | None = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self.before_read is not None:
            await self.before_read()
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        self.before_read = None
        await self._stream.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        return HookedStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class _HookedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[typing.Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        return HookedStream(await self._backend.connect_tcp(
            host, port, timeout=timeout, local_address=local_address,
            socket_options=socket_options))

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[typing.Any] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        return HookedStream(await self._backend.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def install_read_hooks(transport: httpx.AsyncHTTPTransport) -> httpx.AsyncHTTPTransport:
    """``transport`` with every connection it opens a ``HookedStream``; returns it."""
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore.AsyncConnectionPool) or not isinstance(
            getattr(pool, "_network_backend", None), httpcore.AsyncNetworkBackend):
        raise TypeError(
            f"httpx {httpx.__version__} / httpcore {httpcore.__version__}: the transport "
            "has no connection pool with a network backend; see pyproject.toml's pins")
    if not isinstance(pool._network_backend, _HookedBackend):
        pool._network_backend = _HookedBackend(pool._network_backend)
    return transport


def read_hook(response: httpx.Response) -> HookedStream | None:
    """The hooked stream a response is read from (None for one from another client)."""
    stream = response.extensions.get("network_stream")
    return stream if isinstance(stream, HookedStream) else None
