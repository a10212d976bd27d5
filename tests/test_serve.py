"""``make run``'s process (``python -m scripts.serve``) stops gracefully on SIGTERM.

docker, systemd and Kubernetes stop a process with SIGTERM: it must shut down as on Ctrl-C
(sessions stopped, the server lease released), not die with the default action.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

from core.settings import Settings
from scripts.bench_common import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_sigterm_shuts_down_gracefully_and_releases_the_lease(db_settings: Settings) -> None:
    port = free_port()
    env = {**os.environ, "CHAT_ENV_FILE": "", "API_ENV": "test", "PORT": str(port),
           "REDIS_KEY_PREFIX": db_settings.redis_key_prefix,
           "DATABASE_URL": str(db_settings.database_url),
           "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    lease = db_settings.redis_key_prefix + "server-lease"
    client = redis.Redis.from_url(db_settings.redis_url)
    proc = subprocess.Popen([sys.executable, "-m", "scripts.serve"], cwd=ROOT, env=env,
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
        assert client.exists(lease) == 1
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, output[-2000:]
        assert "SIGTERM: shutting down" in output
        assert client.exists(lease) == 0  # released by the chat side's shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.delete(lease)
        client.close()
