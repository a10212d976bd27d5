"""``open_storage``: one bridge, both actors, from the settings."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from core.settings import Settings
from storage import Storage, open_storage


async def test_open_storage_gives_both_actors(db_settings: Settings) -> None:
    async with open_storage(db_settings) as st:
        assert isinstance(st, Storage)
        with pytest.raises(dataclasses.FrozenInstanceError):
            st.redis = st.redis  # type: ignore[misc]
        await st.redis.ping()
        await st.sql.ping()
        k = st.redis.key("hello")
        await st.redis.execute("SET", k, "world", "EX", 60)
        assert await st.redis.execute("GET", k) == "world"
        await st.redis.execute("DEL", k)

        async def tables(s: AsyncSession) -> set[str]:
            return {row[0] for row in (await s.execute(text("SHOW TABLES"))).all()}

        assert {"users", "api_keys", "api_whitelists", "chat_rooms"} <= await st.sql.run(tables)
