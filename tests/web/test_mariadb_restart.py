"""MariaDB killed (kill -9) and restarted under a running server, a socket chatting throughout.

While it is down: REST answers 503 with the JSON error body (code ``storage_unavailable``),
never a 500 and never a hang; the open socket keeps chatting and is not revoked by its key
recheck; a new socket with a recently checked key connects (the key cache). Once it is back,
REST recovers by itself (no restart of the server) and nothing was written twice: the user's
keys are exactly the ones the server said it created.

A private mariadbd on a spare port (``tests.storage.servers``), migrated for real; the shared
MariaDB on 3306 is never touched. Redis is the shared one (the test's own key prefix).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from core.errors import StorageError
from core.settings import Settings, load_settings
from scripts.mock_upstream import expected_answer
from storage.migrate import upgrade
from tests.chat_server import PASSWORD, ChatClient, ChatServer, User, chat_socket, running_server
from tests.conftest import admin_sql, database_url
from tests.storage.servers import Server, mariadb_server

TOKENS = 8
REST_BOUND = 5.0  # seconds: a REST call still running after this is a hang
RECOVERY_BOUND = 60.0  # seconds for mariadbd to come back and the server to use it again
ANSWER_BOUND = 10.0
ERROR_KEYS = {"status", "msg", "detail", "code"}


@dataclass
class PrivateDb:
    server: Server
    admin: Settings  # root on the private server
    url: str  # the app's database on it


@pytest.fixture
def private_db(tmp_path: Path) -> Iterator[PrivateDb]:
    server = mariadb_server(tmp_path)
    server.start()
    try:
        admin = load_settings(api_env="test", mysql_host="127.0.0.1", mysql_port=server.port,
                              mysql_user="root", mysql_password="")
        admin_sql(admin, "CREATE DATABASE `chat` CHARACTER SET utf8mb4")
        url = database_url(admin, "chat")
        upgrade(url)  # the real migrations, as start-up runs them
        yield PrivateDb(server=server, admin=admin, url=url)
    finally:
        server.kill()


@dataclass
class Chatter:
    """One socket chatting without pause; every answer is checked whole."""

    client: ChatClient
    phase: str = "before"
    answers: list[tuple[str, str]] = field(default_factory=list)  # (phase, message)
    problems: list[str] = field(default_factory=list)
    stop: trio.Event = field(default_factory=trio.Event)

    async def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            text = f"throughout {n}"
            n += 1
            phase = self.phase
            await self.client.send(text)
            try:
                answer, last = await self.client.answer(timeout=ANSWER_BOUND)
            except trio.TooSlowError:
                self.problems.append(f"{text!r} ({phase}): no answer within {ANSWER_BOUND} s")
                return
            if "error" in last:
                self.problems.append(f"{text!r} ({phase}): ended by {last['error']}")
            elif answer != expected_answer([{"role": "user", "content": text}], TOKENS):
                self.problems.append(f"{text!r} ({phase}): wrong text {answer!r}")
            else:
                self.answers.append((phase, text))
            await trio.sleep(0.02)


LATENCIES: dict[str, list[float]] = {}  # what the test measured, by phase (printed with -s)


async def call(http: httpx.AsyncClient, method: str, path: str, *, phase: str = "",
               **kw: Any) -> httpx.Response:
    start = trio.current_time()
    with trio.fail_after(REST_BOUND):
        r = await http.request(method, path, **kw)
    if phase:
        LATENCIES.setdefault(phase, []).append(trio.current_time() - start)
    return r


def assert_unavailable(r: httpx.Response, what: str) -> None:
    assert r.status_code == 503, f"{what}: HTTP {r.status_code} {r.text[:300]}"
    assert r.headers["content-type"].startswith("application/json"), what
    body = json.loads(r.text)
    assert set(body) == ERROR_KEYS, (what, body)
    assert body["status"] == 503 and body["code"] == "storage_unavailable", (what, body)


def key_rows(db: PrivateDb, user_id: int) -> list[tuple[Any, ...]]:
    (rows,) = admin_sql(db.admin, f"SELECT id, access_key FROM `chat`.api_keys "
                                  f"WHERE user_id = {int(user_id)} ORDER BY id")
    return list(rows)


async def test_mariadb_restart_rest_503_chat_goes_on_nothing_twice(
        private_db: PrivateDb, settings: Settings, redis_actor: object,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="chat.ws")
    db_settings = load_settings(api_env="test", redis_key_prefix=settings.redis_key_prefix,
                                database_url=private_db.url)
    # A key check stays usable for 60 s: longer than the outage (the sweep of open sockets'
    # keys runs at that interval too; a change made here rechecks at once, see below).
    async with running_server(db_settings, key_cache_seconds=60.0, mysql_statement_timeout=2.0,
                              mock={"tokens": TOKENS, "delay_ms": 20}) as server, \
            httpx.AsyncClient(base_url=server.url) as http:
        user = await server.new_user()
        auth = {"Authorization": user.jwt}
        unused = await call(http, "POST", "/api/user/apikeys", json={"user_memo": "unused"},
                            headers=auth)  # never checked by a socket: not in the key cache
        assert unused.status_code == 201, unused.text
        async with chat_socket(server, user.access_key, room="r1") as client, \
                trio.open_nursery() as nursery:
            chatter = Chatter(client)
            nursery.start_soon(chatter.run)
            await trio.sleep(0.5)

            killed = trio.current_time()
            await trio.to_thread.run_sync(private_db.server.kill)
            chatter.phase = "down"
            await rest_while_down(http, user, auth)
            # The open sockets' key recheck (what the sweep and a change through this server
            # run) against the dead database: it must revoke nothing.
            server.services.socket_watch.recheck_user(user.user_id)
            with trio.fail_after(REST_BOUND):
                while not any("could not recheck" in r.getMessage() for r in caplog.records):
                    await trio.sleep(0.02)
            # The refused POSTs above changed nothing, so they kept the key cache: a new socket
            # with the key checked at connect joins and chats.
            await new_socket_chats(server, user)
            # A key with no recent check cannot be checked: 503 with the JSON body (not a 403
            # saying the key is bad, not a hang).
            with trio.fail_after(REST_BOUND), pytest.raises(ConnectionRejected) as refused:
                async with open_websocket_url(
                        f"{server.ws_url}/ws/chatgpt/{unused.json()['access_key']}"):
                    pass
            assert refused.value.status_code == 503
            assert json.loads(refused.value.body or b"")["code"] == "storage_unavailable"
            await trio.sleep(1.0)  # the first socket chats on, the database still down
            down_answers = sum(phase == "down" for phase, _ in chatter.answers)

            starting = trio.current_time()
            await trio.to_thread.run_sync(private_db.server.start)
            listening = trio.current_time()
            chatter.phase = "after"
            recovery = await rest_recovers(http, auth)
            created = await call(http, "POST", "/api/user/apikeys", json={"user_memo": "after"},
                                 headers=auth)
            assert created.status_code == 201, created.text
            await trio.sleep(0.5)
            chatter.stop.set()

        assert not chatter.problems, chatter.problems
        assert down_answers >= 3, chatter.answers  # and it was never revoked
        print(f"\nmariadb restart: REST while down {len(LATENCIES['down'])} calls, all 503, "
              f"max {max(LATENCIES['down']) * 1000:.0f} ms; down {listening - killed:.1f} s "
              f"(mariadbd start {listening - starting:.1f} s); REST answered 200 "
              f"{recovery:.2f} s after it listened; answers during the outage {down_answers} (old socket) + 1 (new)")
        assert any(phase == "after" for phase, _ in chatter.answers), chatter.answers

        # Nothing written twice: the keys are the two made before the outage and the one made
        # after it (the outage's POSTs were refused and wrote nothing), each once.
        r = await call(http, "GET", "/api/user/apikeys", headers=auth)
        assert r.status_code == 200, r.text
        listed = sorted((k["id"], k["access_key"]) for k in r.json())
        expected = sorted([(user.key_id, user.access_key),
                           (unused.json()["id"], unused.json()["access_key"]),
                           (created.json()["id"], created.json()["access_key"])])
        assert listed == expected
        assert key_rows(private_db, user.user_id) == expected
        (users,) = admin_sql(private_db.admin, "SELECT COUNT(*) FROM `chat`.users")
        assert users[0][0] == 1

        # The chat history holds every answer the socket saw, once each, in order.
        snap = await server.services.chat.registry.snapshot(user.user_id, "r1")
        asked = [m.content for m in snap.messages if m.role == "user"]
        seen = [text for _, text in chatter.answers]
        assert [t for t in asked if t in set(seen)] == seen
        assert len(asked) == len(set(asked))


async def rest_while_down(http: httpx.AsyncClient, user: User, auth: dict[str, str]) -> None:
    for attempt in range(3):  # the pool's dead connections first, then refused connects
        r = await call(http, "POST", "/api/auth/login/email", phase="down",
                       json={"email": user.email, "password": PASSWORD})
        assert_unavailable(r, f"login #{attempt}")
        r = await call(http, "GET", "/api/user/apikeys", phase="down", headers=auth)
        assert_unavailable(r, f"list keys #{attempt}")
        r = await call(http, "POST", "/api/user/apikeys", phase="down",
                       json={"user_memo": "outage"}, headers=auth)
        assert_unavailable(r, f"create key #{attempt}")
        r = await call(http, "GET", "/api/user/me", phase="down", headers=auth)
        assert_unavailable(r, f"me #{attempt}")


async def new_socket_chats(server: ChatServer, user: User) -> None:
    with trio.fail_after(ANSWER_BOUND):
        async with chat_socket(server, user.access_key, room="r2") as client:
            await client.send("joined while the database is down")
            answer, last = await client.answer(timeout=ANSWER_BOUND)
    assert "error" not in last, last
    assert answer == expected_answer(
        [{"role": "user", "content": "joined while the database is down"}], TOKENS)


async def rest_recovers(http: httpx.AsyncClient, auth: dict[str, str]) -> float:
    """Poll (bounded) until REST answers again; until then only 503s, never anything else.
    Returns the seconds it took."""
    statuses: list[int] = []
    start = trio.current_time()
    with trio.fail_after(RECOVERY_BOUND):
        while True:
            r = await call(http, "GET", "/api/user/apikeys", headers=auth)
            statuses.append(r.status_code)
            if r.status_code == 200:
                return trio.current_time() - start
            assert_unavailable(r, f"list keys while it restarts (after {statuses})")
            await trio.sleep(0.1)


async def test_a_room_first_entered_while_mariadb_is_down_gets_its_row(
    db_settings: Settings, private_db: PrivateDb, redis_actor: object
) -> None:
    from chat_actors.service import RoomHooks
    from storage.rooms import list_rooms

    async with running_server(db_settings, database_url=private_db.url,
                              key_cache_seconds=60) as server:
        user = await server.new_user()
        hooks = server.services.chat.rooms
        async with chat_socket(server, user.access_key, room="before"):
            pass  # its key check is cached now
        await hooks.flush()
        await trio.to_thread.run_sync(private_db.server.kill)
        async with chat_socket(server, user.access_key, room="during"):
            pass  # a key check fresh from the cache; its room touch fails to be written
        await trio.sleep(2 * RoomHooks.FLUSH_EVERY)
        with trio.fail_after(REST_BOUND):
            await hooks.flush()  # does not wait out the outage
        await trio.to_thread.run_sync(private_db.server.start)
        with trio.fail_after(RECOVERY_BOUND):
            while True:
                try:
                    rooms = await server.services.storage.sql.run(list_rooms(user.user_id))
                    if sorted(r.chat_room_id for r in rooms) == ["before", "during"]:
                        break
                except StorageError:
                    pass
                await trio.sleep(0.2)
