"""Recently checked access keys, so a burst of WebSocket connects is not one SQL unit each.

An entry (the key, its owner and its allow-list, or "no such key") lives ``KEY_CACHE_SECONDS``
(default 5 s; 0 turns the cache off). Concurrent lookups of one key share one database read.
Every change this process makes under ``/api/user/*`` (keys, allow-lists, the user) clears the
cache at once; a change made by another process, or directly in the database, is seen within
the TTL. Statuses and the allow-list are still checked on every connect, from the entry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from storage.accounts import KeyAuthRecord

Loader = Callable[[], Awaitable[KeyAuthRecord | None]]
MAX_ENTRIES = 10_000


class _Pending:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.record: KeyAuthRecord | None = None
        self.failed = False


class KeyAuthCache:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, KeyAuthRecord | None]] = {}
        self._pending: dict[str, _Pending] = {}
        self._generation = 0  # bumped by clear(): a load started before it is not kept

    def clear(self) -> None:
        self._entries.clear()
        self._generation += 1

    def put(self, access_key: str, record: KeyAuthRecord | None) -> None:
        """A record just read elsewhere (the open sockets' recheck): later connects see it."""
        if self.ttl > 0:
            self._store(access_key, record)

    def _store(self, access_key: str, record: KeyAuthRecord | None) -> None:
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[access_key] = (trio.current_time() + self.ttl, record)

    async def get(self, access_key: str, load: Loader) -> KeyAuthRecord | None:
        if self.ttl <= 0:
            return await load()
        now = trio.current_time()
        hit = self._entries.get(access_key)
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._pending.get(access_key)
        if pending is not None:
            await pending.done.wait()
            if not pending.failed:
                return pending.record
            return await load()  # the shared read failed: try on our own
        pending = self._pending[access_key] = _Pending()
        generation = self._generation
        try:
            pending.record = await load()
        except BaseException:
            pending.failed = True
            raise
        finally:
            del self._pending[access_key]
            pending.done.set()
        if generation == self._generation:
            self._store(access_key, pending.record)
        return pending.record
