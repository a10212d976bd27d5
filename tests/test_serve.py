"""``make run``'s process (``python -m scripts.serve``), run for real: its upstream, its stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.settings import Settings
from tests.tools import require_tool
from tests.web.conftest_page import Proc, free_port, start_proc, wait_http

MOCK_LINE = "answers come from the mock upstream"


@contextmanager
def serving(db_settings: Settings, log_dir: Path, *, ready: bool = True, port: int = 0,
            **env: str) -> Iterator[Proc]:
    """The run command on ``port`` or a free one (ready, unless told not to wait); stopped
    after."""
    port = port or free_port()
    proc = start_proc("serve", [sys.executable, "-m", "scripts.serve"], {
        **os.environ, "CHAT_ENV_FILE": "", "API_ENV": "test", "PORT": str(port),
        "MOCK_UPSTREAM_PORT": str(free_port()), "REDIS_KEY_PREFIX": db_settings.redis_key_prefix,
        "DATABASE_URL": str(db_settings.database_url), **env}, log_dir)
    try:
        if ready:
            wait_http(proc, f"http://127.0.0.1:{port}/health/ready", timeout=60)
        yield proc
    finally:
        proc.stop()


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
