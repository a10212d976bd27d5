"""Login and registration throttling, exact across processes (``storage.limits``, in Redis).

Three sliding windows, each sized by a setting (0 turns it off):

- ``LOGIN_ATTEMPTS_PER_IP`` login attempts per client IP per ``LOGIN_WINDOW`` (5 minutes),
  failed or not, counted before anything else is read;
- ``LOGIN_FAILURES_PER_EMAIL`` failed password checks per account per ``LOGIN_WINDOW``: failed
  logins, and wrong current passwords on ``PUT /api/user/me/password`` (a stolen token must not
  become a way to guess the password);
- ``REGISTRATIONS_PER_IP`` registration attempts per client IP per ``REGISTRATION_WINDOW``
  (1 hour), taken or not (``email_exists`` answers count: they would otherwise tell a
  script which emails have accounts, for free).

The client IP is the request state's (``web.state``: the peer, or the X-Forwarded-For client
behind a ``TRUSTED_PROXIES`` proxy). Past a limit: 429 ``too_many_attempts`` with the JSON error
body, ``detail: {"retry_after": s}`` and ``Retry-After: s`` (whole seconds, at least 1, until the
window lets one more in).

Failures per account, and what a full window means:

- A failure is *reserved* before the password is checked (one Lua decision, counted only if the
  window has room); a check that succeeds gives its reservation back, a failed one leaves it as
  the failure's record. So concurrent attempts cannot overshoot: 30 wrong passwords at once
  against a limit of 10 are 10 checks (401) and 20 refusals (429), and the refused ones never
  reach Argon2.
- While the window is full, every attempt is refused, **the right password included**, until
  the oldest failure leaves the window. If the right password still got in, the lock would
  protect nothing: a guesser would go on guessing and learn the password from the one answer
  that is not a 429.
- A success does not erase earlier failures: the window counts the failures of the last five
  minutes, whoever made them (after 9 wrong and 1 right, one more failure fills it).
- Subject: the account's id when the email belongs to one, else the email (case-folded). Every
  spelling MariaDB's collation matches to the same account (case, accents) shares its counter;
  an unknown email is limited the same way, so a 429 does not tell whether an account exists.
- The price: anyone can hold an account's password logins shut by failing 10 times every 5
  minutes (bounded per address by the IP limit). Tokens already issued keep working.

An attempt cut short between reservation and answer (cancelled, storage failed) keeps its
reservation: it counts as a failure. Redis errors fail closed (503 ``storage_unavailable``):
during a Redis outage the JWT checks cannot run either (``web.token_revocation``), so a login
would hand out a token nobody can use, while an open door would let guessing run unbounded.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from quart import Quart, Response

from core import metrics
from core.errors import ApiError
from core.settings import Settings
from storage.limits import Decision, RedisLike, SlidingWindow
from web.errors import error_response

LOGIN_WINDOW = 300.0  # seconds
REGISTRATION_WINDOW = 3600.0  # seconds


class TooManyAttempts(ApiError):
    """429 ``too_many_attempts``; its handler adds ``Retry-After``."""

    def __init__(self, msg: str, retry_after: int) -> None:
        super().__init__(429, "too_many_attempts", f"{msg}; try again in {retry_after} s.",
                         {"retry_after": retry_after})
        self.retry_after = retry_after


def install(app: Quart) -> None:
    """Register the 429 handler (more specific than the ``ApiError`` one)."""

    @app.errorhandler(TooManyAttempts)
    async def _too_many(exc: TooManyAttempts) -> Response:
        response = error_response(exc.status, exc.code, exc.msg, exc.detail)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response


@dataclass(frozen=True)
class Reservation:
    """A failure counted in advance; ``refund`` it when the password turns out right."""

    subject: str
    event_id: str | None  # None: nothing was counted (the limit is off, or it refused)


def _refuse(decision: Decision, msg: str) -> None:
    if not decision.allowed:
        metrics.limit_refused("too_many_attempts")
        raise TooManyAttempts(msg, decision.retry_after_seconds)


def account_subject(user_id: int | None, email: str) -> str:
    return f"user:{user_id}" if user_id is not None else f"email:{email.casefold()}"


@dataclass(frozen=True)
class AuthLimits:
    login_ip: SlidingWindow
    failures: SlidingWindow
    registration_ip: SlidingWindow

    @classmethod
    def from_settings(cls, redis: RedisLike, settings: Settings) -> AuthLimits:
        """Cheap (no I/O): built per request, so the windows follow the module constants."""
        return cls(
            login_ip=SlidingWindow(redis, "login-ip", limit=settings.login_attempts_per_ip,
                                   window=LOGIN_WINDOW),
            failures=SlidingWindow(redis, "login-failures",
                                   limit=settings.login_failures_per_email, window=LOGIN_WINDOW),
            registration_ip=SlidingWindow(redis, "register-ip",
                                          limit=settings.registrations_per_ip,
                                          window=REGISTRATION_WINDOW),
        )

    async def count_login(self, client_ip: str) -> None:
        _refuse(await self.login_ip.hit(client_ip), "Too many login attempts from this address")

    async def reserve_failure(self, subject: str) -> Reservation:
        event_id = secrets.token_hex(8)
        _refuse(await self.failures.hit(subject, event_id),
                "Too many failed sign-ins for this account")
        return Reservation(subject, event_id if self.failures.limit > 0 else None)

    async def refund(self, reservation: Reservation) -> None:
        if reservation.event_id is not None:
            await self.failures.forget(reservation.subject, reservation.event_id)

    async def count_registration(self, client_ip: str) -> None:
        _refuse(await self.registration_ip.hit(client_ip),
                "Too many registrations from this address")
