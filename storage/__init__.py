"""Storage: Redis and MariaDB behind Trio actors, the SQL models, migrations.

Everything asyncio lives in here (``storage.bridge``); callers only ``await`` Trio methods:

    async with open_storage(settings) as storage:
        await storage.redis.execute("SET", storage.redis.key("k"), "v")
        user = await storage.sql.run(unit_of_work)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from core.settings import Settings
from storage.bridge import AsyncioBridge, open_bridge
from storage.migrate import downgrade, upgrade
from storage.models import (
    ApiKey,
    ApiKeyStatus,
    ApiWhitelist,
    Base,
    ChatRoom,
    SnsType,
    User,
    UserStatus,
    utcnow,
)
from storage.redis_actor import RedisActor, open_redis_actor
from storage.sql_actor import SqlActor, open_sql_actor

__all__ = [
    "ApiKey",
    "ApiKeyStatus",
    "ApiWhitelist",
    "AsyncioBridge",
    "Base",
    "ChatRoom",
    "RedisActor",
    "SnsType",
    "SqlActor",
    "Storage",
    "User",
    "UserStatus",
    "downgrade",
    "open_bridge",
    "open_redis_actor",
    "open_sql_actor",
    "open_storage",
    "upgrade",
    "utcnow",
]


@dataclass(frozen=True)
class Storage:
    redis: RedisActor
    sql: SqlActor


@asynccontextmanager
async def open_storage(settings: Settings) -> AsyncIterator[Storage]:
    """One bridge, the Redis actor and the SQL actor; closed in reverse order."""
    async with (
        open_bridge() as bridge,
        open_redis_actor(
            settings.redis_url,
            prefix=settings.redis_key_prefix,
            timeout=settings.redis_timeout,
            bridge=bridge,
        ) as redis,
        open_sql_actor(
            settings.sqlalchemy_url,
            statement_timeout=settings.mysql_statement_timeout,
            pool_size=settings.mysql_pool_size,
            bridge=bridge,
        ) as sql,
    ):
        yield Storage(redis=redis, sql=sql)
