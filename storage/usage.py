"""Usage accounting: requests, prompt and answer tokens per user, API key, model and UTC day.

Counted in Redis on the hot path, written to MariaDB (``usage_daily``) in batches.

Redis (``P`` is ``REDIS_KEY_PREFIX``):

| key | type | content |
|---|---|---|
| ``P usage:U:DAY`` | hash | ``<key id>|<model>|requests``, ``…|prompt``, ``…|answer``: not yet claimed |
| ``P usage:dirty`` | set | the names of the ``usage:U:DAY`` hashes that hold counts |
| ``P usage:batch`` | hash | ``U|DAY|<key id>|<model>|<metric>``: the batch being written |
| ``P usage:batch-id`` | string | that batch's id (random), present exactly while a batch is |
| ``P usage:writer`` | string | the writer lock: a random token, with an expiry |

Key id 0 is the chat page (a ticket socket has no API key); ``DAY`` is ``YYYYMMDD`` (UTC).

**Hot path** (``UsageCounter.record``): one Lua script per answer, three HINCRBYs on the
(user, day) hash and one SADD of its name to the dirty set, atomically.

**Writer** (``UsageWriter.flush``), one at a time across processes (the lock, ``SET NX PX``
with a token, released only by its holder), in three steps:

1. *claim* (one Lua script): if a batch exists (a writer died before step 3), return it as it
   is; else move every dirty hash into ``usage:batch`` (HGETALL + DEL of each, then HINCRBY
   into the batch), give the batch a fresh id, and return it. Moving is atomic with respect to
   ``record``: each increment lands either in the batch or in a fresh hash, never both, never
   neither. A batch takes at most ``BATCH_HASHES`` day hashes; ``flush`` writes batches until
   none is left (at most ``MAX_BATCHES``).
2. *write* (one MariaDB transaction): INSERT the batch id into ``usage_batches`` (its primary
   key), then upsert every row adding to it (``ON DUPLICATE KEY UPDATE x = x + VALUES(x)``).
   If the id is already there, the batch was written by a writer that died before step 3: the
   transaction writes nothing.
3. *finish* (Lua): delete the batch and its id, if the id is still the one written.

Exactly once: a count is in exactly one place at every instant (a day hash, or the batch);
the batch leaves Redis only after a transaction holding its id committed, and a batch id
commits at most once (the primary key: even two writers racing on one batch after a lock
expired cannot both commit, the second blocks on the first's row lock and gets a duplicate
key). A writer killed anywhere leaves either an unwritten batch (written by the next writer)
or a written one (the next writer finds its id and only deletes it). The lock only keeps
writers from doing that work twice; correctness does not rest on it. Rows of
``usage_batches`` older than ``BATCH_ID_DAYS`` are pruned (a batch left in Redis that long
after its commit, with no writer running, would be counted again).

``GET /api/user/usage`` flushes first (``UsageWriter.flush``), then reads MariaDB alone.
"""

from __future__ import annotations

import logging
import secrets
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Protocol, TypeVar

import trio
from sqlalchemy import delete, select
from sqlalchemy.dialects.mysql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import StorageError
from storage.limits import RedisLike
from storage.models import UsageBatch, UsageDaily, utcnow
from storage.sql_actor import Unit

log = logging.getLogger("chat.usage")

PAGE_KEY_ID = 0  # the chat page: a ticket socket has no API key
BATCH_ID_DAYS = 7
LOCK_SECONDS = 30.0
BATCH_HASHES = 1000  # (user, day) hashes per batch
MAX_BATCHES = 100  # per flush: records keep coming, a flush ends
METRICS = ("requests", "prompt", "answer")

# KEYS[1]: the (user, day) hash, KEYS[2]: the dirty set. ARGV: key|model, prompt, answer.
_RECORD = """
redis.call('HINCRBY', KEYS[1], ARGV[1] .. '|requests', 1)
redis.call('HINCRBY', KEYS[1], ARGV[1] .. '|prompt', ARGV[2])
redis.call('HINCRBY', KEYS[1], ARGV[1] .. '|answer', ARGV[3])
redis.call('SADD', KEYS[2], KEYS[1])
return 1
"""

# KEYS[1]: dirty set, KEYS[2]: batch hash, KEYS[3]: batch id. ARGV[1]: a fresh id, ARGV[2]:
# the length of the prefix to strip from a day hash's name (what stays is "U:DAY"), ARGV[3]:
# the most day hashes one batch takes.
# Returns {id, field, value, field, value, ...} or {} when there is nothing to write.
_CLAIM = """
local id = redis.call('GET', KEYS[3])
if not id then
  local names = redis.call('SMEMBERS', KEYS[1])
  if #names == 0 then return {} end
  local cut, most = tonumber(ARGV[2]), tonumber(ARGV[3])
  for n, name in ipairs(names) do
    if n > most then break end
    local kv = redis.call('HGETALL', name)
    local head = string.gsub(string.sub(name, cut + 1), ':', '|')
    for i = 1, #kv, 2 do
      redis.call('HINCRBY', KEYS[2], head .. '|' .. kv[i], kv[i + 1])
    end
    redis.call('DEL', name)
    redis.call('SREM', KEYS[1], name)
  end
  if redis.call('EXISTS', KEYS[2]) == 0 then return {} end
  id = ARGV[1]
  redis.call('SET', KEYS[3], id)
end
local out = {id}
local kv = redis.call('HGETALL', KEYS[2])
for i = 1, #kv do out[#out + 1] = kv[i] end
return out
"""

# KEYS[1]: batch hash, KEYS[2]: batch id. ARGV[1]: the id written.
_FINISH = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class UsageRow:
    day: date
    key_id: int
    model: str
    requests: int
    prompt_tokens: int
    answer_tokens: int


T = TypeVar("T")
RowKey = tuple[int, date, int, str]  # user, day, key id, model


class UsageCounter:
    """The hot path: one Lua script per answer."""

    def __init__(self, redis: RedisLike) -> None:
        self.redis = redis

    def _day_key(self, user_id: int, day: str) -> str:
        return f"{self.redis.prefix}usage:{user_id}:{day}"

    async def record(self, user_id: int, key_id: int | None, model: str, *,
                     prompt_tokens: int, answer_tokens: int, day: str | None = None) -> None:
        """One request of ``user_id`` on key ``key_id`` (None: the chat page, counted as 0)."""
        day = day or datetime.now(UTC).strftime("%Y%m%d")
        await self.redis.eval(
            _RECORD, [self._day_key(user_id, day), f"{self.redis.prefix}usage:dirty"],
            [f"{key_id or PAGE_KEY_ID}|{model}", int(prompt_tokens), int(answer_tokens)])


def _parse_batch(flat: list[str]) -> dict[RowKey, dict[str, int]]:
    rows: dict[RowKey, dict[str, int]] = defaultdict(lambda: dict.fromkeys(METRICS, 0))
    for i in range(0, len(flat), 2):
        name, value = flat[i], int(flat[i + 1])
        user, day, key, rest = name.split("|", 3)
        model, metric = rest.rsplit("|", 1)
        if metric not in METRICS:
            continue
        when = date(int(day[:4]), int(day[4:6]), int(day[6:8]))
        rows[(int(user), when, int(key), model)][metric] += value
    return rows


def write_batch(batch_id: str, rows: dict[RowKey, dict[str, int]]) -> Unit[bool]:
    """Step 2: the batch's rows added in, once; False when ``batch_id`` was written before."""

    async def unit(session: AsyncSession) -> bool:
        now = utcnow()
        done = await session.execute(
            insert(UsageBatch).values(id=batch_id, written_at=now).prefix_with("IGNORE"))
        if done.rowcount == 0:  # type: ignore[attr-defined]
            return False
        values = [{"user_id": u, "day": d, "api_key_id": k, "model": m,
                   "requests": c["requests"], "prompt_tokens": c["prompt"],
                   "answer_tokens": c["answer"]} for (u, d, k, m), c in sorted(rows.items())]
        if values:
            stmt = insert(UsageDaily).values(values)
            await session.execute(stmt.on_duplicate_key_update(
                requests=UsageDaily.requests + stmt.inserted.requests,
                prompt_tokens=UsageDaily.prompt_tokens + stmt.inserted.prompt_tokens,
                answer_tokens=UsageDaily.answer_tokens + stmt.inserted.answer_tokens))
        await session.execute(delete(UsageBatch).where(
            UsageBatch.written_at < now - timedelta(days=BATCH_ID_DAYS)))
        return True

    return unit


def read_usage(user_id: int, since: date) -> Unit[list[UsageRow]]:
    async def unit(session: AsyncSession) -> list[UsageRow]:
        rows = await session.scalars(
            select(UsageDaily).where(UsageDaily.user_id == user_id, UsageDaily.day >= since)
            .order_by(UsageDaily.day, UsageDaily.api_key_id, UsageDaily.model))
        return [UsageRow(r.day, r.api_key_id, r.model, r.requests, r.prompt_tokens,
                         r.answer_tokens) for r in rows]

    return unit


class SqlLike(Protocol):
    async def run(self, unit: Unit[T]) -> T: ...


class UsageWriter:
    """Moves counts from Redis to MariaDB (``flush``; ``run`` every ``every`` seconds)."""

    def __init__(self, redis: RedisLike, sql: SqlLike, *, every: float) -> None:
        self.redis = redis
        self.sql = sql
        self.every = every
        p = redis.prefix
        self._keys = [f"{p}usage:dirty", f"{p}usage:batch", f"{p}usage:batch-id"]
        self._lock = f"{p}usage:writer"
        self._day_prefix = len(f"{p}usage:")
        self._local = trio.Lock()
        self.batch_hashes = BATCH_HASHES

    async def claim(self) -> tuple[str, dict[RowKey, dict[str, int]]] | None:
        """Step 1 (public for the tests that stop a writer mid-way)."""
        out = await self.redis.eval(_CLAIM, self._keys,
                                    [secrets.token_hex(16), self._day_prefix,
                                     self.batch_hashes])
        if not out:
            return None
        return str(out[0]), _parse_batch([str(x) for x in out[1:]])

    async def finish(self, batch_id: str) -> None:
        await self.redis.eval(_FINISH, self._keys[1:], [batch_id])

    async def _write_one(self) -> bool:
        """One batch through the three steps; False when there was none."""
        claimed = await self.claim()
        if claimed is None:
            return False
        batch_id, rows = claimed
        await self.sql.run(write_batch(batch_id, rows))
        await self.finish(batch_id)
        return True

    async def flush(self, *, wait: float = 5.0) -> bool:
        """Write everything counted so far (a batch left by a dead writer first), holding the
        lock; waits up to ``wait`` for another writer's lock. False if it never got it."""
        async with self._local:
            token = secrets.token_hex(16)
            deadline = trio.current_time() + wait
            while not await self.redis.execute(
                    "SET", self._lock, token, "NX", "PX", int(LOCK_SECONDS * 1000)):
                if trio.current_time() >= deadline:
                    return False
                await trio.sleep(0.05)
            try:
                # A leftover batch first, then what was counted before this call.
                for _ in range(MAX_BATCHES):
                    if not await self._write_one():
                        break
            finally:
                with trio.CancelScope(shield=True):
                    await self.redis.eval(_UNLOCK, [self._lock], [token])
            return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.every)
            try:
                await self.flush(wait=0)
            except StorageError as exc:  # Redis or MariaDB down: the counts wait in Redis
                log.warning("usage not written yet: %s", exc)


def totals(rows: Iterable[UsageRow]) -> tuple[int, int, int]:
    rows = list(rows)
    return (sum(r.requests for r in rows), sum(r.prompt_tokens for r in rows),
            sum(r.answer_tokens for r in rows))
