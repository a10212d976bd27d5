"""One chat server process per Redis prefix, for as long as sessions cannot be shared.

A session is an actor of the process that holds it: two processes serving one prefix
(``hypercorn --workers 2``, two replicas) would each run an actor for the same session, racing
on its history. So the chat side holds a lease in Redis (``<prefix>server-lease``) while it runs:
taken at start-up, waiting up to one lease time for the lease of a process that died without
releasing it; renewed every third of that; released at exit. A second process stops at start-up
with ``ServerLeaseHeld``, naming the holder.

If Redis loses the key (a restart without persistence), the next renewal takes it again. If
Redis cannot be reached, the holder logs it and keeps serving: the sessions' own storage calls
report the outage to their users.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from core.errors import ServerLeaseHeld, StorageError
from storage.redis_actor import RedisActor

log = logging.getLogger("chat.server_lease")

LEASE_SECONDS = 10.0

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


def holder_name() -> str:
    """Who holds the lease, as the error message of a second process shows it."""
    return f"{socket.gethostname()} pid {os.getpid()} ({uuid.uuid4().hex[:8]})"


@asynccontextmanager
async def hold_server_lease(redis: RedisActor, *, seconds: float | None = None
                            ) -> AsyncIterator[None]:
    """Hold this prefix's server lease for the body; raise ``ServerLeaseHeld`` if another
    process still holds it after one lease time (``LEASE_SECONDS``) of waiting."""
    seconds = LEASE_SECONDS if seconds is None else seconds
    key, me, ttl_ms = redis.key("server-lease"), holder_name(), int(seconds * 1000)

    async def take() -> str:
        return str(await redis.eval(_TAKE, [key], [me, ttl_ms]))

    holder = await take()
    if holder:
        log.warning("waiting up to %.0f s for the server lease of %r, held by %s",
                    seconds, redis.prefix, holder)
        with trio.move_on_after(seconds + 1):
            while holder:
                await trio.sleep(min(0.5, seconds / 5))
                holder = await take()
    if holder:
        refused = ServerLeaseHeld(
            f"another server process ({holder}) serves Redis prefix {redis.prefix!r}: run one "
            "process per database and prefix (sessions cannot be shared between processes yet)")
        log.error("%s", refused)  # Hypercorn reports a failed start-up without the reason
        raise refused

    async def renew() -> None:
        while True:
            await trio.sleep(seconds / 3)
            try:
                other = await take()
            except StorageError as exc:
                log.warning("could not renew the server lease: %s", exc)
                continue
            if other:
                log.error("the server lease of %r was taken by %s: two processes now serve "
                          "the same sessions", redis.prefix, other)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(renew)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(2) as scope:
            scope.shield = True
            try:
                await redis.eval(_RELEASE, [key], [me])
            except StorageError as exc:
                log.warning("could not release the server lease (it lapses in %.0f s): %s",
                            seconds, exc)
