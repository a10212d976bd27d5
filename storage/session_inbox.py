"""A session's inbox: the inputs (chat messages, commands) waiting for its owner, in Redis.

``P ctx:U:R:inbox`` is a stream, so queued inputs outlive the process that owns the session:
after its owner dies, the next owner answers what was waiting, in the stream's order. An entry
leaves the inbox once it is handled; for a chat message, in the same script that stores the
message (``ContextStore.change(done_input=...)``), so a takeover never answers it twice.

A socket on another process adds its input with ``send``: the script checks that the session
is still owned by the process the socket knows of, adds the entry, and pokes that process (an
entry in its mail stream, ``storage.node_mail``), all in one step. The owner's own sockets
add an entry only when their input has to wait (an answer is streaming).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storage.context_store import RedisLike, session_keys
from storage.node_mail import MAIL_MAXLEN, mail_key, stream_fields

#: Entries kept at most (a session accepts SESSION_QUEUE_LIMIT waiting inputs; this bounds
#: what a flood of pokes at a dead owner can pile up).
INBOX_MAXLEN = 1000

# KEYS: lease, inbox. ARGV: the lease value the sender knows, the entry's JSON, ttl, the
# owner's mail key prefix, user, room, mail ttl ms, mail maxlen, inbox maxlen. '' / the current holder when
# the session is not (or no longer) owned there: the caller routes again.
_SEND = """
local owner = redis.call('GET', KEYS[1])
if owner ~= ARGV[1] then return owner or '' end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[9], '*', 'm', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
local mail = ARGV[4] .. string.match(owner, '^(%S+)')
redis.call('XADD', mail, 'MAXLEN', '~', ARGV[8], '*', 'k', 'poke', 'u', ARGV[5], 'r', ARGV[6])
redis.call('PEXPIRE', mail, ARGV[7])
return {id}
"""


# KEYS: inbox. ARGV: inbox maxlen, the entry's JSON, ttl, the XRANGE start of what the owner
# has not read yet. The entries from there, the new one last.
_ADD = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('XRANGE', KEYS[1], ARGV[4], '+', 'COUNT', ARGV[5])
"""


@dataclass(frozen=True)
class InboxEntry:
    id: str  # the stream id: orders the inputs, names the entry to remove
    node: str  # the process of the socket that sent it
    socket: int  # the socket's outbox id on that process
    text: str
    key_id: int | None
    at_ms: int  # when it was added (from the stream id)

    def to_json(self) -> str:
        return json.dumps({"node": self.node, "sock": self.socket, "text": self.text,
                           "key": self.key_id}, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def parse(cls, entry_id: str, raw: str) -> InboxEntry:
        data = json.loads(raw)
        key = data.get("key")
        return cls(id=entry_id, node=str(data["node"]), socket=int(data["sock"]),
                   text=str(data["text"]), key_id=None if key is None else int(key),
                   at_ms=int(entry_id.split("-", 1)[0]))


class SessionInbox:
    def __init__(self, redis: RedisLike, *, ttl_seconds: int, mail_ttl_ms: int) -> None:
        self._redis = redis
        self._ttl = ttl_seconds
        self._mail_ttl_ms = mail_ttl_ms

    def _key(self, user_id: int, room: str) -> str:
        return session_keys(self._redis.prefix, user_id, room).inbox

    async def send(self, user_id: int, room: str, owner: str, node: str, socket: int,
                   text: str, key_id: int | None) -> str | None:
        """Add an input for the session's owner ``owner`` (its lease value); None when done,
        else who holds the session now ('' for nobody): nothing was added."""
        keys = session_keys(self._redis.prefix, user_id, room)
        entry = InboxEntry("", node, socket, text, key_id, 0).to_json()
        result = await self._redis.eval(
            _SEND, [keys.lease, keys.inbox],
            [owner, entry, self._ttl, mail_key(self._redis.prefix, ""), user_id, room,
             self._mail_ttl_ms, MAIL_MAXLEN, INBOX_MAXLEN])
        return None if isinstance(result, list) else str(result)

    async def add(self, user_id: int, room: str, node: str, socket: int, text: str,
                  key_id: int | None, *, after: str, count: int = 100) -> list[InboxEntry]:
        """The owner queues an input of one of its own sockets, behind what arrived before it;
        in one step, what the owner has not read yet (``read(after)``), this entry last."""
        entry = InboxEntry("", node, socket, text, key_id, 0).to_json()
        raw = await self._redis.eval(_ADD, [self._key(user_id, room)],
                                     [INBOX_MAXLEN, entry, self._ttl, _start(after), count])
        return await self._parse(user_id, room, raw)

    async def read(self, user_id: int, room: str, after: str, count: int = 100
                   ) -> list[InboxEntry]:
        """Entries after ``after`` ('-' for all), oldest first; unreadable ones are dropped."""
        raw = await self._redis.execute("XRANGE", self._key(user_id, room), _start(after), "+",
                                        "COUNT", count)
        return await self._parse(user_id, room, raw)

    async def _parse(self, user_id: int, room: str, raw: list[Any]) -> list[InboxEntry]:
        entries, bad = [], []
        for entry_id, fields in raw:
            try:
                entries.append(InboxEntry.parse(entry_id, stream_fields(fields)["m"]))
            except (KeyError, ValueError, TypeError):
                bad.append(entry_id)
        if bad:
            await self.done(user_id, room, *bad)
        return entries

    async def done(self, user_id: int, room: str, *entry_ids: str) -> None:
        if entry_ids:
            await self._redis.execute("XDEL", self._key(user_id, room), *entry_ids)


def _start(after: str) -> str:
    return "-" if after == "-" else f"({after}"
