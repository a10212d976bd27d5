"""Schema migrations from Python: ``upgrade(url)``, ``downgrade(url, rev)``; and a CLI.

These are synchronous (Alembic's env runs its own ``asyncio.run``): from Trio call them with
``await trio.to_thread.run_sync(upgrade, url)``. Migration 0002 encrypts the API keys' clear
secrets (and its downgrade decrypts them): pass ``box=SecretBox.from_settings(settings)``, as
``prepare_database`` and the CLI do; without it, a migration that meets a row to convert reads
the settings itself. From a shell::

    python -m storage.migrate             # bootstrap (if MYSQL_ROOT_PASSWORD is set) + upgrade head
    python -m storage.migrate upgrade [REV]
    python -m storage.migrate downgrade REV
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.secret_box import SecretBox
    from core.settings import Settings

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str, box: SecretBox | None = None) -> Config:
    """Alembic config for ``url`` (and the secrets' ``box``), independent of the working
    directory."""
    ini = ROOT / "alembic.ini"
    config = Config(str(ini)) if ini.exists() else Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    if box is not None:
        config.attributes["secret_box"] = box
    return config


def upgrade(url: str, revision: str = "head", *, box: SecretBox | None = None) -> None:
    command.upgrade(alembic_config(url, box), revision)


def downgrade(url: str, revision: str, *, box: SecretBox | None = None) -> None:
    command.downgrade(alembic_config(url, box), revision)


def current(url: str) -> str | None:
    """The revision ``url`` is at (None on an empty database)."""
    import asyncio

    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    def read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async def run() -> str | None:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(read)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def prepare_database(settings: Settings, revision: str = "head") -> str | None:
    """Start-up: bootstrap the database and user (when root credentials are given), then
    upgrade to ``revision``. Returns the revision now applied.

    A database failure (unreachable, login refused, ...) raises our ``StorageError`` (see
    ``storage.errors``); ``storage.errors.sql_reason(exc)`` says why in one line.
    """
    from core.secret_box import SecretBox
    from storage.bootstrap import bootstrap
    from storage.errors import map_sql_error

    try:
        if bootstrap(settings):
            print("bootstrap: database and user ensured", flush=True)
        upgrade(settings.sqlalchemy_url, revision, box=SecretBox.from_settings(settings))
        return current(settings.sqlalchemy_url)
    except Exception as exc:
        mapped = map_sql_error(exc)
        if mapped is None or mapped is exc:
            raise
        raise mapped from exc


def main(argv: list[str]) -> int:
    from core.errors import ConfigError, SecretUndecryptable, StorageError
    from core.secret_box import SecretBox
    from core.settings import load_settings
    from storage.errors import sql_reason

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    url = settings.sqlalchemy_url
    action = argv[0] if argv else "upgrade"
    try:
        if action == "upgrade" and len(argv) <= 2:
            revision = prepare_database(settings, argv[1] if len(argv) > 1 else "head")
            print(f"upgraded to {revision}")
        elif action == "downgrade" and len(argv) == 2:
            downgrade(url, argv[1], box=SecretBox.from_settings(settings))
            print(f"downgraded to {current(url)}")
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except StorageError as exc:
        print(f"error: MariaDB: {sql_reason(exc)}", file=sys.stderr)
        return 4
    except SecretUndecryptable as exc:  # a downgrade meeting a secret it cannot decrypt
        print(f"error: {exc}: check SECRETS_KEY and SECRETS_OLD_KEYS", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
