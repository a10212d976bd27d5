"""Mail between server processes: one Redis stream per process (``P node:<id>``).

What one process tells another goes here: a socket attaching to a session owned elsewhere,
the owner's frames for that socket, pokes for inputs waiting in a session's inbox, stops. A
stream, not pub/sub: a reader that falls behind or reconnects reads on from its last id instead
of losing what was published meanwhile. Each stream is capped (MAXLEN ~) and expires when its
reader is gone (a process that died): a writer refreshes the expiry it would need.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

MAIL_MAXLEN = 100_000
"""Entries a stream keeps at most (approximately): far more than a live reader leaves unread."""

# ARGV: maxlen, ttl ms, then kind, data, kind, data...
_POST = """
for i = 3, #ARGV, 2 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'k', ARGV[i], 'd', ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


def mail_key(prefix: str, node: str) -> str:
    return f"{prefix}node:{node}"


class NodeMail:
    def __init__(self, redis: Any, *, ttl_ms: int) -> None:
        self._redis = redis
        self._ttl_ms = ttl_ms

    def key(self, node: str) -> str:
        return mail_key(self._redis.prefix, node)

    async def post(self, node: str, letters: Sequence[tuple[str, Any]]) -> None:
        """Append ``(kind, data)`` letters to ``node``'s stream, in order, in one step."""
        args: list[Any] = [MAIL_MAXLEN, self._ttl_ms]
        for kind, data in letters:
            args += [kind, orjson.dumps(data)]
        await self._redis.eval(_POST, [self.key(node)], args)

    async def read(self, node: str, after: str, block_ms: int, count: int = 1000
                   ) -> list[tuple[str, dict[str, str]]]:
        """Entries after ``after``, waiting up to ``block_ms`` for the first one."""
        reply = await self._redis.blocking("XREAD", "COUNT", count, "BLOCK", block_ms,
                                           "STREAMS", self.key(node), after)
        if not reply:
            return []
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        return [(entry_id, stream_fields(fields)) for entry_id, fields in entries]


def stream_fields(fields: Any) -> dict[str, str]:
    """A stream entry's fields as a dict (redis-py gives a dict, a script a flat list)."""
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[::2], fields[1::2], strict=True))


def load_letter(data: str) -> Any:
    return orjson.loads(data)
