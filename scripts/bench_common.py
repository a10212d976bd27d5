"""What the benchmarks share: a mock upstream and a chat server in their own processes.

``bench_stack()`` creates a fresh MariaDB database (migrated), starts
``python -m scripts.mock_upstream`` and the server, ``python -m scripts.serve`` (what ``make
run`` runs; with several workers ``WORKERS=N``: a parent and N worker processes)
on free 127.0.0.1 ports, waits until ``/health/ready`` answers, and on
exit stops both, drops the database and deletes the run's Redis keys. The load generator is the
calling process, so client, server and upstream CPU are three separate processes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _admin_sql(*statements: str) -> None:
    import asyncmy

    async def run() -> None:
        conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", password="")
        try:
            async with conn.cursor() as cur:
                for statement in statements:
                    await cur.execute(statement)
        finally:
            conn.close()

    asyncio.run(run())


def _delete_redis_prefix(prefix: str) -> int:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379)
    deleted = 0
    try:
        for batch in _chunks(client.scan_iter(match=prefix + "*", count=1000), 1000):
            deleted += client.delete(*batch)
    finally:
        client.close()
    return deleted


def _chunks(items: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def proc_status(pid: int, field: str = "VmRSS") -> int:
    """A ``/proc/PID/status`` field in KiB (VmRSS, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stack_cpu(stack: Stack) -> float:
    """CPU seconds so far of every server process (the workers and their parent, or the
    separate servers of ``servers=N``)."""
    return sum(cpu_seconds(pid) for pid in stack.cpu_pids)


def box_cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of everything on the box a benchmark runs: the server, the mock
    upstream (and its worker children), Redis, MariaDB, and this load generator itself."""
    import resource

    def by_name(name: str) -> float:
        total = 0.0
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if (proc / "comm").read_text().strip() == name:
                        total += cpu_seconds(int(proc.name))
                except OSError:  # gone meanwhile
                    pass
        return total

    own = resource.getrusage(resource.RUSAGE_SELF)
    mock = cpu_seconds(stack.mock_pid)
    for child in (Path(f"/proc/{stack.mock_pid}/task/{stack.mock_pid}/children")
                  .read_text().split()):
        try:
            mock += cpu_seconds(int(child))
        except OSError:
            pass
    return {"server": stack_cpu(stack), "mock upstream": mock,
            "redis": by_name("redis-server"), "mariadb": by_name("mariadbd"),
            "load generator": own.ru_utime + own.ru_stime}


def main_thread_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process's main thread alone (Trio's run loop in the server; the rest,
    ``cpu_seconds`` minus this, is the storage bridge's asyncio thread and worker threads)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pids(pid: int, count: int = 1, timeout: float = 10.0) -> tuple[int, ...]:
    """The processes that serve with ``WORKERS=N``: the children of ``scripts.serve``'s parent
    process (each listed under the thread that started it), ``--worker`` on their command line."""
    deadline = time.monotonic() + timeout
    found: list[int] = []
    while time.monotonic() < deadline:
        found = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                children = (task / "children").read_text().split()
            except OSError:  # a thread that just ended
                continue
            for child in children:
                try:
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                except OSError:  # just ended
                    continue
                if b"--worker" in cmdline:
                    found.append(int(child))
        if len(found) >= count:
            return tuple(sorted(found))
        time.sleep(0.1)
    raise RuntimeError(f"the server ({pid}) started {len(found)} of {count} worker processes")


@dataclass(frozen=True)
class Stack:
    url: str  # the chat server, http://127.0.0.1:PORT
    mock_url: str  # the mock upstream, http://127.0.0.1:PORT (no /v1)
    server_pids: tuple[int, ...]  # the processes that serve (RSS, CPU): one, or the workers
    mock_pid: int
    parent_pid: int | None = None  # with several workers, their parent (~no CPU of its own)
    urls: tuple[str, ...] = ()  # with ``servers=N``: each server process's own address

    @property
    def server_pid(self) -> int:
        """The first (with one worker, the only) worker process."""
        return self.server_pids[0]

    @property
    def cpu_pids(self) -> tuple[int, ...]:
        """Every process of the server, whose CPU (``cpu_seconds``) adds up to the server's."""
        return self.server_pids + ((self.parent_pid,) if self.parent_pid is not None else ())


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def bench_stack(*, tokens: int = 64, delay_ms: float = 10.0, mock_workers: int = 1,
                server_workers: int = 1, servers: int = 1, backlog: int = 4096,
                env: dict[str, str] | None = None, quiet: bool = True) -> Iterator[Stack]:
    """Fresh DB + Redis prefix, mock upstream and chat server processes; cleaned up after.
    ``backlog``: the server's listen backlog (``LISTEN_BACKLOG``'s default; Hypercorn's own
    is 100). ``servers``: that many separate ``scripts.serve`` processes (one worker each), each
    on its own port (``Stack.urls``), sharing the database, the Redis prefix and the mock, as
    separate hosts would; a client then picks the process, which one port cannot offer."""
    from scripts.loadtest import raise_open_files_limit
    from storage.migrate import upgrade

    if servers > 1 and server_workers > 1:
        raise ValueError("servers=N processes of one worker each, or one with server_workers")

    raise_open_files_limit(1 << 20)  # the server inherits it
    run = uuid.uuid4().hex[:8]
    db = f"bench_{run}"
    prefix = f"bench:{run}:"
    _admin_sql(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4")
    procs: list[subprocess.Popen[bytes]] = []
    out = subprocess.DEVNULL if quiet else None
    try:
        db_url = f"mysql+asyncmy://root:@127.0.0.1:3306/{db}?charset=utf8mb4"
        upgrade(db_url)
        mock_port, port = free_port(), free_port()
        mock = subprocess.Popen(
            [sys.executable, "-m", "scripts.mock_upstream", "--port", str(mock_port),
             "--tokens", str(tokens), "--delay-ms", str(delay_ms),
             "--workers", str(mock_workers)], cwd=ROOT, stdout=out, stderr=out)
        procs.append(mock)
        _wait_ready(f"http://127.0.0.1:{mock_port}/v1/models", mock)
        server_env = {
            **os.environ, "OPENAI_BASE_URL": f"http://127.0.0.1:{mock_port}/v1",
            "API_ENV": "test", "DATABASE_URL": db_url, "REDIS_KEY_PREFIX": prefix,
            "COOKIE_SECURE": "false", "TRUSTED_HOSTS": "localhost,127.0.0.1",
            "CHAT_ENV_FILE": "", "LOG_LEVEL": "WARNING",
            # The benchmarks measure the server, not the per-user limits: their users each
            # carry many sessions.
            "CHAT_MESSAGES_PER_MINUTE": "0", "CHAT_ANSWERS_AT_ONCE": "0",
            # ... nor the sign-in limits: every user registers from 127.0.0.1.
            "LOGIN_FAILURES_PER_EMAIL": "0", "LOGIN_ATTEMPTS_PER_IP": "0",
            "REGISTRATIONS_PER_IP": "0",
            "WS_CONNECTIONS_PER_KEY": "0",
            **(env or {}),
        }
        # what `make run` runs; the database is migrated already (the server checks it again)
        ports = [port] + [free_port() for _ in range(servers - 1)]
        started = []
        for each in ports:
            server = subprocess.Popen(
                [sys.executable, "-m", "scripts.serve"], cwd=ROOT, stdout=out, stderr=out,
                env={**server_env, "HOST": "127.0.0.1", "PORT": str(each),
                     "LISTEN_BACKLOG": str(backlog), "WORKERS": str(server_workers)})
            procs.append(server)
            started.append(server)
        urls = tuple(f"http://127.0.0.1:{each}" for each in ports)
        for url, server in zip(urls, started, strict=True):
            _wait_ready(url + "/health/ready", server)
        pids: tuple[int, ...]
        parent: int | None
        if server_workers == 1:
            pids, parent = tuple(server.pid for server in started), None
        else:
            pids, parent = worker_pids(started[0].pid, server_workers), started[0].pid
        yield Stack(url=urls[0], mock_url=f"http://127.0.0.1:{mock_port}", server_pids=pids,
                    mock_pid=mock.pid, parent_pid=parent, urls=urls)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        _admin_sql(f"DROP DATABASE IF EXISTS `{db}`")
        _delete_redis_prefix(prefix)


def print_dist(name: str, d: object) -> None:
    from scripts.loadtest_stats import Distribution

    assert isinstance(d, Distribution)
    print(f"  {name:<22} p50 {d.p50:9.1f}  p95 {d.p95:9.1f}  p99 {d.p99:9.1f}  max {d.max:9.1f}"
          f"  (n={d.count})")


@contextmanager
def py_spy(pid: int, out: Path | None, *, blocking: bool = False) -> Iterator[None]:
    """Sample ``pid`` with py-spy (``pip install py-spy``) into ``out`` (collapsed stacks, for
    flamegraph.pl or speedscope) while the block runs; nothing when ``out`` is None.
    ``blocking``: pause the process for each sample (slower, but whole stacks: without it about
    half the stacks come out cut, which ``profile_areas`` cannot place)."""
    if out is None:
        yield
        return
    mode = [] if blocking else ["--nonblocking"]
    proc = subprocess.Popen([str(VENV_BIN / "py-spy"), "record", "--pid", str(pid), "--rate",
                             "200", "--format", "raw", *mode, "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(2)  # SIGINT: py-spy writes the file and exits
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def top_frames(collapsed: Path, n: int = 25) -> list[tuple[str, float, float]]:
    """(function, self %, total %) of the busiest functions in a collapsed-stack file."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():  # py-spy may cut a line it could not unwind
            continue
        k = int(count)
        samples += k
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + k
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + k
    rows = sorted(own, key=lambda f: own[f], reverse=True)[:n]
    return [(f, 100 * own[f] / samples, 100 * total[f] / samples) for f in rows]


#: Where a sample of the server belongs: the first area one of whose frames is in its stack
#: (the upstream's frames of this release, and of httpx's own client before it).
PROFILE_AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("upstream: request and response head",
     ("StreamingTransport.handle_async_request", "AsyncClient.send",
      "AsyncHTTPTransport.handle_async_request")),
    ("upstream: body (h11, reads, pacing)",
     ("ResponseBody.__aiter__", "Response.aiter_raw", "AsyncResponseStream.__aiter__")),
    ("upstream: SSE and JSON of the events", ("UpstreamClient._read_events",)),
    ("upstream: other", ("UpstreamClient.stream",)),
    ("socket writer (frames out: Quart, Hypercorn, wsproto)", ("ChatSocket._writer",)),
    ("session actor", ("Actor._loop",)),
    ("socket edge (handshake, key check, reader)", ("chat_socket",)),
    ("Hypercorn reading sockets", ("TCPServer._read_data",)),
    ("Hypercorn other", ("TCPServer.run",)),
)
_IDLE_LEAVES = ("EpollIOManager.get_events", "select (selectors.py", "WorkerThread._work",
                "Condition.wait", "_wait_for_tstate_lock", "Lock.acquire")


def profile_areas(collapsed: Path) -> list[tuple[str, float]]:
    """(area, % of the busy samples) of a py-spy collapsed file of the server: ``PROFILE_AREAS``
    in Trio's thread, the storage bridge's asyncio thread, and the rest of Trio's thread (its
    scheduler, timers, other tasks). Samples of an idle thread are left out."""
    counts: dict[str, int] = {}
    busy = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith(_IDLE_LEAVES) or any(f in frames[-1] for f in _IDLE_LEAVES):
            continue
        k = int(count)
        busy += k
        if "bridge.py" in stack:
            area = "storage bridge thread (redis-py, SQLAlchemy on asyncio)"
        elif "trio_worker" not in stack and "run (trio/_core/_run.py" not in stack:
            area = "other threads, or a stack py-spy could not unwind"
        else:
            area = next((name for name, marks in PROFILE_AREAS
                         if any(mark in stack for mark in marks)),
                        "Trio's scheduler, timers, other tasks")
        counts[area] = counts.get(area, 0) + k
    return sorted(((a, 100 * n / busy) for a, n in counts.items()), key=lambda r: -r[1])
