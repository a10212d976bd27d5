"""SIGTERM with sockets open, run for real (``python -m scripts.serve``): an answer that fits in
the grace time finishes, one that does not is cut and stored partial with ``session_stopped``
in its terminator's place, and every socket gets a close frame 1012 before the process exits."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import redis
from trio_websocket import open_websocket_url

from core.settings import Settings
from scripts.mock_upstream import expected_answer
from tests.chat_server import PASSWORD, ChatClient
from tests.test_serve import serving

CLOSE_RESTART = 1012
SHORT = "short [mock tokens=30 delay_ms=20]"


def split(seen: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The streamed text, and the finished frames after it."""
    text = "".join(f["msg"] for f in seen if not f["finish"])
    return text, [f for f in seen if f["finish"]]


def error_code(frame: dict[str, Any]) -> str | None:
    error = frame.get("error")
    return None if error is None else str(error["code"])


async def test_sigterm_ends_answers_and_closes_every_socket(
    db_settings: Settings, tmp_path: Path, redis_actor: object
) -> None:
    # ``redis_actor`` is here for its clean-up: it deletes every key under the test's prefix.
    with serving(db_settings, tmp_path, SHUTDOWN_GRACE_SECONDS="1.5") as proc:
        announced = next(line.split()[2] for line in proc.log_path.read_text().splitlines()
                         if line.startswith("serving on "))
        base = announced.replace("localhost", "127.0.0.1")
        async with httpx.AsyncClient(base_url=base) as http:
            r = await http.post("/api/auth/register/email",
                                json={"email": "drain@example.com", "password": PASSWORD})
            jwt = r.json()["Authorization"]
            key = (await http.post("/api/user/apikeys", json={"user_memo": "t"},
                                   headers={"Authorization": jwt})).json()["access_key"]
            user_id = (await http.get("/api/user/me", headers={"Authorization": jwt})).json()["id"]
        ws = base.replace("http://", "ws://") + f"/ws/chatgpt/{key}?chat_room_id="
        async with (open_websocket_url(ws + "0") as a, open_websocket_url(ws + "1") as b,
                    open_websocket_url(ws + "2") as c):
            cut, done, idle = ChatClient(a), ChatClient(b), ChatClient(c)
            for client in (cut, done, idle):
                await client.init()
            await cut.send("long [mock tokens=2000 delay_ms=20]")  # 40 s: cut
            await done.send(SHORT)  # 0.6 s: finishes
            firsts = []
            for client in (cut, done):
                first = await client.frame()
                assert first["finish"] is False
                firsts.append(first["msg"])
            proc.popen.send_signal(signal.SIGTERM)
            (cut_seen, cut_code), (done_seen, done_code), (idle_seen, idle_code) = [
                await client.until_closed(20) for client in (cut, done, idle)]
    assert proc.popen.wait(timeout=30) == 0, proc.tail()

    assert cut_code == done_code == idle_code == CLOSE_RESTART
    cut_text, cut_ends = split(cut_seen)
    cut_text = firsts[0] + cut_text
    assert [error_code(f) for f in cut_ends] == ["session_stopped", "server_restarting"]
    assert cut_ends[-1]["error"]["close"] is True
    done_text, done_ends = split(done_seen)
    done_text = firsts[1] + done_text
    assert done_ends[0]["msg"] == "" and error_code(done_ends[0]) is None  # its terminator
    assert done_text == expected_answer([{"role": "user", "content": SHORT}], 30)
    assert [error_code(f) for f in done_ends] == [None, "server_restarting"]
    assert [error_code(f) for f in idle_seen] == ["server_restarting"]

    store = redis.Redis.from_url(db_settings.redis_url, decode_responses=True)
    try:
        def history(room: str) -> list[dict[str, Any]]:
            key = f"{db_settings.redis_key_prefix}ctx:{user_id}:{room}:messages"
            return [json.loads(m) for m in store.lrange(key, 0, -1)]

        stored_cut = history("0")[-1]  # exactly what its client saw, marked partial
        assert stored_cut == {**stored_cut, "role": "assistant", "content": cut_text,
                              "partial": True}
        stored_done = history("1")[-1]
        assert stored_done["role"] == "assistant" and stored_done["content"] == done_text
        assert "partial" not in stored_done
    finally:
        store.close()
