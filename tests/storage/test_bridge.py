"""The Trio <-> asyncio bridge: results, exceptions, cancellation that waits for cleanup."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

from core.errors import StorageUnavailable
from storage.bridge import AsyncioBridge, open_bridge


async def test_result_and_exception_cross() -> None:
    async with open_bridge() as bridge:

        async def answer() -> int:
            await asyncio.sleep(0)
            return 42

        async def fail() -> None:
            raise KeyError("boom")

        assert await bridge.run(answer) == 42
        with pytest.raises(KeyError):
            await bridge.run(fail)


async def test_runs_on_another_thread_with_a_running_asyncio_loop() -> None:
    async with open_bridge() as bridge:

        async def loop_id() -> int:
            return id(asyncio.get_running_loop())

        assert await bridge.run(loop_id) == id(bridge.loop)


async def test_many_concurrent_calls_each_get_their_answer() -> None:
    async with open_bridge() as bridge:
        results: dict[int, int] = {}

        async def one(i: int) -> None:
            async def work() -> int:
                await asyncio.sleep(0.001)
                return i * 2

            results[i] = await bridge.run(work)

        async with trio.open_nursery() as nursery:
            for i in range(500):
                nursery.start_soon(one, i)
        assert results == {i: i * 2 for i in range(500)}


async def test_cancelled_caller_waits_for_asyncio_cleanup() -> None:
    cleaned = []
    async with open_bridge() as bridge:

        async def slow() -> None:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                await asyncio.sleep(0.05)  # cleanup that takes a moment
                cleaned.append(True)
                raise

        start = trio.current_time()
        with trio.move_on_after(0.1) as scope:
            await bridge.run(slow)
        assert scope.cancelled_caught
        assert cleaned == [True]  # cleanup finished before Cancelled reached us
        assert trio.current_time() - start < 1.0


async def test_closed_bridge_refuses_calls() -> None:
    async with open_bridge() as bridge:
        pass

    async def nothing() -> None:
        return None

    with pytest.raises(StorageUnavailable):
        await bridge.run(nothing)


async def test_leftover_tasks_are_cancelled_on_close() -> None:
    cancelled = []
    async with open_bridge() as bridge:

        async def start_leftover() -> None:
            async def leftover() -> None:
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    cancelled.append(True)
                    raise

            asyncio.get_running_loop().create_task(leftover())

        await bridge.run(start_leftover)
    assert cancelled == [True]
    assert bridge.loop.is_closed()


async def test_caller_cancelled_after_the_loop_closed_gets_cancelled_not_runtime_error() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    bridge = AsyncioBridge(loop, trio.lowlevel.current_trio_token())
    started = trio.Event()

    async def slow() -> None:
        await asyncio.sleep(10)

    async def close_loop() -> None:
        await started.wait()
        await trio.sleep(0.05)  # the call is in flight
        loop.call_soon_threadsafe(loop.stop)
        await trio.to_thread.run_sync(thread.join, 5.0)
        loop.close()  # the call's task is abandoned; nobody will ever report its end

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_loop)
        with trio.move_on_after(0.5) as scope:
            started.set()
            await bridge.run(slow)
    assert scope.cancelled_caught  # Cancelled, not "RuntimeError: Event loop is closed"
    assert trio.current_time() - start < 1.5  # and no grace period spent waiting for nothing
