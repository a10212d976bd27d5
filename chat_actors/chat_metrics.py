"""What the chat side's events mean for the metrics (``core.metrics``): how an answer ended,
and what kind of upstream failure an attempt met.
"""

from __future__ import annotations

import re

import httpx
import httpx_sse

from chat_actors.frames import Frame
from core import metrics
from core.errors import UpstreamError, UpstreamRateLimited, UpstreamTimeout

#: ``UpstreamClient._status_failure``'s message: the one place the status is kept.
_STATUS = re.compile(r"upstream answered (\d)\d\d\b")


def answer_reason(last_frame: Frame, *, complete: bool, store: bool) -> str:
    """An answer's end as ``chat_answers_finished_total`` counts it: the error code that took
    its terminator's place, else ``complete``, ``stopped`` (/stop: its text kept) or
    ``room_deleted`` (/deletechatroom: a terminator, nothing stored)."""
    error = last_frame.get("error")
    if error:
        return str(error["code"])
    if complete:
        return "complete"
    return "stopped" if store else "room_deleted"


def upstream_error_kind(error: UpstreamError, cause: BaseException | None) -> str:
    """One failed upstream attempt (``UpstreamClient._request``): ``status_429``,
    ``status_4xx`` / ``status_5xx``, ``timeout`` (first byte, gap between chunks, read),
    ``connect_timeout``, ``connection`` (refused, reset, protocol), ``bad_stream`` (not SSE,
    a malformed chunk) or ``incomplete`` (the stream ended before a finish reason)."""
    if isinstance(error, UpstreamRateLimited):
        return "status_429"
    if isinstance(error, UpstreamTimeout):
        return "connect_timeout" if isinstance(cause, httpx.ConnectTimeout) else "timeout"
    if isinstance(cause, httpx.TransportError):
        return "connection"
    if isinstance(cause, (httpx_sse.SSEError, UpstreamError)):
        return "bad_stream"
    status = _STATUS.match(str(error))
    if status:
        return f"status_{status[1]}xx"
    return "incomplete"


def upstream_failed(error: UpstreamError, cause: BaseException | None) -> None:
    metrics.upstream_error(upstream_error_kind(error, cause))
