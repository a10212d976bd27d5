"""``/api/user/chatrooms``: the user's chat rooms (JWT; another user's room is 404).

A room is created the first time a socket uses its ``chat_room_id``; deleting one stops its
session actor and removes its stored context.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field
from quart import Blueprint, current_app
from quart_schema import (
    security_scheme_blueprint,
    tag_blueprint,
    validate_request,
    validate_response,
)

from chat_actors.room_ids import parse_room_id
from chat_actors.service import Chat
from core.errors import ApiError
from storage.rooms import RoomInfo, get_room, list_rooms, rename_room
from web.routes_user import current_user, document_errors
from web.services import Services, get_services

bp = Blueprint("chatrooms", __name__, url_prefix="/api/user/chatrooms")
tag_blueprint(bp, ["chat rooms"])
security_scheme_blueprint(bp, [{"bearer": []}, {"cookie": []}])

ROOM = "string(maxlength=64)"


class RoomOut(BaseModel):
    """A room is addressed by its ``chat_room_id`` everywhere (socket, REST paths)."""

    chat_room_id: str
    name: str
    created_at: datetime
    last_used_at: datetime


class RoomList(BaseModel):
    chat_rooms: list[RoomOut]


class RoomDeleted(BaseModel):
    chat_room_id: str
    deleted: bool = True


class RoomUpdate(BaseModel):
    name: str = Field(min_length=1, max_length=255)


def _out(room: RoomInfo) -> RoomOut:
    return RoomOut(chat_room_id=room.chat_room_id, name=room.name,
                   created_at=room.created_at, last_used_at=room.last_used_at)


def _services() -> tuple[Services, Chat]:
    services = get_services(current_app)
    if not isinstance(services.chat, Chat):
        raise ApiError(503, "not_ready", "The chat service is not running.")
    return services, services.chat


def _check_room_id(chat_room_id: str) -> None:
    try:
        parse_room_id(chat_room_id)
    except ValueError as exc:
        raise ApiError(400, "bad_room_id", str(exc)) from None


@bp.get("")
@validate_response(RoomList)
@document_errors()
async def list_chatrooms() -> RoomList:
    """The user's chat rooms, most recently used first."""
    services, chat = _services()
    await chat.rooms.flush()  # rooms that sockets entered a moment ago are listed too
    rooms = await services.storage.sql.run(list_rooms(current_user().id))
    return RoomList(chat_rooms=[_out(r) for r in rooms])


@bp.put(f"/<{ROOM}:chat_room_id>")
@validate_request(RoomUpdate)
@validate_response(RoomOut)
@document_errors(400, 422)
async def rename_chatroom(chat_room_id: str, data: RoomUpdate) -> RoomOut:
    """Name a room (created if it does not exist yet)."""
    _check_room_id(chat_room_id)
    services, chat = _services()
    await chat.rooms.flush()
    room = await services.storage.sql.run(rename_room(current_user().id, chat_room_id, data.name))
    return _out(room)


@bp.delete(f"/<{ROOM}:chat_room_id>")
@validate_response(RoomDeleted)
@document_errors(404)
async def delete_chatroom(chat_room_id: str) -> RoomDeleted:
    """Delete a room: its session stops and its stored messages go."""
    services, chat = _services()
    user_id = current_user().id
    await chat.rooms.flush()
    room = await services.storage.sql.run(get_room(user_id, chat_room_id))
    if room is None:
        raise ApiError(404, "chat_room_not_found", "No such chat room.")
    await chat.delete_room(user_id, chat_room_id)
    return RoomDeleted(chat_room_id=room.chat_room_id)
