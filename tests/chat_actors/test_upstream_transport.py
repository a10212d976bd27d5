"""StreamingTransport against real sockets: keep-alive, servers that close, TLS, failures."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chat_actors.upstream import _make_transport
from chat_actors.upstream_transport import ResponseBody, StreamingTransport
from core.settings import load_settings

Handler = Callable[[trio.abc.Stream, int], Awaitable[None]]


@asynccontextmanager
async def serve(handler: Handler, *, tls: ssl.SSLContext | None = None,
                ) -> AsyncIterator[tuple[int, list[int]]]:
    """A server on a free port; ``handler(stream, n)`` runs for the n-th connection (from 0).
    Yields the port and the list of connections seen."""
    seen: list[int] = []

    async def on_connection(tcp: trio.SocketStream) -> None:
        n = len(seen)
        seen.append(n)
        stream: trio.abc.Stream = tcp
        if tls is not None:
            stream = trio.SSLStream(tcp, tls, server_side=True)
            await stream.do_handshake()
        async with stream:
            await handler(stream, n)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, on_connection, 0)
        yield listeners[0].socket.getsockname()[1], seen
        nursery.cancel_scope.cancel()


async def read_request(stream: trio.abc.Stream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head


async def fetch(transport: StreamingTransport, url: str) -> tuple[int, bytes, list[bytes]]:
    request = httpx.Request("POST", url, json={"q": 1})
    response = await transport.handle_async_request(request)
    pieces: list[bytes] = []
    try:
        assert isinstance(response.stream, ResponseBody)
        async for piece in response.stream:
            pieces.append(piece)
    finally:
        await response.aclose()
    return response.status_code, b"".join(pieces), pieces


def transport(ssl_context: ssl.SSLContext | None = None) -> StreamingTransport:
    return StreamingTransport(ssl_context or ssl.create_default_context(), 2.0)


async def test_keep_alive_then_a_server_that_closed_the_idle_connection() -> None:
    async def handler(stream: trio.abc.Stream, n: int) -> None:
        for _ in range(2 if n == 0 else 1):  # the first connection serves two, then closes
            await read_request(stream)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")

    t = transport()
    async with serve(handler) as (port, seen):
        for _ in range(4):
            assert (await fetch(t, f"http://127.0.0.1:{port}/x"))[:2] == (200, b"hello")
            await trio.sleep(0.05)  # the close reaches the client before the next request
    await t.aclose()
    assert seen == [0, 1, 2]  # two on the first connection, then one each: never a failure


async def test_connection_close_bodies_read_to_the_end_and_not_reused() -> None:
    async def handler(stream: trio.abc.Stream, n: int) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\ndata: a\n\n")
        await trio.sleep(0.05)
        await stream.send_all(b"data: b\n\n")

    t = transport()
    async with serve(handler) as (port, seen):
        for _ in range(2):
            status, body, _ = await fetch(t, f"http://127.0.0.1:{port}/x")
            assert (status, body) == (200, b"data: a\n\ndata: b\n\n")
    assert seen == [0, 1]


async def test_what_one_read_brought_is_one_piece() -> None:
    chunk = b"9\r\ndata: x\n\n\r\n"

    async def handler(stream: trio.abc.Stream, n: int) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                              + chunk * 5)  # five HTTP chunks in one write
        await trio.sleep(0.1)
        await stream.send_all(chunk * 3 + b"0\r\n\r\n")

    async with serve(handler) as (port, _):
        _, body, pieces = await fetch(transport(), f"http://127.0.0.1:{port}/x")
    assert body == b"data: x\n\n" * 8
    assert len(pieces) == 2, pieces  # one piece per HTTP chunk would be eight


async def test_a_body_cut_mid_way_is_a_protocol_error_and_the_connection_is_dropped() -> None:
    async def handler(stream: trio.abc.Stream, n: int) -> None:
        await read_request(stream)
        if n == 0:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\npartial")
            return  # closes
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    t = transport()
    async with serve(handler) as (port, seen):
        with pytest.raises(httpx.RemoteProtocolError):
            await fetch(t, f"http://127.0.0.1:{port}/x")
        assert (await fetch(t, f"http://127.0.0.1:{port}/x"))[1] == b"ok"
    assert seen == [0, 1]


async def test_a_cancelled_body_closes_its_connection_at_once() -> None:
    closed = trio.Event()

    async def handler(stream: trio.abc.Stream, n: int) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        with trio.move_on_after(5):
            try:
                while True:
                    await stream.send_all(b"9\r\ndata: x\n\n\r\n")
                    await trio.sleep(0.01)
            except trio.BrokenResourceError:
                closed.set()  # the client hung up

    t = transport()
    async with serve(handler) as (port, _):
        request = httpx.Request("POST", f"http://127.0.0.1:{port}/x", json={})
        response = await t.handle_async_request(request)
        with trio.move_on_after(0.1):
            async for _ in response.stream:  # type: ignore[union-attr]
                pass
        await response.aclose()
        with trio.fail_after(2):
            await closed.wait()


async def test_refused_and_timed_out_connects_are_httpx_errors() -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        await fetch(transport(), f"http://127.0.0.1:{port}/x")
    # A listener whose accept queue is full drops further SYNs: the connect hangs.
    with trio.socket.socket() as full:
        await full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        for sock in fillers:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        await trio.sleep(0.2)
        t = StreamingTransport(ssl.create_default_context(), 0.3)
        try:
            with pytest.raises(httpx.ConnectTimeout):
                await fetch(t, f"http://127.0.0.1:{port}/x")
        finally:
            for sock in fillers:
                sock.close()


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


async def test_https_with_keep_alive_and_a_checked_certificate(tmp_path: Path) -> None:
    server_tls, client_tls = self_signed(tmp_path)

    async def handler(stream: trio.abc.Stream, n: int) -> None:
        for _ in range(2):
            await read_request(stream)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret")

    async with serve(handler, tls=server_tls) as (port, seen):
        t = transport(client_tls)
        for _ in range(2):
            assert (await fetch(t, f"https://127.0.0.1:{port}/x"))[:2] == (200, b"secret")
        await t.aclose()
        with pytest.raises(httpx.ConnectError):  # the default trust store does not know it
            await fetch(transport(), f"https://127.0.0.1:{port}/x")
    assert seen[:2] == [0, 1]  # the two requests shared the first connection


def test_a_proxy_from_the_environment_takes_httpx_s_own_transport(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(api_env="test", openai_base_url="https://api.openai.com/v1")
    context = ssl.create_default_context()
    assert isinstance(_make_transport(settings, context), StreamingTransport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert isinstance(_make_transport(settings, context), httpx.AsyncHTTPTransport)
