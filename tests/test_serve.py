"""``make run``'s process (``python -m scripts.serve``), run for real: its upstream, its stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis

from core.settings import Settings
from scripts.bench_common import free_port

ROOT = Path(__file__).resolve().parent.parent
MOCK_LINE = "answers come from the mock upstream"


@contextmanager
def serving(db_settings: Settings, **env: str) -> Iterator[subprocess.Popen[str]]:
    """The run command on a free port, ready; killed if the test did not stop it."""
    port = free_port()
    full_env = {**os.environ, "CHAT_ENV_FILE": "", "API_ENV": "test", "PORT": str(port),
                "MOCK_UPSTREAM_PORT": str(free_port()),
                "REDIS_KEY_PREFIX": db_settings.redis_key_prefix,
                "DATABASE_URL": str(db_settings.database_url), **env}
    proc = subprocess.Popen([sys.executable, "-m", "scripts.serve"], cwd=ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, as docker, systemd and Kubernetes stop a process; its output."""
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output[-2000:]
    return output


def test_sigterm_shuts_down_gracefully_and_releases_the_lease(db_settings: Settings) -> None:
    lease = db_settings.redis_key_prefix + "server-lease"
    client = redis.Redis.from_url(db_settings.redis_url)
    try:
        with serving(db_settings, OPENAI_API_KEY="sk-test") as proc:
            assert client.exists(lease) == 1
            output = stop(proc)  # died with the default action (143) before
        assert "SIGTERM: shutting down" in output
        assert client.exists(lease) == 0  # released by the chat side's shutdown
    finally:
        client.delete(lease)
        client.close()


def test_a_signal_during_start_up_shuts_down_once_started(db_settings: Settings) -> None:
    """SIGTERM while start-up waits for a crashed holder's lease: queued, then a graceful stop
    (it killed the half-started process before, leaving its lease behind)."""
    lease = db_settings.redis_key_prefix + "server-lease"
    client = redis.Redis.from_url(db_settings.redis_url)
    client.set(lease, "crashed pid 1 (test)", px=3000)
    env = {**os.environ, "CHAT_ENV_FILE": "", "API_ENV": "test", "PORT": str(free_port()),
           "REDIS_KEY_PREFIX": db_settings.redis_key_prefix, "OPENAI_API_KEY": "sk-test",
           "DATABASE_URL": str(db_settings.database_url)}
    proc = subprocess.Popen([sys.executable, "-m", "scripts.serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # until the start-up waits for the lease
            seen.append(line)
            if "waiting up to" in line:
                break
        assert any("waiting up to" in line for line in seen), "".join(seen)
        proc.send_signal(signal.SIGTERM)
        output = "".join(seen) + proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, output[-2000:]
        assert "SIGTERM: shutting down" in output
        assert client.exists(lease) == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.delete(lease)
        client.close()


def test_the_mock_stands_in_only_for_openai_without_a_key(db_settings: Settings) -> None:
    with serving(db_settings, OPENAI_API_KEY="",
                 OPENAI_BASE_URL="https://api.openai.com/v1/") as proc:
        assert MOCK_LINE in stop(proc)  # OpenAI itself cannot answer without a key
    # a local model server: its URL as given, no key needed (the mock stood in before)
    with serving(db_settings, OPENAI_API_KEY="",
                 OPENAI_BASE_URL="http://127.0.0.1:11434/v1") as proc:
        assert MOCK_LINE not in stop(proc)
