"""``make run``: check the services, migrate, start the mock upstream if needed, serve.

Runs in the foreground on Hypercorn's trio worker. Stops with one clear line when a setting is
invalid (exit 2), MariaDB / Redis cannot be reached (exit 3, saying how to start them) or
MariaDB refuses the start-up work: login, bootstrap, migrations (exit 4, with MariaDB's reason),
or the server does not start (exit 5: it cannot listen on HOST:PORT, or after the logged
reason: Redis went away after the
check). SIGINT and SIGTERM shut it down gracefully; a second one stops it at once.
Logging is configured first (``web.logging_setup``): JSON access lines on stdout.

``WORKERS=N`` (N > 1): this process does the checks, the migration, the bind and the mock
upstream once, then serves through N worker processes (``scripts.serve_workers``), each
``python -m scripts.serve --worker I/N``: the same server as one process, on the inherited
socket, without the once-per-server work.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from functools import partial
from urllib.parse import urlsplit

import trio

from core.errors import ConfigError, StorageError
from core.settings import Settings, load_settings
from scripts.serve_workers import Worker, run_workers

MOCK_PORT = int(os.environ.get("MOCK_UPSTREAM_PORT", "8001"))
OPENAI = "api.openai.com"

ACCEPT_LOOPS = 16
"""Accept loops on the one listening socket. Trio's ``serve_listeners`` (Hypercorn's) accepts
one connection per listener per scheduler turn, and a process busy streaming answers takes tens
of milliseconds a turn: with one listener a storm of 1,000 connects queued for 15-30 s. Each
loop is a dup of the socket's descriptor, bound by Hypercorn as ``fd://N``."""

# The start commands themselves live in one place: scripts/start_services.sh (CI runs it too).
HOW_TO_START = "start it with `bash scripts/start_services.sh` (or `docker compose up -d db cache`)"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound (as Hypercorn binds: SO_REUSEADDR), not yet listening: Hypercorn calls listen
    with the backlog on each of its descriptors."""
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def accept_binds(sock: socket.socket, loops: int = ACCEPT_LOOPS) -> list[str]:
    """``fd://`` binds for Hypercorn: ``loops`` descriptors of ``sock`` (theirs to close)."""
    return [f"fd://{os.dup(sock.fileno())}" for _ in range(loops)]


class _FirstRunningLine(logging.Filter):
    """Hypercorn logs "Running on ..." once per descriptor: keep the first."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Running on "):
            return True
        seen, self.seen = self.seen, True
        return not seen


def bind_problem(host: str, port: int) -> str | None:
    """Why the server could not listen there (taken, not allowed, not an address of this host),
    or None. Checked before anything starts: Hypercorn binds only after the app's start-up, and
    fails then with a traceback."""
    try:
        listening_socket(host, port).close()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return "the port is taken (another server running?): stop it or set PORT"
        return exc.strerror or str(exc)
    return None


def check_services(settings: Settings) -> list[str]:
    """One line per service that cannot be reached."""
    problems = []
    db = urlsplit(settings.sqlalchemy_url)
    redis = urlsplit(settings.redis_url)
    for name, host, port in (
        ("MariaDB", db.hostname or "127.0.0.1", db.port or 3306),
        ("Redis", redis.hostname or "127.0.0.1", redis.port or 6379),
    ):
        if not _reachable(host, port):
            problems.append(f"{name} is not reachable at {host}:{port}: {HOW_TO_START}")
    return problems


def needs_mock_upstream(settings: Settings) -> bool:
    """OpenAI itself cannot answer without a key: then the mock upstream stands in. Another
    base URL is used as given, key or not (vLLM, llama.cpp and Ollama usually need none)."""
    return not settings.openai_api_key and urlsplit(settings.openai_base_url).hostname == OPENAI


async def until_stop_signal(signals: AsyncIterator[int], nursery: trio.Nursery,
                            app: object, worker: Worker | None = None) -> None:
    """Returns at the first SIGINT or SIGTERM (what docker, systemd and Ctrl-C send), once the
    chat edge is drained (``web.drain``: answers finish or are stored partial, every socket
    gets its close frame); Hypercorn then shuts down. A second signal
    cancels everything at once, except in a worker process: its parent stops it at once with
    SIGKILL, and a worker may well get the first signal twice (from its parent and from
    systemd's stop of the whole control group): it drains once."""
    from web.drain import drain_chat

    who = f"{worker.label}: " if worker else ""
    async for signum in signals:
        again = "" if worker else " (again to stop at once)"
        print(f"{who}{signal.Signals(signum).name}: shutting down{again}", flush=True)
        if worker is None:
            nursery.start_soon(_stop_at_second_signal, signals, nursery.cancel_scope)
        await drain_chat(app)
        return


async def _stop_at_second_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for signum in signals:
        print(f"{signal.Signals(signum).name} again: stopping at once", flush=True)
        scope.cancel()
        return


async def start_upstream(nursery: trio.Nursery, settings: Settings) -> Settings:
    """The mock upstream in ``nursery`` when it must stand in (``needs_mock_upstream``); the
    settings with its URL. Once per server: with several workers, in their parent."""
    from scripts.mock_upstream import serve_mock_upstream

    if needs_mock_upstream(settings):
        port = await nursery.start(partial(serve_mock_upstream, "127.0.0.1", MOCK_PORT))
        base_url = f"http://127.0.0.1:{port}/v1"
        settings = settings.model_copy(update={"openai_base_url": base_url})
        print(f"OPENAI_API_KEY is not set (and OPENAI_BASE_URL is OpenAI's): answers "
              f"come from the mock upstream at {base_url}", flush=True)
    elif not settings.openai_api_key:
        print(f"OPENAI_API_KEY is not set: requests to {settings.openai_base_url} carry "
              "no key", flush=True)
    return settings


async def _main(settings: Settings, worker: Worker | None = None) -> None:
    """The server: the whole of it, or one worker process of several (``worker``: the upstream
    is its parent's, the listening socket inherited)."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from web.app import create_app

    # Open from the start: a signal during start-up is queued, and the
    # server shuts down gracefully as soon as it is up, instead of dying half-started.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            if worker is None:
                settings = await start_upstream(nursery, settings)
                sock = listening_socket(settings.host, settings.port)
            else:
                nursery.start_soon(worker.watch_parent)
                sock = worker.listening_socket()
            config = Config()
            with sock:
                config.bind = accept_binds(sock)
            config.backlog = settings.listen_backlog
            config.accesslog = None  # our request log replaces it (and never logs access keys)
            config.errorlog = logging.getLogger("hypercorn.error")  # through our handlers, once
            config.errorlog.addFilter(_FirstRunningLine())
            # Frames up to MAX_FRAME_BYTES get a clear too_long error from the chat edge; far
            # larger ones are not even buffered: Hypercorn closes the socket (1009).
            config.websocket_max_message_size = max(settings.max_frame_bytes * 16, 1 << 20)
            config.graceful_timeout = 5
            app = create_app(settings, tune_gc=True)
            where = f" ({worker.label})" if worker else ""
            print(f"serving on http://localhost:{settings.port} (chat page: /chatgpt, docs: "
                  f"/docs){where}", flush=True)
            await serve(app, config, mode="asgi",
                        shutdown_trigger=partial(until_stop_signal, signals, nursery, app, worker))
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    worker = Worker.from_argv(sys.argv[1:] if argv is None else argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from web.logging_setup import configure_logging

    configure_logging(settings, worker.label if worker else "")
    if worker is not None:  # its parent did the once-per-server work
        return _serve(settings, worker)
    problems = check_services(settings)
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        return 3
    problem = bind_problem(settings.host, settings.port)
    if problem:
        print(f"error: cannot listen on {settings.host}:{settings.port}: {problem}",
              file=sys.stderr)
        return 5
    from storage.errors import sql_reason
    from storage.migrate import prepare_database

    try:
        prepare_database(settings)
    except StorageError as exc:
        db = urlsplit(settings.sqlalchemy_url)
        print(f"error: MariaDB at {db.hostname}:{db.port or 3306} refused start-up: "
              f"{sql_reason(exc)}", file=sys.stderr)
        return 4
    if settings.workers > 1:
        return _serve_workers(settings)
    return _serve(settings, None)


def _serve_workers(settings: Settings) -> int:
    try:
        sock = listening_socket(settings.host, settings.port)
    except OSError as exc:  # taken since bind_problem looked
        print(f"error: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 5
    with sock:
        try:
            return run_workers(settings, sock, start_upstream)
        except KeyboardInterrupt:  # before the signal receiver was open
            return 130


def _serve(settings: Settings, worker: Worker | None) -> int:
    from hypercorn.utils import LifespanFailureError, LifespanTimeoutError

    try:
        trio.run(_main, settings, worker)
    except KeyboardInterrupt:  # before the signal receiver was open
        return 130
    except BaseExceptionGroup as group:
        if group.subgroup((LifespanFailureError, LifespanTimeoutError)) is not None:
            print("error: the server did not start (its log above says why)", file=sys.stderr)
            return 5
        if group.split(KeyboardInterrupt)[1] is None:
            return 130
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
