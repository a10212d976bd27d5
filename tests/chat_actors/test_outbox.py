"""The outbox never blocks the session: slow sockets get coalesced deltas, stuck ones are cut."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from chat_actors import frames
from chat_actors.outbox import Outbox, OutboxClosed


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_deltas_coalesce_while_the_writer_is_behind() -> None:
    box = Outbox()
    box.push(frames.init_frame("0", []))
    for word in ("a", "b", "c"):
        assert box.push(frames.delta_frame("0", word))
    box.push(frames.terminator_frame("0"))
    got = [await box.next_frame() for _ in range(3)]
    assert [f["msg"] for f in got] == ["[]", "abc", ""]
    assert box.frames_coalesced == 2 and box.pending == 0


async def test_deltas_of_different_rooms_never_merge() -> None:
    box = Outbox()
    box.push(frames.delta_frame("0", "x"))
    box.push(frames.delta_frame("1", "y"))
    assert [(await box.next_frame())["chat_room_id"] for _ in range(2)] == [0, 1]


async def test_errors_and_echoes_are_never_merged() -> None:
    box = Outbox()
    box.push(frames.delta_frame("0", "x"))
    box.push(frames.echo_frame("0", "hi"))
    box.push(frames.delta_frame("0", "y"))
    assert box.pending == 3


async def test_a_stuck_socket_is_closed(autojump_clock: trio.testing.MockClock) -> None:
    box = Outbox(stuck_after=5)
    assert box.push(frames.reply_frame("0", "one"))
    await trio.sleep(6)  # nobody reads
    assert not box.push(frames.reply_frame("0", "two"))
    assert box.closed and "stuck" in box.close_reason
    assert box.dropped  # the client's doing: the socket closes with 1008
    with pytest.raises(OutboxClosed):
        await box.next_frame()


async def test_too_many_frames_close_the_socket() -> None:
    box = Outbox(max_frames=3)
    for i in range(3):
        assert box.push(frames.reply_frame("0", str(i)))
    assert not box.push(frames.reply_frame("0", "overflow"))
    assert box.closed and box.dropped


async def test_a_reading_socket_is_not_stuck(autojump_clock: trio.testing.MockClock) -> None:
    box = Outbox(stuck_after=5)
    for i in range(20):
        assert box.push(frames.reply_frame("0", str(i)))
        await trio.sleep(1)
        await box.next_frame()
    assert not box.closed


async def test_plain_close_drains_then_ends() -> None:
    box = Outbox()
    box.push(frames.reply_frame("0", "last"))
    box.close()
    assert not box.dropped
    assert (await box.next_frame())["msg"] == "last"
    with pytest.raises(OutboxClosed):
        await box.next_frame()


async def test_writer_wakes_up_on_push(autojump_clock: trio.testing.MockClock) -> None:
    box = Outbox()
    async with trio.open_nursery() as nursery:
        got: list[str] = []

        async def writer() -> None:
            got.append((await box.next_frame())["msg"])

        nursery.start_soon(writer)
        await trio.sleep(1)
        box.push(frames.reply_frame("0", "wake"))
    assert got == ["wake"]
