"""A socket, as the chat actors see it: an outbox that never blocks the session.

The session pushes frames with ``push`` (synchronous, never waits). The socket's writer task
takes them with ``next_frame``. When the writer falls behind, consecutive deltas of one room's
answer are merged into one frame (the concatenation of all deltas is still the whole answer), so
a slow socket costs one growing list of strings instead of a growing queue of frames.

A socket is cut instead of waited for: when the oldest frame it has not taken has waited longer
than ``stuck_after`` seconds, or when more than ``max_frames`` unmergeable frames pile up, the
outbox closes with a reason, drops what is queued, and calls ``on_close``, so the socket can
close the connection even while its writer is blocked in a send.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count

import trio

from chat_actors.frames import Frame, mergeable

_ids = count(1)


class OutboxClosed(Exception):
    """The outbox was closed (by the session, or because its socket went away)."""


@dataclass
class _Queued:
    frame: Frame
    since: float  # when it was queued: what "stuck" is measured against
    parts: list[str] = field(default_factory=list)  # merged delta texts, joined on the way out

    def take(self) -> Frame:
        if not self.parts:
            return self.frame
        return {**self.frame, "msg": self.frame["msg"] + "".join(self.parts)}


class Outbox:
    def __init__(self, *, max_frames: int = 256, stuck_after: float = 30.0) -> None:
        self.id = next(_ids)
        self._queue: deque[_Queued] = deque()
        self._wakeup = trio.Event()
        self._max_frames = max_frames
        self._stuck_after = stuck_after
        self.closed = False
        self.close_reason = ""
        self.dropped = False  # cut because the socket did not keep up (the client's doing)
        #: Called once the outbox is closed (set by the socket; never waits).
        self.on_close: Callable[[], None] | None = None
        self.frames_pushed = 0
        self.frames_coalesced = 0
        #: An answer's deltas were pushed and its last frame was not (yet): what a socket
        #: whose session owner died shows as an interrupted answer.
        self.answer_open = False

    def push(self, frame: Frame) -> bool:
        """Queue a frame; False (and the outbox closed) when the socket is stuck or gone."""
        if self.closed:
            return False
        now = trio.current_time()
        if self._queue and now - self._queue[0].since > self._stuck_after:
            self.close("socket stuck: not reading", drop=True)
            return False
        self.frames_pushed += 1
        if not frame["finish"]:
            self.answer_open = True
        elif not frame.get("is_user"):  # an echo comes between deltas; anything else ends
            self.answer_open = False
        if self._queue and mergeable(self._queue[-1].frame, frame):
            self._queue[-1].parts.append(frame["msg"])
            self.frames_coalesced += 1
        elif len(self._queue) >= self._max_frames:
            self.close("socket too slow: too many pending frames", drop=True)
            return False
        else:
            self._queue.append(_Queued(frame, now))
        self._wakeup.set()
        return True

    def close(self, reason: str = "", *, drop: bool = False) -> None:
        """No more frames. A socket cut for ``drop`` loses what is queued; otherwise the writer
        drains it first. A ``reason`` tells the writer to close the connection with it."""
        if self.closed:
            return
        self.closed, self.close_reason, self.dropped = True, reason, drop
        if drop:
            self._queue.clear()
        self._wakeup.set()
        if self.on_close is not None:
            self.on_close()

    def moved(self) -> None:
        """The session stops here for good and goes on elsewhere. A socket of this process
        follows by itself (its handle's ``moved`` signal); a socket of another process is told
        (``RemoteOutbox``)."""

    async def next_frame(self) -> Frame:
        """The next frame to send; raises ``OutboxClosed`` once closed and drained."""
        while not self._queue:
            if self.closed:
                raise OutboxClosed(self.close_reason)
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        return self._queue.popleft().take()

    @property
    def pending(self) -> int:
        return len(self._queue)
