"""Every row of the driver-error mappings is reached, with the error class we promise."""

from __future__ import annotations

import asyncmy.errors
import pytest
import redis.exceptions as rx
import sqlalchemy.exc as sx

import storage
from core.errors import StorageConflict, StorageError, StorageTimeout, StorageUnavailable
from storage.errors import (
    REDIS_ERRORS,
    SQL_CONFLICT_CODES,
    SQL_TIMEOUT_CODES,
    SQL_UNAVAILABLE_CODES,
    map_redis_error,
    map_sql_error,
)

REDIS_CASES: list[tuple[BaseException, type[StorageError]]] = [
    (rx.TimeoutError("slow"), StorageTimeout),
    (TimeoutError(), StorageTimeout),
    (rx.ConnectionError("refused"), StorageUnavailable),
    (rx.BusyLoadingError("loading"), StorageUnavailable),
    (rx.ReadOnlyError("replica"), StorageUnavailable),
    (ConnectionRefusedError(111, "refused"), StorageUnavailable),
    (rx.ResponseError("WRONGTYPE"), StorageError),
    (rx.DataError("bad"), StorageError),
]


@pytest.mark.parametrize(("exc", "ours"), REDIS_CASES)
def test_redis_mapping(exc: BaseException, ours: type[StorageError]) -> None:
    mapped = map_redis_error(exc)
    assert type(mapped) is ours
    assert mapped.__cause__ is exc


def test_every_redis_row_is_covered() -> None:
    def row(exc: BaseException) -> int:
        return next(i for i, (cls, _) in enumerate(REDIS_ERRORS) if isinstance(exc, cls))

    assert {row(exc) for exc, _ in REDIS_CASES} == set(range(len(REDIS_ERRORS)))


def test_foreign_exceptions_are_not_mapped() -> None:
    assert map_redis_error(KeyError("x")) is None
    assert map_sql_error(KeyError("x")) is None
    own = StorageConflict("already ours")
    assert map_redis_error(own) is own and map_sql_error(own) is own


def _wrapped(cls: type[sx.DBAPIError], code: int, invalidated: bool = False) -> sx.DBAPIError:
    orig = asyncmy.errors.OperationalError(code, "driver says no")
    return cls("SELECT 1", {}, orig, connection_invalidated=invalidated)


SQL_CASES: list[tuple[BaseException, type[StorageError]]] = [
    *[(_wrapped(sx.IntegrityError, code), StorageConflict) for code in sorted(SQL_CONFLICT_CODES)],
    (asyncmy.errors.IntegrityError(1452, "fk"), StorageConflict),
    # NOT NULL / CHECK refusing a write is a bug of ours, not a conflict the client caused
    (_wrapped(sx.IntegrityError, 1048), StorageError),
    (asyncmy.errors.IntegrityError(4025, "check"), StorageError),
    *[(_wrapped(sx.OperationalError, code), StorageTimeout) for code in sorted(SQL_TIMEOUT_CODES)],
    *[
        (_wrapped(sx.OperationalError, code), StorageUnavailable)
        for code in sorted(SQL_UNAVAILABLE_CODES)
    ],
    (_wrapped(sx.InterfaceError, 0, invalidated=True), StorageUnavailable),
    (sx.DisconnectionError("gone"), StorageUnavailable),
    (ConnectionResetError(104, "reset"), StorageUnavailable),
    (sx.TimeoutError("pool exhausted"), StorageTimeout),
    (TimeoutError(), StorageTimeout),
    (_wrapped(sx.ProgrammingError, 1064), StorageError),
    (sx.NoResultFound("none"), StorageError),
    (asyncmy.errors.ProgrammingError(1146, "no table"), StorageError),
]


@pytest.mark.parametrize(("exc", "ours"), SQL_CASES)
def test_sql_mapping(exc: BaseException, ours: type[StorageError]) -> None:
    mapped = map_sql_error(exc)
    assert type(mapped) is ours
    assert mapped.__cause__ is exc


def test_public_api() -> None:
    assert sorted(storage.__all__) == storage.__all__
    for name in storage.__all__:
        assert getattr(storage, name) is not None
    assert {"open_storage", "Storage", "RedisActor", "SqlActor", "User", "upgrade"} <= set(
        storage.__all__
    )
