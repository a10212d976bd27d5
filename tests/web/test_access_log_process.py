"""The request log of a real server process: ``hypercorn --worker-class trio web.asgi:app``
configured only through the environment, as deployed. Each request is one JSON line on the
process's stdout (nothing else there), and no secret used in the requests appears anywhere in
its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from scripts.hmac_sign import sign_query
from tests.web.conftest_page import (
    REDIS_URL,
    ROOT,
    Proc,
    delete_redis_prefix,
    free_port,
    fresh_database,
    wait_http,
)

PASSWORD = "log-test password 7f3a9c"


def test_server_process_writes_one_json_line_per_request_without_secrets(tmp_path: Path) -> None:
    prefix = f"test:log:{uuid.uuid4().hex}:"
    jwt_secret = "jwt-" + uuid.uuid4().hex * 2
    port = free_port()
    out_path, err_path = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with fresh_database() as db_url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
            "CHAT_ENV_FILE": "",
            "API_ENV": "local",
            "JWT_SECRET": jwt_secret,
            "DATABASE_URL": db_url,
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": prefix,
            "OPENAI_API_KEY": "sk-log-test-upstream-key",
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
            "COOKIE_SECURE": "false",
            "TRUSTED_HOSTS": "127.0.0.1,localhost",
            "LOG_LEVEL": "WARNING",
        }
        argv = [sys.executable, "-m", "hypercorn", "--worker-class", "trio",
                "--bind", f"127.0.0.1:{port}", "web.asgi:app"]
        # stdout apart from stderr: stdout must hold the JSON lines and nothing else.
        out, err = out_path.open("wb"), err_path.open("wb")
        proc = Proc("server", subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err),
                    err_path, err)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(proc, f"{base}/health")
            with httpx.Client(base_url=base) as http:
                r = http.post("/api/auth/register/email",
                              json={"email": "log@example.com", "password": PASSWORD})
                assert r.status_code == 201, r.text
                token = r.json()["Authorization"]
                http.cookies.clear()
                key = http.post("/api/user/apikeys", json={},
                                headers={"Authorization": token}).json()
                query, headers = sign_query(key["access_key"], key["secret_key"])
                assert http.get(f"/api/services/?{query}", headers=headers).status_code == 200
                ws_path = f"/ws/chatgpt/{key['access_key']}?chat_room_id=0"
                http.get(ws_path)  # a plain GET: whatever it answers, it is logged
                assert http.get("/api/user/me").status_code == 401
        finally:
            proc.stop()
            out.close()
            delete_redis_prefix(prefix)

    stdout = out_path.read_text()
    lines = [json.loads(line) for line in stdout.splitlines()]  # every line is JSON
    seen = [(line["method"], line["path"], line["status"]) for line in lines]
    assert ("POST", "/api/auth/register/email", 201) in seen, seen
    assert ("POST", "/api/user/apikeys", 201) in seen
    assert ("GET", "/api/services/", 200) in seen
    assert ("GET", "/api/user/me", 401) in seen
    assert any(path == "/ws/chatgpt/***" for _, path, _ in seen), seen
    register = next(line for line in lines if line["path"] == "/api/auth/register/email")
    assert isinstance(register["user_id"], int) and register["duration_ms"] >= 0
    everything = stdout + err_path.read_text()
    bearer = token.removeprefix("Bearer ")
    for secret in (PASSWORD, jwt_secret, bearer, key["access_key"], key["secret_key"],
                   headers["secret"], query, "sk-log-test-upstream-key"):
        assert secret not in everything, secret
