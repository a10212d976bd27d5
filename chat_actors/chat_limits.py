"""Per-user chat limits, shared by every process through Redis (``storage.limits``).

- messages: ``CHAT_MESSAGES_PER_MINUTE`` chat messages (and ``/retry``) per user per minute,
  counted at the socket edge before the session sees them (a refused one is never stored);
- answers: ``CHAT_ANSWERS_AT_ONCE`` answers generating at once per user, a slot taken when an
  answer starts and given back when it ends (it expires by itself if its process dies).

A Redis that cannot be reached decides nothing: the chat goes on (as it does in an outage,
``docs/reliability.md``) and the refusal is logged, not sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from core.errors import RateLimited, StorageError, TooManyAnswers
from core.settings import Settings
from storage.limits import RedisLike, SlidingWindow, Slots

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

    @classmethod
    def from_settings(cls, redis: RedisLike, settings: Settings) -> ChatLimits:
        return cls(
            messages=SlidingWindow(redis, "chat-messages", limit=settings.chat_messages_per_minute,
                                   window=MESSAGE_WINDOW),
            answers=Slots(redis, "chat-answers", limit=settings.chat_answers_at_once,
                          ttl=ANSWER_SLOT_TTL),
        )

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
