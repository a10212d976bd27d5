"""Who owns a session: a lease per session in Redis, with a fencing token.

A process (a *node*, ``NodeId``) that runs a session's actor holds ``P ctx:U:R:lease`` =
``"<node> <token>"`` with a PX expiry of one lease time, renewed while the actor lives and
deleted when it stops. Tokens come from one counter per prefix (``P fence-seq``), so each taking
of a lease has a token of its own (fences are compared for equality). Taking a lease also
sets ``P ctx:U:R:fence`` to the new token: from that moment the context store refuses the
writes of every older owner (``storage.context_store``), even one that was only paused and
still believes it owns the session.

Renewal is one script for all of a node's sessions (``renew``): a lease that expired while
Redis was slow is taken again if the fence still names this owner, or is gone too (Redis lost
its data): nobody took over meanwhile. Otherwise the session is lost and its actor must stop
without writing. Fences are compared for equality, so tokens need not grow across a Redis
that lost its counter.

The nodes themselves are listed in ``P nodes`` (a sorted set scored by when each one's
heartbeat expires), so a process can tell whether the process behind a socket is still alive.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from storage.context_store import Fence, RedisLike, session_keys

#: A node whose heartbeat is this much overdue is pruned from the node list; a list nobody
#: beats for that long expires.
NODES_KEPT_MS = 60_000

_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^(%S+)') ~= ARGV[1] then return {0, cur} end
local token = redis.call('INCR', KEYS[3])
local value = ARGV[1] .. ' ' .. token
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
redis.call('SET', KEYS[2], token, 'EX', ARGV[3])
return {1, value}
"""

# KEYS: n leases, then their n fences. ARGV: lease ms, fence ttl, then the n lease values.
# Returns the 1-based indexes of the leases that are lost.
_RENEW = """
local n = #KEYS / 2
local lost = {}
for i = 1, n do
  local mine = ARGV[2 + i]
  local cur = redis.call('GET', KEYS[i])
  if cur == mine then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    redis.call('EXPIRE', KEYS[n + i], ARGV[2])
  elseif not cur and (redis.call('GET', KEYS[n + i]) or string.match(mine, '(%S+)$'))
                     == string.match(mine, '(%S+)$') then
    redis.call('SET', KEYS[n + i], string.match(mine, '(%S+)$'))
    redis.call('SET', KEYS[i], mine, 'PX', ARGV[1])
    redis.call('EXPIRE', KEYS[n + i], ARGV[2])
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Taken:
    """The outcome of ``acquire``: our fence, or the current holder's lease value."""

    fence: Fence | None
    holder: str = ""


def node_of(lease_value: str) -> str:
    """The node id in a lease value ``"<node> <token>"``."""
    return lease_value.split(" ", 1)[0]


class SessionLeases:
    def __init__(self, redis: RedisLike, *, node: str, lease_seconds: float,
                 fence_ttl: int) -> None:
        self._redis = redis
        self.node = node
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self._fence_ttl = fence_ttl
        self._seq = f"{redis.prefix}fence-seq"
        self._nodes = f"{redis.prefix}nodes"

    def _keys(self, user_id: int, room: str) -> tuple[str, str]:
        keys = session_keys(self._redis.prefix, user_id, room)
        return keys.lease, keys.fence

    async def acquire(self, user_id: int, room: str) -> Taken:
        """Take the session's lease unless another node holds it. Taken again by its own
        holder, it gets a new token: writes of an earlier incarnation are refused."""
        lease, fence = self._keys(user_id, room)
        ok, value = await self._redis.eval(_ACQUIRE, [lease, fence, self._seq],
                                           [self.node, self.lease_ms, self._fence_ttl])
        if not ok:
            return Taken(None, str(value))
        return Taken(Fence(str(value), int(str(value).rsplit(" ", 1)[1])))

    async def renew(self, owned: Sequence[tuple[int, str, Fence]]) -> list[int]:
        """Renew every lease in ``owned`` in one script; the indexes of those lost."""
        if not owned:
            return []
        keys = [self._keys(u, r) for u, r, _ in owned]
        lost = await self._redis.eval(
            _RENEW, [k[0] for k in keys] + [k[1] for k in keys],
            [self.lease_ms, self._fence_ttl, *(f.lease for _, _, f in owned)])
        return [int(i) - 1 for i in lost]

    async def release(self, user_id: int, room: str, fence: Fence) -> None:
        await self._redis.eval(_RELEASE, [self._keys(user_id, room)[0]], [fence.lease])

    async def holders(self, sessions: Sequence[tuple[int, str]]) -> list[str]:
        """The lease value of each session ('' where nobody holds it), in one MGET."""
        if not sessions:
            return []
        values = await self._redis.execute("MGET", *(self._keys(u, r)[0] for u, r in sessions))
        return [v or "" for v in values]

    async def heartbeat(self) -> None:
        """This node is alive for one more lease time."""
        expires = int(time.time() * 1000) + self.lease_ms
        # the list itself goes once nobody beats for a minute (a prefix no longer served)
        await self._redis.transaction([("ZADD", self._nodes, expires, self.node),
                                       ("PEXPIRE", self._nodes, self.lease_ms + NODES_KEPT_MS)])

    async def leave(self) -> None:
        await self._redis.execute("ZREM", self._nodes, self.node)

    async def live_nodes(self) -> set[str]:
        """Nodes whose heartbeat has not expired (the dead ones are pruned on the way)."""
        now = int(time.time() * 1000)
        await self._redis.execute("ZREMRANGEBYSCORE", self._nodes, "-inf", now - NODES_KEPT_MS)
        return set(await self._redis.execute("ZRANGE", self._nodes, now, "+inf", "BYSCORE"))
