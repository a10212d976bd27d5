"""Shared fixtures for the whole suite: real Redis, real MariaDB, nothing mocked.

- ``settings``: test ``Settings`` (api_env=test, Redis key prefix ``test:<uuid>:`` unique per test).
- ``fresh_database``: a new MariaDB database ``t_<uuid8>`` at the Alembic head; yields its
  SQLAlchemy URL and drops it after. Once per session the migrations run for real on a scratch
  database whose ``SHOW CREATE TABLE`` output (parents first) and ``alembic_version`` row are
  kept and the scratch database dropped; each test replays that DDL. Measured: replay ~20 ms,
  ``alembic upgrade head`` ~60 ms per database (idle machine). ``CREATE TABLE ... LIKE`` was
  not used: it drops the foreign keys. ``tests/storage/test_migrations.py`` runs the real
  migrations and checks that a fresh database matches the models.
- ``db_settings``: ``settings`` pointing at ``fresh_database``.
- ``redis_actor`` / ``sql_actor``: actors opened on those, closed after; the Redis fixture deletes
  every key under its prefix (SCAN + DEL) after the test.
- ``own_redis`` / ``durable_redis``: a private redis-server on a spare port, for tests that
  kill, pause or restart it (``durable``: append-only, fsynced on every write).

Server addresses come from the usual settings (REDIS_URL, MYSQL_HOST/PORT/USER/PASSWORD); the
defaults are the local services (127.0.0.1:6379, root with an empty password on :3306).

``API_ENV`` defaults to ``test`` for the whole suite (and its subprocesses): outside tests the
settings refuse the public sample JWT secret, and tests rely on that default secret.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncmy
import pytest

from core.settings import Settings, load_settings
from storage.migrate import upgrade
from storage.models import Base
from storage.redis_actor import RedisActor, open_redis_actor
from storage.sql_actor import SqlActor, open_sql_actor
from tests.storage.servers import Server, redis_server

os.environ.setdefault("API_ENV", "test")


def _private_redis(tmp_path: Path, *, durable: bool) -> Iterator[Server]:
    server = redis_server(tmp_path, durable=durable)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Server]:
    yield from _private_redis(tmp_path, durable=False)


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[Server]:
    yield from _private_redis(tmp_path, durable=True)


@pytest.fixture
def settings() -> Settings:
    return load_settings(api_env="test", redis_key_prefix=f"test:{uuid.uuid4().hex}:")


def admin_sql(settings: Settings, *statements: str) -> list[tuple[tuple[Any, ...], ...]]:
    """Run statements on one admin connection (outside Trio); the rows of each."""

    async def run() -> list[tuple[tuple[Any, ...], ...]]:
        conn = await asyncmy.connect(
            host=settings.mysql_host,
            port=settings.mysql_port,
            user=settings.mysql_user,
            password=settings.mysql_password,
        )
        rows = []
        try:
            async with conn.cursor() as cur:
                for statement in statements:
                    await cur.execute(statement)
                    rows.append(tuple(await cur.fetchall()))
            await conn.commit()
        finally:
            conn.close()
        return rows

    return asyncio.run(run())


def database_url(settings: Settings, name: str) -> str:
    """The SQLAlchemy URL of database ``name`` on the server ``settings`` point at."""
    return settings.model_copy(update={"mysql_database": name, "database_url": None}).sqlalchemy_url


@dataclass(frozen=True)
class SchemaTemplate:
    """The head schema as replayable statements (parents first)."""

    statements: tuple[str, ...]


@pytest.fixture(scope="session")
def schema_template() -> SchemaTemplate:
    """Run the real migrations once on a scratch database and keep its DDL."""
    settings = load_settings(api_env="test")
    name = f"tmpl_{uuid.uuid4().hex[:8]}"
    admin_sql(settings, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        upgrade(database_url(settings, name))
        tables = [t.name for t in Base.metadata.sorted_tables] + ["alembic_version"]
        rows = admin_sql(settings, *(f"SHOW CREATE TABLE `{name}`.`{t}`" for t in tables))
        (version,) = admin_sql(settings, f"SELECT version_num FROM `{name}`.alembic_version")
    finally:
        admin_sql(settings, f"DROP DATABASE IF EXISTS `{name}`")
    ddl = [str(r[0][1]) for r in rows]
    inserts = [f"INSERT INTO alembic_version VALUES ('{v[0]}')" for v in version]
    return SchemaTemplate(tuple(ddl + inserts))


@pytest.fixture
def fresh_database(settings: Settings, schema_template: SchemaTemplate) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:8]}"
    admin_sql(settings, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        admin_sql(settings, f"USE `{name}`", *schema_template.statements)
        yield database_url(settings, name)
    finally:
        admin_sql(settings, f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def db_settings(settings: Settings, fresh_database: str) -> Settings:
    return load_settings(
        api_env="test", redis_key_prefix=settings.redis_key_prefix, database_url=fresh_database
    )


@pytest.fixture
async def redis_actor(settings: Settings) -> AsyncIterator[RedisActor]:
    async with open_redis_actor(
        settings.redis_url, prefix=settings.redis_key_prefix, timeout=settings.redis_timeout
    ) as actor:
        try:
            yield actor
        finally:
            await delete_prefix(actor)


async def delete_prefix(actor: RedisActor) -> None:
    """SCAN + DEL every key under the actor's prefix."""
    cursor: int | str = 0
    while True:
        cursor, keys = await actor.execute(
            "SCAN", cursor, "MATCH", actor.prefix + "*", "COUNT", 1000
        )
        if keys:
            await actor.execute("DEL", *keys)
        if int(cursor) == 0:
            break


@pytest.fixture
async def sql_actor(settings: Settings, fresh_database: str) -> AsyncIterator[SqlActor]:
    async with open_sql_actor(
        fresh_database,
        statement_timeout=settings.mysql_statement_timeout,
        pool_size=settings.mysql_pool_size,
    ) as actor:
        yield actor
