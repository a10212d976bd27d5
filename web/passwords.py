"""Argon2id password hashing, run in worker threads so the event loop never blocks on it.

One ``Passwords`` lives in ``Services``; its hasher's cost is argon2-cffi's default profile
(RFC 9106 low-memory: 3 passes, 64 MiB, 4 lanes) unless ``create_app(password_hasher=...)``
passes another (the tests use a cheap one). Threads hashing at once are bounded: each takes
64 MiB.
"""

from __future__ import annotations

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class Passwords:
    def __init__(self, hasher: PasswordHasher | None = None, max_threads: int = 4) -> None:
        self.hasher = hasher or PasswordHasher()
        self.limiter = trio.CapacityLimiter(max_threads)
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        return await trio.to_thread.run_sync(self.hasher.hash, password, limiter=self.limiter)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """True when ``password`` matches. With no stored hash (unknown email) it still spends
        the time of one check, so "no such user" and "wrong password" look alike."""
        if stored_hash is None and self._dummy_hash is None:
            self._dummy_hash = await self.hash("not-a-real-password-only-for-timing")
        return await trio.to_thread.run_sync(
            self._verify, stored_hash, password, limiter=self.limiter
        )

    def _verify(self, stored_hash: str | None, password: str) -> bool:
        try:
            matched = self.hasher.verify(stored_hash or self._dummy_hash or "", password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return matched and stored_hash is not None
