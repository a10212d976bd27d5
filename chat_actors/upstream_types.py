"""What the upstream client takes and gives back, and the parsing of one SSE chunk."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import orjson

from core.errors import UpstreamError


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request. ``user`` is an opaque id sent upstream, never an email."""

    model: str
    messages: Sequence[Mapping[str, object]]
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # instead of max_tokens, for reasoning models
    user: str | None = None
    #: More body fields sent as given (the OpenAI-compatible API's ``stop``, ``seed``,
    #: ``stream_options``...); the fields above win over them.
    extra: Mapping[str, object] | None = None

    def __post_init__(self) -> None:
        if self.user is not None and "@" in self.user:
            raise ValueError("ChatRequest.user must be an opaque id, never an email")

    def payload(self, partial: str = "") -> dict[str, object]:
        """The JSON body; a non-empty ``partial`` makes it a continuation request (the partial
        answer appended as the last, assistant, message)."""
        messages = [dict(m) for m in self.messages]
        if partial:
            messages.append({"role": "assistant", "content": partial})
        body: dict[str, object] = dict(self.extra or {})
        body.update(model=self.model, messages=messages, stream=True)
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty",
                     "max_tokens", "max_completion_tokens", "user"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        return body


@dataclass(frozen=True)
class Usage:
    """Tokens the upstream says an answer took (``usage`` of a chunk, when it sends one: ask
    with ``stream_options: {"include_usage": true}``)."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def combined(cls, parts: Sequence[Usage]) -> Usage | None:
        """One answer's usage over its requests (continuations): the first request's prompt,
        every request's completion tokens; None when no request reported any."""
        if not parts:
            return None
        return cls(parts[0].prompt_tokens, sum(p.completion_tokens for p in parts))


@dataclass(frozen=True)
class FinishInfo:
    """How an answer ended. ``finish_reason`` is ``"stop"``, or ``"length"`` when the upstream
    still cut the answer after ``upstream_max_continuations`` continuations. ``usage``: what
    the upstream reported, if it did."""

    text: str
    finish_reason: str
    continuations: int
    retries: int
    usage: Usage | None = None


@dataclass(frozen=True)
class Chunk:
    delta: str
    finish_reason: str | None
    usage: Usage | None = None


def _usage(value: object) -> Usage | None:
    """A chunk's ``usage`` object, if it is one (anything else is ignored, not an error)."""
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if not (isinstance(prompt, int) and isinstance(completion, int)) or min(prompt, completion) < 0:
        return None
    return Usage(prompt, completion)


def parse_chunk(data: str) -> Chunk:
    """One ``data:`` payload of a ``chat.completion.chunk`` stream (not ``[DONE]``)."""
    try:
        body = orjson.loads(data)
    except ValueError as exc:  # orjson.JSONDecodeError is one
        raise UpstreamError(f"upstream sent a malformed chunk: {data[:80]!r}") from exc
    if not isinstance(body, dict):
        raise UpstreamError(f"upstream sent a malformed chunk: {data[:80]!r}")
    if "error" in body:
        raise UpstreamError(f"upstream error in stream: {str(body['error'])[:200]}")
    choices = body.get("choices")
    usage = _usage(body.get("usage"))
    if not choices:  # e.g. a usage-only chunk
        return Chunk("", None, usage)
    try:
        choice = choices[0]
        delta = choice.get("delta") or {}
        content = delta.get("content") or ""
        finish = choice.get("finish_reason")
    except (AttributeError, IndexError, KeyError, TypeError) as exc:
        raise UpstreamError(f"upstream sent a malformed chunk: {data[:80]!r}") from exc
    if not isinstance(content, str) or not (finish is None or isinstance(finish, str)):
        raise UpstreamError(f"upstream sent a malformed chunk: {data[:80]!r}")
    return Chunk(content, finish, usage)


def retry_after_seconds(header: str | None, cap: float) -> float | None:
    """``Retry-After`` (seconds or an HTTP date) as seconds, capped; None if absent or bad."""
    if not header:
        return None
    try:
        seconds = float(header)
    except ValueError:
        try:
            when = parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), cap)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": uniform in [d/2, d], d = min(cap, base * 2**n)."""
    ceiling = min(cap, base * 2**attempt)
    return rng.uniform(ceiling / 2, ceiling)
