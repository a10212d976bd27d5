"""What a ``chat_room_id`` may be: an int or a string of 1-64 letters, digits, ``_ - . :``.

Inside the server a room id is always its string form; frames give numeric ids back as integers
(``frames.wire_room_id``), as protocol v1 clients send them.
"""

from __future__ import annotations

import re

from storage.rooms import ROOM_KEY_MAX

ROOM_ID = re.compile(rf"^[A-Za-z0-9_.:-]{{1,{ROOM_KEY_MAX}}}$")
RULE = (f"chat_room_id must be an integer or 1-{ROOM_KEY_MAX} letters, digits, "
        "'_', '-', '.', ':'")


def parse_room_id(value: object) -> str:
    """The room's string form, or ``ValueError`` saying what is allowed."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(RULE)  # noqa: TRY004 - callers turn ValueError into a 400 / bad_frame
    room = str(value)
    if not ROOM_ID.match(room):
        raise ValueError(RULE)
    return room
