"""Driver errors -> our storage errors, in one place per driver.

Each table is read top to bottom; the first row whose class matches wins, so subclasses come
before their bases. ``tests/storage/test_errors.py`` checks that every row is reached.

    redis-py                                    ours
    TimeoutError, asyncio.TimeoutError          StorageTimeout
    ConnectionError (incl. BusyLoading), OSError StorageUnavailable
    ReadOnlyError (replica after a failover)    StorageUnavailable
    any other RedisError (WRONGTYPE, ...)       StorageError

    SQLAlchemy / asyncmy                        ours
    error 1062 / 1451 / 1452 (duplicate key,
      foreign key: parent or child missing)     StorageConflict
    any other IntegrityError (1048 NOT NULL,
      CHECK, ...): a bug, not a conflict        StorageError
    error 1969 / 3024 / 1205 (statement, lock)  StorageTimeout
    2002/2003/2006/2013/2055/1053/1927, or a
      disconnect SQLAlchemy flagged, OSError    StorageUnavailable
    pool TimeoutError                           StorageTimeout
    anything else from SQLAlchemy / asyncmy     StorageError
"""

from __future__ import annotations

import asyncio

import asyncmy.errors
import redis.exceptions as rx
import sqlalchemy.exc as sx

from core.errors import (
    StorageConflict,
    StorageError,
    StorageTimeout,
    StorageUnavailable,
)

REDIS_ERRORS: tuple[tuple[type[BaseException], type[StorageError]], ...] = (
    (rx.TimeoutError, StorageTimeout),
    (asyncio.TimeoutError, StorageTimeout),
    (rx.ConnectionError, StorageUnavailable),
    (rx.ReadOnlyError, StorageUnavailable),
    (OSError, StorageUnavailable),
    (rx.RedisError, StorageError),
)

SQL_CONFLICT_CODES = frozenset({1062, 1451, 1452})
SQL_TIMEOUT_CODES = frozenset({1969, 3024, 1205})
SQL_UNAVAILABLE_CODES = frozenset({2002, 2003, 2006, 2013, 2055, 1053, 1927})


def map_redis_error(exc: BaseException) -> StorageError | None:
    """Our error for a redis-py (or socket) exception, or None if it is not one of theirs."""
    if isinstance(exc, StorageError):
        return exc
    for cls, ours in REDIS_ERRORS:
        if isinstance(exc, cls):
            err = ours(f"redis: {exc}" if str(exc) else f"redis: {type(exc).__name__}")
            err.__cause__ = exc
            return err
    return None


def _sql_code(exc: BaseException) -> int | None:
    orig = getattr(exc, "orig", None) or exc
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def map_sql_error(exc: BaseException) -> StorageError | None:
    """Our error for a SQLAlchemy / asyncmy / socket exception, or None if it is not one."""
    if isinstance(exc, StorageError):
        return exc
    ours: type[StorageError]
    code = _sql_code(exc)
    if code in SQL_CONFLICT_CODES:
        ours = StorageConflict
    elif code in SQL_TIMEOUT_CODES:
        ours = StorageTimeout
    elif code in SQL_UNAVAILABLE_CODES or (
        isinstance(exc, sx.DBAPIError) and exc.connection_invalidated
    ):
        ours = StorageUnavailable
    elif isinstance(exc, (sx.TimeoutError, asyncio.TimeoutError)):
        ours = StorageTimeout  # before OSError: TimeoutError is an OSError
    elif isinstance(exc, (OSError, sx.DisconnectionError)):
        ours = StorageUnavailable
    elif isinstance(exc, (sx.SQLAlchemyError, asyncmy.errors.Error)):
        ours = StorageError
    else:
        return None
    err = ours(f"sql: {exc}" if str(exc) else f"sql: {type(exc).__name__}")
    err.__cause__ = exc
    return err


def sql_reason(exc: BaseException) -> str:
    """One line saying why a SQL call failed: the server's code and message when there is one
    (``1045 Access denied for user ...``), else the first line of the error. Never parameters:
    the engine hides them, and driver messages do not carry passwords."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        orig = getattr(current, "orig", None) or current
        args: tuple[object, ...] = tuple(getattr(orig, "args", ()))
        if len(args) >= 2 and isinstance(args[0], int):
            return f"{args[0]} {args[1]}"
        current = current.__cause__ or current.__context__
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
