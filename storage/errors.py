"""Driver errors -> our storage errors, in one place per driver.

Each table is read top to bottom; the first row whose class matches wins, so subclasses come
before their bases. ``tests/storage/test_errors.py`` checks that every row is reached.

    redis-py                                    ours
    TimeoutError, asyncio.TimeoutError          StorageTimeout
    ConnectionError (incl. BusyLoading), OSError StorageUnavailable
    ReadOnlyError (replica after a failover)    StorageUnavailable
    any other RedisError (WRONGTYPE, ...)       StorageError

    SQLAlchemy / asyncmy                        ours
    IntegrityError                              StorageConflict
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
    if isinstance(exc, (sx.IntegrityError, asyncmy.errors.IntegrityError)):
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
