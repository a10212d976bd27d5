"""The chaos run's private world, all on loopback: Redis, MariaDB, the mock upstream and the
chat server, each a child process that can be killed (SIGKILL), stopped (SIGTERM) and started
again on the same port. Used by ``scripts.chaos``; nothing here touches the shared services
except, when asked (``shared_mariadb``), one fresh database on the shared MariaDB, dropped after.

- Redis: ``--appendonly yes --appendfsync always``: a kill -9 loses nothing Redis acknowledged.
- MariaDB: a private ``mariadbd`` with its own datadir (``mariadb-install-db``, ~2 s), root
  without a password on 127.0.0.1; the app's database is created empty and the server's
  start-up migrates it.
- The mock upstream: ``python -m scripts.mock_upstream`` (deterministic answers).
- The server: ``python -m scripts.serve`` (the run command, with its SIGTERM drain), its
  environment built from scratch (no ``.env``, none of the caller's settings).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncmy
import asyncmy.errors
import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
SHARED_MARIADB_PORT = 3306
KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")


def spare_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def tool(name: str, *fallbacks: str) -> str:
    for candidate in (name, *fallbacks):
        found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if found:
            return found
    raise RuntimeError(f"{name} is not installed (scripts/install_test_tools.sh installs it)")


async def port_open(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream(LOOPBACK, port)
    except OSError:
        return False
    await stream.aclose()
    return True


@dataclass
class Proc:
    """One child process on a fixed port; its output appended to ``log``."""

    name: str
    argv: list[str]
    port: int
    log: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 60.0, ready_path: str | None = None) -> None:
        """Start it and wait (bounded) until its port answers (or ``ready_path`` says 200)."""
        popen = self._spawn()
        with trio.move_on_after(timeout):
            while popen.poll() is None:
                if ready_path is None:
                    if await port_open(self.port):
                        return
                elif await http_ok(f"http://{LOOPBACK}:{self.port}{ready_path}"):
                    return
                await trio.sleep(0.05)
        raise RuntimeError(f"{self.name} did not come up within {timeout} s "
                           f"(exit {popen.poll()}):\n{self.tail()}")

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:  # a fork and exec: no wait worth a thread
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                          env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL)
        return self.popen

    def kill(self) -> None:
        """kill -9, and reap it."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        self.popen = None

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait (bounded), kill -9 if it is still there; its exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with trio.move_on_after(timeout):
                while self.popen.poll() is None:
                    await trio.sleep(0.05)
        status = self.popen.poll()
        self.kill()
        return status

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def http_ok(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


def _admin_sql(port: int, statement: str) -> None:
    async def run() -> None:
        conn = await asyncmy.connect(host=LOOPBACK, port=port, user="root", password="",
                                     connect_timeout=10)
        try:
            async with conn.cursor() as cur:
                await cur.execute(statement)
            await conn.commit()
        finally:
            conn.close()

    asyncio.run(run())


@dataclass
class ChaosEnv:
    """Everything one fault run needs, under ``workdir``."""

    workdir: Path
    delay_ms: float = 20.0
    mock_tokens: int = 64
    shared_mariadb: bool = False
    shutdown_grace: float = 0.5
    server_env: dict[str, str] = field(default_factory=dict)  # extra settings for the server
    prefix: str = field(default_factory=lambda: f"chaos:{uuid.uuid4().hex[:8]}:")
    database: str = field(default_factory=lambda: f"chaos_{uuid.uuid4().hex[:8]}")

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "redis").mkdir(exist_ok=True)
        redis_port = spare_port()
        self.redis = Proc("redis-server", [
            tool("redis-server"), "--port", str(redis_port), "--bind", LOOPBACK, "--save", "",
            "--appendonly", "yes", "--appendfsync", "always",
            "--dir", str(self.workdir / "redis")], redis_port, self.workdir / "redis.log")
        self.mariadb: Proc | None = None
        self.mariadb_port = SHARED_MARIADB_PORT
        if not self.shared_mariadb:
            self.mariadb_port = spare_port()
            self.mariadb = Proc("mariadbd", self._mariadb_argv(), self.mariadb_port,
                                self.workdir / "mariadbd.log")
        mock_port = spare_port()
        self.mock = Proc("mock upstream", [
            sys.executable, "-m", "scripts.mock_upstream", "--host", LOOPBACK, "--port",
            str(mock_port), "--tokens", str(self.mock_tokens), "--delay-ms", f"{self.delay_ms:g}",
        ], mock_port, self.workdir / "mock.log")
        server_port = spare_port()
        self.server = Proc("server", [sys.executable, "-m", "scripts.serve"], server_port,
                           self.workdir / "server.log", env=self._env(server_port, mock_port))

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{LOOPBACK}:{self.redis.port}/0"

    @property
    def _datadir(self) -> Path:
        return self.workdir / "mariadb-data"

    def _install_mariadb(self) -> None:
        subprocess.run([tool("mariadb-install-db"), "--no-defaults", f"--datadir={self._datadir}",
                        "--auth-root-authentication-method=normal", "--user=root",
                        "--skip-test-db"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120)

    def _mariadb_argv(self) -> list[str]:
        datadir = self._datadir
        return [tool("mariadbd", "/usr/sbin/mariadbd"), "--no-defaults", f"--datadir={datadir}",
                f"--port={self.mariadb_port}", f"--bind-address={LOOPBACK}",
                f"--socket={datadir}/mysqld.sock", "--user=root", "--skip-log-bin",
                "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M"]

    def _env(self, port: int, mock_port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in KEPT_ENV}
        env.update({
            "CHAT_ENV_FILE": "", "API_ENV": "test", "HOST": LOOPBACK, "PORT": str(port),
            "LOG_LEVEL": "INFO", "COOKIE_SECURE": "false",
            "TRUSTED_HOSTS": f"{LOOPBACK},localhost",
            "REDIS_URL": self.redis_url, "REDIS_KEY_PREFIX": self.prefix,
            "DATABASE_URL": f"mysql+asyncmy://root:@{LOOPBACK}:{self.mariadb_port}/"
                            f"{self.database}?charset=utf8mb4",
            "OPENAI_BASE_URL": f"http://{LOOPBACK}:{mock_port}/v1", "OPENAI_API_KEY": "sk-chaos",
            # The run measures what faults do, not the abuse limits: as in the benchmarks, its
            # users each carry several sessions, and it registers them all from one address.
            "SHUTDOWN_GRACE_SECONDS": f"{self.shutdown_grace:g}",
            "CHAT_MESSAGES_PER_MINUTE": "0", "CHAT_ANSWERS_AT_ONCE": "0",
            "REGISTRATIONS_PER_IP": "0", "LOGIN_ATTEMPTS_PER_IP": "0",
            **self.server_env,
        })
        return env

    async def start(self) -> None:
        """Redis, MariaDB (with an empty database), the mock, then the server (ready)."""
        await self.redis.start()
        if self.mariadb is not None:
            await trio.to_thread.run_sync(self._install_mariadb)
            await self.mariadb.start()
        await trio.to_thread.run_sync(
            _admin_sql, self.mariadb_port,
            f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4")
        await self.mock.start()
        await self.start_server()

    async def start_server(self) -> None:
        await self.server.start(timeout=90, ready_path="/health/ready")

    async def close(self) -> None:
        """Everything stopped (the server first, gracefully); a shared database dropped."""
        await self.server.stop()
        self.mock.kill()
        if self.shared_mariadb:
            try:
                await trio.to_thread.run_sync(_admin_sql, self.mariadb_port,
                                              f"DROP DATABASE IF EXISTS `{self.database}`")
            except (OSError, asyncmy.errors.Error) as exc:  # the numbers count; say what is left
                print(f"could not drop database {self.database}: {exc}", file=sys.stderr)
        if self.mariadb is not None:
            await self.mariadb.stop()
        self.redis.kill()
