"""Server → client frames of PROTOCOL.md v1, as plain dicts ready for ``json.dumps``.

Every frame has ``msg``, ``finish``, ``chat_room_id``, ``is_user`` and ``init``; errors add
``error: {"code", "detail"[, "close"]}``. Clients ignore keys they do not know.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

Frame = dict[str, Any]


def wire_room_id(room: str) -> int | str:
    """Rooms are strings inside; on the wire a numeric one is an integer, as v1 clients send."""
    return int(room) if room.isdigit() and str(int(room)) == room else room


def _frame(msg: str, *, finish: bool, room: str, is_user: bool = False,
           init: bool = False) -> Frame:
    return {"msg": msg, "finish": finish, "chat_room_id": wire_room_id(room), "is_user": is_user,
            "init": init}


def init_frame(room: str, history: Iterable[dict[str, Any]]) -> Frame:
    """The first frame on a socket (and after a room switch): the visible history."""
    return _frame(json.dumps(list(history), ensure_ascii=False), finish=True, room=room,
                  init=True)


def delta_frame(room: str, text: str) -> Frame:
    return _frame(text, finish=False, room=room)


def terminator_frame(room: str) -> Frame:
    return _frame("", finish=True, room=room)


def reply_frame(room: str, text: str) -> Frame:
    """A command's answer."""
    return _frame(text, finish=True, room=room)


def echo_frame(room: str, text: str) -> Frame:
    """A user message sent on another socket of the same session."""
    return _frame(text, finish=True, room=room, is_user=True)


def error_frame(room: str, code: str, msg: str, detail: str = "", *,
                close: bool = False) -> Frame:
    error: dict[str, Any] = {"code": code, "detail": detail}
    if close:
        error["close"] = True
    frame = _frame(msg, finish=True, room=room)
    frame["error"] = error
    return frame


def is_delta(frame: Frame) -> bool:
    return frame.get("finish") is False and not frame.get("is_user") and "error" not in frame


def mergeable(earlier: Frame, later: Frame) -> bool:
    """Two deltas of the same room's answer: one frame can carry both texts."""
    return is_delta(earlier) and is_delta(later) and earlier["chat_room_id"] == later["chat_room_id"]
