"""Private redis-server / mariadbd processes on spare ports, for the fault tests.

Fault tests kill and restart these; the shared services on 3306/6379 are never touched.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.tools import require_tool


def spare_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Server:
    """A child process that can be killed (SIGKILL) and started again on the same port."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.argv = argv
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        _wait_port(self.port, timeout)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()


def redis_server(tmp: Path, *, durable: bool = False) -> Server:
    """``durable``: an append-only file fsynced on every write, so a kill -9 loses nothing
    Redis acknowledged (what a restart then brings back)."""
    binary = require_tool("redis-server", "redis-server")
    port = spare_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
    argv += ["--dir", str(tmp)]
    return Server(argv, port, tmp / "redis.log")


def mariadb_server(tmp: Path) -> Server:
    """A mariadbd with a fresh datadir, root without password over TCP (~1.5 s to set up)."""
    install = require_tool("mariadb-install-db", "mariadb-server")
    daemon = shutil.which("mariadbd") or require_tool("/usr/sbin/mariadbd", "mariadb-server")
    datadir = Path(tempfile.mkdtemp(prefix="mdb-", dir=tmp))
    subprocess.run(
        [
            install,
            "--no-defaults",
            f"--datadir={datadir}",
            "--auth-root-authentication-method=normal",
            "--user=root",
            "--skip-test-db",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port = spare_port()
    argv = [
        daemon,
        "--no-defaults",
        f"--datadir={datadir}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        f"--socket={datadir}/mysqld.sock",
        "--user=root",
        "--skip-log-bin",
        "--skip-name-resolve",
        "--innodb-buffer-pool-size=16M",
        "--innodb-log-file-size=8M",
    ]
    return Server(argv, port, tmp / "mariadbd.log")
