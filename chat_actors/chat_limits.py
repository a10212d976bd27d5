"""Per-user chat limits, shared by every process through Redis (``storage.limits``).

- messages: ``CHAT_MESSAGES_PER_MINUTE`` chat messages (and ``/retry``) per user per minute,
  counted at the socket edge before the session sees them (a refused one is never stored);
- answers: ``CHAT_ANSWERS_AT_ONCE`` answers generating at once per user, a slot taken when an
  answer starts and given back when it ends (it expires by itself if its process dies);
- tokens: ``DAILY_TOKEN_BUDGET`` prompt + answer tokens per user per UTC day (0: none). An
  answer reserves its prompt plus the model's whole answer reserve when it starts, and settles
  to its prompt plus the answer's real tokens when it ends (an answer that produced no text
  gives it all back), so concurrent answers can never overspend the budget.

A Redis that cannot be reached decides nothing: the chat goes on (as it does in an outage,
``docs/reliability.md``) and the refusal is logged, not sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from datetime import UTC, datetime

from core.errors import BudgetExceeded, RateLimited, StorageError, TooManyAnswers
from core.settings import Settings
from storage.limits import DailyBudget, RedisLike, SlidingWindow, Slots

log = logging.getLogger("chat.limits")

MESSAGE_WINDOW = 60.0  # seconds
ANSWER_SLOT_TTL = 900.0  # seconds: an answer slot outlives any answer, not a dead process


def costs_an_answer(text: str) -> bool:
    """What the message limit counts: chat messages and ``/retry`` (other commands are free)."""
    return not text.startswith("/") or text.split(maxsplit=1)[0].lower() == "/retry"


@dataclass(frozen=True)
class ChatLimits:
    messages: SlidingWindow
    answers: Slots
    tokens: DailyBudget

    @classmethod
    def from_settings(cls, redis: RedisLike, settings: Settings) -> ChatLimits:
        return cls(
            messages=SlidingWindow(redis, "chat-messages", limit=settings.chat_messages_per_minute,
                                   window=MESSAGE_WINDOW),
            answers=Slots(redis, "chat-answers", limit=settings.chat_answers_at_once,
                          ttl=ANSWER_SLOT_TTL),
            tokens=DailyBudget(redis, "tokens", limit=settings.daily_token_budget),
        )

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
            raise TooManyAnswers(
                f"At most {self.answers.limit} answers at once; wait for one to finish.")

    async def end_answer(self, user_id: int, answer_id: str) -> None:
        try:
            await self.answers.release(str(user_id), answer_id)
        except StorageError as exc:  # it expires on its own
            log.warning("answer slot of user %s not released: %s", user_id, exc)
