"""One task paces every streaming answer of a mock upstream process.

With a task per stream, each chunk costs a timer wake-up and a ``send_all`` of its own: at
1,000 streams of 64 chunks 10 ms apart that was ~50 µs a chunk, about as much CPU as the chat
server under test spends, on the same two cores. Here one task wakes when the earliest stream
is due and writes every due stream's chunks straight to its socket (the sockets are
non-blocking: a write that would block, or is short, is handed back to the stream's own task,
which finishes it with ``send_all`` and rejoins). The wire is unchanged: the same events, one
per chunk, each written when it is due (those due at once in one write, as before); the end of
the response (finish event, ``[DONE]``, last HTTP chunk) goes out in the last chunk's write.
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count

import trio

from scripts.mock_upstream_http import HttpConnection

_order = count()


@dataclass(eq=False)
class _Stream:
    http: HttpConnection
    content: Callable[[int, int], bytes]  # the chunks [start, stop) as wire bytes
    stop: int
    delay: float
    start: float
    tail: bytes = b""  # written with the last chunk (the response's end)
    sent: int = 0
    left: bytes = b""  # what the pacer could not write: the stream's task writes it
    error: OSError | None = None
    gone: bool = False  # its task ended (done, or cancelled: the client went away)
    wake: trio.Event = field(default_factory=trio.Event)

    def due(self) -> float:
        return self.start + (self.sent + 1) * self.delay


#: What falls due within this of the earliest due stream is written in the same wake-up (a
#: chunk goes out at most this late: a tenth of the benchmarks' 10 ms between chunks).
TICK = 0.001


class Pacer:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Stream]] = []
        self._sleep_until = math.inf  # when the pacer wakes next, unless woken earlier
        self._earlier = trio.Event()  # set when a stream falls due before that

    async def run(self) -> None:
        while True:
            self._sleep_until = self._heap[0][0] + TICK if self._heap else math.inf
            with trio.move_on_at(self._sleep_until):
                await self._earlier.wait()
            self._earlier = trio.Event()
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, stream = heapq.heappop(self._heap)
                if not stream.gone:
                    self._write(stream, now)
            await trio.lowlevel.checkpoint()

    def _add(self, stream: _Stream) -> None:
        due = stream.due()
        heapq.heappush(self._heap, (due, next(_order), stream))
        if due + TICK < self._sleep_until:
            self._earlier.set()

    def _write(self, stream: _Stream, now: float) -> None:
        due = min(stream.stop, max(stream.sent + 1, int((now - stream.start) / stream.delay)))
        data = stream.http.chunk_bytes(stream.content(stream.sent, due))
        if due == stream.stop:
            data += stream.tail
        stream.sent = due
        try:
            written = os.write(stream.http.stream.socket.fileno(), data)
        except BlockingIOError:
            written = 0
        except OSError as exc:  # the client went away
            stream.error = exc
            stream.wake.set()
            return
        if written < len(data) or stream.sent >= stream.stop:
            stream.left = data[written:]
            stream.wake.set()  # its task finishes the write, or the answer
        else:
            self._add(stream)

    async def play(self, http: HttpConnection, content: Callable[[int, int], bytes],
                   stop: int, delay: float, tail: bytes = b"") -> None:
        """Send chunks 0..stop of an answer, one per ``delay`` seconds, ``tail`` (wire bytes)
        with the last."""
        stream = _Stream(http, content, stop, delay, trio.current_time(), tail)
        try:
            while stream.sent < stream.stop or stream.left:
                if stream.sent < stream.stop:
                    self._add(stream)
                await stream.wake.wait()
                stream.wake = trio.Event()
                if stream.error is not None:
                    raise trio.BrokenResourceError(str(stream.error)) from stream.error
                if stream.left:
                    left, stream.left = stream.left, b""
                    await http.stream.send_all(left)
        finally:
            stream.gone = True
