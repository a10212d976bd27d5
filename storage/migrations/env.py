"""Alembic environment: async engine (asyncmy), URL from ``core.settings``.

``storage.migrate`` passes the URL in ``config.attributes["url"]`` (no configparser
interpolation of ``%`` in passwords); the ``alembic`` command line falls back to the settings.
"""

from __future__ import annotations

import asyncio
import warnings

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from storage.models import Base

config = context.config
# MariaDB notes that it ignores the name of alembic_version's primary key; that is noise.
warnings.filterwarnings("ignore", message=".*ignored for PRIMARY key")
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url")
    if url:
        return str(url)
    from core.settings import load_settings

    return load_settings().sqlalchemy_url


def _configure_and_run(connection: Connection | None = None) -> None:
    if connection is None:
        context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    else:
        context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure_and_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    _configure_and_run()
else:
    asyncio.run(_run_online())
