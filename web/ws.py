"""The chat WebSocket: ``/ws/chatgpt/{access_key}?chat_room_id=X`` (PROTOCOL.md v1).

The key is checked **before** the upgrade (403, no upgrade). Then one socket = two tasks in one
nursery: the reader turns client frames into ``UserInput`` casts to the session actor, the
writer drains the socket's ``Outbox`` (which never blocks the session). All cleanup is in
``finally``: a client that goes away cancels the handler, it never runs ``after_websocket``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import trio
from quart import Blueprint, current_app, websocket
from quart.wrappers import Response

from chat_actors import frames
from chat_actors.outbox import Outbox, OutboxClosed
from chat_actors.registry import SessionRef, SessionRegistry
from chat_actors.service import Chat
from core.errors import ActorDead, ApiError, StorageError
from web.auth_keys import AuthedKey, authenticate_access_key
from web.services import get_services
from web.state import state_of

log = logging.getLogger("chat.ws")
bp = Blueprint("chat_ws", __name__)

ROOM_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
OUTBOX_MAX_FRAMES = 512
OUTBOX_STUCK_SECONDS = 30.0


class BadFrame(Exception):
    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code


@dataclass(frozen=True)
class ClientFrame:
    msg: str
    translate: bool
    room: str | None


def parse_room(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadFrame("bad_frame", "chat_room_id must be an integer or a string")
    room = str(value)
    if not ROOM_ID.match(room):
        raise BadFrame("bad_frame", "chat_room_id must be 1-64 letters, digits, '_', '-', '.'")
    return room


def parse_frame(data: str | bytes, max_bytes: int) -> ClientFrame:
    size = len(data.encode() if isinstance(data, str) else data)
    if size > max_bytes:
        raise BadFrame("too_long", f"Frame of {size} bytes is over the limit of {max_bytes}.")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadFrame("bad_frame", "Frames must be JSON objects.") from None
    if not isinstance(body, dict):
        raise BadFrame("bad_frame", "Frames must be JSON objects.")
    msg = body.get("msg")
    if not isinstance(msg, str):
        raise BadFrame("bad_frame", "'msg' is required and must be a string.")
    translate = body.get("translate", False)
    if not isinstance(translate, bool):
        raise BadFrame("bad_frame", "'translate' must be true or false.")
    room = body.get("chat_room_id")
    return ClientFrame(msg=msg, translate=translate,
                       room=None if room is None else parse_room(room))


def _reject(status: int, code: str, msg: str) -> Response:
    state_of(websocket.scope).error_code = code
    body = {"status": status, "msg": msg, "detail": None, "code": code}
    return Response(json.dumps(body), status=status, content_type="application/json")


@bp.websocket("/ws/chatgpt/<access_key>")
async def chat_socket(access_key: str) -> Response | None:
    services = get_services(current_app)
    chat = services.chat
    if not isinstance(chat, Chat):
        return _reject(503, "not_ready", "The chat service is not running.")
    state = state_of(websocket.scope)
    try:
        authed = await authenticate_access_key(services, access_key, state.client_ip)
        room = parse_room(websocket.args.get("chat_room_id", "0"))
    except ApiError as exc:
        return _reject(403, exc.code, exc.msg)
    except BadFrame as exc:
        return _reject(400, exc.code, str(exc))
    except StorageError:
        return _reject(503, "storage_unavailable", "The key could not be checked; retry.")
    state.user_id, state.api_key_id = authed.user_id, authed.key_id
    await websocket.accept()
    await ChatSocket(chat, authed, room).run()
    return None


class ChatSocket:
    """One accepted socket: its outbox (for its whole life), its current room and session.

    Moving rooms detaches the outbox from the old session and attaches it to the new one; frames
    carry ``chat_room_id``, so a few late frames of the old room are still told apart.
    """

    def __init__(self, chat: Chat, authed: AuthedKey, room: str) -> None:
        self.chat = chat
        self.registry: SessionRegistry = chat.registry
        self.user_id = authed.user_id
        self.room = room
        self.outbox = Outbox(max_frames=OUTBOX_MAX_FRAMES, stuck_after=OUTBOX_STUCK_SECONDS)
        self.session: SessionRef | None = None
        self.max_bytes = chat.settings.max_frame_bytes

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, nursery.cancel_scope)
                await self._enter(self.room)
                await self._reader()
        finally:
            self.outbox.close()
            if self.session is not None:
                await self.registry.detach(self.session, self.outbox)

    async def _enter(self, room: str) -> None:
        """Attach to ``room``'s session (its init frame arrives through the outbox)."""
        if self.session is not None:
            await self.registry.detach(self.session, self.outbox)
            self.session = None
        try:
            await self.chat.rooms.touched(self.user_id, room)
        except StorageError as exc:
            log.warning("room %s could not be recorded: %s", room, exc)
        self.room = room
        self.session = await self.registry.attach(self.user_id, room, self.outbox)

    async def _reader(self) -> None:
        while True:
            data = await websocket.receive()
            try:
                frame = parse_frame(data, self.max_bytes)
            except BadFrame as exc:
                self.outbox.push(frames.error_frame(self.room, exc.code, str(exc)))
                continue
            if frame.room is not None and frame.room != self.room:
                await self._enter(frame.room)
            if frame.msg.strip():
                await self._send(frame)
            elif frame.room is None:
                self.outbox.push(frames.error_frame(self.room, "bad_frame",
                                                    "'msg' must not be empty."))

    async def _send(self, frame: ClientFrame) -> None:
        assert self.session is not None
        try:
            await self.registry.send(self.session, self.outbox, frame.msg, frame.translate)
        except ActorDead:
            # The session stopped (idle, or gave up after crashes): start a fresh one, once.
            self.session = None
            await self._enter(self.room)
            assert self.session is not None
            await self.registry.send(self.session, self.outbox, frame.msg, frame.translate)

    async def _writer(self, cancel_scope: trio.CancelScope) -> None:
        try:
            while True:
                frame: dict[str, Any] = await self.outbox.next_frame()
                await websocket.send(json.dumps(frame, ensure_ascii=False))
        except OutboxClosed as exc:
            if str(exc):  # dropped by the session: stuck or too slow
                with trio.move_on_after(1):
                    await websocket.close(1008, str(exc)[:120])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        cancel_scope.cancel()
