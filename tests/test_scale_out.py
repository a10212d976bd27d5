"""Two real server processes (``python -m scripts.serve``) on one MariaDB and one Redis prefix,
each with its mock upstream over HTTP: what a session does when its owner dies (``kill -9``),
is cut off from Redis (a TCP relay in the test, cut), or drains (SIGTERM) under load. History
is read back from Redis by an independent client, not from any server's memory."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from core.settings import Settings
from scripts.mock_upstream import expected_answer
from tests.chat_server import PASSWORD, ChatClient
from tests.tcp_relay import tcp_relay
from tests.test_serve import start_serving
from tests.web.conftest_page import Proc, free_port, wait_http

LEASE = 1.5  # SESSION_LEASE_SECONDS of both processes: a dead owner's sessions free up fast
#: One user talks in several rooms at once here: no per-user limits.
NO_LIMITS = {"CHAT_ANSWERS_AT_ONCE": "0", "CHAT_MESSAGES_PER_MINUTE": "0",
             "WS_CONNECTIONS_PER_KEY": "0"}
LONG = "long [mock tokens=400 delay_ms=10]"  # 4 s of answer
CLOSE_RESTART = 1012


@dataclass
class Live:
    proc: Proc
    url: str

    @property
    def ws(self) -> str:
        return self.url.replace("http://", "ws://")

    def log(self) -> str:
        return self.proc.log_path.read_text(encoding="utf-8", errors="replace")


@asynccontextmanager
async def server_process(db_settings: Settings, log_dir: Path, name: str,
                         **env: str) -> AsyncIterator[Live]:
    """A server process, ready (waited for in a thread: the test's loop may run its Redis
    relay); stopped, or killed, after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_serving(db_settings, log_dir, port, name=name,
                         SESSION_LEASE_SECONDS=str(LEASE), **env)
    try:
        await trio.to_thread.run_sync(wait_http, proc, f"{url}/health/ready", 60.0)
        yield Live(proc, url)
    finally:
        await trio.to_thread.run_sync(proc.stop)


@dataclass
class Account:
    key: str
    user_id: int
    jwt: str


async def register(server: Live) -> Account:
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.post("/api/auth/register/email",
                            json={"email": f"scale{time.time_ns()}@example.com",
                                  "password": PASSWORD})
        jwt = r.json()["Authorization"]
        key = (await http.post("/api/user/apikeys", json={"user_memo": "t"},
                               headers={"Authorization": jwt})).json()["access_key"]
        user_id = (await http.get("/api/user/me", headers={"Authorization": jwt})).json()["id"]
    return Account(key, user_id, jwt)


@asynccontextmanager
async def socket(server: Live, account: Account, room: str = "0") -> AsyncIterator[ChatClient]:
    url = f"{server.ws}/ws/chatgpt/{account.key}?chat_room_id={room}"
    async with open_websocket_url(url) as ws:
        client = ChatClient(ws)
        await client.init()
        yield client


def stored(settings: Settings, account: Account, room: str = "0") -> list[dict[str, Any]]:
    store = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        key = f"{settings.redis_key_prefix}ctx:{account.user_id}:{room}:messages"
        return [json.loads(m) for m in store.lrange(key, 0, -1)]
    finally:
        store.close()


def answer_to(question: str) -> str:
    return expected_answer([{"role": "user", "content": question}])


async def until_init(client: ChatClient, timeout: float) -> tuple[list[dict[str, Any]],
                                                                  list[dict[str, Any]]]:
    """Frames up to the next init frame (a socket whose session moved attaches again); the
    frames before it, and the init's history."""
    before: list[dict[str, Any]] = []
    with trio.fail_after(timeout):
        while not (frame := await client.frame(timeout)).get("init"):
            before.append(frame)
    return before, json.loads(frame["msg"])


# Each test takes ``redis_actor`` for its clean-up: the keys under the test's prefix go after it
# (a module-level ``usefixtures`` left them all behind under pytest-trio).


async def test_kill_9_of_the_owner_mid_answer_hands_the_session_over(
        db_settings: Settings, tmp_path: Path, redis_actor: object) -> None:
    flush = {"USAGE_FLUSH_SECONDS": "0.2"}
    async with server_process(db_settings, tmp_path, "a", **flush) as a, \
            server_process(db_settings, tmp_path, "b", **flush) as b:
        account = await register(a)
        async with socket(a, account) as on_a, socket(b, account) as on_b:
            await on_a.send(LONG)
            assert (await on_a.frame())["finish"] is False
            assert (await on_b.frame())["is_user"] is True  # the echo, then the stream
            await on_a.send("after [mock tokens=12 delay_ms=5]")  # queued behind LONG
            seen_on_b = ""
            with trio.move_on_after(1.0):  # the answer's text is mirrored every 0.25 s
                while True:
                    frame = await on_b.frame()
                    if not frame["finish"]:
                        seen_on_b += frame["msg"]
            a.proc.popen.kill()
            killed = time.monotonic()
            # b's socket: the stream stops; within about a lease time b takes the session
            # over, ends the interrupted answer, and attaches the socket again.
            before, history = await until_init(on_b, timeout=LEASE + 8)
            took_over = time.monotonic() - killed
            ends = [f for f in before if f["finish"] and not f.get("is_user")]
            assert [f["error"]["code"] for f in ends] == ["session_restarted"], before
            assert "".join(f["msg"] for f in before if not f["finish"]) == ""  # nothing new
            # Then the queued question, answered by b: echo (it came from a's socket), answer.
            text, last = await on_b.answer()
            assert "error" not in last
        print(f"takeover {took_over:.2f} s after kill -9 (lease {LEASE} s)")
        assert took_over <= LEASE + 5
        # Usage: the interrupted answer is counted once too, by the process that stored it.
        with trio.fail_after(10):
            while requests(usage := await usage_rows(b, account)) < 2:
                await trio.sleep(0.1)

    messages = stored(db_settings, account)
    assert (messages[0]["role"], messages[0]["content"]) == ("user", LONG)
    partial = messages[1]
    assert partial["role"] == "assistant" and partial["partial"] is True
    # The text so far came from Redis (the mirror), not from the dead process: a prefix of
    # the answer, at least what b's socket had seen a mirror interval before the kill.
    assert partial["content"] and answer_to(LONG).startswith(partial["content"])
    assert len(partial["content"]) >= len(seen_on_b) // 2
    assert [m["content"] for m in history[:2]] == [LONG, partial["content"]]  # b's init
    # Nothing twice: the queued question once, then its one answer.
    assert [(m["role"], m["content"]) for m in messages[2:]] == [
        ("user", "after [mock tokens=12 delay_ms=5]"), ("assistant", text)]
    assert len(usage) == 1 and usage[0]["requests"] == 2, usage
    assert usage[0]["answer_tokens"] == partial["tokens"] + messages[3]["tokens"]


def requests(rows: list[dict[str, Any]]) -> int:
    return sum(int(row["requests"]) for row in rows)


async def usage_rows(server: Live, account: Account) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.get("/api/user/usage?days=1", headers={"Authorization": account.jwt})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["usage"]
    return rows


async def test_an_owner_cut_off_from_redis_cannot_overwrite_the_new_owners_history(
        db_settings: Settings, tmp_path: Path, redis_actor: object) -> None:
    redis_port = int(db_settings.redis_url.rsplit(":", 1)[1].split("/")[0])
    async with tcp_relay(redis_port) as relay, \
            server_process(db_settings, tmp_path, "a",
                           REDIS_URL=f"redis://127.0.0.1:{relay.port}/0",
                           REDIS_TIMEOUT="1") as a, \
            server_process(db_settings, tmp_path, "b") as b:
        account = await register(a)
        async with socket(a, account) as on_a:
            await on_a.send(LONG)
            first = await on_a.frame()
            assert first["finish"] is False
            await trio.sleep(0.6)  # mirrored at least twice
            relay.cut()  # a keeps streaming from its upstream, but reaches Redis no more
            await trio.sleep(LEASE + 1)  # its lease lapses
            async with socket(b, account) as on_b:  # b takes the session over
                await on_b.send("on b [mock tokens=10 delay_ms=5]")
                text_b, last_b = await on_b.answer()
                assert "error" not in last_b
                # a's answer ended on a's socket meanwhile; Redis took none of it
                rest, _ = await on_a.answer(timeout=15)
                text_a = first["msg"] + rest
                relay.heal()
                # a tries again to store its answer: refused as stale; a stops the session
                # and its socket attaches again, now to b's session
                with trio.fail_after(20):
                    while "moved to another process" not in a.log():
                        await trio.sleep(0.1)
                _, history_on_a = await until_init(on_a, timeout=10)

    messages = stored(db_settings, account)
    assert len(messages) == 4, messages
    assert (messages[0]["role"], messages[0]["content"]) == ("user", LONG)
    assert messages[1]["partial"] is True and messages[1]["content"] != text_a
    assert text_a.startswith(messages[1]["content"])
    assert [(m["role"], m["content"]) for m in messages[2:]] == [
        ("user", "on b [mock tokens=10 delay_ms=5]"), ("assistant", text_b)]
    assert [m["content"] for m in history_on_a] == [m["content"] for m in messages]
    assert relay.connections > 1  # a did reconnect through the relay after the heal


@dataclass
class Talker:
    """One session's socket on the process that stays: asks, reads each answer whole, and
    keeps the longest pause between frames."""
    client: ChatClient
    room: str
    asked: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    inits: int = 0
    longest_pause: float = 0.0
    answered_after_term: int = 0

    async def run(self, stop: trio.Event, terminated: trio.Event) -> None:
        n = 0
        while not stop.is_set():
            question = f"room {self.room} q{n} [mock tokens=20 delay_ms=10]"
            n += 1
            self.asked.append(question)
            await self.client.send(question)
            self.answers.append(await self._answer())
            if self.errors:
                return
            if terminated.is_set():
                self.answered_after_term += 1

    async def _answer(self) -> str:
        parts: list[str] = []
        last = time.monotonic()
        while True:
            frame = await self.client.frame(timeout=20)
            now = time.monotonic()
            self.longest_pause, last = max(self.longest_pause, now - last), now
            if frame.get("init"):  # moved: attached again; a resume repeats the text so far
                self.inits += 1
                parts = []
            elif frame.get("is_user"):
                continue
            elif not frame["finish"]:
                parts.append(frame["msg"])
            elif "error" in frame:
                self.errors.append(frame)
                return "".join(parts)
            else:
                return "".join(parts)


async def closed_code(client: ChatClient) -> int:
    try:
        while True:
            await client.frame(timeout=30)
    except ConnectionClosed as closed:
        return closed.reason.code if closed.reason is not None else -1


async def test_sigterm_of_one_of_two_processes_under_load(
        db_settings: Settings, tmp_path: Path, redis_actor: object) -> None:
    rooms = [str(i) for i in range(8)]
    async with server_process(db_settings, tmp_path, "a", SHUTDOWN_GRACE_SECONDS="5",
                              **NO_LIMITS) as a, \
            server_process(db_settings, tmp_path, "b", **NO_LIMITS) as b:
        account = await register(a)
        talkers: list[Talker] = []
        codes: dict[str, int] = {}
        stop, terminated = trio.Event(), trio.Event()
        async with AsyncExitStack() as sockets:
            on_a: dict[str, ChatClient] = {}
            for room in rooms:
                # half the sessions owned by a (its socket first), half by b
                order = (a, b) if int(room) % 2 == 0 else (b, a)
                for server in order:
                    ws = await sockets.enter_async_context(open_websocket_url(
                        f"{server.ws}/ws/chatgpt/{account.key}?chat_room_id={room}"))
                    client = ChatClient(ws)
                    await client.init()
                    if server is a:
                        on_a[room] = client
                    else:
                        talkers.append(Talker(client, room))

            async def watch(room: str) -> None:
                codes[room] = await closed_code(on_a[room])

            async with trio.open_nursery() as nursery:
                for talker in talkers:
                    nursery.start_soon(talker.run, stop, terminated)
                    nursery.start_soon(watch, talker.room)
                await trio.sleep(1.5)
                a.proc.popen.send_signal(signal.SIGTERM)
                terminated.set()
                exit_code = await trio.to_thread.run_sync(a.proc.popen.wait, 30)
                await trio.sleep(2.0)
                stop.set()

    assert exit_code == 0, a.proc.tail()
    assert codes == {room: CLOSE_RESTART for room in rooms}  # a's own sockets: go elsewhere
    pauses = sorted(t.longest_pause for t in talkers)
    print(f"sockets on the other process: longest pause {pauses[-1]:.2f} s "
          f"(median {pauses[len(pauses) // 2]:.2f} s)")
    for talker in talkers:
        assert talker.errors == [], (talker.room, talker.errors)
        assert talker.answered_after_term >= 2, talker
        assert talker.longest_pause < 5.0, talker
        messages = stored(db_settings, account, talker.room)
        # every question once, in order, each followed by the one answer its socket saw whole
        assert [m["content"] for m in messages if m["role"] == "user"] == talker.asked
        answers = [m for m in messages if m["role"] == "assistant"]
        assert [m["content"] for m in answers] == talker.answers
        assert not any(m.get("partial") for m in answers)
        assert talker.answers[0] == answer_to(talker.asked[0])
    moved = sum(t.inits > 0 for t in talkers)
    assert moved >= len(rooms) // 2  # a's sessions moved to b
