"""Session actors directly (no WebSocket): real Redis and MariaDB, the mock upstream over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio

from chat_actors import frames
from chat_actors import session as session_module
from chat_actors.outbox import Outbox
from chat_actors.service import Chat, open_chat
from core.errors import StorageError
from core.settings import Settings, load_settings
from scripts.mock_upstream import expected_answer, serve_mock_upstream
from storage import open_storage
from tests.storage.servers import Server


@pytest.fixture
async def chat(db_settings: Settings, redis_actor: object,
               nursery: trio.Nursery) -> AsyncIterator[Chat]:
    port = await nursery.start(partial(serve_mock_upstream, "127.0.0.1", 0, tokens=40,
                                       delay_ms=5))
    settings = load_settings(api_env="test", redis_key_prefix=db_settings.redis_key_prefix,
                             database_url=db_settings.database_url,
                             openai_base_url=f"http://127.0.0.1:{port}/v1",
                             session_idle_seconds=0.5)
    async with open_storage(settings) as storage, open_chat(settings, storage) as chat:
        yield chat


async def drain(box: Outbox) -> list[dict[str, object]]:
    got = []
    while box.pending:
        got.append(await box.next_frame())
    return got


async def read_answer(box: Outbox) -> str:
    parts = []
    with trio.fail_after(10):
        while True:
            frame = await box.next_frame()
            if frame["finish"] and not frame["init"]:
                return "".join(parts)
            if not frame["finish"]:
                parts.append(str(frame["msg"]))


async def test_slow_socket_does_not_slow_the_others(chat: Chat) -> None:
    fast, slow = Outbox(), Outbox()
    ref = await chat.registry.attach(1, "0", fast)
    await chat.registry.attach(1, "0", slow)
    await drain(fast)
    await chat.registry.send(ref, fast, "stream to two sockets")
    pushed = fast.frames_pushed
    answer = await read_answer(fast)  # the slow one is never read meanwhile
    assert answer == expected_answer([{"role": "user", "content": "stream to two sockets"}], 40)
    fast_deltas = fast.frames_pushed - pushed - 1  # the terminator is not one
    slow_frames = await drain(slow)
    deltas = [f for f in slow_frames if frames.is_delta(f)]
    # Every delta the fast socket got reached the slow one in one coalesced frame, text whole.
    assert len(deltas) == 1 and deltas[0]["msg"] == answer
    assert fast_deltas >= 3 and slow.frames_coalesced == fast_deltas - 1


async def test_idle_session_stops_and_comes_back_with_its_history(chat: Chat) -> None:
    box = Outbox()
    ref = await chat.registry.attach(2, "0", box)
    await chat.registry.send(ref, box, "hello")
    await read_answer(box)
    await chat.registry.detach(ref, box)
    assert len(chat.registry) == 1
    with trio.fail_after(5):
        while len(chat.registry) > 0:
            await trio.sleep(0.05)
    assert not ref.ref.alive
    snap = await chat.registry.snapshot(2, "0")  # starts a fresh actor, which reloads Redis
    assert [m.role for m in snap.messages] == ["user", "assistant"]


async def test_session_with_socket_does_not_go_idle(chat: Chat) -> None:
    box = Outbox()
    await chat.registry.attach(3, "0", box)
    await trio.sleep(1.2)
    assert len(chat.registry) == 1


async def test_crash_does_not_touch_other_sessions(chat: Chat) -> None:
    a, b = Outbox(), Outbox()
    ref_a = await chat.registry.attach(4, "0", a)
    ref_b = await chat.registry.attach(5, "0", b)
    await drain(a)
    await drain(b)
    await chat.registry.send(ref_b, b, "keep going")
    await chat.registry.crash_for_test(4, "0")
    answer = await read_answer(b)
    assert answer == expected_answer([{"role": "user", "content": "keep going"}], 40)
    with trio.fail_after(5):
        frame = await a.next_frame()
    assert frame["error"]["code"] == "session_restarted"  # type: ignore[index]
    assert ref_a.ref.alive




async def test_crash_mid_answer_keeps_the_text_and_the_queue(chat: Chat) -> None:
    box = Outbox()
    ref = await chat.registry.attach(6, "0", box)
    await drain(box)
    await chat.registry.send(ref, box, "first [mock tokens=400 delay_ms=10]")
    await chat.registry.send(ref, box, "second")
    with trio.fail_after(5):
        while not frames.is_delta(await box.next_frame()):
            pass
    await chat.registry.crash_for_test(6, "0")
    seen: list[dict[str, object]] = []
    with trio.fail_after(10):
        while True:
            frame = await box.next_frame()
            seen.append(frame)
            if frame["finish"] and "error" not in frame and not frame["init"]:
                break  # the queued "second" was answered after the restart
    assert any(f.get("error", {}).get("code") == "session_restarted" for f in seen)  # type: ignore[union-attr]
    snap = await chat.registry.snapshot(6, "0")
    roles = [(m.role, m.partial) for m in snap.messages]
    assert roles == [("user", False), ("assistant", True), ("user", False), ("assistant", False)]
    assert snap.messages[3].content == expected_answer([{"role": "user", "content": "second"}], 40)


async def test_stopping_a_session_keeps_the_answer_in_progress(chat: Chat) -> None:
    box = Outbox()
    ref = await chat.registry.attach(7, "0", box)
    await drain(box)
    await chat.registry.send(ref, box, "long [mock tokens=400 delay_ms=10]")
    with trio.fail_after(5):
        while not frames.is_delta(await box.next_frame()):
            pass
    await chat.registry.stop_session(7, "0")
    snap = await chat.registry.snapshot(7, "0")
    assert [(m.role, m.partial) for m in snap.messages] == [("user", False), ("assistant", True)]
    assert snap.messages[1].content


async def test_idle_sweeper_leaves_busy_sessions_alone(chat: Chat, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweeper nudges only the sessions that look idle: a session with a socket attached
    gets no ``IdleTick`` at all, while one left alone beside it is nudged and stops."""
    from chat_actors.session import IdleTick, SessionActor

    ticks: dict[int, int] = {}
    original = SessionActor.handle

    async def counting(self: SessionActor, msg: object) -> object:
        if isinstance(msg, IdleTick):
            ticks[self.key.user_id] = ticks.get(self.key.user_id, 0) + 1
        return await original(self, msg)  # type: ignore[arg-type]

    monkeypatch.setattr(SessionActor, "handle", counting)
    busy_ref = await chat.registry.attach(8, "0", Outbox())  # attached: never idle
    alone, alone_box = 108, Outbox()
    alone_ref = await chat.registry.attach(alone, "0", alone_box)
    await chat.registry.detach(alone_ref, alone_box)
    with trio.fail_after(5):  # the sweeper ran: the lone session was nudged and stopped
        while alone_ref.ref.alive:
            await trio.sleep(0.05)
    assert ticks.get(alone, 0) >= 1
    await trio.sleep(0.5)  # a few more sweeps (every 0.125 s), all past the busy one's idle time
    assert ticks.get(8, 0) == 0, f"the busy session got {ticks[8]} idle ticks"
    assert busy_ref.ref.alive and len(chat.registry) == 1


async def test_a_closed_outbox_does_not_keep_a_session_alive(chat: Chat) -> None:
    box = Outbox()
    box.close()  # its socket left while the Attach was queued
    await chat.registry.attach(9, "0", box)
    with trio.fail_after(5):
        while len(chat.registry) > 0:
            await trio.sleep(0.05)


async def test_test_hook_is_off_outside_tests(db_settings: Settings, redis_actor: object) -> None:
    settings = load_settings(api_env="local", jwt_secret="j" * 40,
                             redis_key_prefix=db_settings.redis_key_prefix,
                             database_url=db_settings.database_url)
    async with open_storage(settings) as storage, open_chat(settings, storage) as chat:
        with pytest.raises(PermissionError):
            await chat.registry.crash_for_test(1, "0")


async def test_an_empty_answer_is_not_stored(chat: Chat) -> None:
    box = Outbox()
    ref = await chat.registry.attach(10, "0", box)
    await drain(box)
    await chat.registry.send(ref, box, "say nothing [mock tokens=0]")
    assert await read_answer(box) == ""
    snap = await chat.registry.snapshot(10, "0")
    assert [m.role for m in snap.messages] == ["user"]


async def read_until_finish(box: Outbox, timeout: float = 10) -> list[dict[str, object]]:
    """Every frame up to and including the next finished, non-init one."""
    seen: list[dict[str, object]] = []
    with trio.fail_after(timeout):
        while True:
            frame = await box.next_frame()
            seen.append(frame)
            if frame["finish"] and not frame["init"]:
                return seen


@pytest.fixture
async def chat_on_own_redis(db_settings: Settings, own_redis: Server,
                            nursery: trio.Nursery) -> AsyncIterator[Chat]:
    """A chat side on a private Redis the test may kill (short answers, 1 s Redis timeout)."""
    port = await nursery.start(partial(serve_mock_upstream, "127.0.0.1", 0, tokens=5,
                                       delay_ms=1))
    settings = load_settings(
        api_env="test", redis_url=f"redis://127.0.0.1:{own_redis.port}/0", redis_timeout=1.0,
        database_url=db_settings.database_url, openai_base_url=f"http://127.0.0.1:{port}/v1")
    async with open_storage(settings) as storage, open_chat(settings, storage) as chat:
        yield chat


async def test_redis_down_the_session_keeps_its_answers_and_writes_them_back(
    chat_on_own_redis: Chat, own_redis: Server
) -> None:
    chat, redis = chat_on_own_redis, own_redis
    box = Outbox()
    ref = await chat.registry.attach(11, "0", box)
    await drain(box)

    async def ask(text: str) -> str:
        await chat.registry.send(ref, box, text)
        *deltas, last = await read_until_finish(box)
        assert all(frames.is_delta(f) for f in deltas), deltas
        assert last == frames.terminator_frame("0"), last  # stored, or kept for later
        answer = "".join(str(f["msg"]) for f in deltas)
        assert answer == expected_answer([{"role": "user", "content": text}], 5)
        return answer

    first = await ask("before")
    redis.kill()
    # Redis is gone: the session answers from memory and keeps what it could not write.
    during = [await ask("while down"), await ask("still down")]
    redis.restart()  # empty: it kept nothing on disk
    expected = [("user", "before", False), ("assistant", first, False),
                ("user", "while down", False), ("assistant", during[0], False),
                ("user", "still down", False), ("assistant", during[1], False)]
    # Without any new message the session writes its context back once Redis answers.
    with trio.fail_after(15):
        while True:
            try:
                loaded = await chat.store.load(11, "0")
                if len(loaded.messages) == len(expected):
                    break
            except StorageError:
                pass
            await trio.sleep(0.1)
    assert [(m.role, m.content, m.partial) for m in loaded.messages] == expected
    third = await ask("after")
    expected += [("user", "after", False), ("assistant", third, False)]
    await chat.registry.stop_session(11, "0")  # the next actor reloads from Redis
    snap = await chat.registry.snapshot(11, "0")
    assert [(m.role, m.content, m.partial) for m in snap.messages] == expected
    assert not box.pending


async def test_past_its_bound_a_session_refuses_new_messages_while_redis_is_down(
    chat_on_own_redis: Chat, own_redis: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "UNSAVED_LIMIT", 2)
    chat, redis = chat_on_own_redis, own_redis
    box = Outbox()
    ref = await chat.registry.attach(12, "0", box)
    await drain(box)
    redis.kill()
    # Two changes kept (the question and its answer), then the bound: the next question
    # is refused (its answer cancelled by the error), nothing of it kept.
    await chat.registry.send(ref, box, "kept")
    assert (await read_until_finish(box))[-1] == frames.terminator_frame("0")
    await chat.registry.send(ref, box, "refused")
    last = (await read_until_finish(box))[-1]
    assert last["error"]["code"] == "storage_unavailable", last  # type: ignore[index]
    snap = await chat.registry.snapshot(12, "0")
    assert [m.content for m in snap.messages][:1] == ["kept"]
    assert "refused" not in [m.content for m in snap.messages]
    # Stopping with Redis still down: what was kept cannot be written; the socket is
    # told, not left believing it was saved.
    await chat.registry.stop_session(12, "0")
    told = await drain(box)
    assert any(f.get("error", {}).get("code") == "answer_not_saved"  # type: ignore[union-attr]
               for f in told), told
