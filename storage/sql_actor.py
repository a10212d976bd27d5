"""The SQL actor: SQLAlchemy's AsyncEngine (asyncmy) behind a Trio API.

A unit of work is one async function of an ``AsyncSession``; ``run`` executes it inside
``async with session.begin()`` (commit on success, rollback on exception) in ONE bridge
crossing, since the crossing, not the statement, is the cost. At most ``pool_size`` units run at
once: the rest wait on a Trio semaphore, where waiting is cheap and cancellable.

Units must return plain data: sessions use ``expire_on_commit=False`` and lazy loading raises
``MissingGreenlet`` on asyncio, so load eagerly (``selectinload``, explicit columns).

Bounds and recovery: every new connection bounds its statements (MariaDB runs a cancelled
statement to completion otherwise): ``SET SESSION max_statement_time`` (seconds) on MariaDB,
``max_execution_time`` (ms, SELECTs only) on MySQL, told apart by ``SELECT VERSION()``;
``pool_pre_ping`` replaces connections that died with a server restart. ``hide_parameters``
keeps bound values (password hashes, secret keys) out of every error message. A cancelled caller cancels the asyncio task;
SQLAlchemy rolls back or hard-closes the connection, and the bridge waits for that (bounded)
before ``Cancelled`` propagates. Errors are mapped in ``storage.errors.map_sql_error``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from core import metrics
from storage.bridge import AsyncioBridge, maybe_bridge
from storage.errors import map_sql_error

T = TypeVar("T")

Unit = Callable[[AsyncSession], Awaitable[T]]


class SqlActor:
    """Trio handle on one database: ``await sql.run(unit)``."""

    def __init__(
        self,
        bridge: AsyncioBridge,
        engine: AsyncEngine,
        *,
        pool_size: int,
    ) -> None:
        self._bridge = bridge
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._slots = trio.Semaphore(pool_size)

    async def _cross(self, unit: Callable[[], Awaitable[T]], op: str) -> T:
        """One unit in one crossing, after a pool slot: the whole wait is
        ``chat_storage_seconds{store="sql", op}``."""
        async def guarded() -> T:
            try:
                return await unit()
            except Exception as exc:
                mapped = map_sql_error(exc)
                if mapped is None or mapped is exc:
                    raise
                raise mapped from exc

        start = time.perf_counter()
        try:
            async with self._slots:
                return await self._bridge.run(guarded)
        finally:
            metrics.storage_call("sql", op, time.perf_counter() - start)

    async def run(self, unit: Unit[T]) -> T:
        """Run ``unit(session)`` in one transaction; return its (plain) result."""

        async def work() -> T:
            async with self._sessions() as session, session.begin():
                return await unit(session)

        return await self._cross(work, unit_name(unit))

    async def ping(self) -> None:
        async def work() -> None:
            async with self._engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        await self._cross(work, "ping")


def unit_name(unit: object) -> str:
    """A unit's op label: the function that made it (``get_user`` for the ``unit`` closure
    of ``storage.accounts.get_user``), or the unit's own name."""
    qualname = getattr(unit, "__qualname__", "") or "other"
    return qualname.split(".<locals>", 1)[0]


def statement_timeout_sql(server_version: str, seconds: float) -> str:
    """The statement that bounds one session's statements on this server flavour."""
    if "mariadb" in server_version.lower():
        return f"SET SESSION max_statement_time = {float(seconds):.3f}"
    return f"SET SESSION max_execution_time = {max(int(seconds * 1000), 1)}"


def make_engine(url: str, *, statement_timeout: float, pool_size: int) -> AsyncEngine:
    """The engine: bounded pool, pre-ping, a statement time limit on every connection."""
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        pool_recycle=3600,
        pool_timeout=max(statement_timeout * 2, 5.0),
        hide_parameters=True,
        connect_args={"connect_timeout": max(int(statement_timeout), 1)},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _bound_statements(dbapi_connection: Any, _record: object) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT VERSION()")
            version = str(cursor.fetchone()[0])
            cursor.execute(statement_timeout_sql(version, statement_timeout))
        finally:
            cursor.close()

    return engine


@asynccontextmanager
async def open_sql_actor(
    url: str,
    *,
    statement_timeout: float,
    pool_size: int,
    bridge: AsyncioBridge | None = None,
) -> AsyncIterator[SqlActor]:
    """Open a SqlActor (and a bridge of its own unless one is given); dispose it after.

    Opening does not connect: an unreachable database shows up as ``StorageUnavailable`` on the
    first call.
    """
    async with maybe_bridge(bridge) as br:

        async def make() -> AsyncEngine:
            return make_engine(url, statement_timeout=statement_timeout, pool_size=pool_size)

        engine = await br.run(make)
        try:
            yield SqlActor(br, engine, pool_size=pool_size)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await br.run(engine.dispose)
