"""The Redis actor: redis-py's asyncio client behind a Trio API, with batching.

``execute`` does not cross the bridge once per command. Callers append their command to a queue
and wait; one actor task takes everything queued so far and sends it as ONE non-transactional
pipeline in ONE bridge crossing. While that round trip is in flight the next callers queue up,
so under load a crossing carries tens of commands and the per-crossing cost (the bridge's
ceiling, ~0.6x native asyncio) is paid once per batch. Each caller gets its own result or its
own (mapped) exception: the pipeline runs with ``raise_on_error=False``.

Cancellation: a caller cancelled while its command is only queued marks it cancelled and it is
never sent. Once sent, the batch runs whole (the caller just stops waiting): a single Redis
command is atomic, so nothing is half-written, but the result of a destructive read (LPOP,
GETDEL, ...) is then lost: see ``execute`` for the LMOVE pattern. Scripts (``eval``) are
batched too; ``transaction`` and ``blocking`` cross on their own; ``blocking`` uses its own
pool without socket timeout, and when cancelled redis-py drops that connection so the server
forgets the BLPOP (it cannot steal a later message).

Errors are mapped in one place, ``storage.errors.map_redis_error``. A call that meets a dead
connection (Redis restarted since the connection was opened: redis-py's ``ConnectionError``) is
sent once more on a fresh connection, so a restart is invisible to the chat; a timeout is never
repeated. The one repeat is safe because every write this project makes is idempotent or
checked: whole-context rewrites, the context store's checked change (a change that already ran
fails its check and the session rewrites instead), HSET/DEL/EXPIRE, and the HMAC nonce, whose
``SET NX GET`` recognises its own earlier attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import outcome
import redis.asyncio as aioredis
import trio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from core import metrics
from core.errors import StorageUnavailable
from storage.bridge import AsyncioBridge, maybe_bridge
from storage.errors import map_redis_error
from storage.redis_commands import block_seconds, check_args, check_batchable

T = TypeVar("T")

MAX_BATCH = 1024
"""At most this many queued commands go into one pipeline."""
POOL_SIZE = 64
BLOCKING_POOL_SIZE = 256


class _Op:
    __slots__ = ("args", "cancelled", "done", "result")

    def __init__(self, args: tuple[Any, ...]) -> None:
        self.args = args
        self.cancelled = False
        self.done = trio.Event()
        self.result: outcome.Outcome[Any] | None = None


class RedisActor:
    """Trio handle on one Redis: ``await actor.execute("GET", actor.key("x"))``."""

    def __init__(
        self,
        bridge: AsyncioBridge,
        client: aioredis.Redis,
        blocking_client: aioredis.Redis,
        *,
        prefix: str,
        timeout: float,
    ) -> None:
        self.prefix = prefix
        self.timeout = timeout
        self._bridge = bridge
        self._client = client
        self._blocking_client = blocking_client
        self._queue: deque[_Op] = deque()
        self._has_work = trio.Event()
        self._closed = False
        self._scripts: dict[str, str] = {}  # script -> its SHA1

    def key(self, *parts: str | int) -> str:
        """``prefix`` + the parts joined with ``:``."""
        return self.prefix + ":".join(str(p) for p in parts)

    async def _cross(self, make: Callable[[], Awaitable[T]], op: str) -> T:
        """One bridge crossing; its time is ``chat_storage_seconds{store="redis", op}``."""
        if self._closed:
            raise StorageUnavailable("redis actor is closed")
        start = time.perf_counter()
        try:
            return await self._bridge.run(make)
        except Exception as exc:
            mapped = map_redis_error(exc)
            if mapped is None or mapped is exc:
                raise
            raise mapped from exc
        finally:
            metrics.storage_call("redis", op, time.perf_counter() - start)

    async def execute(self, *args: Any) -> Any:
        """One command, batched with whatever other callers queued meanwhile.

        Blocking commands (BLPOP, WAIT, XREAD BLOCK, ...) and commands that change the pooled
        connection (SUBSCRIBE, MULTI, WATCH, SELECT, ...) raise ``TypeError`` before queueing:
        use ``blocking()`` / ``transaction()``.

        Destructive reads (LPOP, RPOP, SPOP, GETDEL, ...): a caller cancelled after its batch
        was sent stops waiting, but the command still runs, so the popped value is lost to
        everyone. Where a value must not be lost, move it instead (``LMOVE src processing LEFT
        RIGHT``), handle it, then ``LREM`` it from the processing list; a caller that died
        leaves it there to be picked up again.
        """
        check_batchable(args)
        if self._closed:
            raise StorageUnavailable("redis actor is closed")
        op = _Op(args)
        self._queue.append(op)
        self._has_work.set()
        try:
            await op.done.wait()
        except trio.Cancelled:
            op.cancelled = True  # still queued: never sent; already sent: runs whole
            raise
        assert op.result is not None
        return op.result.unwrap()

    async def transaction(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """MULTI/EXEC of ``commands``; raises the first command error (mapped)."""
        cmds = [tuple(c) for c in commands]
        for cmd in cmds:
            check_args(cmd)

        async def run() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                for cmd in cmds:
                    pipe.execute_command(*cmd)
                return await pipe.execute()

        return await self._cross(run, "transaction")

    async def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a Lua script by EVALSHA, batched like ``execute`` (scripts are most of the
        chat's writes: each answer's would otherwise cross on its own). Loaded with SCRIPT
        LOAD on first use or after a SCRIPT FLUSH / restart (NOSCRIPT), then run again."""
        sha = self._scripts.get(script)
        if sha is None:
            sha = self._scripts[script] = hashlib.sha1(script.encode()).hexdigest()
        command = ("EVALSHA", sha, len(keys), *keys, *args)
        try:
            return await self.execute(*command)
        except NoScriptError:
            await self.execute("SCRIPT", "LOAD", script)
            return await self.execute(*command)

    async def blocking(self, *args: Any) -> Any:
        """A blocking command (BLPOP, ...) on its own connection, never batched.

        Bounded by its own block time plus ``timeout``; a block time of 0 (forever) is bounded
        only by the caller's cancel scope.
        """
        check_args(args)
        block = block_seconds(args)
        bound = None if block is None else block + self.timeout

        async def run() -> Any:
            command = self._blocking_client.execute_command(*args)  # type: ignore[no-untyped-call]
            return await asyncio.wait_for(command, bound)

        return await self._cross(run, "blocking")

    async def ping(self) -> None:
        await self._cross(lambda: self._client.ping(), "ping")

    async def _run_batch(self, batch: list[_Op]) -> None:
        cmds = [op.args for op in batch]

        async def run() -> list[Any]:
            if len(cmds) == 1:  # a lone command skips the pipeline's bookkeeping
                try:
                    return [await self._client.execute_command(*cmds[0])]  # type: ignore[no-untyped-call]
                except aioredis.ResponseError as exc:  # a command error, not a batch error
                    return [exc]
            async with self._client.pipeline(transaction=False) as pipe:
                for cmd in cmds:
                    pipe.execute_command(*cmd)
                return await pipe.execute(raise_on_error=False)

        try:
            results = await self._cross(run, "batch")
        except Exception as exc:  # noqa: BLE001 - the batch failed: every caller gets it
            for op in batch:
                op.result = outcome.Error(exc)
                op.done.set()
            return
        for op, res in zip(batch, results, strict=True):
            if isinstance(res, NoScriptError):  # ``eval`` loads the script and runs it again
                op.result = outcome.Error(res)
            elif isinstance(res, BaseException):
                mapped = map_redis_error(res)
                op.result = outcome.Error(mapped if mapped is not None else res)
            else:
                op.result = outcome.Value(res)
            op.done.set()

    async def _serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        batch: list[_Op] = []
        try:
            while True:
                if not self._queue:
                    await self._has_work.wait()
                    self._has_work = trio.Event()
                queue = self._queue
                batch = []
                while queue and len(batch) < MAX_BATCH:
                    op = queue.popleft()
                    if not op.cancelled:
                        batch.append(op)
                if batch:
                    await self._run_batch(batch)
                batch = []
        finally:
            self._closed = True
            gone = StorageUnavailable("redis actor stopped")
            for op in [*batch, *self._queue]:
                if not op.done.is_set():
                    op.result = outcome.Error(gone)
                    op.done.set()
            self._queue.clear()


def _make_clients(url: str, timeout: float) -> tuple[aioredis.Redis, aioredis.Redis]:
    # One more attempt, on a fresh connection, only for a connection found dead.
    retry = Retry(NoBackoff(), 1, supported_errors=(aioredis.ConnectionError,))
    no_retry = Retry(NoBackoff(), 0)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=retry,
        max_connections=POOL_SIZE,
        timeout=timeout,
    )
    blocking_pool = aioredis.BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        socket_timeout=None,
        socket_connect_timeout=timeout,
        retry=no_retry,
        max_connections=BLOCKING_POOL_SIZE,
        timeout=None,
    )
    return aioredis.Redis(connection_pool=pool), aioredis.Redis(connection_pool=blocking_pool)


@asynccontextmanager
async def open_redis_actor(
    url: str, *, prefix: str, timeout: float, bridge: AsyncioBridge | None = None
) -> AsyncIterator[RedisActor]:
    """Open a RedisActor (and a bridge of its own unless one is given); close both after.

    Opening does not contact Redis: an unreachable Redis shows up as ``StorageUnavailable``
    on the first call, so the server can start while Redis is still coming up.
    """
    async with maybe_bridge(bridge) as br:

        async def make() -> tuple[aioredis.Redis, aioredis.Redis]:
            return _make_clients(url, timeout)

        client, blocking_client = await br.run(make)
        actor = RedisActor(br, client, blocking_client, prefix=prefix, timeout=timeout)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(actor._serve)
                try:
                    yield actor
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):

                async def close() -> None:
                    await client.aclose(close_connection_pool=True)
                    await blocking_client.aclose(close_connection_pool=True)

                with trio.move_on_after(5):
                    await br.run(close)
