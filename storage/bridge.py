"""The one place where Trio reaches asyncio: a private asyncio loop in a dedicated thread.

redis-py's asyncio client, SQLAlchemy's AsyncEngine and asyncmy need an asyncio loop. Measured
on this kind of machine (see /work/shared/NOTES-trio-stack.md), against native asyncio
as the ceiling:

    bridge                                         GET x1   GET x100  SELECT 1 x100  ORM x50
    native asyncio (ceiling)                       7-9k/s   14.4k/s   3.9k/s         858/s
    asyncio thread, call_soon_threadsafe in,
      TrioToken.run_sync_soon back   (this one)    3k/s     8-9k/s    2.9-3.4k/s     832/s
    same thread, trio.to_thread waiting            2.3k/s   3.4k/s    1.8k/s         -
    trio-asyncio                                   2.8k/s   2.8k/s    1.5k/s         500/s
    sync clients in trio.to_thread                 4k/s     3.5k/s    2.1k/s         690/s

So: calls go in with ``loop.call_soon_threadsafe`` and the result comes back with
``TrioToken.run_sync_soon`` (no Trio worker thread parked per call). It needs nothing from the
host (trio-asyncio only works under ``trio_asyncio.open_loop()``, which Hypercorn's trio worker
and pytest-trio do not give us). The crossing is the cost, so callers cross once per unit of
work (a whole session block, a whole pipeline), never once per statement.

Cancellation: if the Trio caller is cancelled, the asyncio task is cancelled too and the caller
waits for it (shielded, at most ``CANCEL_GRACE`` seconds) so that redis-py can drop its
connection and SQLAlchemy can roll back / hard-close before anyone else uses the pool; then
``Cancelled`` propagates. Measured cost of that wait: ~12 ms p50.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from core.errors import StorageUnavailable

T = TypeVar("T")

CANCEL_GRACE = 2.0
"""Seconds a cancelled caller waits (shielded) for the asyncio side to clean up."""


class _Call:
    """One crossing: the asyncio task and the Trio event that reports its end."""

    __slots__ = ("done", "task")

    def __init__(self) -> None:
        self.task: asyncio.Future[Any] | None = None
        self.done = trio.Event()


class AsyncioBridge:
    """Runs coroutines on the private asyncio loop and awaits them from Trio."""

    def __init__(self, loop: asyncio.AbstractEventLoop, token: trio.lowlevel.TrioToken) -> None:
        self._loop = loop
        self._token = token
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def _send(self, callback: Callable[[], object]) -> bool:
        """Schedule ``callback`` on the loop; False if the loop is already closed."""
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:
            return False
        return True

    async def run(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` on the asyncio loop; return its result or raise its exception.

        ``make`` is called on the loop thread, so the coroutine is created there.
        """
        if self._closed:
            raise StorageUnavailable("storage bridge is closed")
        call = _Call()
        token = self._token

        def wake(_: object) -> None:  # on the asyncio thread
            try:
                token.run_sync_soon(call.done.set)
            except trio.RunFinishedError:  # pragma: no cover - Trio run already gone
                pass

        def submit() -> None:  # on the asyncio thread
            try:
                task = asyncio.ensure_future(make(), loop=self._loop)
            except BaseException as exc:  # noqa: BLE001 - make() failed: hand it to the caller
                fut: asyncio.Future[Any] = self._loop.create_future()
                fut.set_exception(exc)
                call.task = fut
                wake(fut)
                return
            call.task = task
            task.add_done_callback(wake)

        def cancel() -> None:  # on the asyncio thread; runs after submit (FIFO)
            if call.task is not None:
                call.task.cancel()

        try:
            self._loop.call_soon_threadsafe(submit)
        except RuntimeError as exc:  # loop closed
            raise StorageUnavailable("storage bridge is closed") from exc
        try:
            await call.done.wait()
        except trio.Cancelled:
            if self._send(cancel):
                with trio.move_on_after(CANCEL_GRACE) as scope:
                    scope.shield = True
                    await call.done.wait()
            # else the loop closed meanwhile: its tasks are gone, nothing to wait for
            done = call.task
            if done is not None and done.done() and not done.cancelled():
                done.exception()  # we leave with Cancelled: mark its outcome as seen
            raise
        task = call.task
        assert task is not None
        if task.cancelled():
            raise StorageUnavailable("storage bridge closed during the call")
        return task.result()  # type: ignore[no-any-return]


async def _shutdown_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel whatever still runs on the loop, wait for it, then stop the loop."""
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await loop.shutdown_asyncgens()
    loop.stop()


@asynccontextmanager
async def open_bridge() -> AsyncIterator[AsyncioBridge]:
    """Start the asyncio loop thread; stop it (cancelling leftovers) on exit.

    Works under any Trio run (Hypercorn's trio worker, pytest-trio): it only needs the current
    Trio token and a plain thread.
    """
    loop = asyncio.new_event_loop()
    token = trio.lowlevel.current_trio_token()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    thread = threading.Thread(target=main, name="storage-asyncio", daemon=True)
    thread.start()
    bridge = AsyncioBridge(loop, token)
    try:
        yield bridge
    finally:
        bridge._closed = True
        with trio.CancelScope(shield=True):
            loop.call_soon_threadsafe(lambda: loop.create_task(_shutdown_loop(loop)))
            await trio.to_thread.run_sync(thread.join, 10.0)
        if not thread.is_alive():
            loop.close()


@asynccontextmanager
async def maybe_bridge(bridge: AsyncioBridge | None) -> AsyncIterator[AsyncioBridge]:
    """``bridge`` if given, else a bridge of our own for the duration."""
    if bridge is not None:
        yield bridge
    else:
        async with open_bridge() as own:
            yield own
