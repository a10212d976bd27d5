"""``make run`` with ``WORKERS=N`` (N > 1): a parent process that keeps N worker processes serving
on its one listening socket.

The parent does what happens once per server: ``scripts.serve`` has checked the services and
migrated, it binds the socket, runs the mock upstream when one is needed (one for all workers)
and holds the metrics directory the workers share. Each worker is ``python -m scripts.serve
--worker I/N``: a whole server of its own (its Trio loop, Hypercorn with the accept loops on the
inherited descriptor, its drain on SIGTERM), started in a process group of its own so that a
Ctrl-C in the terminal reaches only the parent, which passes it on once.

- SIGTERM / SIGINT: passed on to every worker, which drains; the parent exits 0 when every
  worker exited 0 (else 1). A second signal kills the workers at once.
- A worker that dies on its own is started again, unless ``DEATHS_ALLOWED`` died within
  ``DEATHS_WINDOW`` seconds: then the parent stops them all and exits 1. A worker that did not
  start (``STARTUP_FAILURES``: a setting, the database or Redis at start-up) is not retried:
  its replacement would fail alike; the parent stops them all and exits with its code.
- A worker whose parent is gone (killed with -9) drains and exits (``Worker.watch_parent``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import trio

from core.errors import ConfigError
from core.settings import Settings

#: ``scripts.serve``'s exit codes for "did not start": 2 a setting, 3 a service unreachable,
#: 4 MariaDB refused the start-up work, 5 the server did not start.
STARTUP_FAILURES = frozenset({2, 3, 4, 5})
DEATHS_ALLOWED = 5
DEATHS_WINDOW = 60.0
PARENT_POLL_SECONDS = 0.5

#: ``(nursery, settings) -> settings``: starts what the parent serves for all workers (the mock
#: upstream) in ``nursery``; the settings the workers get (``OPENAI_BASE_URL``).
StartShared = Callable[[trio.Nursery, Settings], Awaitable[Settings]]


@dataclass(frozen=True)
class Worker:
    """One worker process, as its command line tells it: its place among the workers, the
    descriptor of the listening socket it inherited, and its parent's pid."""

    index: int
    count: int
    fd: int
    parent: int

    @property
    def label(self) -> str:
        return f"worker {self.index}/{self.count} pid {os.getpid()}"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "scripts.serve", "--worker", f"{self.index}/{self.count}",
                "--listen-fd", str(self.fd), "--parent", str(self.parent)]

    @classmethod
    def from_argv(cls, argv: list[str]) -> Worker | None:
        """The worker this command line starts; None for the parent (no ``--worker``)."""
        parser = argparse.ArgumentParser(prog="python -m scripts.serve", description=(
            "make run's server; the options are for the worker processes its parent starts "
            "(WORKERS > 1)"))
        parser.add_argument("--worker", metavar="I/N", help="this process is worker I of N")
        parser.add_argument("--listen-fd", type=int, help="the inherited listening socket")
        parser.add_argument("--parent", type=int, help="the parent's pid")
        args = parser.parse_args(argv)
        if args.worker is None:
            return None
        index, _, count = args.worker.partition("/")
        if args.listen_fd is None or args.parent is None or not (index + count).isdigit():
            parser.error("--worker I/N needs --listen-fd and --parent")
        return cls(int(index), int(count), args.listen_fd, args.parent)

    def listening_socket(self) -> socket.socket:
        return socket.socket(fileno=self.fd)

    async def watch_parent(self) -> None:
        """A worker outlives its parent only by its drain: once the parent is gone (re-parented:
        ``getppid`` changes), it sends itself SIGTERM, the signal its parent would have
        passed on."""
        while os.getppid() == self.parent:
            await trio.sleep(PARENT_POLL_SECONDS)
        print(f"{self.label}: the parent process ({self.parent}) is gone", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)


def exit_status(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"


class Supervisor:
    """Keeps ``count`` workers running until a stop: a signal, a worker that did not start, or
    too many deaths."""

    def __init__(self, count: int, fd: int, env: dict[str, str],
                 command: Callable[[Worker], list[str]] = Worker.argv) -> None:
        self.count = count
        self.fd = fd
        self.env = env
        self.command = command
        self.running: dict[int, trio.Process] = {}  # index -> process
        self.stopping = False
        self.stop_signal = signal.SIGTERM
        self.killed = False
        self.exit_code = 0
        self.deaths: deque[float] = deque()

    def stop(self, exit_code: int, signum: signal.Signals = signal.SIGTERM) -> None:
        """Every worker gets ``signum`` (they drain); none is started again."""
        self.stopping = True
        self.stop_signal = signum
        self.exit_code = self.exit_code or exit_code
        for proc in self.running.values():
            proc.send_signal(signum)

    def kill(self) -> None:
        self.stopping = self.killed = True
        self.exit_code = self.exit_code or 1
        for proc in self.running.values():
            proc.kill()

    async def keep_running(self, index: int) -> None:
        """Worker ``index``, started again each time it dies on its own."""
        worker = Worker(index, self.count, self.fd, os.getpid())
        name = f"worker {index}/{self.count}"
        while not self.stopping:
            proc = await trio.lowlevel.open_process(
                self.command(worker), env=self.env, pass_fds=(self.fd,), process_group=0)
            self.running[index] = proc
            if self.killed:  # the stop came while it was starting
                proc.kill()
            elif self.stopping:
                proc.send_signal(self.stop_signal)
            code = await proc.wait()
            del self.running[index]
            if self.stopping:
                if code != 0:
                    self.exit_code = self.exit_code or 1
                    if not self.killed:
                        print(f"{name} pid {proc.pid} stopped with {exit_status(code)}",
                              flush=True)
                return
            if code in STARTUP_FAILURES:
                print(f"error: {name} pid {proc.pid} did not start ({exit_status(code)}; its "
                      "log above says why): stopping the server", file=sys.stderr, flush=True)
                self.stop(code)
                return
            now = time.monotonic()
            self.deaths.append(now)
            while self.deaths[0] < now - DEATHS_WINDOW:
                self.deaths.popleft()
            if len(self.deaths) >= DEATHS_ALLOWED:
                print(f"{name} pid {proc.pid} died ({exit_status(code)})", flush=True)
                print(f"error: {len(self.deaths)} worker processes died within "
                      f"{DEATHS_WINDOW:.0f} s: stopping the server", file=sys.stderr, flush=True)
                self.stop(1)
                return
            print(f"{name} pid {proc.pid} died ({exit_status(code)}): starting another",
                  flush=True)

    async def watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not self.stopping:
                print(f"{name}: shutting down {len(self.running)} workers (again to stop at "
                      "once)", flush=True)
                self.stop(0, signal.Signals(signum))
            else:
                print(f"{name}: stopping at once: killing the workers", flush=True)
                self.kill()
                return


@contextmanager
def metrics_directory(settings: Settings) -> Iterator[str]:
    """The directory the workers share for their metrics (``core.metrics_dir``):
    ``METRICS_MULTIPROC_DIR`` (or ``PROMETHEUS_MULTIPROC_DIR``), else a temporary one, removed at
    exit. The parent joins it first: a fresh start wipes what an earlier run left, once, and
    workers started again later always join the live ones (even if all had died), so the
    server's counters never restart while it runs."""
    from core import metrics_dir

    given = settings.metrics_multiproc_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    directory = os.path.abspath(given) if given else tempfile.mkdtemp(prefix="chat-metrics-")
    try:
        metrics_dir.claim(directory)
    except OSError as exc:
        if not given:
            shutil.rmtree(directory, ignore_errors=True)
        raise ConfigError(f"METRICS_MULTIPROC_DIR: cannot use {directory}: {exc}") from None
    try:
        yield directory
    finally:
        if given:
            metrics_dir.release(directory)
        else:
            shutil.rmtree(directory, ignore_errors=True)


async def _supervise(settings: Settings, sock: socket.socket, metrics: str,
                     start_shared: StartShared) -> int:
    # Open from the start: a signal while the workers start stops them once they can drain.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            shared = await start_shared(nursery, settings)
            env = {**os.environ, "METRICS_MULTIPROC_DIR": metrics,
                   "OPENAI_BASE_URL": shared.openai_base_url}
            supervisor = Supervisor(settings.workers, sock.fileno(), env)
            nursery.start_soon(supervisor.watch_signals, signals)
            print(f"serving on http://localhost:{settings.port} (chat page: /chatgpt, docs: "
                  f"/docs) with {settings.workers} workers", flush=True)
            async with trio.open_nursery() as workers:
                for index in range(1, settings.workers + 1):
                    workers.start_soon(supervisor.keep_running, index)
            nursery.cancel_scope.cancel()  # the signal watcher, the mock upstream
    return supervisor.exit_code


def run_workers(settings: Settings, sock: socket.socket, start_shared: StartShared) -> int:
    """Serve through ``settings.workers`` processes on ``sock`` (bound); the exit code."""
    # Listening already: a connection that comes while the workers start waits in the
    # backlog instead of being refused (each worker's Hypercorn listens on it again).
    sock.listen(settings.listen_backlog)
    with ExitStack() as stack:
        try:
            metrics = stack.enter_context(metrics_directory(settings))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        exit_code: int = trio.run(_supervise, settings, sock, metrics, start_shared)
        return exit_code
