"""Create the application database and user with root credentials, idempotently.

Runs only when ``mysql_root_password`` is set (``""`` means root without a password). Host,
port, database, user and password are those of the application URL (``DATABASE_URL`` when set,
else the ``MYSQL_*`` parts), so the database created is the one the server then uses. Names
cannot be bound as parameters, so the database name is checked against ``^[A-Za-z0-9_]+$``;
the user name and password ARE bound (``CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s``).
``ALTER USER`` afterwards makes a changed password take effect on the next run.
"""

from __future__ import annotations

import asyncio
import re

import asyncmy
from sqlalchemy.engine import make_url

from core.errors import ConfigError
from core.settings import Settings
from storage.errors import map_sql_error

_IDENT = re.compile(r"^[A-Za-z0-9_]+$")


def check_identifier(name: str) -> str:
    if not _IDENT.fullmatch(name):
        raise ConfigError(f"invalid database identifier {name!r}: use [A-Za-z0-9_]+")
    return name


async def ensure_database_and_user(
    *,
    host: str,
    port: int,
    root_password: str,
    database: str,
    user: str,
    password: str,
) -> None:
    """CREATE DATABASE / CREATE USER / GRANT, each a no-op when already done."""
    db = check_identifier(database)
    try:
        conn = await asyncmy.connect(
            host=host, port=port, user="root", password=root_password, connect_timeout=10
        )
    except Exception as exc:
        raise (map_sql_error(exc) or exc) from exc
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                f"CREATE DATABASE IF NOT EXISTS `{db}` "
                "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
            if user != "root":
                await cur.execute(
                    "CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (user, password)
                )
                await cur.execute("ALTER USER %s@'%%' IDENTIFIED BY %s", (user, password))
                await cur.execute(f"GRANT ALL ON `{db}`.* TO %s@'%%'", (user,))
        await conn.commit()
    except Exception as exc:
        raise (map_sql_error(exc) or exc) from exc
    finally:
        conn.close()


def bootstrap(settings: Settings) -> bool:
    """Ensure database and user if root credentials are configured; True if it ran."""
    if settings.mysql_root_password is None:
        return False
    url = make_url(settings.sqlalchemy_url)
    if not url.database or not url.username:
        raise ConfigError("DATABASE_URL must name a user and a database for the bootstrap")
    asyncio.run(
        ensure_database_and_user(
            host=url.host or "127.0.0.1",
            port=url.port or 3306,
            root_password=settings.mysql_root_password,
            database=url.database,
            user=url.username,
            password=url.password or "",
        )
    )
    return True
