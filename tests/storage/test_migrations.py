"""Alembic migrations and the root bootstrap, against the real MariaDB."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncmy
import pytest
import trio
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from core.errors import ConfigError
from core.settings import Settings, load_settings
from storage.bootstrap import bootstrap
from storage.migrate import alembic_config, current, downgrade, upgrade
from storage.models import Base
from tests.conftest import admin_sql, database_url

ROOT = Path(__file__).resolve().parents[2]
TABLES = {"users", "api_keys", "api_whitelists", "chat_rooms", "usage_daily", "usage_batches"}
HEAD = ScriptDirectory.from_config(alembic_config("")).get_current_head()


def _inspect(url: str) -> tuple[set[str], list[object]]:
    """Tables present, and the differences between the models and the migrated schema."""

    def read(conn: Connection) -> tuple[set[str], list[object]]:
        tables = set(inspect(conn).get_table_names())
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        return tables, diff

    async def run() -> tuple[set[str], list[object]]:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(read)
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.fixture
def empty_database(settings: Settings) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:8]}"
    admin_sql(settings, f"CREATE DATABASE `{name}`")
    try:
        yield database_url(settings, name)
    finally:
        admin_sql(settings, f"DROP DATABASE IF EXISTS `{name}`")


async def test_upgrade_downgrade_upgrade(empty_database: str) -> None:
    url = empty_database
    await trio.to_thread.run_sync(upgrade, url)
    assert await trio.to_thread.run_sync(current, url) == HEAD
    tables, diff = await trio.to_thread.run_sync(_inspect, url)
    assert TABLES <= tables
    assert diff == []  # the migration creates exactly what the models describe
    await trio.to_thread.run_sync(downgrade, url, "base")
    tables, _ = await trio.to_thread.run_sync(_inspect, url)
    assert not TABLES & tables
    assert await trio.to_thread.run_sync(current, url) is None
    await trio.to_thread.run_sync(upgrade, url)
    tables, diff = await trio.to_thread.run_sync(_inspect, url)
    assert TABLES <= tables and diff == []


def _drop(settings: Settings, db: str, user: str) -> None:
    admin_sql(settings, f"DROP DATABASE IF EXISTS `{db}`", f"DROP USER IF EXISTS '{user}'@'%'")


def _can_use(db: str, user: str, password: str) -> bool:
    """Log in as the bootstrapped user and create a table in its database."""

    async def run() -> bool:
        conn = await asyncmy.connect(
            host="127.0.0.1", port=3306, user=user, password=password, db=db
        )
        try:
            async with conn.cursor() as cur:
                await cur.execute("CREATE TABLE probe (id INT PRIMARY KEY)")
                await cur.execute("DROP TABLE probe")
            return True
        finally:
            conn.close()

    return asyncio.run(run())


async def test_bootstrap_is_idempotent_and_binds_user_and_password(settings: Settings) -> None:
    tag = uuid.uuid4().hex[:8]
    db, user, password = f"tb_{tag}", f"tu_{tag}", "p'w\"x%s;--"
    boot = load_settings(
        api_env="test",
        mysql_root_password=settings.mysql_password,
        mysql_database=db,
        mysql_user=user,
        mysql_password=password,
    )
    try:
        assert await trio.to_thread.run_sync(bootstrap, boot) is True
        assert await trio.to_thread.run_sync(bootstrap, boot) is True  # second run: no error
        assert await trio.to_thread.run_sync(_can_use, db, user, password)
    finally:
        await trio.to_thread.run_sync(_drop, settings, db, user)


async def test_bootstrap_follows_database_url(settings: Settings) -> None:
    tag = uuid.uuid4().hex[:8]
    db, user, password = f"tu_url_{tag}", f"tuu_{tag}", "url-pass"
    boot = load_settings(
        api_env="test",
        mysql_root_password=settings.mysql_password,
        database_url=f"mysql+asyncmy://{user}:{password}@{settings.mysql_host}:"
                     f"{settings.mysql_port}/{db}?charset=utf8mb4",
        mysql_database=f"not_this_{tag}",
        mysql_user=f"nor_this_{tag}",
        mysql_port=1,  # the parts are not used when DATABASE_URL is set
    )
    try:
        assert await trio.to_thread.run_sync(bootstrap, boot) is True
        assert await trio.to_thread.run_sync(_can_use, db, user, password)
    finally:
        await trio.to_thread.run_sync(_drop, settings, db, user)


def test_bootstrap_without_root_credentials_does_nothing() -> None:
    assert bootstrap(load_settings(api_env="test", mysql_root_password=None)) is False


def test_bootstrap_refuses_unsafe_database_names() -> None:
    bad = load_settings(
        api_env="test", mysql_root_password="", mysql_database="x`; DROP DATABASE y"
    )
    with pytest.raises(ConfigError):
        bootstrap(bad)


def test_cli_bootstraps_then_upgrades(settings: Settings) -> None:
    tag = uuid.uuid4().hex[:8]
    db, user = f"tb_{tag}", f"tu_{tag}"
    env = {
        **os.environ,
        "MYSQL_ROOT_PASSWORD": settings.mysql_password,
        "MYSQL_DATABASE": db,
        "MYSQL_USER": user,
        "MYSQL_PASSWORD": "cli-pass",
        "DATABASE_URL": "",
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "storage.migrate"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert f"upgraded to {HEAD}" in done.stdout
        app_url = f"mysql+asyncmy://{user}:cli-pass@127.0.0.1:3306/{db}?charset=utf8mb4"
        tables, diff = _inspect(app_url)
        assert TABLES <= tables and diff == []
    finally:
        _drop(settings, db, user)


async def test_fresh_database_fixture_is_at_head_and_matches_models(fresh_database: str) -> None:
    assert await trio.to_thread.run_sync(current, fresh_database) == HEAD
    tables, diff = await trio.to_thread.run_sync(_inspect, fresh_database)
    assert tables == TABLES | {"alembic_version"}
    assert diff == []
