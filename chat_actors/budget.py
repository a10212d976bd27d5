"""Token budget: which stored messages go into a prompt, and which can be dropped for good.

Pure functions over messages that already carry their token cost (counted once, when stored,
with ``chat_actors.tokens.count_message_tokens``). No I/O, no tiktoken calls.

A prompt for one request is: every system message + as many of the newest other messages
("turns") as fit + the message being answered, in their stored order, within

    prompt_limit = context_window - answer_reserve - margin - REPLY_PRIMING_TOKENS

Turns leave oldest first and one message at a time (a kept head may be an assistant answer whose
question did not fit: it is still useful context). System messages and the message being
answered never leave; when they cannot fit, the request is refused (``MessageTooLong``,
``ContextOverflow``) instead of silently sending a truncated prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from chat_actors.tokens import REPLY_PRIMING_TOKENS
from core.errors import ContextOverflow, MessageTooLong
from core.settings import Settings

SYSTEM = "system"
ASSISTANT = "assistant"


class Costed(Protocol):
    """What the budget reads of a stored message (any frozen dataclass with these fields)."""

    @property
    def role(self) -> str: ...

    @property
    def tokens(self) -> int: ...


M = TypeVar("M", bound=Costed)


@dataclass(frozen=True, slots=True)
class Budget:
    context_window: int
    answer_reserve: int
    margin: int
    max_message_tokens: int
    priming: int = REPLY_PRIMING_TOKENS

    @classmethod
    def for_model(cls, settings: Settings, model: str) -> Budget:
        spec = settings.model_spec(model)
        return cls(
            context_window=spec.context_window,
            answer_reserve=spec.max_answer_tokens,
            margin=settings.token_margin,
            max_message_tokens=settings.max_message_tokens,
        )

    @property
    def prompt_limit(self) -> int:
        """Tokens the prompt's messages may use together."""
        return self.context_window - self.answer_reserve - self.margin - self.priming


@dataclass(frozen=True, slots=True)
class Prompt(Generic[M]):
    messages: list[M]
    #: Sum of the messages' costs plus the reply priming: what the upstream will count.
    tokens: int
    #: How many older turns were left out of this prompt.
    left_out: int


@dataclass(frozen=True, slots=True)
class TrimPlan(Generic[M]):
    #: Indexes into the history, ascending, of the messages to delete durably.
    drop: list[int]
    keep: list[M]


def system_tokens(history: Sequence[Costed]) -> int:
    return sum(m.tokens for m in history if m.role == SYSTEM)


def check_message(history: Sequence[Costed], message_tokens: int, budget: Budget) -> None:
    """Raise if a message of ``message_tokens`` can never be answered beside this history.

    Call it before storing a user message; ``build_prompt`` calls it again.
    """
    if message_tokens > budget.max_message_tokens:
        raise MessageTooLong(
            f"Message too long: {message_tokens} tokens, the limit is {budget.max_message_tokens}.",
            tokens=message_tokens,
            limit=budget.max_message_tokens,
        )
    limit = budget.prompt_limit
    fixed = system_tokens(history)
    if fixed > limit:
        raise ContextOverflow(
            f"The system messages use {fixed} tokens, more than the {limit} this model allows "
            "for a prompt; remove some with /pop system or /clear.",
            tokens=fixed,
            limit=limit,
        )
    if fixed + message_tokens > limit:
        room = limit - fixed
        raise MessageTooLong(
            f"Message too long: {message_tokens} tokens, only {room} fit beside the system "
            "messages.",
            tokens=message_tokens,
            limit=room,
        )


def _fitting_start(turns: Sequence[Costed], room: int) -> int:
    """Index of the oldest turn of the longest suffix of ``turns`` whose cost is <= room."""
    start = len(turns)
    used = 0
    while start > 0 and used + turns[start - 1].tokens <= room:
        start -= 1
        used += turns[start].tokens
    return start


def build_prompt(history: Sequence[M], current: M, budget: Budget) -> Prompt[M]:
    """The messages to send for answering ``current`` (which is not part of ``history``)."""
    check_message(history, current.tokens, budget)
    turns = [i for i, m in enumerate(history) if m.role != SYSTEM]
    room = budget.prompt_limit - system_tokens(history) - current.tokens
    start = _fitting_start([history[i] for i in turns], room)
    first_kept = turns[start] if start < len(turns) else len(history)
    messages = [m for i, m in enumerate(history) if m.role == SYSTEM or i >= first_kept]
    messages.append(current)
    return Prompt(
        messages=messages,
        tokens=sum(m.tokens for m in messages) + budget.priming,
        left_out=start,
    )


def trim_history(history: Sequence[M], budget: Budget, keep_last: int = 2) -> TrimPlan[M]:
    """Which stored turns no prompt of this budget can use any more, so they can be deleted.

    Keeps every system message, the newest turns that fit beside them, and always the newest
    ``keep_last`` turns (the exchange just answered stays visible to the user even when it is
    too big to be sent again). After a drop the kept turns never start with an assistant answer
    whose question was dropped: that answer goes too.
    """
    turns = [i for i, m in enumerate(history) if m.role != SYSTEM]
    room = budget.prompt_limit - system_tokens(history)
    start = _fitting_start([history[i] for i in turns], room)
    protected = max(0, len(turns) - keep_last)
    start = min(start, protected)
    while 0 < start < protected and history[turns[start]].role == ASSISTANT:
        start += 1
    drop = turns[:start]
    dropped = set(drop)
    return TrimPlan(drop=drop, keep=[m for i, m in enumerate(history) if i not in dropped])
