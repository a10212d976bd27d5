"""One session, two server processes' worth of chat sides (two servers on one MariaDB and one
Redis prefix, each a node of its own): the session's actor lives in one, the other forwards
through Redis. Real HTTP, real WebSockets, real Redis, the mock upstream over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from core import metrics
from core.settings import Settings
from tests.chat_server import ChatServer, chat_socket, running_server


@pytest.fixture
async def pair(db_settings: Settings, redis_actor: object
               ) -> AsyncIterator[tuple[ChatServer, ChatServer]]:
    # ``redis_actor`` for its clean-up: the keys under the test's prefix go after the servers
    # (a module-level ``usefixtures`` left them all behind under pytest-trio)
    mock = {"tokens": 30, "delay_ms": 5}
    async with running_server(db_settings, mock=mock) as a, \
            running_server(db_settings, mock=mock) as b:
        yield a, b


def forwarded() -> float:
    """chat_forwarded_messages_total of this test process (both servers count in it)."""
    family = metrics.current().forwarded.collect()[0]
    return next(s.value for s in family.samples if s.name.endswith("_total"))


def node_of(server: ChatServer) -> str:
    return str(server.services.chat.registry.cluster.node)


async def test_sockets_on_both_servers_see_one_session(pair: tuple[ChatServer, ChatServer]
                                                      ) -> None:
    a, b = pair
    assert node_of(a) != node_of(b)
    user = await a.new_user()
    async with chat_socket(a, user.access_key) as on_a, chat_socket(b, user.access_key) as on_b:
        # The session's actor lives where the first socket attached; the other server holds
        # no actor of it, only a remote handle.
        assert len(a.services.chat.registry) == 1 and len(b.services.chat.registry) == 0
        before = forwarded()
        await on_b.send("from b")
        await on_a.send("from a")
        seen_a = await on_a.events(2)
        seen_b = await on_b.events(2)
        assert forwarded() - before == 1  # b's message went through Redis; a's did not
    # The same stream on both sockets, in the order the owner got the questions; each socket
    # sees the other's question echoed before the answer to it starts.
    texts = [t for kind, t in seen_a if kind == "text"]
    assert texts == [t for kind, t in seen_b if kind == "text"] and len(texts) == 2
    assert [e for e in seen_a if e[0] != "echo"] == [e for e in seen_b if e[0] != "echo"]
    assert seen_a.count(("echo", "from b")) == 1 and seen_b.count(("echo", "from a")) == 1
    for seen in (seen_a, seen_b):
        echo = next(i for i, e in enumerate(seen) if e[0] == "echo")
        answers_after = [e for e in seen[echo:] if e[0] == "text"]
        assert answers_after, seen  # an echo is never after the answer to it
    # What both saw is what was stored, once.
    async with chat_socket(b, user.access_key, read_init=False) as again:
        history = await again.init()
    assert [m["content"] for m in history if not m["is_user"]] == texts
    assert len(history) == 4


async def test_stop_from_the_other_server_ends_the_answer_on_both(
        pair: tuple[ChatServer, ChatServer]) -> None:
    a, b = pair
    user = await a.new_user()
    async with chat_socket(a, user.access_key) as on_a, chat_socket(b, user.access_key) as on_b:
        await on_a.send("long [mock tokens=2000 delay_ms=5]")
        assert (await on_a.frame())["finish"] is False
        assert (await on_b.frame())["is_user"] is True  # the echo, then the live stream
        assert (await on_b.frame())["finish"] is False
        await on_b.send("/stop")
        with trio.fail_after(1.0):  # terminator on every socket within a second
            _, last_a = await on_a.answer()
            _, last_b = await on_b.answer()
        assert last_a["finish"] and "error" not in last_a
        assert last_b["finish"] and "error" not in last_b
    async with chat_socket(b, user.access_key, read_init=False) as again:
        history = await again.init()
    assert history[-1].get("partial") is True and not history[-1]["is_user"]


async def test_a_socket_joining_mid_answer_on_the_other_server_gets_the_text_so_far(
        pair: tuple[ChatServer, ChatServer]) -> None:
    a, b = pair
    user = await a.new_user()
    async with chat_socket(a, user.access_key) as on_a:
        await on_a.send("long [mock tokens=200 delay_ms=5]")
        first = await on_a.frame()
        assert first["finish"] is False
        async with chat_socket(b, user.access_key) as late:  # init read: then the resume
            text_late, last_late = await late.answer()
        text_a, _ = await on_a.answer()
    assert last_late["finish"] and first["msg"] + text_a == text_late


async def test_stopping_the_owner_moves_the_session_to_the_other_server(
        db_settings: Settings, redis_actor: object) -> None:
    """A graceful stop of the owner (its lease released, the other server's sockets told):
    the other server takes the session over and answers there."""
    mock = {"tokens": 10, "delay_ms": 2}
    stop_a, a_stopped = trio.Event(), trio.Event()

    async def serve_a(*, task_status: trio.TaskStatus[ChatServer]) -> None:
        async with running_server(db_settings, mock=mock) as a:
            task_status.started(a)
            await stop_a.wait()
        a_stopped.set()

    async with running_server(db_settings, mock=mock) as b, trio.open_nursery() as nursery:
        a = await nursery.start(serve_a)
        user = await b.new_user()
        async with chat_socket(a, user.access_key) as on_a:
            await on_a.send("one")
            await on_a.answer()
            async with chat_socket(b, user.access_key) as on_b:
                assert len(b.services.chat.registry) == 0  # owned by a
                stop_a.set()
                with trio.fail_after(10):
                    await a_stopped.wait()
                    # b's socket attached again, to a session b runs now, history intact
                    history = await on_b.init()
                assert history[0]["content"] == "one"
                assert len(b.services.chat.registry) == 1
                await on_b.send("two")
                text, last = await on_b.answer()
                assert text and "error" not in last


async def test_queue_order_retry_and_room_moves_across_servers(
        pair: tuple[ChatServer, ChatServer]) -> None:
    a, b = pair
    user = await a.new_user()
    async with chat_socket(a, user.access_key) as on_a, chat_socket(b, user.access_key) as on_b:
        # Sent from both servers while an answer streams: answered in the order they reached
        # the owner, each once, the same on both sockets.
        await on_a.send("first [mock tokens=40 delay_ms=10]")
        first = await on_a.frame()
        assert first["finish"] is False
        for socket, text in ((on_b, "q1"), (on_a, "q2"), (on_b, "q3")):
            await socket.send(text)
            await trio.sleep(0.1)  # so that they reach the owner in this order
        seen_a, seen_b = await on_a.events(4), await on_b.events(4)
        seen_a[0] = ("text", first["msg"] + seen_a[0][1])
        assert [e for e in seen_a if e[0] != "echo"] == [e for e in seen_b if e[0] != "echo"]
        async with chat_socket(b, user.access_key, read_init=False) as probe:
            history = await probe.init()
        users = [m["content"] for m in history if m["is_user"]]
        assert users == ["first [mock tokens=40 delay_ms=10]", "q1", "q2", "q3"]
        # /retry from the socket that does not own the session: the last answer streamed again
        # to both and replaced.
        last = history[-1]["content"]
        await on_b.send("/retry")
        retried_b, end_b = await on_b.answer()
        retried_a, end_a = await on_a.answer()
        assert retried_a == retried_b and "error" not in end_a and "error" not in end_b
        async with chat_socket(a, user.access_key, read_init=False) as probe:
            history = await probe.init()
        # replaced, not added (the mock answers the same question alike)
        assert len(history) == 8 and history[-1]["content"] == retried_b == last
        # Room moves: b's socket moves to a room a's socket is in; a's to b's room.
        async with chat_socket(a, user.access_key, room="x") as in_x:
            await on_b.send("hello x", chat_room_id="x")
            history_x = await on_b.init()  # the room's init frame first
            assert history_x == []
            assert (await in_x.frame())["is_user"] is True  # b's message echoed in room x
            text_x, _ = await in_x.answer()
            text_b, _ = await on_b.answer()
            assert text_x == text_b
        await on_a.send("/ping")
        assert (await on_a.reply())["msg"] == "pong"  # a's socket still in room 0
        # Back and forth between rooms a owns: each move is a detach and an attach of the
        # same socket, which reach a in one batch; each room's frames reach it, no other's.
        for _ in range(2):
            for room in ("y", "0", "x"):
                await on_b.send("/ping", chat_room_id=room)
                assert (await on_b.frame(timeout=5))["init"] is True
                reply = await on_b.reply()
                assert reply["msg"] == "pong" and str(reply["chat_room_id"]) == room
