"""Chat rooms in MariaDB: units of work for ``SqlActor.run``.

A room is created the first time a socket uses its ``chat_room_id`` and touched on every attach
(``last_used_at``). Its chat context lives in Redis (``storage.context_store``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.mysql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import ChatRoom, utcnow
from storage.sql_actor import Unit

ROOM_KEY_MAX = 64


@dataclass(frozen=True)
class RoomInfo:
    id: int
    chat_room_id: str
    name: str
    created_at: datetime
    last_used_at: datetime


def _info(room: ChatRoom) -> RoomInfo:
    return RoomInfo(id=room.id, chat_room_id=room.room_key, name=room.name,
                    created_at=room.created_at, last_used_at=room.last_used_at)


def touch_rooms(rooms: Iterable[tuple[int, str]]) -> Unit[None]:
    """Create the rooms that do not exist yet and set ``last_used_at`` of all: one upsert."""
    now = utcnow()
    rows = [{"user_id": user_id, "room_key": room_key, "name": f"Chat {room_key}",
             "created_at": now, "last_used_at": now} for user_id, room_key in rooms]

    async def unit(session: AsyncSession) -> None:
        if rows:
            stmt = insert(ChatRoom).values(rows)
            await session.execute(
                stmt.on_duplicate_key_update(last_used_at=stmt.inserted.last_used_at))

    return unit


def list_rooms(user_id: int) -> Unit[list[RoomInfo]]:
    async def unit(session: AsyncSession) -> list[RoomInfo]:
        rows = await session.scalars(
            select(ChatRoom).where(ChatRoom.user_id == user_id)
            .order_by(ChatRoom.last_used_at.desc(), ChatRoom.id.desc()))
        return [_info(r) for r in rows]

    return unit


def rename_room(user_id: int, room_key: str, name: str) -> Unit[RoomInfo]:
    """Rename (creating the room if it does not exist yet); returns the room."""

    async def unit(session: AsyncSession) -> RoomInfo:
        now = utcnow()
        stmt = insert(ChatRoom).values(user_id=user_id, room_key=room_key, name=name,
                                       created_at=now, last_used_at=now)
        await session.execute(stmt.on_duplicate_key_update(name=name))
        room = await session.scalar(select(ChatRoom).where(
            ChatRoom.user_id == user_id, ChatRoom.room_key == room_key))
        assert room is not None
        return _info(room)

    return unit


def get_room(user_id: int, room_key: str) -> Unit[RoomInfo | None]:
    async def unit(session: AsyncSession) -> RoomInfo | None:
        room = await session.scalar(select(ChatRoom).where(
            ChatRoom.user_id == user_id, ChatRoom.room_key == room_key))
        return None if room is None else _info(room)

    return unit


def delete_room(user_id: int, room_key: str | None = None) -> Unit[bool]:
    """Delete one room of a user, or all of them (``room_key`` None); returns whether any
    row went."""

    async def unit(session: AsyncSession) -> bool:
        where = [ChatRoom.user_id == user_id]
        if room_key is not None:
            where.append(ChatRoom.room_key == room_key)
        result = await session.execute(delete(ChatRoom).where(*where))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    return unit
