"""Open chat sockets lose their right to chat when their key or account does.

``SocketWatch`` knows every open chat socket of the process, by user: for the key checks below,
and so that a shutdown can close them all (``web.drain``).

A socket's key is checked before the upgrade; ``SocketWatch`` keeps checking it while the socket
is open. One task per process, not one timer per socket:

- every ``interval`` seconds (``KEY_CACHE_SECONDS``, at least 1 s) it reads every live key of
  the process from the database, in a few batched units (not through the key cache, so a
  change is seen within one interval; the fresh reads replace the cache's entries), and applies
  the connect rule to each socket (key status, owner status, allow-list against its address);
- a change made through this process (any write under ``/api/user``) rechecks that user's
  sockets at once, and a deleted account's sockets are closed before its data goes.

A refused socket gets an error frame with ``close: true`` (``key_revoked`` or
``account_closed``) and is closed; a database that cannot be read revokes nothing.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from core.errors import ApiError, StorageError
from storage.accounts import UnitRunner, get_keys_for_auth, get_users
from storage.limits import Slots
from web.auth_keys import check_key_record
from web.jwt_tokens import TokenClaims, decode_token, stamp_matches
from web.key_cache import KeyAuthCache
from web.services import Services
from web.token_revocation import revoked_among
from web.user_status import check_user_status

log = logging.getLogger("chat.ws")

BATCH = 500  # access keys per database unit
CLOSE_POLICY = 1008  # WebSocket close code: the key or account may no longer chat
ACCOUNT_CODES = frozenset({"user_blocked", "user_deleted", "user_not_found"})
ACCOUNT_CLOSED = ("account_closed", "This account is closed; the chat socket is closed.")


def revocation(exc: ApiError) -> tuple[str, str]:
    """The socket's error code and message for a refused key check."""
    if exc.code in ACCOUNT_CODES:
        return ACCOUNT_CLOSED
    return "key_revoked", f"This API key may no longer be used: {exc.msg}"


@dataclass(eq=False)
class WatchedSocket:
    access_key: str | None  # None: a socket ticket's socket (the user is checked, not a key)
    client_ip: str
    user_id: int
    end: Callable[[str, str, int], None]  # (code, message, close code): a last error, a close
    owner: str  # whose socket count it is in: "key:<id>" or "user:<id>" (ticket sockets)
    token: str | None = None  # a ticket socket's JWT: the socket lasts as long as it is good
    slot_id: str = field(default_factory=lambda: secrets.token_hex(8))


class SocketWatch:
    """``slots``: the open sockets per key (``WS_CONNECTIONS_PER_KEY``), counted in Redis across
    processes; each process renews its own sockets' slots at every sweep, so the slots of a
    process that died expire after a few sweeps."""

    def __init__(self, services: Services, slots: Slots, interval: float) -> None:
        self._services = services
        self._sql: UnitRunner = services.storage.sql
        self._cache: KeyAuthCache = services.key_cache
        self.slots = slots
        self.interval = interval
        self._by_user: dict[int, set[WatchedSocket]] = {}
        self._urgent: set[int] = set()
        self._wakeup = trio.Event()

    async def admit(self, socket: WatchedSocket) -> bool:
        """Count the socket against its key's limit and watch it; False when the key has as
        many open sockets as it may (a Redis outage admits: it decides nothing)."""
        try:
            if not await self.slots.acquire(socket.owner, socket.slot_id):
                return False
        except StorageError as exc:
            log.warning("socket limit not checked for %s: %s", socket.owner, exc)
        self._by_user.setdefault(socket.user_id, set()).add(socket)
        return True

    async def leave(self, socket: WatchedSocket) -> None:
        """The socket closed: unwatched, its slot given back (bounded, even when cancelled)."""
        sockets = self._by_user.get(socket.user_id)
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self._by_user[socket.user_id]
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self.slots.release(socket.owner, socket.slot_id)
            except StorageError:  # it expires by itself
                pass

    def recheck_user(self, user_id: int) -> None:
        """Something of this user's changed here: check their sockets now, not at the sweep."""
        if user_id in self._by_user:
            self._urgent.add(user_id)
            self._wakeup.set()

    def close_user(self, user_id: int) -> None:
        """The account is being deleted: close its sockets now (before its data goes)."""
        for socket in list(self._by_user.get(user_id, ())):
            socket.end(*ACCOUNT_CLOSED, CLOSE_POLICY)

    def close_all(self, code: str, msg: str, close_code: int) -> None:
        """The server is going away: every socket gets a last error frame and its close."""
        for sockets in list(self._by_user.values()):
            for socket in list(sockets):
                socket.end(code, msg, close_code)

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_user.values())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        next_sweep = trio.current_time() + self.interval
        while True:
            with trio.move_on_at(next_sweep):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            sweep = trio.current_time() >= next_sweep
            if sweep:
                users: Iterable[int] = list(self._by_user)
                next_sweep = trio.current_time() + self.interval
            else:
                users = self._urgent
            self._urgent = set()
            sockets = [s for u in users for s in self._by_user.get(u, ())]
            if sweep:
                await self._renew(sockets)
            await self._check_users([s for s in sockets if s.access_key is None])
            await self._check([s for s in sockets if s.access_key is not None])

    async def _renew(self, sockets: list[WatchedSocket]) -> None:
        for start in range(0, len(sockets), BATCH):
            try:
                await self.slots.renew([(s.owner, s.slot_id) for s in sockets[start:start + BATCH]])
            except StorageError as exc:
                log.warning("could not renew %d socket slot(s): %s", len(sockets), exc)
                return

    async def _check_users(self, sockets: list[WatchedSocket]) -> None:
        """Ticket sockets have no key: the JWT their ticket was asked with decides (expiry,
        logout, password change), and their user's status."""
        if not sockets:
            return
        settings = self._services.settings
        claims: dict[int, TokenClaims] = {}
        for socket in sockets:
            try:
                claims[id(socket)] = decode_token(settings, socket.token or "")
            except ApiError as exc:
                socket.end("token_revoked", f"The sign-in of this socket ended: {exc.msg}",
                           CLOSE_POLICY)
        live = [s for s in sockets if id(s) in claims]
        try:
            revoked = await revoked_among(self._services, [claims[id(s)].jti for s in live])
            users = await get_users(self._sql, sorted({s.user_id for s in live}))
        except StorageError as exc:
            log.warning("could not recheck %d ticket socket(s): %s", len(live), exc)
            return
        for socket in live:
            token = claims[id(socket)]
            try:
                user = check_user_status(users.get(socket.user_id), "key")
            except ApiError as exc:
                socket.end(*revocation(exc), CLOSE_POLICY)
                continue
            if token.jti in revoked or not stamp_matches(settings, token, user.password_hash):
                socket.end("token_revoked", "This socket's sign-in was revoked (logged out or "
                           "the password changed).", CLOSE_POLICY)

    async def _check(self, sockets: list[WatchedSocket]) -> None:
        keys = sorted({s.access_key for s in sockets if s.access_key is not None})
        for start in range(0, len(keys), BATCH):
            batch = keys[start:start + BATCH]
            try:
                records = await get_keys_for_auth(self._sql, batch)
            except StorageError as exc:  # an outage revokes nothing; the next sweep retries
                log.warning("could not recheck %d open socket key(s): %s", len(batch), exc)
                continue
            for key in batch:  # a new connect must not pass on an older cached read
                self._cache.put(key, records.get(key))
            in_batch = set(batch)
            for socket in sockets:
                if socket.access_key not in in_batch:
                    continue
                try:
                    check_key_record(records.get(socket.access_key), socket.client_ip)
                except ApiError as exc:
                    socket.end(*revocation(exc), CLOSE_POLICY)
