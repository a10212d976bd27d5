"""Helpers for the browser tests: a whole server in subprocesses, and Chromium.

The server is the real thing, started as it is deployed: ``hypercorn --worker-class trio
web.asgi:app`` on a free port, configured through the environment (a fresh MariaDB database
migrated to head, its own Redis key prefix), answering from the mock upstream
(``python -m scripts.mock_upstream``) in another subprocess. Both run in subprocesses because
Playwright's sync API and pytest-trio's event loop cannot share this process's thread.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote_plus

import httpx

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MYSQL_HOST = os.environ.get("MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("MYSQL_PASSWORD", "")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _in_thread(fn: Callable[..., None], *args: object) -> None:
    """Run ``fn`` in a fresh thread: asyncio.run() refuses to start inside Playwright's loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(fn, *args).result()


def _admin_sql(*statements: str) -> None:
    import asyncmy

    async def run() -> None:
        conn = await asyncmy.connect(
            host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD
        )
        try:
            async with conn.cursor() as cur:
                for statement in statements:
                    await cur.execute(statement)
        finally:
            conn.close()

    _in_thread(asyncio.run, run())


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new MariaDB database migrated to head; its SQLAlchemy URL. Dropped after."""
    from storage.migrate import upgrade

    name = f"t_page_{uuid.uuid4().hex[:8]}"
    _admin_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        url = (
            f"mysql+asyncmy://{quote_plus(MYSQL_USER)}:{quote_plus(MYSQL_PASSWORD)}"
            f"@{MYSQL_HOST}:{MYSQL_PORT}/{name}?charset=utf8mb4"
        )
        _in_thread(upgrade, url)
        yield url
    finally:
        _admin_sql(f"DROP DATABASE IF EXISTS `{name}`")


def delete_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def tail(self, lines: int = 40) -> str:
        self.log_file.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self.log_file.close()


def start_proc(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> Proc:
    log_path = log_dir / f"{name}.log"
    log_file = log_path.open("wb")
    popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    return Proc(name, popen, log_path, log_file)


def wait_http(proc: Proc, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready at {url} after {timeout}s ({last}):\n{proc.tail()}")


@dataclass
class LiveServer:
    url: str  # http://127.0.0.1:PORT
    mock_url: str
    log_dir: Path
    procs: tuple[Proc, ...]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in self.procs)


def start_mock_upstream(
    env: dict[str, str], log_dir: Path, *, tokens: int, delay_ms: int
) -> tuple[Proc, str]:
    """``python -m scripts.mock_upstream`` on a free port, ready; the process and its URL."""
    port = free_port()
    argv = [sys.executable, "-m", "scripts.mock_upstream", "--host", "127.0.0.1",
            "--port", str(port), "--tokens", str(tokens), "--delay-ms", str(delay_ms)]
    mock = start_proc("mock_upstream", argv, env, log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(mock, f"{url}/v1/models")
    except BaseException:
        mock.stop()
        raise
    return mock, url


@contextmanager
def live_server(
    log_dir: Path, *, mock_tokens: int = 16, mock_delay_ms: int = 15,
    upstream_url: str | None = None,
) -> Iterator[LiveServer]:
    """Mock upstream + the app, each in its own subprocess, on free ports; torn down after.
    With ``upstream_url`` (``http://host:port``, serving ``/v1``) the app uses that upstream
    instead and no mock is started."""
    log_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"test:page:{uuid.uuid4().hex}:"
    procs: list[Proc] = []
    with fresh_database() as db_url:
        try:
            base_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
            if upstream_url is None:
                mock, mock_url = start_mock_upstream(
                    base_env, log_dir, tokens=mock_tokens, delay_ms=mock_delay_ms)
                procs.append(mock)
            else:
                mock_url = upstream_url

            port = free_port()
            env = {
                **base_env,
                "CHAT_ENV_FILE": "",
                "API_ENV": "test",
                "DATABASE_URL": db_url,
                "REDIS_URL": REDIS_URL,
                "REDIS_KEY_PREFIX": prefix,
                "OPENAI_BASE_URL": f"{mock_url}/v1",
                "OPENAI_API_KEY": "sk-mock",
                "COOKIE_SECURE": "false",
                "TRUSTED_HOSTS": "127.0.0.1,localhost",
                "UPSTREAM_RETRIES": "1",
                "UPSTREAM_BACKOFF_BASE": "0.01",
                "UPSTREAM_FIRST_BYTE_TIMEOUT": "5",
                "UPSTREAM_CHUNK_GAP_TIMEOUT": "5",
                "LOG_LEVEL": "INFO",
                # The page tests register their users from 127.0.0.1.
                "LOGIN_FAILURES_PER_EMAIL": "0",
                "LOGIN_ATTEMPTS_PER_IP": "0",
                "REGISTRATIONS_PER_IP": "0",
            }
            server = start_proc(
                "server",
                [
                    sys.executable,
                    "-m",
                    "hypercorn",
                    "--worker-class",
                    "trio",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "web.asgi:app",
                ],
                env,
                log_dir,
            )
            procs.append(server)
            url = f"http://127.0.0.1:{port}"
            wait_http(server, f"{url}/health")
            yield LiveServer(url=url, mock_url=mock_url, log_dir=log_dir, procs=tuple(procs))
        finally:
            for proc in reversed(procs):
                proc.stop()
            delete_redis_prefix(prefix)
