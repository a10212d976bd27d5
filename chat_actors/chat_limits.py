"""Per-user chat limits, shared by every process through Redis (``storage.limits``).

- messages: ``CHAT_MESSAGES_PER_MINUTE`` chat messages (and ``/retry``) per user per minute,
  counted at the socket edge before the session sees them (a refused one is never stored);
- answers: ``CHAT_ANSWERS_AT_ONCE`` answers generating at once per user, a slot taken when an
  answer starts and given back when it ends (it expires by itself if its process dies);
- tokens: ``DAILY_TOKEN_BUDGET`` prompt + answer tokens per user per UTC day (0: none). An
  answer reserves its prompt plus the model's whole answer reserve when it starts, and settles
  to its prompt plus the answer's real tokens when it ends (an answer that produced no text
  gives it all back), so concurrent answers can never overspend the budget.

Usage (``storage.usage``): every answer that ended, at the socket or the API, is counted once
with ``record_usage`` (requests, prompt and answer tokens per key, model and UTC day).

The OpenAI-compatible API (``web.openai_api``) draws on the same pool, through the running
chat's ``ChatLimits``: a request is one message, holds an answer slot while it generates and
reserves then settles its tokens (``hold_answer``).

A Redis that cannot be reached decides nothing: the chat goes on (as it does in an outage,
``docs/reliability.md``) and the refusal is logged, not sent.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import trio

from core import metrics
from core.errors import BudgetExceeded, RateLimited, StorageError, TooManyAnswers
from core.settings import Settings
from storage.limits import DailyBudget, RedisLike, SlidingWindow, Slots
from storage.usage import UsageCounter

log = logging.getLogger("chat.limits")

MESSAGE_WINDOW = 60.0  # seconds
ANSWER_SLOT_TTL = 900.0  # seconds: an answer slot outlives any answer, not a dead process
RELEASE_GRACE = 5.0  # seconds: giving a slot and tokens back, even from a cancelled request


def costs_an_answer(text: str) -> bool:
    """What the message limit counts: chat messages and ``/retry`` (other commands are free)."""
    return not text.startswith("/") or text.split(maxsplit=1)[0].lower() == "/retry"


@dataclass
class AnswerHold:
    """An answer held outside a session (``ChatLimits.hold_answer``): set ``spent`` to the
    tokens it really took before the block ends."""

    slot_id: str
    reserved: int
    spent: int = 0
    day: str = field(default="", repr=False)


@dataclass(frozen=True)
class AnswerCount:
    """An answer's line in the usage counts (``ChatLimits.record_usage``)."""

    key_id: int | None
    model: str
    prompt_tokens: int
    answer_tokens: int


@dataclass(frozen=True)
class ChatLimits:
    messages: SlidingWindow
    answers: Slots
    tokens: DailyBudget
    usage: UsageCounter

    @classmethod
    def from_settings(cls, redis: RedisLike, settings: Settings) -> ChatLimits:
        return cls(
            messages=SlidingWindow(redis, "chat-messages", limit=settings.chat_messages_per_minute,
                                   window=MESSAGE_WINDOW),
            answers=Slots(redis, "chat-answers", limit=settings.chat_answers_at_once,
                          ttl=ANSWER_SLOT_TTL),
            tokens=DailyBudget(redis, "tokens", limit=settings.daily_token_budget),
            usage=UsageCounter(redis),
        )

    async def record_usage(self, user_id: int, key_id: int | None, model: str, *,
                           prompt_tokens: int, answer_tokens: int) -> None:
        """Count one answer that ended (key None: the chat page, counted under key id 0).
        A Redis that cannot be reached loses this one count, logged."""
        with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_GRACE) as waited:
            try:
                await self.usage.record(user_id, key_id, model, prompt_tokens=prompt_tokens,
                                        answer_tokens=answer_tokens)
            except StorageError as exc:
                log.warning("usage of user %s not counted (%d + %d tokens): %s", user_id,
                            prompt_tokens, answer_tokens, exc)
        if waited.cancelled_caught:
            log.warning("usage of user %s not counted (%d + %d tokens): Redis took over %s s",
                        user_id, prompt_tokens, answer_tokens, RELEASE_GRACE)

    async def reserve_tokens(self, user_id: int, amount: int) -> str:
        """Reserve ``amount`` of today's tokens; the day it counts on (to settle on), or
        ``BudgetExceeded``."""
        day = datetime.now(UTC).strftime("%Y%m%d")
        try:
            reserved, used = await self.tokens.reserve(str(user_id), day, amount)
        except StorageError as exc:
            log.warning("token budget not checked for user %s: %s", user_id, exc)
            return ""
        if not reserved:
            metrics.limit_refused("budget_exceeded")
            left = max(0, self.tokens.limit - used)
            raise BudgetExceeded(
                f"Today's tokens are spent: {left} of {self.tokens.limit} left, this answer "
                f"may need {amount}. The budget renews at midnight UTC.")
        return day

    async def settle_tokens(self, user_id: int, day: str, delta: int) -> None:
        if not day:  # nothing was reserved (no budget, or Redis did not answer)
            return
        try:
            await self.tokens.settle(str(user_id), day, delta)
        except StorageError as exc:
            log.warning("token budget of user %s not settled by %d: %s", user_id, delta, exc)

    async def count_message(self, user_id: int) -> None:
        """Raises ``RateLimited`` (with the seconds to wait) past the user's rate."""
        try:
            decision = await self.messages.hit(str(user_id))
        except StorageError as exc:
            log.warning("message limit not checked for user %s: %s", user_id, exc)
            return
        if not decision.allowed:
            metrics.limit_refused("rate_limited")
            wait = decision.retry_after_seconds
            raise RateLimited(
                f"At most {self.messages.limit} messages a minute; try again in {wait} s.", wait)

    async def start_answer(self, user_id: int, answer_id: str) -> None:
        """Take an answer slot; ``TooManyAnswers`` when the user has none left."""
        try:
            taken = await self.answers.acquire(str(user_id), answer_id)
        except StorageError as exc:
            log.warning("answer limit not checked for user %s: %s", user_id, exc)
            return
        if not taken:
            metrics.limit_refused("too_many_answers")
            raise TooManyAnswers(
                f"At most {self.answers.limit} answers at once; wait for one to finish.")

    async def end_answer(self, user_id: int, answer_id: str) -> None:
        try:
            await self.answers.release(str(user_id), answer_id)
        except StorageError as exc:  # it expires on its own
            log.warning("answer slot of user %s not released: %s", user_id, exc)

    @asynccontextmanager
    async def hold_answer(self, user_id: int, reserve: int) -> AsyncIterator[AnswerHold]:
        """The limits of one answer given outside a chat session (the OpenAI-compatible API),
        in the chat's own pool: a slot among the user's answers at once (``TooManyAnswers``),
        then ``reserve`` of today's tokens when there is a budget (``BudgetExceeded``, the slot
        given back), both held for the block. On exit, even a cancelled one, the slot is given
        back and the reservation settled to ``hold.spent``. Counting the message itself is
        ``count_message``'s job, as at the chat socket."""
        hold = AnswerHold(slot_id=f"api-{secrets.token_hex(8)}", reserved=reserve)
        await self.start_answer(user_id, hold.slot_id)
        try:
            if self.tokens.limit > 0:
                hold.day = await self.reserve_tokens(user_id, reserve)
        except BaseException:  # refused, or cancelled meanwhile: the slot goes back
            await self._release(user_id, hold, settle=False)
            raise
        try:
            yield hold
        finally:
            await self._release(user_id, hold, settle=True)

    async def _release(self, user_id: int, hold: AnswerHold, *, settle: bool) -> None:
        await self.finish_answer(user_id, hold.slot_id, day=hold.day if settle else "",
                                 settle=hold.spent - hold.reserved)

    async def finish_answer(self, user_id: int, slot_id: str, *, day: str, settle: int,
                            count: AnswerCount | None = None) -> None:
        """An answer ended: its slot goes back, its token reservation (on ``day``; "" for
        none) is settled by ``settle``, and ``count`` goes into the usage counts. The three
        go out together, so the Redis actor sends them in one round trip; shielded (a
        cancelled answer gives back too) and within ``RELEASE_GRACE``."""
        with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_GRACE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.end_answer, user_id, slot_id)
                if day:
                    nursery.start_soon(self.settle_tokens, user_id, day, settle)
                if count is not None:
                    nursery.start_soon(partial(
                        self.record_usage, user_id, count.key_id, count.model,
                        prompt_tokens=count.prompt_tokens, answer_tokens=count.answer_tokens))
