"""A mock OpenAI-compatible upstream: a real HTTP/1.1 server (Trio + h11) speaking real SSE.

Run it: ``python -m scripts.mock_upstream --host 127.0.0.1 --port 8001 [--tokens 64]
[--delay-ms 10] [--require-key [KEY]] [--stall-s 3600] [--workers N]`` (or the env variables
``MOCK_UPSTREAM_TOKENS``, ``MOCK_UPSTREAM_DELAY_MS``, ``MOCK_UPSTREAM_REQUIRE_KEY``,
``MOCK_UPSTREAM_STALL_S``; flags win). In tests::

    port = await nursery.start(functools.partial(serve_mock_upstream, "127.0.0.1", 0, tokens=8))

Endpoints: ``POST /v1/chat/completions`` (``stream: true`` → SSE ``chat.completion.chunk``
events then ``data: [DONE]``; ``stream: false`` → one ``chat.completion``), ``GET /v1/models``,
and for tests ``GET /mock/requests?n=N`` (the last N request bodies, e.g. to check the ``user``
field), ``GET /mock/stats`` (counters, e.g. ``answers_aborted`` when a client hung up),
``POST /mock/reset``.

Answers are deterministic: ``expected_answer(messages, tokens)`` / ``expected_chunks`` (one word
per chunk). Per-request knobs and fault modes: see ``scripts.mock_upstream_answers`` and
``scripts.mock_upstream_app``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from functools import partial

import trio

from scripts.mock_upstream_answers import (
    FAULTS,
    VOCABULARY,
    Knobs,
    continuation_offset,
    expected_answer,
    expected_chunks,
    parse_knobs,
)
from scripts.mock_upstream_app import MockConfig, MockUpstream, config_from

__all__ = [
    "FAULTS",
    "VOCABULARY",
    "Knobs",
    "MockConfig",
    "MockUpstream",
    "continuation_offset",
    "expected_answer",
    "expected_chunks",
    "main",
    "parse_knobs",
    "serve_mock_upstream",
]


async def _listener(host: str, port: int, reuse_port: bool) -> trio.SocketListener:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    await sock.bind((host, port))
    sock.listen(4096)
    return trio.SocketListener(sock)


async def serve_mock_upstream(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    reuse_port: bool = False,
    **config: object,
) -> None:
    """Serve until cancelled; ``task_status.started`` reports the real port (use port 0)."""
    await _serve(host, port, config_from(config), reuse_port, task_status)


async def _serve(host: str, port: int, config: MockConfig, reuse_port: bool,
                 task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    app = MockUpstream(config)
    listener = await _listener(host, port, reuse_port)
    real_port: int = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app.pacer.run)
        await nursery.start(trio.serve_listeners, app.handle_connection, [listener])
        task_status.started(real_port)


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m scripts.mock_upstream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--tokens", type=int, default=int(env("MOCK_UPSTREAM_TOKENS", "64")),
                        help="words per answer (default 64)")
    parser.add_argument("--delay-ms", type=float,
                        default=float(env("MOCK_UPSTREAM_DELAY_MS", "10")),
                        help="delay per word in ms (default 10)")
    parser.add_argument("--stall-s", type=float,
                        default=float(env("MOCK_UPSTREAM_STALL_S", "3600")),
                        help="how long the stall faults stall (default 3600 s)")
    parser.add_argument("--require-key", nargs="?", const="*",
                        default=env("MOCK_UPSTREAM_REQUIRE_KEY") or None,
                        help="require 'Authorization: Bearer ...' (any key, or exactly KEY)")
    parser.add_argument("--record-limit", type=int, default=1000,
                        help="request bodies kept for GET /mock/requests")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes sharing the port (SO_REUSEPORT); the xN faults and "
                        "/mock/* then see one process only")
    parser.add_argument("--reuse-port-child", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    config = {"tokens": args.tokens, "delay_ms": args.delay_ms, "stall_s": args.stall_s,
                  "require_key": args.require_key, "record_limit": args.record_limit}
    children: list[subprocess.Popen[bytes]] = []
    if args.workers > 1:
        child_args = [*(argv if argv is not None else sys.argv[1:]), "--workers", "1"]
        children = [
            subprocess.Popen([sys.executable, "-m", "scripts.mock_upstream", *child_args,
                              "--port", str(args.port), "--reuse-port-child"])
            for _ in range(args.workers - 1)
        ]
    print(f"mock upstream on http://{args.host}:{args.port}/v1 "
          f"(tokens={args.tokens}, delay_ms={args.delay_ms}, workers={args.workers})",
          flush=True)
    try:
        trio.run(partial(_serve_until_signal, args.host, args.port,
                         args.workers > 1 or args.reuse_port_child,
                         os.getppid() if args.reuse_port_child else None, config))
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            child.terminate()
            child.wait()


async def _serve_until_signal(host: str, port: int, reuse_port: bool, parent: int | None,
                              config: dict[str, object]) -> None:
    """Serve until SIGINT / SIGTERM (so the workers' finally runs), or, in a worker, until
    the parent process is gone."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, host, port, config_from(config), reuse_port)
        if parent is not None:
            nursery.start_soon(_exit_with_parent, parent, nursery.cancel_scope)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


async def _exit_with_parent(parent: int, scope: trio.CancelScope) -> None:
    while os.getppid() == parent:
        await trio.sleep(0.5)
    scope.cancel()


if __name__ == "__main__":
    main()
