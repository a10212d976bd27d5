"""A socket, as the chat actors see it: an outbox that never blocks the session.

The session pushes frames with ``push`` (synchronous, never waits). The socket's writer task
takes them with ``next_frame``. When the writer falls behind, consecutive deltas of an answer are
merged into one frame (the concatenation of all deltas is still the whole answer), so a slow
socket costs one growing string instead of a growing queue. A socket whose oldest pending frame
has waited longer than ``stuck_after`` seconds, or whose queue of non-mergeable frames exceeds
``max_frames``, is closed: the session drops it instead of waiting for it.
"""

from __future__ import annotations

from collections import deque
from itertools import count

import trio

from chat_actors.frames import Frame, mergeable

_ids = count(1)


class OutboxClosed(Exception):
    """The outbox was closed (by the session, or because its socket went away)."""


class Outbox:
    def __init__(self, *, max_frames: int = 256, stuck_after: float = 30.0) -> None:
        self.id = next(_ids)
        self._frames: deque[Frame] = deque()
        self._oldest_at: float | None = None
        self._wakeup = trio.Event()
        self._max_frames = max_frames
        self._stuck_after = stuck_after
        self.closed = False
        self.close_reason = ""
        self.frames_pushed = 0
        self.frames_coalesced = 0

    def push(self, frame: Frame) -> bool:
        """Queue a frame; returns False (and closes the outbox) if the socket is stuck."""
        if self.closed:
            return False
        now = trio.current_time()
        if self._oldest_at is not None and now - self._oldest_at > self._stuck_after:
            self.close("socket stuck: not reading")
            return False
        self.frames_pushed += 1
        if self._frames and mergeable(self._frames[-1], frame):
            last = self._frames[-1]
            self._frames[-1] = {**last, "msg": last["msg"] + frame["msg"]}
            self.frames_coalesced += 1
        else:
            if len(self._frames) >= self._max_frames:
                self.close("socket too slow: too many pending frames")
                return False
            self._frames.append(frame)
        if self._oldest_at is None:
            self._oldest_at = now
        self._wakeup.set()
        return True

    def close(self, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            self._wakeup.set()

    async def next_frame(self) -> Frame:
        """The next frame to send; raises ``OutboxClosed`` once closed and drained."""
        while not self._frames:
            if self.closed:
                raise OutboxClosed(self.close_reason)
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        if self.closed and self.close_reason:
            # Stuck sockets are dropped at once; a plain close drains what is queued first.
            raise OutboxClosed(self.close_reason)
        frame = self._frames.popleft()
        self._oldest_at = trio.current_time() if self._frames else None
        return frame

    @property
    def pending(self) -> int:
        return len(self._frames)
