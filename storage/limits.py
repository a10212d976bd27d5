"""Limits that hold across processes and restarts: each decision is one Lua script in Redis.

- ``SlidingWindow``: at most ``limit`` events per ``window`` seconds per key (a sorted set of
  event times; exact, no burst at a window's edge). ``hit`` records an event if it is allowed
  and otherwise says how long until the oldest one leaves the window.
- ``DailyBudget``: at most ``limit`` units (tokens) per key per UTC day, reserved before they
  are spent and settled after.
- ``Slots``: at most ``limit`` things at once per key (answers generating, open sockets). A slot
  is held under a unique id with an expiry (a process that dies does not hold it for ever),
  renewed while it is in use and released by id.

Time is Redis's own (``TIME``), so every process agrees on it. A limit of 0 allows everything
and touches no key.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any, Protocol


class RedisLike(Protocol):
    prefix: str

    async def eval(self, script: str, keys: list[str], args: list[Any]) -> Any: ...

    async def execute(self, *args: Any) -> Any: ...


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float = 0.0  # seconds until the next event would be allowed (when refused)

    @property
    def retry_after_seconds(self) -> int:
        """Whole seconds, at least 1: what ``Retry-After`` and error details say."""
        return max(1, math.ceil(self.retry_after))


ALLOWED = Decision(True)

# KEYS[1]: the window's sorted set. ARGV: limit, window (ms), a unique member.
_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], window)
return {0, tonumber(oldest[2]) + window - now}
"""

# KEYS[1]: the slots' sorted set (score: expiry). ARGV: limit, ttl (ms), the slot's id.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[3]) or redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 1
end
return 0
"""


# KEYS: each slot's sorted set, once per slot. ARGV: ttl (ms), then each slot's id in KEYS order.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl)
end
return #KEYS
"""


# KEYS[1]: the day's counter. ARGV: limit, amount, ttl (s). Reserve only if it fits.
_RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[2]) > tonumber(ARGV[1]) then return {0, used} end
used = redis.call('INCRBY', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, used}
"""


class DailyBudget:
    """At most ``limit`` units (tokens) per subject per UTC day: ``reserve`` an estimate before
    spending, ``settle`` the difference with what was spent after. Reservations are checked
    against the limit atomically, so concurrent spenders never overspend it."""

    KEEP_SECONDS = 2 * 24 * 3600  # a day's counter outlives its day

    def __init__(self, redis: RedisLike, name: str, *, limit: int) -> None:
        self._redis = redis
        self._name = name
        self.limit = limit

    def _key(self, subject: str, day: str) -> str:
        return f"{self._redis.prefix}budget:{self._name}:{subject}:{day}"

    async def reserve(self, subject: str, day: str, amount: int) -> tuple[bool, int]:
        """(reserved?, units used today including it when reserved)."""
        if self.limit <= 0:
            return True, 0
        ok, used = await self._redis.eval(
            _RESERVE, [self._key(subject, day)], [self.limit, amount, self.KEEP_SECONDS])
        return bool(int(ok)), int(used)

    async def settle(self, subject: str, day: str, delta: int) -> None:
        if self.limit > 0 and delta:
            await self._redis.execute("INCRBY", self._key(subject, day), delta)


class SlidingWindow:
    def __init__(self, redis: RedisLike, name: str, *, limit: int, window: float) -> None:
        self._redis = redis
        self._name = name
        self.limit = limit
        self.window = window

    def _key(self, subject: str) -> str:
        return f"{self._redis.prefix}limit:{self._name}:{subject}"

    async def hit(self, subject: str, event_id: str | None = None) -> Decision:
        """Count one event for ``subject`` if the window has room for it; under ``event_id``
        (random unless given) it can be given back with ``forget``."""
        if self.limit <= 0:
            return ALLOWED
        allowed, wait_ms = await self._redis.eval(
            _WINDOW, [self._key(subject)],
            [self.limit, int(self.window * 1000), event_id or secrets.token_hex(8)])
        return ALLOWED if int(allowed) else Decision(False, int(wait_ms) / 1000)

    async def forget(self, subject: str, event_id: str) -> None:
        """Give back an event counted by ``hit(subject, event_id)``."""
        if self.limit > 0:
            await self._redis.execute("ZREM", self._key(subject), event_id)

    async def clear(self, subject: str) -> None:
        await self._redis.execute("DEL", self._key(subject))


class Slots:
    def __init__(self, redis: RedisLike, name: str, *, limit: int, ttl: float) -> None:
        self._redis = redis
        self._name = name
        self.limit = limit
        self.ttl = ttl

    def _key(self, subject: str) -> str:
        return f"{self._redis.prefix}slots:{self._name}:{subject}"

    async def acquire(self, subject: str, slot_id: str) -> bool:
        """Hold a slot (or renew one already held under ``slot_id``); False when all are taken."""
        if self.limit <= 0:
            return True
        return bool(await self._redis.eval(
            _ACQUIRE, [self._key(subject)], [self.limit, int(self.ttl * 1000), slot_id]))

    async def release(self, subject: str, slot_id: str) -> None:
        if self.limit > 0:
            await self._redis.execute("ZREM", self._key(subject), slot_id)

    async def renew(self, held: list[tuple[str, str]]) -> None:
        """Push back the expiry of many held slots ``(subject, slot_id)`` in one script (a
        slot Redis lost, in a restart, is held again)."""
        if self.limit > 0 and held:
            await self._redis.eval(_RENEW, [self._key(subject) for subject, _ in held],
                                   [int(self.ttl * 1000), *(slot for _, slot in held)])
