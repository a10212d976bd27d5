"""Session actors directly (no WebSocket): real Redis and MariaDB, the mock upstream over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio

from chat_actors import frames
from chat_actors.outbox import Outbox
from chat_actors.service import Chat, open_chat
from core.errors import StorageError
from core.settings import Settings, load_settings
from scripts.mock_upstream import expected_answer, serve_mock_upstream
from storage import open_storage
from tests.storage.servers import redis_server


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
    answer = await read_answer(fast)  # the slow one is never read meanwhile
    assert answer == expected_answer([{"role": "user", "content": "stream to two sockets"}], 40)
    slow_frames = await drain(slow)
    deltas = [f for f in slow_frames if frames.is_delta(f)]
    # 40 upstream chunks reached the slow socket as one coalesced frame, text whole.
    assert len(deltas) == 1 and deltas[0]["msg"] == answer
    assert slow.frames_coalesced >= 30


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
    assert not ref.alive
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
    assert ref_a.alive




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
    from chat_actors.session import SessionActor

    calls = 0
    original = SessionActor._is_idle

    def counting(self: SessionActor) -> bool:
        nonlocal calls
        calls += 1
        return original(self)

    monkeypatch.setattr(SessionActor, "_is_idle", counting)
    await chat.registry.attach(8, "0", Outbox())  # attached: never idle (idle time is 0.5 s)
    await trio.sleep(2.0)
    assert calls < 30, f"the session was asked about idleness {calls} times in 2 s"


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


async def test_redis_down_gives_an_error_frame_and_the_session_goes_on(
    db_settings: Settings, tmp_path: Path, nursery: trio.Nursery
) -> None:
    redis = redis_server(tmp_path)
    redis.start()
    try:
        port = await nursery.start(partial(serve_mock_upstream, "127.0.0.1", 0, tokens=5,
                                           delay_ms=1))
        settings = load_settings(
            api_env="test", redis_url=f"redis://127.0.0.1:{redis.port}/0", redis_timeout=1.0,
            database_url=db_settings.database_url, openai_base_url=f"http://127.0.0.1:{port}/v1")
        async with open_storage(settings) as storage, open_chat(settings, storage) as chat:
            box = Outbox()
            ref = await chat.registry.attach(11, "0", box)
            await drain(box)
            await chat.registry.send(ref, box, "before")
            assert await read_answer(box)
            await chat.registry.snapshot(11, "0")  # handled after the answer is stored
            redis.kill()
            await chat.registry.send(ref, box, "while down")
            with trio.fail_after(10):  # deltas may come first: the answer starts meanwhile
                frame = await box.next_frame()
                while "error" not in frame:
                    frame = await box.next_frame()
            assert frame["error"]["code"] == "storage_unavailable"  # type: ignore[index]
            redis.restart()
            with trio.fail_after(10):
                while True:  # the actor reconnects by itself; wait until it has
                    try:
                        await storage.redis.ping()
                        break
                    except StorageError:
                        await trio.sleep(0.1)
            await chat.registry.send(ref, box, "after")
            assert await read_answer(box)
            snap = await chat.registry.snapshot(11, "0")
            assert [m.content for m in snap.messages if m.role == "user"] == ["before", "after"]
    finally:
        redis.kill()
