"""``make run``'s process (``python -m scripts.serve``), run for real: its upstream, its stop."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import pytest
import trio

from core.settings import Settings
from scripts.serve_workers import DEATHS_ALLOWED, Supervisor, Worker
from tests.tools import require_tool
from tests.web.conftest_page import Proc, free_port, start_proc, wait_http

MOCK_LINE = "answers come from the mock upstream"


@contextmanager
def serving(db_settings: Settings, log_dir: Path, *, ready: bool = True, port: int = 0,
            **env: str) -> Iterator[Proc]:
    """The run command on ``port`` or a free one (ready, unless told not to wait); stopped
    after."""
    port = port or free_port()
    proc = start_serving(db_settings, log_dir, port, **env)
    try:
        if ready:
            wait_http(proc, f"http://127.0.0.1:{port}/health/ready", timeout=60)
        yield proc
    finally:
        proc.stop()


def start_serving(db_settings: Settings, log_dir: Path, port: int, *, name: str = "serve",
                  **env: str) -> Proc:
    """``python -m scripts.serve`` on ``port``, with its own mock upstream; not waited for."""
    return start_proc(name, [sys.executable, "-m", "scripts.serve"], {
        **os.environ, "CHAT_ENV_FILE": "", "API_ENV": "test", "PORT": str(port),
        "MOCK_UPSTREAM_PORT": str(free_port()), "REDIS_KEY_PREFIX": db_settings.redis_key_prefix,
        "DATABASE_URL": str(db_settings.database_url), **env}, log_dir)


def stop(proc: Proc) -> str:
    """SIGTERM, as docker, systemd and Kubernetes stop a process; its output."""
    proc.popen.send_signal(signal.SIGTERM)
    proc.popen.wait(timeout=30)
    assert proc.popen.returncode == 0, proc.tail()
    return proc.log_path.read_text()


def test_sigterm_shuts_down_gracefully(db_settings: Settings, tmp_path: Path) -> None:
    with serving(db_settings, tmp_path, OPENAI_API_KEY="sk-test") as proc:
        output = stop(proc)  # died with the default action (143) before
    assert "SIGTERM: shutting down" in output


def test_the_mock_stands_in_only_for_openai_without_a_key(
        db_settings: Settings, tmp_path: Path) -> None:
    with serving(db_settings, tmp_path, OPENAI_API_KEY="",
                 OPENAI_BASE_URL="https://api.openai.com/v1/") as proc:
        assert MOCK_LINE in stop(proc)  # OpenAI itself cannot answer without a key
    # a local model server: its URL as given, no key needed (the mock stood in before)
    with serving(db_settings, tmp_path, OPENAI_API_KEY="",
                 OPENAI_BASE_URL="http://127.0.0.1:11434/v1") as proc:
        assert MOCK_LINE not in stop(proc)


def test_the_listen_backlog_is_the_setting_not_hypercorns_100(
        db_settings: Settings, tmp_path: Path) -> None:
    # With Hypercorn's default of 100 a storm of 1,000 connects to a busy process was refused
    # in part; the kernel reports a listening socket's backlog as its Send-Q.
    ss = require_tool("ss", "iproute2")
    port = free_port()
    with serving(db_settings, tmp_path, port=port, OPENAI_API_KEY="sk-test",
                 LISTEN_BACKLOG="777") as proc:
        out = subprocess.run([ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                             check=True).stdout.split()
        assert out[0] == "LISTEN" and out[2] == "777", out
        stop(proc)


def test_the_listening_socket_is_shared_by_several_accept_loops() -> None:
    import socket as stdlib_socket

    from scripts.serve import ACCEPT_LOOPS, accept_binds, listening_socket

    with listening_socket("127.0.0.1", 0) as sock:
        binds = accept_binds(sock)
        port = sock.getsockname()[1]
    fds = [int(b.removeprefix("fd://")) for b in binds]
    listeners = [stdlib_socket.socket(fileno=fd) for fd in fds]  # they close the descriptors
    try:
        assert len(set(fds)) == ACCEPT_LOOPS > 1
        listeners[0].listen(8)
        with stdlib_socket.create_connection(("127.0.0.1", port), timeout=2):
            listeners[-1].settimeout(2)
            conn, _ = listeners[-1].accept()  # any descriptor accepts: one kernel socket
            conn.close()
    finally:
        for listener in listeners:
            listener.close()


# ---------------------------------------------------------------- WORKERS=N: a parent and N workers
def workers_of(pid: int) -> set[int]:
    """The processes ``pid`` started: its workers (a child is listed under the thread that
    started it)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(int(child) for child in (task / "children").read_text().split())
        except OSError:  # a thread that just ended
            pass
    return found


def wait_for_workers(proc: Proc, count: int, gone: frozenset[int] = frozenset(),
                     timeout: float = 30.0) -> set[int]:
    """``count`` workers, none of them ``gone``."""
    deadline = time.monotonic() + timeout
    pids: set[int] = set()
    while time.monotonic() < deadline:
        pids = workers_of(proc.popen.pid)
        if len(pids) == count and not pids & gone:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"workers {pids}, wanted {count} other than {set(gone)}:\n{proc.tail()}")


def accepted_by(conn: socket.socket, pids: set[int]) -> int | None:
    """Which of ``pids`` holds the server's end of ``conn`` (``/proc/net/tcp``, by ports)."""
    client_port, server_port = conn.getsockname()[1], conn.getpeername()[1]
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (int(fields[1].rsplit(":", 1)[1], 16) == server_port
                and int(fields[2].rsplit(":", 1)[1], 16) == client_port):
            inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with suppress(OSError):
                if os.readlink(fd) in inodes:
                    return pid
    return None


def answered(port: int) -> socket.socket:
    """A keep-alive connection whose request was answered (so a worker accepted it)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return conn


def worker_env(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().partition("=")[::2] for p in pairs if p)


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


def test_workers_share_the_port_and_each_drains_on_sigterm(
        db_settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    with serving(db_settings, tmp_path, port=port, OPENAI_API_KEY="", WORKERS="2",
                 METRICS_MULTIPROC_DIR="") as proc:
        pids = wait_for_workers(proc, 2)
        # both accept on the one port: the kernel hands each connection to one of them
        seen: set[int | None] = set()
        with ExitStack() as conns:
            for _ in range(200):
                seen.add(accepted_by(conns.enter_context(answered(port)), pids))
                if seen == pids:
                    break
        assert seen == pids, (seen, pids)
        envs = [worker_env(pid) for pid in pids]
        # one mock upstream, the parent's, for both; one metrics directory, made for them
        assert {env["OPENAI_BASE_URL"] for env in envs} == {
            f"http://127.0.0.1:{worker_env(proc.popen.pid)['MOCK_UPSTREAM_PORT']}/v1"}
        (metrics,) = {env["METRICS_MULTIPROC_DIR"] for env in envs}
        assert Path(metrics).is_dir()
        output = stop(proc)
    assert not alive(pids), output
    assert not Path(metrics).exists()  # removed with the server
    assert f"serving on http://localhost:{port}" in output and "with 2 workers" in output
    assert output.count(MOCK_LINE) == 1
    for pid in pids:
        assert re.search(rf"\(worker [12]/2 pid {pid}\)", output), output
        assert re.search(rf"worker [12]/2 pid {pid}: SIGTERM: shutting down", output), output
    assert output.count("draining: stopping") == 2


def test_a_worker_killed_is_replaced_and_the_port_keeps_answering(
        db_settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    with serving(db_settings, tmp_path, port=port, OPENAI_API_KEY="sk-test",
                 WORKERS="2") as proc:
        first = wait_for_workers(proc, 2)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        for _ in range(10):  # the other one answers meanwhile
            answered(port).close()
        now = wait_for_workers(proc, 2, gone=frozenset({victim}))
        assert len(now - first) == 1 and now & first == first - {victim}
        wait_http(proc, f"http://127.0.0.1:{port}/health/ready", timeout=30)
        seen: set[int | None] = set()
        with ExitStack() as conns:
            # until the new one accepted a connection too (it may still be starting: on a
            # slow machine 200 connections in a row all went to the old one)
            deadline = time.monotonic() + 30
            while not now - first <= seen and time.monotonic() < deadline:
                seen.add(accepted_by(conns.enter_context(answered(port)), now))
                if not now - first <= seen:
                    time.sleep(0.05)
        assert now - first <= seen, (seen, now)
        output = stop(proc)
    assert re.search(rf"worker [12]/2 pid {victim} died \(killed by SIGKILL\): starting "
                     "another", output), output
    assert not alive(now)


def test_workers_drain_when_their_parent_is_killed(
        db_settings: Settings, tmp_path: Path) -> None:
    # A metrics directory of the test's: the parent killed cannot remove its temporary one.
    with serving(db_settings, tmp_path, OPENAI_API_KEY="sk-test", WORKERS="2",
                 METRICS_MULTIPROC_DIR=str(tmp_path / "metrics")) as proc:
        pids = wait_for_workers(proc, 2)
        try:
            proc.popen.kill()
            proc.popen.wait(timeout=5)
            deadline = time.monotonic() + 20
            while alive(pids) and time.monotonic() < deadline:
                time.sleep(0.1)
            output = proc.tail(200)
            assert not alive(pids), output
        finally:
            for pid in alive(pids):
                os.kill(pid, signal.SIGKILL)
    for pid in pids:
        assert re.search(rf"worker [12]/2 pid {pid}: SIGTERM: shutting down", output), output


def _supervise_command(code: str, starts: list[int]) -> Callable[[Worker], list[str]]:
    """Workers that run ``code`` instead of the server; each start noted in ``starts``."""
    def command(worker: Worker) -> list[str]:
        starts.append(worker.index)
        return [sys.executable, "-c", code]
    return command


async def _run_supervisor(supervisor: Supervisor) -> None:
    with trio.fail_after(30):  # not forever
        async with trio.open_nursery() as nursery:
            for index in range(1, supervisor.count + 1):
                nursery.start_soon(supervisor.keep_running, index)


async def test_a_worker_that_did_not_start_stops_the_server_without_retrying(
        capsys: pytest.CaptureFixture[str]) -> None:
    starts: list[int] = []
    read, write = os.pipe()  # any descriptor to pass on
    try:
        supervisor = Supervisor(2, read, dict(os.environ),
                                _supervise_command("raise SystemExit(5)", starts))
        await _run_supervisor(supervisor)
    finally:
        os.close(read)
        os.close(write)
    assert supervisor.exit_code == 5
    assert sorted(starts) == [1, 2]  # each started once: its replacement would fail alike
    assert "did not start (exit 5" in capsys.readouterr().err


async def test_workers_that_keep_dying_stop_the_server(
        capsys: pytest.CaptureFixture[str]) -> None:
    starts: list[int] = []
    read, write = os.pipe()
    try:
        supervisor = Supervisor(2, read, dict(os.environ), _supervise_command(
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", starts))
        await _run_supervisor(supervisor)
    finally:
        os.close(read)
        os.close(write)
    assert supervisor.exit_code == 1
    # DEATHS_ALLOWED deaths, plus at most the other worker, started meanwhile
    assert DEATHS_ALLOWED <= len(starts) <= DEATHS_ALLOWED + 1, starts
    out = capsys.readouterr()
    assert "died (killed by SIGKILL): starting another" in out.out
    assert f"{DEATHS_ALLOWED} worker processes died within 60 s: stopping the server" in out.err
