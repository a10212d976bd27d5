"""One chat server process per Redis prefix, for as long as sessions cannot be shared.

A session is an actor of the process that holds it: two processes serving one prefix
(``hypercorn --workers 2``, two replicas) would each run an actor for the same session, racing
on its history. So the chat side holds a lease in Redis (``<prefix>server-lease``) while it runs:

- ``take`` at start-up, waiting up to one lease time for the lease of a process that died without
  releasing it (and through a Redis blip); a second process stops with ``ServerLeaseHeld`` naming
  the holder, or with ``StorageUnavailable`` if Redis never answered (fail closed: a process that
  cannot see the lease must not serve);
- ``keep`` renews it every fifth of the lease time; an attempt is given up after a fifth of the
  lease time and retried half a second later, so the lease lapses only if Redis answers none of
  them for a whole lease time; a key Redis lost (a restart without persistence) is taken again.
  Were another process to hold it by then, the holder logs that once and goes on serving: the
  one way two processes can serve one prefix, documented in docs/architecture.md;
- ``release`` at exit, so that a restart starts at once.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

import trio

from core.errors import ServerLeaseHeld, StorageError, StorageTimeout, StorageUnavailable
from storage.redis_actor import RedisActor

log = logging.getLogger("chat.server_lease")

MIN_LEASE_SECONDS = 10.0
MAX_LEASE_SECONDS = 30.0  # a refused start must end within Hypercorn's 60 s start-up limit
RETRY_SECONDS = 0.5

# Take or keep the lease: '' if it is ours now, else the holder.
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ''
end
return holder
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def lease_seconds(redis_timeout: float) -> float:
    """Three Redis timeouts (so that a slow Redis is not mistaken for a dead holder), 10-30 s."""
    return min(MAX_LEASE_SECONDS, max(MIN_LEASE_SECONDS, 3 * redis_timeout))


def holder_name() -> str:
    """Who holds the lease, as the error message of a second process shows it."""
    return f"{socket.gethostname()} pid {os.getpid()} ({uuid.uuid4().hex[:8]})"


class ServerLease:
    def __init__(self, redis: RedisActor, seconds: float) -> None:
        self.redis = redis
        self.seconds = seconds
        self.key = redis.key("server-lease")
        self.me = holder_name()

    async def _take_once(self) -> str:
        """'' if the lease is ours now, else its holder. Given up after a fifth of the lease
        time (``StorageTimeout``): a cancelled attempt at most re-set our own key."""
        with trio.move_on_after(self.seconds / 5):
            return str(await self.redis.eval(_TAKE, [self.key],
                                             [self.me, int(self.seconds * 1000)]))
        raise StorageTimeout(f"Redis did not answer within {self.seconds / 5:.1f} s")

    async def take(self) -> None:
        """Take the lease, waiting up to one lease time (plus a second) for it."""
        deadline = trio.current_time() + self.seconds + 1
        holder, failure, waited_for = "", None, ""
        while True:
            try:
                holder, failure = await self._take_once(), None
            except StorageError as exc:
                failure = exc
            if not holder and failure is None:
                return
            if trio.current_time() >= deadline:
                break
            if holder and holder != waited_for:
                log.warning("waiting up to %.0f s for the server lease of %r, held by %s",
                            deadline - trio.current_time(), self.redis.prefix, holder)
                waited_for = holder
            await trio.sleep(RETRY_SECONDS)
        if failure is not None:
            message = (f"could not take the server lease of Redis prefix {self.redis.prefix!r}: "
                       f"{failure}")
            log.error("%s", message)  # Hypercorn reports a failed start-up without the reason
            raise StorageUnavailable(message) from failure
        refused = ServerLeaseHeld(
            f"another server process ({holder}) serves Redis prefix {self.redis.prefix!r}: run "
            "one process per database and prefix (sessions cannot be shared between processes "
            "yet)")
        log.error("%s", refused)
        raise refused

    async def keep(self) -> None:
        """Renew the lease until cancelled."""
        lost_to, failing = "", False
        while True:
            try:
                holder = await self._take_once()
            except StorageError as exc:
                if not failing:
                    log.warning("could not renew the server lease (retrying): %s", exc)
                failing = True
                await trio.sleep(RETRY_SECONDS)
                continue
            if failing:
                log.warning("the server lease is renewed again")
                failing = False
            if holder and holder != lost_to:
                log.error("the server lease of %r lapsed and %s took it: two processes now "
                          "serve the same sessions", self.redis.prefix, holder)
            elif not holder and lost_to:
                log.warning("the server lease of %r is ours again", self.redis.prefix)
            lost_to = holder
            await trio.sleep(self.seconds / 5)

    async def release(self) -> None:
        """Give the lease up (if still ours), within two seconds, even when cancelled."""
        with trio.move_on_after(2) as scope:
            scope.shield = True
            try:
                await self.redis.eval(_RELEASE, [self.key], [self.me])
            except StorageError as exc:
                log.warning("could not release the server lease (it lapses in %.0f s): %s",
                            self.seconds, exc)
        if scope.cancelled_caught:
            log.warning("could not release the server lease in 2 s (it lapses in %.0f s)",
                        self.seconds)
